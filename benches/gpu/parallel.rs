//! Multi-GPU benchmark: pair generation and refiner training on 1 GPU and on `--gpus` GPUs, in
//! one process, on the same prompts (the multi-GPU table in `BENCHMARKS.md`).
//!
//! ```text
//! bash scripts/bench/build_gpu.sh parallel_bench_gpu   # .bin/parallel_bench_gpu.xz
//! parallel_bench_gpu --tokenizer models/tiny-lvm-v2/tokenizer --backbone models/tiny-lvm-v2/backbone \
//!     [--data DIR] [--task colorization] [--k 1] [--prompts 1024] [--batch 64] [--val 128] \
//!     [--refiners 128x4,512x8] [--steps 200] [--train-batch 64,256] [--gpus 2] [--out DIR]
//! ```
//!
//! 1. Pair generation (greedy, free-running): every device runs one warm-up batch, then
//!    `generate_pairs` on GPU 0 and `generate_pairs_sharded` on GPUs 0..n are timed over the same
//!    `--prompts` (`--batch` prompts per backbone call); the two pair sets are compared.
//! 2. Refiner training, for each `--refiners` entry (`d_model x layers`) and global batch in
//!    `--train-batch`: `train_refiner` with the same initial weights and data on 1 GPU and
//!    data-parallel on n GPUs, `--steps` steps, and on 1 GPU with one replica's share of the
//!    batch (batch / n: what each GPU computes; separates the all-reduce's cost from the smaller
//!    per-GPU batch); throughput from the end of the first 10% (warm-up) to the
//!    step before the last (the last one validates), the
//!    final validation losses and the largest difference between the two loss curves.
//!
//! Scaling efficiency = throughput_n / (n · throughput_1); against the share:
//! throughput_n / (n · throughput of one GPU at batch / n). Writes `OUT/parallel.json` and prints
//! a Markdown table.

// the command line's models and photos (examples/ar-refine/)
#[allow(dead_code)]
#[path = "../../examples/ar-refine/common.rs"]
mod common;
#[allow(dead_code)]
#[path = "../../examples/ar-refine/progress.rs"]
mod progress;

use std::time::Instant;

use ar_refine::train::{
    generate_pairs, generate_pairs_sharded, train_refiner, PairMode, PairOptions, Pairs, RefinerData,
    RefinerTrainConfig,
};
use ar_refine::{Codebook, Sampling, Tokenizer, TransformerRefinerConfig};
use burn::backend::cuda::CudaDevice;
use burn::backend::Autodiff;
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use clap::Parser;
use common::B;
use common::{AnyResult, DataArgs, ModelArgs, TaskArgs};

/// Pair generation and refiner training on one GPU and on several, side by side.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    models: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    task: TaskArgs,
    /// Prompts generated.
    #[arg(long, default_value_t = 1024)]
    prompts: usize,
    /// Prompts generated at once per device.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Validation prompts.
    #[arg(long, default_value_t = 128)]
    val: usize,
    /// Refiner shapes, `DxL` (width x layers).
    #[arg(long, value_delimiter = ',', default_value = "128x4,512x8")]
    refiners: Vec<String>,
    /// Training steps per run.
    #[arg(long, default_value_t = 200)]
    steps: usize,
    /// Global batch sizes of the training runs.
    #[arg(long, value_delimiter = ',', default_value = "64,256")]
    train_batch: Vec<usize>,
    /// GPUs (ordinals 0..N).
    #[arg(long, default_value_t = 2)]
    gpus: usize,
    /// Output folder.
    #[arg(long, default_value = "target/parallel-bench")]
    out: std::path::PathBuf,
}

fn sync_all(devices: &[CudaDevice]) -> AnyResult<()> {
    for d in devices {
        B::sync(d)?;
    }
    Ok(())
}

