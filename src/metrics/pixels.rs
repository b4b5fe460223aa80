//! Image and token metrics.

use crate::backend::ArBackend;
use burn::tensor::{Int, Tensor};

use crate::checks::{read_f32, read_i64};
use crate::error::{Error, Result};

/// Mean over images of the PSNR (dB, peak 1.0) between `a` and `b`, both `[b, c, h, w]` in
/// `[0, 1]`. Identical images count as 100 dB.
///
/// ```
/// use ar_refine::eval::psnr;
/// use burn::backend::NdArray;
/// use burn::tensor::Tensor;
/// let d = Default::default();
/// let a = Tensor::<NdArray, 4>::zeros([1, 3, 4, 4], &d);
/// let b = a.clone().add_scalar(0.1);
/// assert!((psnr(a, b).unwrap() - 20.0).abs() < 1e-4);
/// ```
pub fn psnr<B: ArBackend>(a: Tensor<B, 4>, b: Tensor<B, 4>) -> Result<f64> {
    let per = psnr_per_image(a, b)?;
    Ok(per.iter().sum::<f64>() / per.len().max(1) as f64)
}

/// [`psnr`] of every image of the batch `[b]`.
pub fn psnr_per_image<B: ArBackend>(a: Tensor<B, 4>, b: Tensor<B, 4>) -> Result<Vec<f64>> {
    if a.dims() != b.dims() {
        return Err(Error::shape(
            "psnr second image",
            format!("{:?}", a.dims()),
            &b.dims(),
        ));
    }
    let n = a.dims()[0];
    let mse = read_f32((a - b).powi_scalar(2).reshape([n as i32, -1]).mean_dim(1))?;
    Ok(mse
        .iter()
        .map(|m| {
            if *m <= 1e-10 {
                100.0
            } else {
                -10.0 * (*m as f64).log10()
            }
        })
        .collect())
}

/// Fraction of equal ids between `a` and `b` (same shape).
pub fn token_accuracy<B: ArBackend>(a: Tensor<B, 2, Int>, b: Tensor<B, 2, Int>) -> Result<f64> {
    if a.dims() != b.dims() {
        return Err(Error::shape(
            "token_accuracy second ids",
            format!("{:?}", a.dims()),
            &b.dims(),
        ));
    }
    let (x, y) = (read_i64(a)?, read_i64(b)?);
    Ok(x.iter().zip(&y).filter(|(p, q)| p == q).count() as f64 / x.len().max(1) as f64)
}
