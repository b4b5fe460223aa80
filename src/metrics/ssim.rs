//! Structural similarity (Wang, Bovik, Sheikh & Simoncelli, IEEE TIP 2004).

use crate::backend::ArBackend;
use burn::tensor::Tensor;

use crate::checks::read_f32;
use crate::error::{Error, Result};

const SIGMA: f64 = 1.5;
const RADIUS: usize = 5; // 11×11 window: scipy's gaussian_filter with truncate = 3.5 at σ = 1.5

/// Mean SSIM of `a` and `b` `[b, c, h, w]` (values in `[0, 1]`, data range 1): per image and
/// channel with an 11×11 Gaussian window (σ = 1.5), K1 = 0.01, K2 = 0.03, population
/// covariances, averaged over the positions where the window fits, then over channels and
/// images. These are the settings of the paper and of scikit-image's
/// `structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
/// data_range=1)`, which the tests match. Images need `h, w >= 11`.
///
/// ```
/// use ar_refine::eval::ssim;
/// use burn::backend::NdArray;
/// use burn::tensor::{Distribution, Tensor};
/// let a = Tensor::<NdArray, 4>::random([1, 3, 16, 16], Distribution::Uniform(0.0, 1.0), &Default::default());
/// assert!((ssim(a.clone(), a).unwrap() - 1.0).abs() < 1e-6);
/// ```
pub fn ssim<B: ArBackend>(a: Tensor<B, 4>, b: Tensor<B, 4>) -> Result<f64> {
    let per = ssim_per_image(a, b)?;
    Ok(per.iter().sum::<f64>() / per.len().max(1) as f64)
}

/// [`ssim`] of every image of the batch `[b]` (mean over its channels).
pub fn ssim_per_image<B: ArBackend>(a: Tensor<B, 4>, b: Tensor<B, 4>) -> Result<Vec<f64>> {
    if a.dims() != b.dims() {
        return Err(Error::shape(
            "ssim second image",
            format!("{:?}", a.dims()),
            &b.dims(),
        ));
    }
    let [n, c, h, w] = a.dims();
    if h < 2 * RADIUS + 1 || w < 2 * RADIUS + 1 {
        return Err(Error::shape("ssim images", "[b, c, h >= 11, w >= 11]", &a.dims()));
    }
    let (x, y) = (read_f32(a)?, read_f32(b)?);
    let plane = h * w;
    let mut out = vec![0.0; n];
    for p in 0..n * c {
        out[p / c] += ssim_plane(
            &x[p * plane..(p + 1) * plane],
            &y[p * plane..(p + 1) * plane],
            h,
            w,
        ) / c as f64;
    }
    Ok(out)
}

fn ssim_plane(x: &[f32], y: &[f32], h: usize, w: usize) -> f64 {
    let k: Vec<f64> = {
        let raw: Vec<f64> = (0..=2 * RADIUS)
            .map(|i| {
                let d = i as f64 - RADIUS as f64;
                (-d * d / (2.0 * SIGMA * SIGMA)).exp()
            })
            .collect();
        let s: f64 = raw.iter().sum();
        raw.iter().map(|v| v / s).collect()
    };
    let (c1, c2) = (0.01f64.powi(2), 0.03f64.powi(2));
    // Separable "valid" filtering of the five moment images.
    let (oh, ow) = (h - 2 * RADIUS, w - 2 * RADIUS);
    let filt = |f: &dyn Fn(usize) -> f64| -> Vec<f64> {
        let mut rows = vec![0.0; h * ow];
        for r in 0..h {
            for o in 0..ow {
                rows[r * ow + o] = (0..=2 * RADIUS).map(|t| k[t] * f(r * w + o + t)).sum();
            }
        }
        let mut out = vec![0.0; oh * ow];
        for o in 0..oh {
            for q in 0..ow {
                out[o * ow + q] = (0..=2 * RADIUS).map(|t| k[t] * rows[(o + t) * ow + q]).sum();
            }
        }
        out
    };
    let mx = filt(&|i| x[i] as f64);
    let my = filt(&|i| y[i] as f64);
    let mxx = filt(&|i| (x[i] as f64).powi(2));
    let myy = filt(&|i| (y[i] as f64).powi(2));
    let mxy = filt(&|i| x[i] as f64 * y[i] as f64);
    let mut s = 0.0;
    for i in 0..oh * ow {
        let (vx, vy, cxy) = (
            mxx[i] - mx[i] * mx[i],
            myy[i] - my[i] * my[i],
            mxy[i] - mx[i] * my[i],
        );
        s += ((2.0 * mx[i] * my[i] + c1) * (2.0 * cxy + c2))
            / ((mx[i] * mx[i] + my[i] * my[i] + c1) * (vx + vy + c2));
    }
    s / (oh * ow) as f64
}