fn main() -> AnyResult<()> {
    let args = Args::parse();
    let out = common::out_dir(&args.out)?;
    let gpus = args.gpus.max(1);
    let devices: Vec<CudaDevice> = (0..gpus).map(CudaDevice::new).collect();
    let (vq, lm) = args.models.load()?;
    let common::Images {
        train: train_imgs,
        val: val_imgs,
        ..
    } = args.data.images()?;
    let (task, k, prompts, batch) = (&args.task.task, args.task.k, args.prompts, args.batch);
    let (_, tokens) = common::sentences(&vq, &train_imgs, task, k, prompts, 1)?;
    let (_, val_tokens) = common::sentences(&vq, &val_imgs, task, k, args.val, 2)?;
    let opts = PairOptions {
        mode: PairMode::FreeRunning(Sampling::greedy()),
        batch,
        cache: None,
        config: serde_json::json!({}),
    };
    let load = |d: &CudaDevice| args.models.backbone(d);

    // 1. pair generation
    eprintln!("warm-up: one batch per device");
    let warm = &tokens[..batch.min(tokens.len())];
    for d in &devices {
        generate_pairs(&load(d)?, warm, &opts, d, &mut |_, _| {})?;
    }
    sync_all(&devices)?;
    let t = Instant::now();
    let one = generate_pairs(&lm, &tokens, &opts, &devices[0], &mut |_, _| {})?;
    sync_all(&devices)?;
    let gen1 = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let many = generate_pairs_sharded::<B, _, _>(&devices, load, &tokens, &opts, &mut |_, _| {})?;
    sync_all(&devices)?;
    let gen_n = t.elapsed().as_secs_f64();
    let differing = one
        .generated
        .iter()
        .zip(&many.generated)
        .filter(|(a, b)| a != b)
        .count();
    let val = generate_pairs_sharded::<B, _, _>(&devices, load, &val_tokens, &opts, &mut |_, _| {})?;
    let gen = serde_json::json!({
        "prompts": prompts, "batch": batch, "tokens_per_prompt": one.tokens(),
        "params": lm.num_params(),
        "seconds_1": gen1, "seconds_n": gen_n,
        "prompts_per_s_1": prompts as f64 / gen1, "prompts_per_s_n": prompts as f64 / gen_n,
        "efficiency": gen1 / gen_n / gpus as f64,
        "pairs_differing": differing,
    });
    eprintln!("generation: {gen}");

    // 2. refiner training
    let steps = args.steps;
    let book = Codebook::<Autodiff<B>>::new(Tensor::from_inner(vq.codebook().codes().clone()), vq.metric())?;
    let mut trains = Vec::new();
    for spec in &args.refiners {
        let (d, l) = spec
            .split_once('x')
            .ok_or_else(|| format!("--refiners takes DxL entries, got {spec}"))?;
        let (d, l): (usize, usize) = (d.parse()?, l.parse()?);
        let rcfg = TransformerRefinerConfig::new(vq.code_dim())
            .with_d_model(d)
            .with_n_layers(l)
            .with_n_heads((d / 64).max(2))
            .with_max_grid(vq.grid().rows.max(vq.grid().cols));
        // materialised: every run starts from these weights (a lazy parameter's clones would
        // each run their own initialiser)
        let init = rcfg.init::<Autodiff<B>>(&devices[0])?.fork(&devices[0]);
        for &train_batch in &args.train_batch {
            let mut cfg = RefinerTrainConfig::new(steps, train_batch, 3e-4);
            cfg.validate_every = steps;
            // one GPU with one replica's share of the batch: what each GPU computes
            let mut share = cfg.clone();
            share.batch_size = (train_batch / gpus).max(1);
            let mut row = serde_json::json!({ "d_model": d, "layers": l, "params": init.num_params(),
                "steps": steps, "batch": train_batch, "tokens_per_step": train_batch * one.tokens() });
            let runs = [
                ("1", &devices[..1], &cfg),
                ("n", &devices[..], &cfg),
                ("share", &devices[..1], &share),
            ];
            for (name, devs, c) in runs {
                let r = time_training(&book, vq.grid(), &one, &val, devs, c, init.clone())?;
                for (key, v) in r.as_object().unwrap() {
                    row[format!("{key}_{name}")] = v.clone();
                }
            }
            let curve = |k: &str| -> Vec<f64> {
                row[k]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect()
            };
            let max_diff = curve("losses_1")
                .iter()
                .zip(curve("losses_n"))
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max);
            row["loss_curve_max_abs_diff"] = max_diff.into();
            let thr = |k: &str| row[format!("tokens_per_s_{k}")].as_f64().unwrap();
            // against one GPU with the whole batch, and against n times one replica's share on
            // one GPU (what is lost to the all-reduce and the threads alone)
            let (e, e_share) = (
                thr("n") / thr("1") / gpus as f64,
                thr("n") / thr("share") / gpus as f64,
            );
            row["efficiency"] = e.into();
            row["efficiency_vs_share"] = e_share.into();
            for key in ["losses_1", "losses_n", "losses_share"] {
                row.as_object_mut().unwrap().remove(key);
            }
            eprintln!("training: {row}");
            trains.push(row);
        }
    }
    let report =
        serde_json::json!({ "gpus": gpus, "task": task, "k": k, "generation": gen, "training": trains });
    std::fs::write(out.join("parallel.json"), serde_json::to_string_pretty(&report)?)?;
    println!("| work | 1 GPU | {gpus} GPUs | scaling efficiency | check |");
    println!("|---|---|---|---|---|");
    println!(
        "| pair generation, {prompts} prompts × {} tokens, batch {batch} | {:.1} prompts/s | {:.1} prompts/s | {:.2} | {differing} of {prompts} pairs differ |",
        one.tokens(),
        prompts as f64 / gen1,
        prompts as f64 / gen_n,
        gen1 / gen_n / gpus as f64
    );
    for r in &trains {
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "| refiner d{} × {} ({} params), global batch {} | {:.0} tok/s | {:.0} tok/s | {:.2} (vs {gpus} × one GPU at batch {}: {:.2}) | val loss {:.5} vs {:.5} |",
            r["d_model"], r["layers"], r["params"], r["batch"],
            f("tokens_per_s_1"), f("tokens_per_s_n"), f("efficiency"),
            r["batch"].as_u64().unwrap_or(0) / gpus as u64, f("efficiency_vs_share"),
            f("val_loss_1"), f("val_loss_n")
        );
    }
    Ok(())
}

