//! Shared test helpers: a deterministic generator and the per-backend test macro.
#![allow(dead_code)]

use burn::tensor::{backend::Backend, Tensor, TensorData};

pub use ar_refine::rng::SplitMix64;

/// `n` values uniform in [-1, 1).
pub fn uniform_vec(rng: &mut SplitMix64, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect()
}

pub fn tensor<B: Backend, const D: usize>(
    v: Vec<f32>,
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(v, shape), device)
}

pub fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

/// Instantiates backend-generic test functions `fn name<B: Backend>(device: &B::Device)` for
/// every enabled backend: NdArray always, Wgpu with the `wgpu` feature.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod ndarray {
            $( #[test] fn $name() { super::$name::<burn::backend::NdArray>(&Default::default()); } )*
        }
        #[cfg(feature = "wgpu")]
        mod wgpu {
            $( #[test] fn $name() { super::$name::<burn::backend::Wgpu>(&Default::default()); } )*
        }
    };
}

/// Like [`backend_tests`] for tests that need an autodiff backend.
#[macro_export]
macro_rules! autodiff_tests {
    ($($name:ident),* $(,)?) => {
        mod ndarray_autodiff {
            $( #[test] fn $name() { super::$name::<burn::backend::Autodiff<burn::backend::NdArray>>(&Default::default()); } )*
        }
        #[cfg(feature = "wgpu")]
        mod wgpu_autodiff {
            $( #[test] fn $name() { super::$name::<burn::backend::Autodiff<burn::backend::Wgpu>>(&Default::default()); } )*
        }
    };
}
