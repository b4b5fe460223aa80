//! No silent GPU failure on CUDA (issue [reliability] item 3): asks the GPU for a buffer it
//! cannot hold (`--gb`, default 400 GB: more than an H200's 141 GB) and checks that the failure
//! is reported — `check_device` returns an error naming the allocation and `write_atomic`
//! refuses to write — instead of the zeros CubeCL's worker thread used to leave behind.
//! `tests/device_watch.rs` does the same on lavapipe in CI.
//!
//! ```text
//! bash scripts/bench/build_gpu.sh device_check_gpu   # .bin/device_check_gpu.xz
//! .bin/device_check_gpu [--gb 400]
//! ```
//!
//! Prints one JSON line and exits 0 when the failure was caught, 1 when it went unnoticed.

use burn::backend::Cuda;
use burn::tensor::Tensor;
use clap::Parser;

type AnyResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Asks the GPU for more memory than it has and checks that the failure is caught.
#[derive(Parser)]
struct Args {
    /// Gigabytes of the oversized allocation.
    #[arg(long, default_value_t = 400.0)]
    gb: f64,
}

fn main() -> AnyResult<()> {
    let gb = Args::parse().gb;
    ar_refine::watch_device_panics();
    let device = Default::default();
    let small = Tensor::<Cuda, 1>::ones([1024], &device).sum().into_scalar();
    let dir = std::env::temp_dir().join(format!("ar-refine-device-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    ar_refine::io::write_atomic(dir.join("before.txt"), b"ok")?;
    let before = ar_refine::check_device().is_ok();
    let n = (gb * 1e9 / 4.0) as usize;
    let sum = Tensor::<Cuda, 1>::ones([n], &device).sum().into_scalar();
    let error = ar_refine::check_device().err().map(|e| e.to_string());
    let after = dir.join("after.txt");
    let refused = ar_refine::io::write_atomic(&after, b"garbage").is_err() && !after.exists();
    let caught = before && error.is_some() && refused;
    println!(
        "{}",
        serde_json::json!({
            "small_sum": small,
            "asked_gb": gb,
            "sum_read_back": sum,
            "panics_recorded": ar_refine::device_panics(),
            "check_device": error,
            "write_after_refused": refused,
            "caught": caught,
        })
    );
    let _ = std::fs::remove_dir_all(&dir);
    std::process::exit(if caught { 0 } else { 1 });
}
