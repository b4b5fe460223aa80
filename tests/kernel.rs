//! The fused CubeCL nearest-code kernel against a brute-force f64 search (tie-aware), on wgpu
//! (lavapipe in CI) and on CUDA when a GPU is present.
#![cfg(any(feature = "wgpu", feature = "cuda"))]

mod common;

use ar_refine::decode::cube::{NearestCodeBackend, Tiling};
use ar_refine::{Codebook, Metric};
use burn::tensor::{Tensor, TensorData};
use common::{uniform_vec, SplitMix64};

fn run_shapes<B: NearestCodeBackend>(device: &B::Device, shapes: &[(usize, usize, usize)]) {
    let mut rng = SplitMix64::new(12);
    let mut flips = 0;
    for &(n, k, d) in shapes {
        for metric in [Metric::SquaredL2, Metric::Cosine] {
            let q = uniform_vec(&mut rng, n * d);
            let c = uniform_vec(&mut rng, k * d);
            let qt = Tensor::<B, 2>::from_data(TensorData::new(q.clone(), [n, d]), device);
            let ct = Tensor::<B, 2>::from_data(TensorData::new(c.clone(), [k, d]), device);
            // The values as the backend holds them (f16 backends round them).
            let q64: Vec<f64> = qt.to_data().iter::<f32>().map(f64::from).collect();
            let c64: Vec<f64> = ct.to_data().iter::<f32>().map(f64::from).collect();
            let book = Codebook::new(ct, metric).unwrap();
            // The default tiling and a small one (one warp, partial tiles everywhere).
            let tilings = [
                None,
                Some(Tiling {
                    tq: 4,
                    tk: 8,
                    rq: 4,
                    rk: 4,
                    dt: 4,
                }),
            ];
            for tiling in tilings {
                let ids = book
                    .nearest_kernel(qt.clone().reshape([1, n, d]), tiling)
                    .unwrap();
                let got: Vec<i64> = ids.into_data().iter::<i64>().collect();
                let label = format!("N={n} K={k} D={d} {metric:?} {tiling:?}");
                // Brute force on about 256 evenly spaced queries.
                flips += common::check_ids(&q64, &c64, d, metric, &got, n.div_ceil(256), &label);
            }
        }
    }
    println!("near-tie flips accepted: {flips}");
}

/// Shapes from every family the crate targets (N, K, D): LVM (D = 64), LlamaGen (8),
/// Emu3 (4), Chameleon (256), plus degenerate sizes. Brute force checks a sample of rows.
const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (7, 3, 3),
    (1, 16384, 256),
    (7, 8192, 64),
    (4097, 8192, 4),
    (4097, 3, 1),
    (65536, 3, 8),
    (65536, 1, 1),
    (33, 97, 256),
];

fn planted_ties<B: NearestCodeBackend>(device: &B::Device) {
    // Every row duplicated: rows 2j and 2j+1 are equal; queries sit on the odd copies.
    let mut rng = SplitMix64::new(13);
    let (k, d) = (64, 64);
    let base = uniform_vec(&mut rng, k / 2 * d);
    let c: Vec<f32> = base
        .chunks(d)
        .flat_map(|r| r.iter().chain(r.iter()).copied())
        .collect();
    let q: Vec<f32> = (0..k / 2)
        .flat_map(|j| c[(2 * j + 1) * d..(2 * j + 2) * d].to_vec())
        .collect();
    for metric in [Metric::SquaredL2, Metric::Cosine] {
        let book = Codebook::new(
            Tensor::<B, 2>::from_data(TensorData::new(c.clone(), [k, d]), device),
            metric,
        )
        .unwrap();
        let qt = Tensor::<B, 3>::from_data(TensorData::new(q.clone(), [1, k / 2, d]), device);
        let got: Vec<i64> = book
            .nearest_kernel(qt, None)
            .unwrap()
            .into_data()
            .iter::<i64>()
            .collect();
        let want: Vec<i64> = (0..k as i64 / 2).map(|j| 2 * j).collect();
        assert_eq!(got, want, "{metric:?}");
    }
}

#[cfg(feature = "wgpu")]
mod wgpu {
    use burn::backend::Wgpu;
    type WgpuF16 = burn_cubecl::CubeBackend<cubecl::wgpu::WgpuRuntime, half::f16, i32, u32>;

    #[test]
    fn agrees_with_brute_force() {
        super::run_shapes::<Wgpu>(&Default::default(), super::SHAPES);
    }

    #[test]
    fn planted_ties_give_lowest_index() {
        super::planted_ties::<Wgpu>(&Default::default());
    }

    #[test]
    fn autodiff_routes_to_the_kernel() {
        super::run_shapes::<burn::backend::Autodiff<Wgpu>>(&Default::default(), &[(100, 50, 8)]);
    }

    #[test]
    fn invalid_tiling_is_an_error() {
        let device = Default::default();
        let book = ar_refine::Codebook::new(
            burn::tensor::Tensor::<Wgpu, 2>::zeros([4, 2], &device),
            ar_refine::Metric::SquaredL2,
        )
        .unwrap();
        let q = burn::tensor::Tensor::<Wgpu, 3>::zeros([1, 3, 2], &device);
        let bad = ar_refine::decode::cube::Tiling {
            tq: 4,
            tk: 4,
            rq: 3,
            rk: 4,
            dt: 2,
        };
        let err = book.nearest_kernel(q, Some(bad)).unwrap_err();
        assert!(matches!(err, ar_refine::Error::Config(_)), "{err}");
    }

    #[test]
    fn f16_input_accumulates_in_f32() {
        super::run_shapes::<WgpuF16>(&Default::default(), &[(257, 300, 64), (7, 8192, 8)]);
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use burn::backend::Cuda;

    fn gpu() -> bool {
        let present = std::path::Path::new("/dev/nvidiactl").exists();
        if !present {
            println!("skipped: no NVIDIA device on this machine");
        }
        present
    }

    #[test]
    fn agrees_with_brute_force() {
        if gpu() {
            super::run_shapes::<Cuda>(&Default::default(), super::SHAPES);
        }
    }

    #[test]
    fn planted_ties_give_lowest_index() {
        if gpu() {
            super::planted_ties::<Cuda>(&Default::default());
        }
    }

    #[test]
    fn bf16_and_f16_input() {
        if gpu() {
            super::run_shapes::<Cuda<half::f16>>(&Default::default(), &[(257, 300, 64)]);
            super::run_shapes::<Cuda<half::bf16>>(&Default::default(), &[(257, 300, 64)]);
        }
    }
}
