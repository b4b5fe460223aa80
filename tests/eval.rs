//! Image metrics against published reference values.

use ar_refine::eval::{psnr, ssim};
use burn::backend::NdArray;
use burn::tensor::{Tensor, TensorData};

/// The same integer formulas as the Python that produced the reference value below.
fn pair() -> (Tensor<NdArray, 4>, Tensor<NdArray, 4>) {
    let (c, h, w) = (3usize, 24usize, 20usize);
    let mut a = Vec::new();
    let mut b = Vec::new();
    for ch in 0..c {
        for y in 0..h {
            for x in 0..w {
                let v = ((x * 7 + y * 13 + ch * 5) % 32) as f64 / 31.0;
                let noise = ((x * 3 + y * 5 + ch) % 7) as f64 - 3.0;
                a.push(v as f32);
                b.push((v + noise / 20.0).clamp(0.0, 1.0) as f32);
            }
        }
    }
    let d = Default::default();
    (
        Tensor::from_data(TensorData::new(a, [1, c, h, w]), &d),
        Tensor::from_data(TensorData::new(b, [1, c, h, w]), &d),
    )
}

#[test]
fn ssim_matches_scikit_image() {
    // scikit-image 0.26.0: structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
    // use_sample_covariance=False, data_range=1.0, channel_axis=0) on these arrays
    // (c, y, x = np.mgrid[0:3, 0:24, 0:20]; a = ((x*7 + y*13 + c*5) % 32) / 31;
    //  b = clip(a + (((x*3 + y*5 + c) % 7) - 3) / 20, 0, 1)) = 0.9501342245185259.
    let (a, b) = pair();
    let got = ssim(a.clone(), b).unwrap();
    assert!((got - 0.950_134_224_518_525_9).abs() < 1e-5, "{got}");
    assert!((ssim(a.clone(), a.clone()).unwrap() - 1.0).abs() < 1e-9);
    // Too small for the 11×11 window, or mismatched shapes: errors.
    let small = Tensor::<NdArray, 4>::zeros([1, 3, 8, 8], &Default::default());
    assert!(ssim(small.clone(), small).is_err());
    assert!(ssim(a.clone(), a.narrow(2, 0, 12)).is_err());
}

#[test]
fn psnr_of_a_known_error() {
    let (a, _) = pair();
    // A uniform error of 0.05 → MSE 0.0025 → 26.0206 dB.
    let got = psnr(a.clone(), a.add_scalar(0.05)).unwrap();
    assert!((got - 26.0206).abs() < 1e-3, "{got}");
}
