//! GPU benchmark harness for LLaMA generation (the H200 table in `BENCHMARKS.md`).
//!
//! ```text
//! FEATURES=cuda,autotune bash scripts/bench/build_gpu.sh llama_bench_gpu   # .bin/llama_bench_gpu.xz
//! llama_bench_gpu [--shapes 100m,7b] [--batches 1,16] [--prompt 768] [--new 256] [--reps 3]
//! llama_bench_gpu --check | --ops | --proj | --profile
//! llama_bench_gpu --load DIR
//! ```
//!
//! `--load DIR`: loads the checkpoint in `DIR` (config.json + safetensors, f16 on the device) and
//! prints the files' size, the process's peak resident memory (`VmHWM`) before and after, and the
//! time (the 7B host-RAM figure in `BENCHMARKS.md`).
//!
//! For each shape (LVM's 100M and 7B configurations, random weights, f16 on the CUDA device) and
//! batch size it times greedy generation with the KV cache, restricted to LVM's image ids
//! (ids >= 8192 suppressed): the prefill (prompt → first token) and the full run
//! (prompt → `new` tokens), synchronising the device before reading the clock, median of `reps`
//! after a warm-up run. ms/step = (full − prefill) / (new − 1). One JSON object per line.
//! `scripts/bench/llama_bench.py` times `transformers` `generate` with the same settings.

use std::time::Instant;

use ar_refine::backbone::{GenerateOptions, Llama, LlamaConfig};
use ar_refine::rng::SplitMix64;
use ar_refine::Sampling;
use burn::backend::Cuda;
use burn::module::Module;
use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use clap::Parser;
use half::f16;

type B = Cuda<f16, i32>;

type AnyResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// LLaMA generation at LVM's shapes on the GPU (prefill and per-step times), or one of the
/// modes below.
#[derive(Parser)]
struct Args {
    /// Model shapes: `100m`, `7b`.
    #[arg(long, value_delimiter = ',', default_value = "100m,7b")]
    shapes: Vec<String>,
    /// Batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    batches: Vec<usize>,
    /// Prompt tokens.
    #[arg(long, default_value_t = 768)]
    prompt: usize,
    /// Generated tokens.
    #[arg(long, default_value_t = 256)]
    new: usize,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// The per-operation table of one 7B decode step.
    #[arg(long)]
    ops: bool,
    /// The projections of one 7B decode step alone.
    #[arg(long)]
    proj: bool,
    /// The per-step profile instead of the generation times.
    #[arg(long)]
    profile: bool,
    /// Decode-versus-prefill logits on the device.
    #[arg(long)]
    check: bool,
    /// Peak host memory of loading the checkpoint in DIR onto the device.
    #[arg(long, value_name = "DIR")]
    load: Option<std::path::PathBuf>,
}

/// A field of `/proc/self/status` in bytes (`VmHWM`: peak resident set; `VmRSS`: now).
fn proc_status_bytes(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// `--load DIR`: peak host memory of loading a checkpoint onto the device.
fn load(dir: &std::path::Path, device: &burn::tensor::Device<B>) -> AnyResult<()> {
    let file_bytes: u64 = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    // the CUDA context first, so that its host memory is not counted as the loader's
    let _ = Tensor::<B, 1>::zeros([1], device);
    B::sync(device)?;
    let before = proc_status_bytes("VmHWM").unwrap_or(0);
    let t = Instant::now();
    let model = Llama::<B>::from_pretrained(dir, device)?;
    B::sync(device)?;
    let secs = t.elapsed().as_secs_f64();
    let peak = proc_status_bytes("VmHWM").unwrap_or(0);
    let now = proc_status_bytes("VmRSS").unwrap_or(0);
    println!(
        "{{\"load\":\"{}\",\"params\":{},\"file_bytes\":{file_bytes},\"peak_rss_before\":{before},\"peak_rss\":{peak},\"rss_after\":{now},\"peak_over_file\":{:.3},\"seconds\":{secs:.2}}}",
        dir.display(),
        model.num_params(),
        peak as f64 / file_bytes.max(1) as f64
    );
    Ok(())
}

/// `--profile`: one decode step of the model itself, split into its parts: after a prefill of
/// `prompt` tokens, 48 single-token steps, each timed three ways — `enqueue_ms` (until
/// `forward_hidden` returns, before the device is synchronised: the host's share), `layers_ms`
/// (until the device is done with it) and `head_ms` (LM head and argmax of the step, synchronised).
/// `forward_hidden` checks the ids on the host, one small read per step included in both times.
/// Medians; one JSON object per shape and batch.
fn profile(
    model: &Llama<B>,
    shape: &str,
    b: usize,
    prompt_len: usize,
    device: &burn::tensor::Device<B>,
) -> AnyResult<()> {
    let steps = 48;
    let mut cache = model.new_cache(b, prompt_len + steps, device)?;
    let mut rng = SplitMix64::new(11);
    let ids: Vec<i64> = (0..b * prompt_len).map(|_| rng.below(8192) as i64).collect();
    let prompt = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, prompt_len]), device);
    let _ = model.forward_hidden(prompt, Some(&mut cache))?;
    B::sync(device)?;
    let token = Tensor::<B, 2, Int>::from_data(TensorData::new(vec![5i64; b], [b, 1]), device);
    let (mut enqueue, mut layers, mut head) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..steps {
        let t = Instant::now();
        let hidden = model.forward_hidden(token.clone(), Some(&mut cache))?;
        enqueue.push(t.elapsed().as_secs_f64() * 1e3);
        B::sync(device)?;
        layers.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let _ = model.logits(hidden).argmax(2);
        B::sync(device)?;
        head.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "{{\"profile\":\"{shape}\",\"batch\":{b},\"layers\":{},\"enqueue_ms\":{:.3},\"layers_ms\":{:.3},\"head_ms\":{:.3}}}",
        model.config().num_hidden_layers,
        median(enqueue),
        median(layers),
        median(head)
    );
    Ok(())
}

