//! The fused CubeCL nearest-code kernels (exact f32 and matrix-unit) against a brute-force f64
//! search (tie-aware), on wgpu (lavapipe in CI) and on CUDA when a GPU is present; on CUDA also
//! the decoder's few-row projection (`linear_t`, matrix units for f16/bf16) against f64.
#![cfg(any(feature = "wgpu", feature = "cuda"))]

mod common;

use ar_refine::decode::cube::{MmaTiling, NearestCodeBackend, Tiling};
use ar_refine::{Codebook, Metric};
use burn::tensor::{Int, Tensor, TensorData};
use common::{uniform_vec, SplitMix64};

/// Which kernel a check runs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kernel {
    Exact,
    MatrixUnits,
    /// `Codebook::nearest`: the kernel `KernelPrecision::Auto` picks.
    Default,
}

impl Kernel {
    /// Runs the kernel at its default tiling and a small one (partial tiles everywhere).
    fn search<B: NearestCodeBackend>(self, book: &Codebook<B>, q: Tensor<B, 3>) -> Vec<Tensor<B, 2, Int>> {
        match self {
            Kernel::Exact => [
                None,
                Some(Tiling {
                    tq: 4,
                    tk: 8,
                    rq: 4,
                    rk: 4,
                    dt: 4,
                }),
            ]
            .into_iter()
            .map(|t| book.nearest_kernel(q.clone(), t).unwrap())
            .collect(),
            Kernel::MatrixUnits => [
                None,
                Some(MmaTiling {
                    wq: 1,
                    wk: 1,
                    mq: 1,
                    nk: 1,
                    h: 1,
                }),
                Some(MmaTiling {
                    wq: 2,
                    wk: 2,
                    mq: 1,
                    nk: 3,
                    h: 2,
                }),
            ]
            .into_iter()
            .map(|t| book.nearest_matrix_units(q.clone(), t).unwrap())
            .collect(),
            Kernel::Default => vec![book.nearest(q).unwrap()],
        }
    }

    /// Whether the kernel runs on `device`; says so when it does not.
    fn available<B: NearestCodeBackend>(self, device: &B::Device) -> bool {
        let ok = self != Kernel::MatrixUnits || B::supports_matrix_units(device);
        if !ok {
            println!(
                "skipped: this device has no TF32 matrix units (mma m16n8k8), the matrix-unit \
                 kernel cannot run here"
            );
        }
        ok
    }
}

fn run_shapes<B: NearestCodeBackend>(device: &B::Device, shapes: &[(usize, usize, usize)]) {
    run_shapes_with::<B>(Kernel::Exact, device, shapes);
}

