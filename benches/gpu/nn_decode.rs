//! GPU benchmark harness for nearest-code decoding (the H200 numbers in `BENCHMARKS.md`).
//!
//! ```text
//! bash scripts/bench/build_gpu.sh nn_decode_gpu   # .bin/nn_decode_gpu.xz
//! nn_decode_gpu DIR [REPS]
//! ```
//!
//! For each shape (N queries × K codes × D) it generates queries and codes (uniform in [-1, 1),
//! seeded), writes them to `DIR/<shape>.{q,c}.f32`, times on the CUDA device (synchronising
//! before and after every repetition, median of `REPS`):
//! - the exact fused kernel at several tilings,
//! - the matrix-unit kernel (TF32 `mma`, exact f32 decision) at several tilings,
//! - Burn's unfused `‖c‖² − 2·q·cᵀ` matmul + argmin (this crate's tensor-op reference, one block),
//!
//! writes each method's ids to `DIR/<shape>.<method>.i32`, and prints one JSON object per
//! measurement. `scripts/bench/nn_decode_bench.py` then times PyTorch on the same data and scores every
//! method's ids against an fp64 search.

use std::io::Write;
use std::time::Instant;

use ar_refine::decode::cube::{default_tiling, MmaTiling, Tiling};
use ar_refine::rng::SplitMix64;
use ar_refine::{Codebook, Metric};
use burn::backend::Cuda;
use burn::tensor::{backend::Backend, Tensor, TensorData};

type B = Cuda;

fn write_f32(path: &std::path::Path, v: &[f32]) {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(path, bytes).expect("write data file");
}

fn write_ids(path: &std::path::Path, t: Tensor<B, 2, burn::tensor::Int>) {
    let bytes: Vec<u8> = t
        .into_data()
        .iter::<i64>()
        .flat_map(|x| (x as i32).to_le_bytes())
        .collect();
    std::fs::write(path, bytes).expect("write ids file");
}

fn median_ms(mut f: impl FnMut(), reps: usize, device: &burn::tensor::Device<B>) -> (f64, f64) {
    f(); // warm-up: compiles the kernel
    B::sync(device).unwrap();
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        B::sync(device).unwrap();
        let t = Instant::now();
        f();
        B::sync(device).unwrap();
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    (times[reps / 2], times[0])
}

/// Times `search` at each labelled tiling (median of `reps`), then writes its ids at the
/// default tiling (`None`) to `ids_path`.
fn time_tilings<T: Copy>(
    tilings: &[(String, T)],
    search: impl Fn(Option<T>) -> Tensor<B, 2, burn::tensor::Int>,
    ids_path: &std::path::Path,
    (reps, device): (usize, &burn::tensor::Device<B>),
    report: &mut impl FnMut(&str, (f64, f64)),
) {
    for (label, t) in tilings {
        report(label, median_ms(|| drop(search(Some(*t))), reps, device));
    }
    write_ids(ids_path, search(None));
}

/// Times the nearest-code search on the GPU at real codebook shapes and writes its inputs and
/// ids for the PyTorch comparison.
#[derive(clap::Parser)]
struct Args {
    /// Folder for the inputs and the ids.
    dir: std::path::PathBuf,
    /// Timed repetitions (the median is reported).
    #[arg(default_value_t = 20)]
    reps: usize,
}