/// `--check`: the decode path against the prefill path on the device. For a 4-layer model of the
/// 100M shape and batches 1 and 16, the logits of the last of 40 prompt tokens computed in one
/// pass (Burn's matmuls: more than 16 rows) and by a cached prefill of 39 tokens followed by one
/// decode step (the fused skinny projections, RoPE/cache and attention kernels). Prints the
/// largest difference relative to the largest logit; an error above 1e-2 (f16 rounding of two
/// different summation orders is ~1e-3) fails the run.
fn check(device: &burn::tensor::Device<B>) -> AnyResult<()> {
    let mut config = LlamaConfig::lvm_100m();
    config.num_hidden_layers = 4;
    let model = Llama::<B>::new(config, device)?;
    let p = 40;
    for b in [1usize, 16] {
        let mut rng = SplitMix64::new(3);
        let ids: Vec<i64> = (0..b * p).map(|_| rng.below(8192) as i64).collect();
        let prompt = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, p]), device);
        let full = model.logits(model.forward_hidden(prompt.clone(), None)?);
        let vocab = full.dims()[2];
        let want = full.slice([0..b, p - 1..p, 0..vocab]);
        let mut cache = model.new_cache(b, p, device)?;
        let _ = model.forward_hidden(prompt.clone().slice([0..b, 0..p - 1]), Some(&mut cache))?;
        let step = model.forward_hidden(prompt.slice([0..b, p - 1..p]), Some(&mut cache))?;
        let got = model.logits(step);
        let scale = want.clone().abs().max().into_scalar().to_f64();
        let diff = (got - want).abs().max().into_scalar().to_f64();
        let rel = diff / scale.max(1e-12);
        println!("{{\"check\":\"decode vs prefill logits\",\"batch\":{b},\"max_abs_diff\":{diff:.3e},\"max_abs_logit\":{scale:.3e},\"relative\":{rel:.3e}}}");
        if rel.is_nan() || rel > 1e-2 {
            return Err(format!(
                "batch {b}: decode logits differ from prefill logits by {rel:.3e} of the largest"
            )
            .into());
        }
    }
    Ok(())
}