/// One `train_refiner` run on `devices`: throughput after the first 10 % of the steps, the final
/// validation loss and the loss curve.
fn time_training(
    book: &Codebook<Autodiff<B>>,
    grid: ar_refine::TokenGrid,
    train: &Pairs,
    val: &Pairs,
    devices: &[CudaDevice],
    cfg: &RefinerTrainConfig,
    init: ar_refine::TransformerRefiner<Autodiff<B>>,
) -> AnyResult<serde_json::Value> {
    let warm = (cfg.steps / 10).max(1);
    let last = cfg.steps.saturating_sub(1).max(warm + 1);
    let (mut mark, mut end) = (None, None);
    let data = RefinerData {
        codebook: book,
        grid,
        train,
        val: Some(val),
        devices,
        hidden: None,
    };
    let (_, state) = train_refiner(init, data, cfg, None, &mut |r| {
        // the window ends before the last step's validation
        if r.step == warm {
            mark = Some(Instant::now());
        } else if r.step == last {
            end = Some(Instant::now());
        }
    })?;
    let secs = match (mark, end) {
        (Some(a), Some(b)) => (b - a).as_secs_f64(),
        _ => f64::NAN,
    };
    let tokens = ((last - warm) * cfg.batch_size * grid.len()) as f64;
    let val_loss = state.extra["val"]
        .as_array()
        .and_then(|a| a.last())
        .map(|v| v[1].clone());
    Ok(serde_json::json!({
        "seconds": secs,
        "tokens_per_s": tokens / secs,
        "val_loss": val_loss,
        "final_loss": state.losses.last(),
        "losses": state.losses,
    }))
}