fn run_shapes_with<B: NearestCodeBackend>(
    kernel: Kernel,
    device: &B::Device,
    shapes: &[(usize, usize, usize)],
) {
    if !kernel.available::<B>(device) {
        return;
    }
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
            for (x, ids) in kernel
                .search(&book, qt.clone().reshape([1, n, d]))
                .into_iter()
                .enumerate()
            {
                let got: Vec<i64> = ids.into_data().iter::<i64>().collect();
                let label = format!("{kernel:?} N={n} K={k} D={d} {metric:?} tiling #{x}");
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

/// Clustered codes: 16 centres, each with 32 codes within 1e-3 of it, and queries near the
/// centres, so most queries have many near-equal candidates (the matrix-unit kernel must fall
/// back to its exact scan for them).
fn clustered<B: NearestCodeBackend>(kernel: Kernel, device: &B::Device) {
    if !kernel.available::<B>(device) {
        return;
    }
    let mut rng = SplitMix64::new(14);
    let (n, k, d) = (1000, 512, 64);
    let centres = uniform_vec(&mut rng, 16 * d);
    let near = |rng: &mut SplitMix64, j: usize, eps: f32| -> Vec<f32> {
        (0..d)
            .map(|x| centres[j * d + x] + eps * rng.uniform(-1.0, 1.0))
            .collect()
    };
    let c: Vec<f32> = (0..k).flat_map(|i| near(&mut rng, i % 16, 1e-3)).collect();
    let q: Vec<f32> = (0..n).flat_map(|i| near(&mut rng, i % 16, 1e-2)).collect();
    let mut flips = 0;
    for metric in [Metric::SquaredL2, Metric::Cosine] {
        let ct = Tensor::<B, 2>::from_data(TensorData::new(c.clone(), [k, d]), device);
        let qt = Tensor::<B, 3>::from_data(TensorData::new(q.clone(), [1, n, d]), device);
        let (q64, c64) = (common::widen(&q), common::widen(&c));
        let book = Codebook::new(ct, metric).unwrap();
        for (x, ids) in kernel.search(&book, qt).into_iter().enumerate() {
            let got: Vec<i64> = ids.into_data().iter::<i64>().collect();
            let label = format!("clustered {kernel:?} {metric:?} tiling #{x}");
            flips += common::check_ids(&q64, &c64, d, metric, &got, 1, &label);
        }
    }
    println!("clustered: near-tie flips accepted: {flips}");
}

fn planted_ties<B: NearestCodeBackend>(device: &B::Device) {
    planted_ties_with::<B>(Kernel::Exact, device);
}

fn planted_ties_with<B: NearestCodeBackend>(kernel: Kernel, device: &B::Device) {
    if !kernel.available::<B>(device) {
        return;
    }
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
        let want: Vec<i64> = (0..k as i64 / 2).map(|j| 2 * j).collect();
        for ids in kernel.search(&book, qt) {
            let got: Vec<i64> = ids.into_data().iter::<i64>().collect();
            assert_eq!(got, want, "{kernel:?} {metric:?}");
        }
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

    #[test]
    fn clustered_codes() {
        super::clustered::<Wgpu>(super::Kernel::Exact, &Default::default());
    }

    /// lavapipe has no matrix units: the matrix-unit kernel says so (and is skipped), asking
    /// for it explicitly is a typed error, and `nearest` (matrix units by default) falls back
    /// to the exact kernel.
    #[test]
    fn matrix_units_where_available() {
        let device = Default::default();
        super::run_shapes_with::<Wgpu>(super::Kernel::MatrixUnits, &device, super::SHAPES);
        super::planted_ties_with::<Wgpu>(super::Kernel::MatrixUnits, &device);
        super::clustered::<Wgpu>(super::Kernel::MatrixUnits, &device);
        if !<Wgpu as ar_refine::decode::cube::NearestCodeBackend>::supports_matrix_units(&device) {
            let codes = burn::tensor::Tensor::<Wgpu, 2>::from_floats([[0.0, 1.0], [1.0, 0.0]], &device);
            let book = ar_refine::Codebook::new(codes, ar_refine::Metric::SquaredL2).unwrap();
            let q = burn::tensor::Tensor::<Wgpu, 3>::from_floats([[[0.9, 0.1]]], &device);
            let err = book.nearest_matrix_units(q.clone(), None).unwrap_err();
            assert!(matches!(err, ar_refine::Error::Config(_)), "{err}");
            let ids: Vec<i64> = book.nearest(q).unwrap().into_data().iter::<i64>().collect();
            assert_eq!(ids, vec![1]);
        }
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

    #[test]
    fn clustered_codes() {
        if gpu() {
            super::clustered::<Cuda>(super::Kernel::Exact, &Default::default());
        }
    }

    #[test]
    fn matrix_units_agree_with_brute_force() {
        if gpu() {
            let shapes = [super::SHAPES, &[(65536, 8192, 64), (4096, 16384, 8)]].concat();
            super::run_shapes_with::<Cuda>(super::Kernel::MatrixUnits, &Default::default(), &shapes);
        }
    }

    #[test]
    fn default_precision_agrees_with_brute_force() {
        if gpu() {
            super::run_shapes_with::<Cuda>(super::Kernel::Default, &Default::default(), super::SHAPES);
        }
    }

    #[test]
    fn matrix_units_planted_ties_and_clusters() {
        if gpu() {
            super::planted_ties_with::<Cuda>(super::Kernel::MatrixUnits, &Default::default());
            super::clustered::<Cuda>(super::Kernel::MatrixUnits, &Default::default());
        }
    }

    #[test]
    fn matrix_units_bf16_and_f16_input() {
        if gpu() {
            let device = Default::default();
            super::run_shapes_with::<Cuda<half::f16>>(super::Kernel::MatrixUnits, &device, &[(257, 300, 64)]);
            super::run_shapes_with::<Cuda<half::bf16>>(
                super::Kernel::MatrixUnits,
                &device,
                &[(257, 300, 64)],
            );
        }
    }

    /// `linear_t` at decode shapes (`m ≤ 16` rows: the matrix-unit kernel for `k % 32 == 0`,
    /// the CUDA-core kernel otherwise) against an f64 product of the same rounded inputs, in
    /// f16 and bf16, with partial output tiles (`n` not a multiple of 8 or 16) and rows 1–16.
    #[test]
    fn few_row_projection_matches_f64() {
        if gpu() {
            let device = Default::default();
            few_rows::<Cuda<half::f16>>(&device, burn::tensor::DType::F16, 4e-3);
            few_rows::<Cuda<half::bf16>>(&device, burn::tensor::DType::BF16, 2e-2);
        }
    }

    /// The training kernels under `Autodiff<Cuda>` (f32) against Burn's differentiated tensor
    /// operations at the small backbone's widths: outputs and input gradients of causal attention
    /// (default query chunks: 4 for 1,535 queries), RMSNorm, `silu(a) · u`, RoPE, and the
    /// projection with its weight gradient split by rows.
    #[test]
    fn training_kernels_match_tensor_ops() {
        use ar_refine::ArBackend;
        use burn::tensor::activation::silu;
        use burn::tensor::module::attention;
        use burn::tensor::ops::AttentionModuleOptions;
        use burn::tensor::{Distribution, Tensor};
        type A = burn::backend::Autodiff<Cuda>;
        if !gpu() {
            return;
        }
        let device = Default::default();
        let normal = Distribution::Normal(0.0, 1.0);
        // `f(inputs)` by the kernels and by tensor operations: output and every input gradient
        fn compare<const D: usize, const O: usize>(
            what: &str,
            inputs: &[Tensor<A, D>],
            ours: impl Fn(&[Tensor<A, D>]) -> Tensor<A, O>,
            reference: impl Fn(&[Tensor<A, D>]) -> Tensor<A, O>,
        ) {
            let run = |f: &dyn Fn(&[Tensor<A, D>]) -> Tensor<A, O>| {
                let xs: Vec<_> = inputs.iter().map(|t| t.clone().detach().require_grad()).collect();
                let y = f(&xs);
                let w = Tensor::<A, O>::random(y.shape(), Distribution::Normal(0.0, 1.0), &y.device());
                let w = w.detach();
                let grads = (y.clone() * w).sum().backward();
                let mut out = vec![y.into_data().to_vec::<f32>().unwrap()];
                out.extend(
                    xs.iter()
                        .map(|x| x.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap()),
                );
                out
            };
            let seed = |f: &dyn Fn(&[Tensor<A, D>]) -> Tensor<A, O>| {
                <Cuda as burn::tensor::backend::Backend>::seed(&Default::default(), 5);
                run(f)
            };
            for (i, (a, e)) in seed(&ours).iter().zip(&seed(&reference)).enumerate() {
                let scale = e.iter().fold(0f32, |m, v| m.max(v.abs()));
                let diff = a.iter().zip(e).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
                assert!(
                    diff <= 2e-4 * scale,
                    "{what}, output/gradient {i}: {diff} of {scale}"
                );
            }
        }
        let qkv: Vec<_> = (0..3)
            .map(|_| Tensor::<A, 4>::random([2, 4, 1535, 64], normal, &device))
            .collect();
        compare(
            "causal attention",
            &qkv,
            |t| A::causal_attention(t[0].clone(), t[1].clone(), t[2].clone(), None).unwrap(),
            |t| {
                let causal = AttentionModuleOptions {
                    is_causal: true,
                    ..Default::default()
                };
                attention(t[0].clone(), t[1].clone(), t[2].clone(), None, None, causal)
            },
        );
        let x = vec![Tensor::<A, 2>::random([3000, 256], normal, &device)];
        let gain = Tensor::<A, 1>::random([256], Distribution::Uniform(0.5, 1.5), &device).require_grad();
        compare(
            "RMSNorm",
            &x,
            |t| A::rms_norm(t[0].clone(), gain.clone(), 1e-6).unwrap(),
            |t| {
                let rms = t[0].clone().powi_scalar(2).mean_dim(1).add_scalar(1e-6).sqrt();
                t[0].clone().div(rms) * gain.clone().unsqueeze::<2>()
            },
        );
        let au: Vec<_> = (0..2)
            .map(|_| Tensor::<A, 2>::random([3000, 704], normal, &device))
            .collect();
        compare(
            "silu(a) · u",
            &au,
            |t| A::silu_mul(t[0].clone(), t[1].clone()).unwrap(),
            |t| silu(t[0].clone()) * t[1].clone(),
        );
        let (n, heads, hd) = (300, 4, 64);
        let x = vec![Tensor::<A, 2>::random([2 * n, heads * hd], normal, &device)];
        let [cos, sin] =
            [0; 2].map(|_| Tensor::<A, 2>::random([n, hd], Distribution::Uniform(-1.0, 1.0), &device));
        compare(
            "RoPE",
            &x,
            |t| A::rope(t[0].clone(), cos.clone(), sin.clone()).unwrap(),
            |t| {
                let x = t[0].clone().reshape([2, n, heads, hd]).swap_dims(1, 2);
                let half = hd / 2;
                let rot = Tensor::cat(
                    vec![
                        x.clone().narrow(3, half, half).neg(),
                        x.clone().narrow(3, 0, half),
                    ],
                    3,
                );
                let [c, s] = [&cos, &sin].map(|t| t.clone().reshape([1, 1, n, hd]));
                (x * c + rot * s).reshape([2 * heads * n, hd])
            },
        );
        let xw = vec![
            Tensor::<A, 2>::random([4096, 256], normal, &device),
            Tensor::<A, 2>::random([256, 256], normal, &device),
        ];
        assert!(A::weight_grad_chunks(4096, 256, 256) == 1 && <Cuda>::weight_grad_chunks(4096, 256, 256) > 1);
        compare(
            "projection, weight gradient split by rows",
            &xw,
            |t| A::linear_t_split(t[0].clone(), t[1].clone()).unwrap(),
            |t| t[0].clone().matmul(t[1].clone().transpose()),
        );
    }

    fn few_rows<B: ar_refine::ArBackend>(device: &B::Device, dtype: burn::tensor::DType, tol: f64) {
        use burn::tensor::{Tensor, TensorData};
        let mut rng = super::SplitMix64::new(11);
        for (m, k, n) in [
            (1, 64, 8),
            (5, 96, 13),
            (8, 4096, 40),
            (9, 128, 300),
            (16, 11008, 24),
            (16, 4096, 4096),
            (3, 40, 17),
        ] {
            let make = |rng: &mut super::SplitMix64, rows: usize| {
                let v = super::uniform_vec(rng, rows * k);
                Tensor::<B, 2>::from_data(TensorData::new(v, [rows, k]), device).cast(dtype)
            };
            let (x, w) = (make(&mut rng, m), make(&mut rng, n));
            let host = |t: Tensor<B, 2>| -> Vec<f64> {
                t.cast(burn::tensor::DType::F32)
                    .into_data()
                    .to_vec::<f32>()
                    .unwrap()
                    .into_iter()
                    .map(f64::from)
                    .collect()
            };
            let (xs, ws) = (host(x.clone()), host(w.clone()));
            let y = host(ar_refine::backbone::linear_t(x, w));
            assert_eq!(y.len(), m * n, "{m}×{k}·{n}");
            let mut want = vec![0.0f64; m * n];
            for i in 0..m {
                for o in 0..n {
                    want[i * n + o] = (0..k).map(|j| xs[i * k + j] * ws[o * k + j]).sum();
                }
            }
            let scale = want.iter().fold(0.0f64, |a, v| a.max(v.abs())).max(1e-9);
            let worst = y.iter().zip(&want).fold(0.0f64, |a, (g, e)| a.max((g - e).abs()));
            assert!(
                worst <= tol * scale,
                "{dtype:?} {m}×{k}·{n}ᵀ: largest difference {worst:.3e} of largest value {scale:.3e}"
            );
        }
    }
}
