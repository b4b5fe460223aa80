//! The refinement loss: the paper's cosine distance to the ground-truth code embeddings, and
//! the categorical terms (cross-entropy over code logits, optionally with soft targets over the
//! truth's nearest codes, and the critic's binary cross-entropy), in any weighted sum.

use crate::backend::ArBackend;
use burn::tensor::{activation, Bool, Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::checks::expect_dims;
use crate::decode::Codebook;
use crate::error::{Error, Result};
use crate::traits::RefineOutput;

/// Squared norms below `EPS²` are clamped before the square root, so zero vectors give a
/// cosine of 0 (a loss of 1) and finite gradients.
const EPS: f64 = 1e-8;

/// The refinement loss, a weighted sum over the tokens:
///
/// - `cosine · (1 − cos(e'_i, e*_i))` (the paper's term) `+ mse_weight · ‖e'_i − e*_i‖² / D`,
///   on the refined embeddings;
/// - `cross_entropy · CE(logits_i, truth_i)`, on the code logits; with `soft_neighbours = k ≥ 2`
///   the target spreads over the truth's `k` nearest codes (cosine), weighted by
///   `softmax(cos / soft_temperature)`;
/// - `critic · BCE(wrong_logit_i, [own_i ≠ truth_i])`, on the critic's logit.
///
/// `RefinementLoss::default()` is the paper's pure cosine loss.
///
/// ```
/// use ar_refine::RefinementLoss;
/// use burn::backend::NdArray;
/// use burn::tensor::Tensor;
/// let d = Default::default();
/// let pred = Tensor::<NdArray, 3>::from_floats([[[1.0, 0.0], [0.0, 2.0]]], &d);
/// let target = Tensor::<NdArray, 3>::from_floats([[[1.0, 1.0], [0.0, 3.0]]], &d);
/// let loss = RefinementLoss::default().forward(pred, target, None).unwrap();
/// let expected = ((1.0 - 0.5f32.sqrt()) + 0.0) / 2.0;
/// assert!((loss.into_scalar() - expected).abs() < 1e-6);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RefinementLoss {
    /// Weight of the cosine distance (`1`: the paper).
    #[serde(default = "one")]
    pub cosine: f64,
    /// Weight of the mean-squared-error term on the embeddings.
    #[serde(default)]
    pub mse_weight: f64,
    /// Weight of the cross-entropy over code logits.
    #[serde(default)]
    pub cross_entropy: f64,
    /// `k >= 2`: soft cross-entropy targets over the truth's `k` nearest codes.
    #[serde(default)]
    pub soft_neighbours: usize,
    /// Temperature of the soft targets' weights (cosine similarities divided by it).
    #[serde(default = "soft_temperature")]
    pub soft_temperature: f64,
    /// Weight of the critic's binary cross-entropy.
    #[serde(default)]
    pub critic: f64,
}

fn one() -> f64 {
    1.0
}

fn soft_temperature() -> f64 {
    0.05
}

impl Default for RefinementLoss {
    /// The paper's loss: cosine distance alone.
    fn default() -> Self {
        Self {
            cosine: 1.0,
            ..Self::none()
        }
    }
}

impl RefinementLoss {
    /// All weights zero: a base for struct-update syntax.
    pub fn none() -> Self {
        Self {
            cosine: 0.0,
            mse_weight: 0.0,
            cross_entropy: 0.0,
            soft_neighbours: 0,
            soft_temperature: soft_temperature(),
            critic: 0.0,
        }
    }

    /// Checks the weights: finite, `>= 0`, not all zero; a positive soft temperature.
    pub fn validate(&self) -> Result<()> {
        let w = [self.cosine, self.mse_weight, self.cross_entropy, self.critic];
        if w.iter().any(|x| !(x.is_finite() && *x >= 0.0)) {
            return Err(Error::Config(format!(
                "loss weights must be finite and >= 0, got {self:?}"
            )));
        }
        if w.iter().all(|x| *x == 0.0) {
            return Err(Error::Config("every loss weight is zero".into()));
        }
        if !(self.soft_temperature > 0.0 && self.soft_temperature.is_finite()) {
            return Err(Error::Config(format!(
                "soft_temperature must be > 0, got {}",
                self.soft_temperature
            )));
        }
        Ok(())
    }

    /// Whether a term reads the code logits or the critic (the refiner must return them).
    pub fn needs_logits(&self) -> bool {
        self.cross_entropy > 0.0
    }

    /// The loss bound to `codebook` (the soft-target table is built here, once).
    pub fn prepare<B: ArBackend>(&self, codebook: &Codebook<B>) -> Result<PreparedLoss<B>> {
        self.validate()?;
        let soft = if self.cross_entropy > 0.0 && self.soft_neighbours >= 2 {
            Some(soft_targets(
                codebook,
                self.soft_neighbours,
                self.soft_temperature,
            )?)
        } else {
            None
        };
        Ok(PreparedLoss {
            loss: *self,
            codebook: codebook.clone(),
            soft,
        })
    }