/// `--ops`: times the operations of one 7B decoding step in isolation (f16, synchronising
/// around each call, median of `max(reps, 10)`), at batch 1 and 16 with a 1 024-token cache,
/// written as the model writes them (`src/backbone/llama/layers.rs`): RMSNorm with its f32
/// up-cast, the projections as one flattened `[b, in] @ [out, in]ᵀ` matmul, RoPE by halves, the
/// cache write, attention over the cache, SwiGLU, the residual add and the LM head. Each line
/// gives ms, bytes moved and the share of the H200's 4.8 TB/s; `count` is how often the op
/// runs per step (32 layers), `step_ms` = ms × count.
fn ops(device: &burn::tensor::Device<B>, reps: usize, proj_only: bool) -> AnyResult<()> {
    use burn::tensor::activation::silu;
    use burn::tensor::module::attention;
    use burn::tensor::ops::AttentionModuleOptions;
    use burn::tensor::DType;
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
    let normal = burn::tensor::Distribution::Normal(0.0, 0.02);
    let (h, inter, layers, heads, hd, vocab, ctx) = (
        4096usize, 11008usize, 32usize, 32usize, 128usize, 8292usize, 1024usize,
    );
    let report = |op: &str, b: usize, ms: f64, bytes: f64, count: usize| {
        println!(
            "{{\"op\":\"{op}\",\"batch\":{b},\"ms\":{ms:.4},\"bytes\":{bytes:.0},\"hbm_pct\":{:.1},\"count\":{count},\"step_ms\":{:.3}}}",
            bytes / (ms * 1e-3) / 4.8e12 * 100.0,
            ms * count as f64
        );
    };
    for b in [1usize, 16] {
        let x = Tensor::<B, 3>::random([b, 1, h], normal, device);
        let gain = Tensor::<B, 1>::ones([h], device);
        if !proj_only {
            let ms = time(&mut || {
                let y = x.clone().cast(DType::F32);
                let rms = y.clone().powi_scalar(2).mean_dim(2).add_scalar(1e-6).sqrt();
                let _ = y.div(rms).cast(DType::F16) * gain.clone().unsqueeze::<3>();
            })?;
            report("rmsnorm", b, ms, (4 * b * h) as f64, 2 * layers);
        }
        for (name, k, n, count) in [
            ("q/k/v/o proj", h, h, 4 * layers),
            ("gate/up proj", h, inter, 2 * layers),
            ("down proj", inter, h, layers),
            ("lm_head", h, vocab, 1),
        ] {
            let w = Tensor::<B, 2>::random([n, k], normal, device);
            let xin = Tensor::<B, 3>::random([b, 1, k], normal, device);
            let bytes = (2 * (n * k + b * (k + n))) as f64;
            if !proj_only {
                let ms = time(&mut || {
                    let _ = xin
                        .clone()
                        .reshape([b, k])
                        .matmul(w.clone().transpose())
                        .reshape([b, 1, n]);
                })?;
                report(name, b, ms, bytes, count);
            }
            let ms = time(&mut || {
                let _ = ar_refine::backbone::linear_t(xin.clone(), w.clone());
            })?;
            report(&format!("{name} (linear_t)"), b, ms, bytes, count);
        }
        if proj_only {
            continue;
        }
        let q = Tensor::<B, 4>::random([b, heads, 1, hd], normal, device);
        let cos = Tensor::<B, 4>::random([1, 1, 1, hd], normal, device);
        let sin = cos.clone();
        let ms = time(&mut || {
            let x1 = q.clone().narrow(3, 0, hd / 2);
            let x2 = q.clone().narrow(3, hd / 2, hd / 2);
            let _ = q.clone() * cos.clone() + Tensor::cat(vec![x2.neg(), x1], 3) * sin.clone();
        })?;
        report("rope (q or k)", b, ms, (4 * b * heads * hd) as f64, 2 * layers);
        let cache = Tensor::<B, 4>::zeros([b, heads, ctx, hd], device);
        let mut cache_opt = Some(cache);
        let ms = time(&mut || {
            let c = cache_opt.take().expect("cache");
            cache_opt = Some(c.slice_assign([0..b, 0..heads, ctx - 1..ctx, 0..hd], q.clone()));
        })?;
        report(
            "cache write (k or v)",
            b,
            ms,
            (2 * b * heads * hd) as f64,
            2 * layers,
        );
        let k = Tensor::<B, 4>::random([b, heads, ctx, hd], normal, device);
        let v = Tensor::<B, 4>::random([b, heads, ctx, hd], normal, device);
        let ms = time(&mut || {
            let _ = attention(
                q.clone(),
                k.clone(),
                v.clone(),
                None,
                None,
                AttentionModuleOptions::default(),
            );
        })?;
        report(
            "attention (1 query, 1024 keys)",
            b,
            ms,
            (2 * 2 * b * heads * ctx * hd) as f64,
            layers,
        );
        let g = Tensor::<B, 3>::random([b, 1, inter], normal, device);
        let u = g.clone();
        let ms = time(&mut || {
            let _ = silu(g.clone()) * u.clone();
        })?;
        report("silu * up", b, ms, (6 * b * inter) as f64, layers);
        let ms = time(&mut || {
            let _ = x.clone() + x.clone();
        })?;
        report("residual add", b, ms, (6 * b * h) as f64, 2 * layers);
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> AnyResult<()> {
    let args = Args::parse();
    let (prompt_len, n_new, reps) = (args.prompt, args.new, args.reps);
    let device = Default::default();
    if let Some(dir) = &args.load {
        return load(dir, &device);
    }
    if args.ops {
        return ops(&device, reps, false);
    }
    if args.proj {
        return ops(&device, reps, true);
    }
    if args.check {
        return check(&device);
    }
    for shape in &args.shapes {
        let shape = shape.as_str();
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
        for &b in &args.batches {
            if args.profile {
                profile(&model, shape, b, prompt_len, &device)?;
                continue;
            }
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
