//! Timing helpers of the GPU profile examples (`vq_profile_gpu`, `lm_profile_gpu`).
#![allow(dead_code)]

use std::time::Instant;

use burn::backend::Cuda;
use burn::tensor::backend::Backend;

/// Median milliseconds of `reps` runs of `f` (after two warm-up runs), each ended by a sync.
/// Exits the process when the CUDA runtime's worker panicked (a failed allocation leaves garbage
/// timings).
pub fn time(device: &burn::tensor::Device<Cuda>, reps: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..2 {
        f();
        <Cuda as Backend>::sync(device).expect("device sync");
    }
    let mut ms: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            <Cuda as Backend>::sync(device).expect("device sync");
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    if let Err(e) = ar_refine::check_device() {
        eprintln!("{e}");
        std::process::exit(1);
    }
    ms.sort_by(f64::total_cmp);
    ms[ms.len() / 2]
}

/// Prints one JSON row `{"what", "ms"}`, with `tflops` when the work's `gflop` is given.
pub fn row(what: &str, ms: f64, gflop: Option<f64>) {
    let mut v = serde_json::json!({ "what": what, "ms": (ms * 1000.0).round() / 1000.0 });
    if let Some(g) = gflop {
        v["tflops"] = serde_json::json!(((g / ms) * 100.0).round() / 100.0);
    }
    println!("{v}");
}
