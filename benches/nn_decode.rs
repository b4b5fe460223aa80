//! Nearest-code decoding throughput (queries/s): the tensor-op reference vs the fused CubeCL
//! kernels (exact f32, and the TF32 matrix-unit kernel where the device has matrix units), on
//! the CPU backend (ndarray: reference only) and, when built with the features, on wgpu and
//! CUDA.
//!
//! ```text
//! cargo bench --bench nn_decode --features wgpu            # small shape
//! NN_DECODE_FULL=1 cargo bench --bench nn_decode --features wgpu,cuda   # + LVM, LlamaGen, Chameleon
//! ```
//!
//! Shapes (N × K × D): small 4096 × 8192 × 64; with `NN_DECODE_FULL=1` also LVM
//! 65536 × 8192 × 64, LlamaGen 65536 × 16384 × 8 and Chameleon 65536 × 8192 × 256 (minutes per
//! sample on a CPU or lavapipe). The H200 table in `BENCHMARKS.md` comes from
//! `benches/gpu/nn_decode.rs` and `scripts/bench/nn_decode_bench.py`, which also score accuracy.

use ar_refine::rng::SplitMix64;
use ar_refine::ArBackend;
use ar_refine::{Codebook, Metric};
use burn::tensor::{Tensor, TensorData};
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};

fn shapes() -> Vec<(&'static str, usize, usize, usize)> {
    let mut s = vec![("small", 4096, 8192, 64)];
    if std::env::var_os("NN_DECODE_FULL").is_some() {
        s.extend([
            ("lvm", 65536, 8192, 64),
            ("llamagen", 65536, 16384, 8),
            ("chameleon", 65536, 8192, 256),
        ]);
    }
    s
}

fn data<B: ArBackend>(n: usize, k: usize, d: usize, device: &B::Device) -> (Tensor<B, 3>, Codebook<B>) {
    let mut rng = SplitMix64::new(2026);
    let q: Vec<f32> = (0..n * d).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let c: Vec<f32> = (0..k * d).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let q = Tensor::from_data(TensorData::new(q, [1, n, d]), device);
    let book = Codebook::new(
        Tensor::from_data(TensorData::new(c, [k, d]), device),
        Metric::SquaredL2,
    )
    .unwrap();
    (q, book)
}

/// Benchmarks `run` (one search of every query) at every shape, as `label/method/shape`.
fn shapes_with<B: ArBackend>(
    g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    label: &str,
    method: &str,
    device: &B::Device,
    run: impl Fn(&Codebook<B>, Tensor<B, 3>) -> TensorData,
) {
    for (name, n, k, d) in shapes() {
        let (q, book) = data::<B>(n, k, d, device);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("{label}/{method}/{name}"), |b| {
            b.iter(|| run(&book, q.clone()))
        });
    }
}

fn reference<B: ArBackend>(
    g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    label: &str,
    device: &B::Device,
) {
    shapes_with::<B>(g, label, "reference", device, |book, q| {
        book.nearest_reference(q).unwrap().into_data()
    });
}

#[cfg(feature = "cubecl")]
fn kernel<B: ar_refine::decode::cube::NearestCodeBackend>(
    g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    label: &str,
    device: &B::Device,
) {
    shapes_with::<B>(g, label, "kernel", device, |book, q| {
        book.nearest_kernel(q, None).unwrap().into_data()
    });
}

/// The matrix-unit kernel, where the device has TF32 matrix units (CUDA sm_80+; skipped with a
/// message elsewhere).
#[cfg(feature = "cubecl")]
fn matrix_units<B: ar_refine::decode::cube::NearestCodeBackend>(
    g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    label: &str,
    device: &B::Device,
) {
    if !B::supports_matrix_units(device) {
        println!("{label}: no TF32 matrix units, matrix-unit kernel skipped");
        return;
    }
    shapes_with::<B>(g, label, "matrix_units", device, |book, q| {
        book.nearest_matrix_units(q, None).unwrap().into_data()
    });
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("nn_decode");
    g.sample_size(10);
    #[cfg(feature = "ndarray")]
    reference::<burn::backend::NdArray>(&mut g, "ndarray", &Default::default());
    #[cfg(feature = "wgpu")]
    {
        reference::<burn::backend::Wgpu>(&mut g, "wgpu", &Default::default());
        kernel::<burn::backend::Wgpu>(&mut g, "wgpu", &Default::default());
        matrix_units::<burn::backend::Wgpu>(&mut g, "wgpu", &Default::default());
    }
    #[cfg(feature = "cuda")]
    if std::path::Path::new("/dev/nvidiactl").exists() {
        reference::<burn::backend::Cuda>(&mut g, "cuda", &Default::default());
        kernel::<burn::backend::Cuda>(&mut g, "cuda", &Default::default());
        matrix_units::<burn::backend::Cuda>(&mut g, "cuda", &Default::default());
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
