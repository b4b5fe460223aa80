//! Shared test helpers: a deterministic generator and the per-backend test macro.
#![allow(dead_code)]

use ar_refine::ArBackend;
use burn::tensor::{Tensor, TensorData};

pub use ar_refine::rng::SplitMix64;

/// `tests/fixtures` of this crate.
pub fn fixtures() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The fixture VQGAN (open-MUSE layout, 64 codes, 4×4 tokens per 64×64 image) on `device`.
pub fn fixture_vqgan<B: ArBackend>(device: &B::Device) -> ar_refine::tokenizer::Vqgan<B> {
    ar_refine::tokenizer::Vqgan::load(fixtures().join("vqgan/open_muse/pytorch_model.bin"), None, device)
        .unwrap()
}

/// `n` values uniform in [-1, 1).
pub fn uniform_vec(rng: &mut SplitMix64, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect()
}

pub fn tensor<B: ArBackend, const D: usize>(
    v: Vec<f32>,
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(v, shape), device)
}

pub fn to_vec<B: ArBackend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

/// Instantiates backend-generic test functions `fn name<B: ArBackend>(device: &B::Device)` for
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

use ar_refine::Metric;

/// f64 score whose argmin is the nearest code: squared distance, or 1 − cosine.
pub fn score_f64(q: &[f64], c: &[f64], metric: Metric) -> f64 {
    match metric {
        Metric::SquaredL2 => q.iter().zip(c).map(|(a, b)| (a - b).powi(2)).sum(),
        Metric::Cosine => {
            let dot: f64 = q.iter().zip(c).map(|(a, b)| a * b).sum();
            let nq = q.iter().map(|a| a * a).sum::<f64>().sqrt().max(1e-12);
            let nc = c.iter().map(|a| a * a).sum::<f64>().sqrt().max(1e-12);
            1.0 - dot / (nq * nc)
        }
    }
}

/// Checks ids `got` of every `step`-th query against a brute-force f64 search over `codes`
/// (`[K, D]` row-major), tie-aware: a different id passes only when the two candidates' f64
/// scores differ by less than what f32 rounding of `‖c‖² − 2q·c` (or of a unit-vector dot
/// product) can flip for that query. Returns the near-tie flips accepted.
pub fn check_ids(
    queries: &[f64],
    codes: &[f64],
    d: usize,
    metric: Metric,
    got: &[i64],
    step: usize,
    label: &str,
) -> usize {
    let k = codes.len() / d;
    let u = f32::EPSILON as f64;
    let max_c = codes
        .chunks(d)
        .map(|r| r.iter().map(|a| a * a).sum::<f64>().sqrt())
        .fold(0.0, f64::max);
    let mut flips = 0;
    for (i, q) in queries.chunks(d).enumerate().step_by(step.max(1)) {
        let scores: Vec<f64> = codes.chunks(d).map(|c| score_f64(q, c, metric)).collect();
        let best = (0..k).fold(0, |b, j| if scores[j] < scores[b] { j } else { b });
        let g = got[i];
        assert!(
            (0..k as i64).contains(&g),
            "{label}: query {i}: id {g} out of 0..{k}"
        );
        if g as usize != best {
            let nq = q.iter().map(|a| a * a).sum::<f64>().sqrt();
            let scale = match metric {
                Metric::SquaredL2 => (nq + max_c).powi(2),
                Metric::Cosine => 2.0,
            };
            let bound = 4.0 * (d as f64 + 2.0) * u * scale;
            let gap = scores[g as usize] - scores[best];
            assert!(
                gap <= bound,
                "{label}: query {i}: got {g}, brute force {best}, gap {gap:e} > bound {bound:e}"
            );
            flips += 1;
        }
    }
    flips
}

/// `f32` values widened to `f64`.
pub fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|x| *x as f64).collect()
}

/// `target/<profile>/examples/<name>` beside the running test, or a panic that says how to
/// build it (`cargo test` builds the examples first).
pub fn example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .unwrap()
        .join("examples");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run this test through `cargo test` (which builds the examples)",
        path.display()
    );
    path
}

#[path = "../../examples/common/data_dir.rs"]
mod data_dir;
#[allow(unused_imports)]
pub use data_dir::shared_data_dir;

/// FNV-1a, 64 bit: the checksum the crate's checkpoint and cache files record for each file
/// (`state.json`'s `checksums`), written out here as the file format's specification.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