fn main() {
    let Args { dir, reps } = <Args as clap::Parser>::parse();
    std::fs::create_dir_all(&dir).unwrap();
    let device = Default::default();
    let shapes = [
        ("lvm", 65536, 8192, 64),
        ("llamagen", 65536, 16384, 8),
        ("chameleon", 65536, 8192, 256),
        ("small", 4096, 8192, 64),
    ];
    let mut out = std::io::stdout().lock();
    for (name, n, k, d) in shapes {
        let mut rng = SplitMix64::new(2026);
        let q: Vec<f32> = (0..n * d).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let c: Vec<f32> = (0..k * d).map(|_| rng.uniform(-1.0, 1.0)).collect();
        write_f32(&dir.join(format!("{name}.q.f32")), &q);
        write_f32(&dir.join(format!("{name}.c.f32")), &c);
        let qt = Tensor::<B, 3>::from_data(TensorData::new(q, [1, n, d]), &device);
        let ct = Tensor::<B, 2>::from_data(TensorData::new(c, [k, d]), &device);
        let book = Codebook::new(ct, Metric::SquaredL2)
            .unwrap()
            .with_memory_budget(usize::MAX / 4);
        let flop = 2.0 * n as f64 * k as f64 * d as f64;
        let mut report = |method: &str, ms: (f64, f64)| {
            writeln!(
                out,
                r#"{{"shape":"{name}","n":{n},"k":{k},"d":{d},"method":"{method}","median_ms":{:.4},"min_ms":{:.4},"tflops":{:.2}}}"#,
                ms.0,
                ms.1,
                flop / ms.0 / 1e9
            )
            .unwrap();
            out.flush().unwrap();
        };

        let mut tilings: Vec<(String, Tiling)> = vec![("kernel_default".into(), default_tiling(d))];
        for (tq, tk, rq, rk, dt) in [
            (16, 16, 8, 4, 8),
            (16, 16, 8, 8, 4),
            (16, 8, 8, 16, 8),
            (8, 16, 16, 8, 8),
            (8, 32, 8, 8, 8),
        ] {
            let t = Tiling {
                tq,
                tk,
                rq,
                rk,
                dt: dt.min(d.next_power_of_two()),
            };
            tilings.push((format!("kernel_t{tq}x{tk}_r{rq}x{rk}_d{}", t.dt), t));
        }
        time_tilings(
            &tilings,
            |t| book.nearest_kernel(qt.clone(), t).unwrap(),
            &dir.join(format!("{name}.kernel.i32")),
            (reps, &device),
            &mut report,
        );
        let mut mma: Vec<(String, MmaTiling)> = vec![("mma_default".into(), MmaTiling::default_for(d))];
        for (wq, wk, mq, nk, h) in [
            (4, 2, 2, 8, 1),
            (4, 2, 2, 8, 2),
            (4, 2, 1, 8, 2),
            (8, 1, 1, 8, 2),
            (4, 2, 2, 4, 2),
            (4, 1, 2, 8, 2),
            (8, 1, 2, 4, 2),
        ] {
            let t = MmaTiling { wq, wk, mq, nk, h };
            if t != MmaTiling::default_for(d) && (h == 1 || d > 16) {
                mma.push((format!("mma_w{wq}x{wk}_m{mq}_n{nk}_h{h}"), t));
            }
        }
        time_tilings(
            &mma,
            |t| book.nearest_matrix_units(qt.clone(), t).unwrap(),
            &dir.join(format!("{name}.mma.i32")),
            (reps, &device),
            &mut report,
        );
        // Burn, unfused: ‖c‖² − 2·q·cᵀ materialised, then argmin.
        let q2 = qt.clone().reshape([n, d]);
        let norms = book.codes().clone().powi_scalar(2).sum_dim(1).transpose(); // [1, K]
        let ct_t = book.codes().clone().transpose();
        let plain = || (norms.clone() - q2.clone().matmul(ct_t.clone()).mul_scalar(2.0)).argmin(1);
        report("burn_matmul_argmin", median_ms(|| drop(plain()), reps, &device));
        write_ids(&dir.join(format!("{name}.burn.i32")), plain().reshape([1, n]));
        // This crate's tensor-op reference (exact-tie handling adds passes over the matrix).
        let ms = median_ms(
            || drop(book.nearest_reference(qt.clone()).unwrap()),
            reps.min(10),
            &device,
        );
        report("ar_refine_reference", ms);
    }
}