    /// The embedding terms (cosine and MSE) alone: `pred`, `target` `[b, n, D]`; `mask`
    /// `[b, n]` (`true`: the token counts). Returns the scalar loss `[1]`. A mask that keeps no
    /// token gives `0`.
    pub fn forward<B: ArBackend>(
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
        let mut per_token = cos.neg().add_scalar(1.0).mul_scalar(self.cosine); // [b, n, 1]
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
pub fn cosine_loss<B: ArBackend>(
    pred: Tensor<B, 3>,
    target: Tensor<B, 3>,
    mask: Option<Tensor<B, 2, Bool>>,
) -> Result<Tensor<B, 1>> {
    RefinementLoss::default().forward(pred, target, mask)
}

/// For every code `t`: its `k` nearest codes by cosine (itself first) `[K, k]` and the weights
/// `softmax(cos / temperature)` over them `[K, k]`.
fn soft_targets<B: ArBackend>(
    codebook: &Codebook<B>,
    k: usize,
    temperature: f64,
) -> Result<(Tensor<B, 2, Int>, Tensor<B, 2>)> {
    let size = codebook.size();
    if k > size {
        return Err(Error::Config(format!(
            "soft_neighbours {k} exceeds the codebook's {size} codes"
        )));
    }
    let c = codebook.codes().clone();
    let c = c.clone() / c.powi_scalar(2).sum_dim(1).sqrt().clamp_min(EPS);
    let (mut ids, mut weights) = (Vec::new(), Vec::new());
    let rows = 1024.min(size);
    for start in (0..size).step_by(rows) {
        let m = rows.min(size - start);
        let sim = c.clone().narrow(0, start, m).matmul(c.clone().transpose()); // [m, K]
        let (top, idx) = sim.topk_with_indices(k, 1);
        weights.push(activation::softmax(top.div_scalar(temperature), 1));
        ids.push(idx);
    }
    Ok((Tensor::cat(ids, 0), Tensor::cat(weights, 0)))
}

/// A [`RefinementLoss`] bound to a codebook (see [`RefinementLoss::prepare`]).
#[derive(Clone, Debug)]
pub struct PreparedLoss<B: ArBackend> {
    loss: RefinementLoss,
    codebook: Codebook<B>,
    soft: Option<(Tensor<B, 2, Int>, Tensor<B, 2>)>,
}

impl<B: ArBackend> PreparedLoss<B> {
    /// The weights.
    pub fn weights(&self) -> &RefinementLoss {
        &self.loss
    }

    /// The loss `[1]` of a refiner's `output` for the backbone's codes `own` and the true codes
    /// `truth` (both `[b, n]`). A term whose input the output lacks (logits, critic) is an
    /// [`Error::Config`].
    pub fn forward(
        &self,
        output: &RefineOutput<B>,
        own: &Tensor<B, 2, Int>,
        truth: &Tensor<B, 2, Int>,
    ) -> Result<Tensor<B, 1>> {
        let l = &self.loss;
        let [b, n] = truth.dims();
        expect_dims(
            "loss: backbone codes",
            &format!("[{b}, {n}]"),
            &own.dims(),
            &[Some(b), Some(n)],
        )?;
        let mut total: Option<Tensor<B, 1>> = None;
        let mut add = |t: Tensor<B, 1>| {
            total = Some(match total.take() {
                Some(x) => x + t,
                None => t,
            })
        };
        if l.cosine > 0.0 || l.mse_weight > 0.0 {
            let target = self.codebook.embed(truth.clone())?;
            add(l.forward(output.embeddings.clone(), target, None)?);
        }
        if l.cross_entropy > 0.0 {
            let logits = output.logits.clone().ok_or_else(|| {
                Error::Config(
                    "the loss has a cross-entropy term but the refiner returns no code logits".into(),
                )
            })?;
            let k = self.codebook.size();
            expect_dims(
                "loss: code logits",
                &format!("[{b}, {n}, {k}]"),
                &logits.dims(),
                &[Some(b), Some(n), Some(k)],
            )?;
            let logp = activation::log_softmax(logits, 2);
            let ce = match &self.soft {
                None => logp.gather(2, truth.clone().unsqueeze_dim::<3>(2)).neg().mean(),
                Some((ids, w)) => {
                    let m = ids.dims()[1];
                    let flat = truth.clone().reshape([b * n]);
                    let ids = ids.clone().select(0, flat.clone()).reshape([b, n, m]);
                    let w = w.clone().select(0, flat).reshape([b, n, m]);
                    (logp.gather(2, ids) * w).sum_dim(2).neg().mean()
                }
            };
            add(ce.mul_scalar(l.cross_entropy));
        }
        if l.critic > 0.0 {
            let z = output.wrong_logit.clone().ok_or_else(|| {
                Error::Config("the loss has a critic term but the refiner has no critic head".into())
            })?;
            expect_dims(
                "loss: critic logits",
                &format!("[{b}, {n}]"),
                &z.dims(),
                &[Some(b), Some(n)],
            )?;
            let y = own.clone().not_equal(truth.clone()).float();
            // BCE with logits, stable: max(z, 0) + ln(1 + e^{-|z|}) - y z
            let softplus = z.clone().clamp_min(0.0) + z.clone().abs().neg().exp().log1p();
            add((softplus - y * z).mean().mul_scalar(l.critic));
        }
        total.ok_or_else(|| Error::Config("every loss weight is zero".into()))
    }
}
