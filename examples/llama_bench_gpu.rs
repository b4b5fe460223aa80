//! GPU benchmark harness for LLaMA generation (the H200 table in `BENCHMARKS.md`).
//!
//! ```text
//! cargo build --release --no-default-features --features cuda --example llama_bench_gpu
//! llama_bench_gpu [--shapes 100m,7b] [--batches 1,16] [--prompt 768] [--new 256] [--reps 3]
//! ```
//!
//! For each shape (LVM's 100M and 7B configurations, random weights, f16 on the CUDA device) and
//! batch size it times greedy generation with the KV cache, restricted to LVM's image ids
//! (ids >= 8192 suppressed): the prefill (prompt → first token) and the full run
//! (prompt → `new` tokens), synchronising the device before reading the clock, median of `reps`
//! after a warm-up run. ms/step = (full − prefill) / (new − 1). One JSON object per line.
//! `scripts/llama_bench.py` times `transformers` `generate` with the same settings.

#[path = "common/args.rs"]
mod args;

use std::time::Instant;

use ar_refine::backbone::{GenerateOptions, Llama, LlamaConfig};
use ar_refine::rng::SplitMix64;
use ar_refine::Sampling;
use args::{AnyResult, Args};
use burn::backend::Cuda;
use burn::module::Module;
use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use half::f16;

type B = Cuda<f16, i32>;

const USAGE: &str =
    "llama_bench_gpu [--shapes 100m,7b] [--batches 1,16] [--prompt 768] [--new 256] [--reps 3] [--ops]";

/// `--ops`: times the building blocks of one 7B decoding step in isolation (f16): the
/// projection matmul with the weight stored `[in, out]` (ours) and `[out, in]` used transposed
/// (HF's layout), at M = 1, 16 and 12 288 rows; RMSNorm; attention over a 1024-token cache.
fn ops(device: &burn::tensor::Device<B>, reps: usize) -> AnyResult<()> {
    let time = |f: &mut dyn FnMut()| -> AnyResult<f64> {
        f();
        B::sync(device)?;
        let mut v = Vec::new();
        for _ in 0..reps.max(10) {
            B::sync(device)?;
            let t = Instant::now();
            f();
            B::sync(device)?;
            v.push(t.elapsed().as_secs_f64() * 1e3);
        }
        Ok(median(v))
    };
    let rnd =
        |s: [usize; 2]| Tensor::<B, 2>::random(s, burn::tensor::Distribution::Normal(0.0, 0.02), device);
    let (k, n) = (4096, 11008);
    let w_in_out = rnd([k, n]);
    let w_out_in = rnd([n, k]);
    for m in [1usize, 16, 12288] {
        let x = rnd([m, k]).unsqueeze::<3>();
        let flops = 2.0 * (m * k * n) as f64;
        let nn = time(&mut || {
            let _ = burn::tensor::module::linear(x.clone(), w_in_out.clone(), None);
        })?;
        let nt = time(&mut || {
            let _ = x.clone().matmul(w_out_in.clone().transpose().unsqueeze());
        })?;
        println!("{{\"op\":\"matmul f16\",\"m\":{m},\"k\":{k},\"n\":{n},\"in_out_ms\":{nn:.3},\"out_in_t_ms\":{nt:.3},\"in_out_tflops\":{:.1},\"out_in_t_tflops\":{:.1}}}", flops / nn / 1e9, flops / nt / 1e9);
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> AnyResult<()> {
    let args = Args::parse(USAGE, &["ops"])?;
    args.only(&["shapes", "batches", "prompt", "new", "reps", "ops"])?;
    let shapes: String = args.get("shapes", "100m,7b".to_string())?;
    let batches: String = args.get("batches", "1,16".to_string())?;
    let prompt_len: usize = args.get("prompt", 768)?;
    let n_new: usize = args.get("new", 256)?;
    let reps: usize = args.get("reps", 3)?;
    let device = Default::default();
    if args.has("ops") {
        return ops(&device, reps);
    }
    for shape in shapes.split(',') {
        let config = match shape {
            "100m" => LlamaConfig::lvm_100m(),
            "7b" => LlamaConfig::lvm_7b(),
            other => return Err(format!("unknown shape {other}").into()),
        };
        let t = Instant::now();
        let model = Llama::<B>::new(config.clone(), &device)?;
        B::sync(&device)?;
        let params = model.num_params();
        eprintln!(
            "{shape}: {params} parameters, init {:.1} s",
            t.elapsed().as_secs_f64()
        );
        for b in batches.split(',') {
            let b: usize = b.parse()?;
            let mut rng = SplitMix64::new(7);
            let ids: Vec<i64> = (0..b * prompt_len).map(|_| rng.below(8192) as i64).collect();
            let prompt = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, prompt_len]), &device);
            let run = |n: usize| -> AnyResult<f64> {
                B::sync(&device)?;
                let t = Instant::now();
                let out = model.generate_with(
                    prompt.clone(),
                    n,
                    &Sampling::greedy(),
                    GenerateOptions::default(),
                )?;
                let _ = out.tokens.into_data();
                B::sync(&device)?;
                Ok(t.elapsed().as_secs_f64() * 1e3)
            };
            run(n_new)?; // warm-up: kernel compilation and autotuning
            run(1)?;
            let prefill = median((0..reps).map(|_| run(1)).collect::<AnyResult<_>>()?);
            let full = median((0..reps).map(|_| run(n_new)).collect::<AnyResult<_>>()?);
            let per_step = (full - prefill) / (n_new - 1) as f64;
            println!(
                "{{\"impl\":\"ar-refine\",\"shape\":\"{shape}\",\"params\":{params},\"batch\":{b},\"prompt\":{prompt_len},\"new\":{n_new},\"prefill_ms\":{prefill:.2},\"total_ms\":{full:.1},\"ms_per_step\":{per_step:.3},\"tokens_per_s\":{:.1}}}",
                (b * n_new) as f64 / (full / 1e3)
            );
        }
    }
    Ok(())
}
