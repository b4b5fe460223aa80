//! Trains the built-in refiner on the outputs of a frozen backbone.
//!
//! ```text
//! cargo run --release --example train_refiner -- --tokenizer CKPT [--tokenizer-config F] \
//!     --backbone DIR [--data DIR] [--train-images 2048] [--task colorization] [--k 1] \
//!     [--train-count 512] [--val-count 64] [--mode free|teacher] [--temperature T --top-k K \
//!     --top-p P --seed S] [--steps 1000] [--batch 32] [--lr 3e-4] [--d-model 256] [--layers 4] \
//!     [--heads 8] [--mse 0] [--devices 0,1] [--out target/refiner-run]
//! ```
//!
//! - `--tokenizer`, `--backbone`: a VQGAN checkpoint (see `examples/tokenize.rs`) and an HF LLaMA
//!   directory (see `examples/generate.rs`) whose image ids match the codebook.
//! - `--data`: the shared Tiny-ImageNet folder (training mosaics + `val.u8`; default: found via
//!   `AR_REFINE_DATA` or `../shared/data`) or any image folder; generated scenes otherwise.
//! - `--task`: `colorization`, `inpainting` or `edges`; `--k` demonstration pairs per prompt.
//! - Pairs come from the frozen backbone (`--mode free`: generation with the sampling flags;
//!   `teacher`: teacher-forced argmax) and are cached in `OUT/pairs-*` (resumable).
//! - The refiner trains with the cosine loss (+ `--mse` weight), AdamW, warmup + cosine, clip 1;
//!   checkpoints in `OUT/checkpoints` (an interrupted run resumes); the trained refiner is saved
//!   to `OUT/refiner` for `examples/evaluate.rs`.
//! - `--pairs-only`: stop after the pairs (e.g. generate them on a GPU machine, train elsewhere
//!   from the cache: run again with the same flags and `--out`). `AR_REFINE_PAIR_BATCH` sets how
//!   many prompts are generated at once (default 16).
//!
//! - `--devices 0,1`: several GPUs. Pair generation is sharded (one backbone replica per GPU,
//!   one cache, the same files as on one GPU) and the refiner trains data-parallel (the global
//!   `--batch` split between the GPUs, gradients all-reduced through Burn's collective ops).
//!
//! With `--features cuda` it runs on the GPU.

#[path = "common/args.rs"]
mod args;
#[path = "common/setup.rs"]
mod setup;

use std::io::Write;

use ar_refine::refiner::save_refiner;
use ar_refine::train::{train_refiner, RefinementLoss, RefinerData, RefinerTrainConfig};
use ar_refine::{Codebook, Tokenizer, TransformerRefinerConfig};
use args::{AnyResult, Args};
use burn::backend::Autodiff;
use burn::module::{AutodiffModule, Module};
use burn::tensor::Tensor;
use setup::B;

const USAGE: &str = "cargo run --release --example train_refiner -- --tokenizer CKPT [--tokenizer-config F] --backbone DIR [--data DIR] [--train-images N] [--task colorization|inpainting|edges] [--k 1] [--train-count 512] [--val-count 64] [--mode free|teacher] [--temperature T --top-k K --top-p P --seed S] [--steps 1000] [--batch 32] [--lr 3e-4] [--d-model 256] [--layers 4] [--heads 8] [--mse 0] [--pairs-only] [--devices 0,1] [--out DIR]";

fn main() -> AnyResult<()> {
    let args = Args::parse(USAGE, &["pairs-only"])?;
    args.only(
        &[
            &setup::TRAINING_FLAGS[..],
            &[
                "val-count",
                "mode",
                "temperature",
                "top-k",
                "top-p",
                "seed",
                "steps",
                "batch",
                "lr",
                "d-model",
                "layers",
                "heads",
                "mse",
                "out",
                "pairs-only",
                "devices",
            ],
        ]
        .concat(),
    )?;
    let pairs_only = args.has("pairs-only");
    let out = setup::out_dir(&args, "target/refiner-run")?;
    let (vq, lm) = setup::models(&args)?;
    let devices = setup::devices(&args)?;
    let (train_imgs, val_imgs) = setup::images(&args)?;
    let task: String = args.get("task", "colorization".to_string())?;
    let k: usize = args.get("k", 1)?;
    let mode = setup::mode(&args)?;
    let identity = serde_json::json!({
        "tokenizer": args.required::<String>("tokenizer")?,
        "backbone": args.required::<String>("backbone")?,
    });
    let (train, _) = setup::pairs(
        &vq,
        &lm,
        &train_imgs,
        &task,
        k,
        args.get("train-count", 512)?,
        1,
        &mode,
        &out.join("pairs-train"),
        identity.clone(),
        (&args, &devices),
    )?;
    let (val, _) = setup::pairs(
        &vq,
        &lm,
        &val_imgs,
        &task,
        k,
        args.get("val-count", 64)?,
        2,
        &mode,
        &out.join("pairs-val"),
        identity,
        (&args, &devices),
    )?;
    if pairs_only {
        println!(
            "pairs: {} train, {} validation in {}",
            train.len(),
            val.len(),
            out.display()
        );
        return Ok(());
    }

    let rcfg = TransformerRefinerConfig::new(vq.code_dim())
        .with_d_model(args.get("d-model", 256)?)
        .with_n_layers(args.get("layers", 4)?)
        .with_n_heads(args.get("heads", 8)?)
        .with_max_grid(vq.grid().rows.max(vq.grid().cols));
    let device = setup::device();
    let refiner = rcfg.init::<Autodiff<B>>(&device)?;
    eprintln!("refiner: {} parameters", refiner.num_params());
    let book = Codebook::<Autodiff<B>>::new(Tensor::from_inner(vq.codebook().codes().clone()), vq.metric())?;
    let mut cfg = RefinerTrainConfig::new(
        args.get("steps", 1000)?,
        args.get("batch", 32)?,
        args.get("lr", 3e-4)?,
    );
    cfg.loss = RefinementLoss {
        mse_weight: args.get("mse", 0.0)?,
    };
    cfg.validate_every = (cfg.steps / 10).max(1);
    let data = RefinerData {
        codebook: &book,
        grid: vq.grid(),
        train: &train,
        val: Some(&val),
        devices: &devices,
    };
    let (refiner, state) = train_refiner(refiner, data, &cfg, Some(&out.join("checkpoints")), &mut |r| {
        let val = r.val_loss.map(|v| format!(" val {v:.4}")).unwrap_or_default();
        let width = 30;
        let filled = width * r.step / r.steps;
        eprint!(
            "\r[{}{}] {}/{} loss {:.4}{val} lr {:.1e} {:.0} tok/s ETA {:.0} s   ",
            "#".repeat(filled),
            " ".repeat(width - filled),
            r.step,
            r.steps,
            r.loss,
            r.lr,
            r.tokens_per_sec,
            r.eta.as_secs_f64()
        );
        if r.val_loss.is_some() {
            eprintln!();
        }
        let _ = std::io::stderr().flush();
    })?;
    eprintln!();
    save_refiner(&refiner.valid(), &rcfg, out.join("refiner"))?;
    let n = state.losses.len().min(20);
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len().max(1) as f32;
    println!(
        "trained {} steps: loss {:.4} (first {n}) -> {:.4} (last {n}); validation {}; refiner saved to {}",
        state.step,
        mean(&state.losses[..n]),
        mean(&state.losses[state.losses.len() - n..]),
        state.extra["val"],
        out.join("refiner").display()
    );
    Ok(())
}
