//! The refinement loss: cosine distance to the ground-truth code embeddings.

use burn::tensor::{backend::Backend, Bool, Tensor};
use serde::{Deserialize, Serialize};

use crate::checks::expect_dims;
use crate::error::{Error, Result};

/// Squared norms below `EPS²` are clamped before the square root, so zero vectors give a
/// cosine of 0 (a loss of 1) and finite gradients.
const EPS: f64 = 1e-8;

/// The loss `mean_i (1 − cos(e'_i, e*_i)) + mse_weight · mean_i ‖e'_i − e*_i‖² / D` over the
/// tokens `i` that the mask keeps.
///
/// ```
/// use ar_refine::RefinementLoss;
/// use burn::backend::NdArray;
/// use burn::tensor::Tensor;
/// let d = Default::default();
/// let pred = Tensor::<NdArray, 3>::from_floats([[[1.0, 0.0], [0.0, 2.0]]], &d);
/// let target = Tensor::<NdArray, 3>::from_floats([[[1.0, 1.0], [0.0, 3.0]]], &d);
/// let loss = RefinementLoss { mse_weight: 0.0 }.forward(pred, target, None).unwrap();
/// let expected = ((1.0 - 0.5f32.sqrt()) + 0.0) / 2.0;
/// assert!((loss.into_scalar() - expected).abs() < 1e-6);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct RefinementLoss {
    /// Weight of the optional mean-squared-error term (`0`: pure cosine, as in the paper).
    pub mse_weight: f64,
}

impl RefinementLoss {
    /// `pred`, `target` `[b, n, D]`; `mask` `[b, n]` (`true`: the token counts). Returns the
    /// scalar loss `[1]`. A mask that keeps no token gives `0`.
    pub fn forward<B: Backend>(
        &self,
        pred: Tensor<B, 3>,
        target: Tensor<B, 3>,
        mask: Option<Tensor<B, 2, Bool>>,
    ) -> Result<Tensor<B, 1>> {
        let dims = pred.dims();
        let [b, n, d] = dims;
        expect_dims(
            "loss target",
            &format!("{dims:?} (the prediction's shape)"),
            &target.dims(),
            &dims.map(Some),
        )?;
        if b * n * d == 0 {
            return Err(Error::shape("loss prediction", "non-empty [b, n, D]", &dims));
        }
        if !(self.mse_weight.is_finite() && self.mse_weight >= 0.0) {
            return Err(Error::Config(format!(
                "mse_weight must be >= 0, got {}",
                self.mse_weight
            )));
        }
        let norm = |x: Tensor<B, 3>| x.powi_scalar(2).sum_dim(2).clamp_min(EPS * EPS).sqrt();
        let dot = (pred.clone() * target.clone()).sum_dim(2);
        let cos = dot / (norm(pred.clone()) * norm(target.clone()));
        let mut per_token = cos.neg().add_scalar(1.0); // [b, n, 1]
        if self.mse_weight > 0.0 {
            let mse = (pred - target).powi_scalar(2).mean_dim(2);
            per_token = per_token + mse.mul_scalar(self.mse_weight);
        }
        let per_token = per_token.reshape([b, n]);
        Ok(match mask {
            None => per_token.mean(),
            Some(mask) => {
                expect_dims(
                    "loss mask",
                    &format!("[{b}, {n}]"),
                    &mask.dims(),
                    &[Some(b), Some(n)],
                )?;
                let m = mask.float();
                (per_token * m.clone()).sum() / m.sum().clamp_min(1.0)
            }
        })
    }
}

/// The paper's loss: mean cosine distance `1 − cos(e'_i, e*_i)` over the unmasked tokens.
///
/// - `pred`: refined embeddings `[b, n, D]`
/// - `target`: ground-truth code embeddings `[b, n, D]`
/// - `mask`: `[b, n]`, `true` where the token counts (`None`: all)
///
/// Returns `[1]`; differentiable under `Autodiff`, finite for zero vectors.
///
/// ```
/// use ar_refine::cosine_loss;
/// use burn::backend::NdArray;
/// use burn::tensor::Tensor;
/// let d = Default::default();
/// let e = Tensor::<NdArray, 3>::from_floats([[[1.0, 2.0]]], &d);
/// let loss = cosine_loss(e.clone(), e.mul_scalar(3.0), None).unwrap();
/// assert!(loss.into_scalar().abs() < 1e-6);
/// ```
pub fn cosine_loss<B: Backend>(
    pred: Tensor<B, 3>,
    target: Tensor<B, 3>,
    mask: Option<Tensor<B, 2, Bool>>,
) -> Result<Tensor<B, 1>> {
    RefinementLoss::default().forward(pred, target, mask)
}
