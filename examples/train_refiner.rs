//! Trains a refiner on the outputs of a frozen backbone.
//!
//! ```text
//! cargo run --release --example train_refiner -- --tokenizer CKPT [--tokenizer-config F] \
//!     --backbone DIR [--data DIR] [--train-images 2048 | A..B] [--select-images A..B] \
//!     [--task colorization] [--k 1] [--train-count 512] [--val-count 128] [--mode free|teacher] \
//!     [--temperature T --top-k K --top-p P --seed S] [--preset corrector] [--hidden] \
//!     [--soft-neighbours 0] [--refiner-seed 0] [--steps 1000] [--batch 32] [--lr 3e-4] \
//!     [--checkpoint-every 500] [--d-model 256] [--layers 4] [--heads 8] [--f32] [--devices 0,1] [--out target/refiner-run]
//! ```
//!
//! - `--tokenizer`, `--backbone`: a VQGAN checkpoint (see `examples/tokenize.rs`) and an HF LLaMA
//!   directory (see `examples/generate.rs`) whose image ids match the codebook.
//! - `--data`: the shared Tiny-ImageNet folder (default: found via `AR_REFINE_DATA` or
//!   `../shared/data`) or any image folder; generated scenes otherwise. Training prompts come
//!   from `--train-images` (N or A..B of the training mosaics), validation prompts (checkpoint
//!   choice, gate calibration) from `--select-images` (default: the 1,024 photos after the
//!   training range); the evaluation photos (`val.u8`) are never used here.
//! - `--task`: `colorization`, `inpainting` or `edges`; `--k` demonstration pairs per prompt.
//! - Pairs come from the frozen backbone (`--mode free`: generation with the sampling flags;
//!   `teacher`: teacher-forced argmax), with its per-token log-probability and entropy, and are
//!   cached in `OUT/pairs-*` (resumable).
//! - `--preset`: `corrector` (default: query prefix, confidence, code logits with identity
//!   initialisation, critic; cross-entropy + critic loss; the gate, calibrated on the validation
//!   pairs), `paper` (Wang et al. 2025: answer only, cosine loss, snap), or one of `cosine-query`,
//!   `ce-answer`, `ce-query`, `ce-query-confidence`, `prompt-only` (see `ar_refine::refiner::Preset`).
//!   `--hidden` adds the backbone's hidden states as an input (one teacher-forced pass per batch).
//! - Training: AdamW, warmup + cosine, clip 1; checkpoints in `OUT/checkpoints` every
//!   `--checkpoint-every` steps (an interrupted run resumes when the same command runs again); the weights of the validation step with the best token accuracy are kept. The
//!   refiner is saved to `OUT/refiner` (`config.json` + `model.safetensors`, f16 unless `--f32`)
//!   with its decision rule, for `examples/evaluate.rs`.
//! - `--pairs-only`: stop after the pairs (e.g. generate them on a GPU machine, train elsewhere
//!   from the cache: run again with the same flags and `--out`). `AR_REFINE_PAIR_BATCH` sets how
//!   many prompts are generated at once (default 16).
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

use ar_refine::io::StoreDtype;
use ar_refine::refiner::{save_refiner, CodeHead, Decision, Preset};
use ar_refine::train::{
    calibrate_gate, train_refiner, validate_refiner, BackboneHidden, HiddenSource, Pairs, RefinerData,
    RefinerTrainConfig,
};
use ar_refine::{Codebook, Tokenizer};
use args::{AnyResult, Args};
use burn::backend::Autodiff;
use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use setup::B;

const USAGE: &str = "cargo run --release --example train_refiner -- --tokenizer CKPT [--tokenizer-config F] --backbone DIR [--data DIR] [--train-images N|A..B] [--select-images A..B] [--task colorization|inpainting|edges] [--k 1] [--train-count 512] [--val-count 128] [--mode free|teacher] [--temperature T --top-k K --top-p P --seed S] [--preset corrector|paper|cosine-query|ce-answer|ce-query|ce-query-confidence|prompt-only] [--hidden] [--soft-neighbours 0] [--refiner-seed 0] [--steps 1000] [--batch 32] [--lr 3e-4] [--checkpoint-every 500] [--d-model 256] [--layers 4] [--heads 8] [--f32] [--pairs-only] [--devices 0,1] [--out DIR]";

fn main() -> AnyResult<()> {
    let args = Args::parse(USAGE, &["pairs-only", "hidden", "f32"])?;
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
                "preset",
                "hidden",
                "soft-neighbours",
                "refiner-seed",
                "steps",
                "batch",
                "lr",
                "checkpoint-every",
                "d-model",
                "layers",
                "heads",
                "f32",
                "out",
                "pairs-only",
                "devices",
            ],
        ]
        .concat(),
    )?;
    let preset: Preset = args.get("preset", "corrector".to_string())?.parse()?;
    let pairs_only = args.has("pairs-only");
    let (vq, lm) = setup::models(&args)?;
    let out = setup::out_dir(&args, "target/refiner-run")?;
    let devices = setup::devices(&args)?;
    let images = setup::images(&args)?;
    let task: String = args.get("task", "colorization".to_string())?;
    let k: usize = args.get("k", 1)?;
    let mode = setup::mode(&args)?;
    let identity = serde_json::json!({
        "tokenizer": args.required::<String>("tokenizer")?,
        "backbone": args.required::<String>("backbone")?,
        "images": images.describe,
    });
    let (train, _) = setup::pairs(
        &vq,
        &lm,
        &images.train,
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
        &images.select,
        &task,
        k,
        args.get("val-count", 128)?,
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

    let device = setup::device();
    let seed: u64 = args.get("refiner-seed", 0)?;
    <Autodiff<B> as Backend>::seed(&device, seed);
    let mut rcfg = preset
        .config(vq.code_dim())
        .with_d_model(args.get("d-model", 256)?)
        .with_n_layers(args.get("layers", 4)?)
        .with_n_heads(args.get("heads", 8)?)
        .with_max_grid(vq.grid().rows.max(vq.grid().cols));
    if args.has("hidden") {
        rcfg.inputs.hidden_size = Some(lm.config().hidden_size);
    }
    let book = Codebook::<Autodiff<B>>::new(Tensor::from_inner(vq.codebook().codes().clone()), vq.metric())?;
    let refiner = rcfg.init_with_codebook(&book, &device)?;
    eprintln!("refiner ({}): {} parameters", preset.name(), refiner.num_params());
    let mut cfg = RefinerTrainConfig::new(
        args.get("steps", 1000)?,
        args.get("batch", 32)?,
        args.get("lr", 3e-4)?,
    );
    cfg.loss = preset.loss();
    cfg.loss.soft_neighbours = args.get("soft-neighbours", 0)?;
    cfg.seed = seed;
    cfg.checkpoint_every = args.get("checkpoint-every", 500)?;
    cfg.validate_every = (cfg.steps / 10).max(1);
    let hidden = BackboneHidden::new(&lm);
    let hidden_src: Option<&dyn HiddenSource<B>> = args.has("hidden").then_some(&hidden as _);
    let data = RefinerData {
        codebook: &book,
        grid: vq.grid(),
        train: &train,
        val: Some(&val),
        devices: &devices,
        hidden: hidden_src,
    };
    let (refiner, state) = train_refiner(refiner, data, &cfg, Some(&out.join("checkpoints")), &mut |r| {
        let val = match (r.val_loss, r.val_accuracy) {
            (Some(l), Some(a)) => format!(" val loss {l:.4} acc {a:.4}"),
            _ => String::new(),
        };
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
    let refiner = refiner.valid();
    let inner_book = vq.codebook().clone();
    // the decision rule: the preset's, with the gate calibrated on the validation pairs
    let (decision, calibration) = match preset.decision() {
        Decision::Gate { .. } => {
            let (rule, point) = calibrate_gate(&refiner, &inner_book, vq.grid(), &val, 32, hidden_src)?;
            eprintln!(
                "gate calibrated on {} validation pairs: margin {}, threshold {:.3} -> accuracy {:.4} (backbone {:.4}), edit rate {:.4}",
                val.len(),
                point.margin,
                point.threshold,
                point.accuracy,
                backbone_accuracy(&val),
                point.edit_rate
            );
            (rule, serde_json::to_value(point)?)
        }
        rule => (rule, serde_json::Value::Null),
    };
    let rules = [Decision::Snap, Decision::Argmax, Decision::ExpectedSnap, decision];
    let mut by_rule = serde_json::Map::new();
    for rule in rules {
        let logits = refiner.config().heads.logits != CodeHead::None;
        if !logits && matches!(rule, Decision::Argmax | Decision::ExpectedSnap) {
            continue;
        }
        let v = validate_refiner(
            &refiner,
            &inner_book,
            vq.grid(),
            &val,
            &cfg.loss,
            Some(rule),
            cfg.batch_size,
            hidden_src,
        )?;
        by_rule.insert(rule.name().into(), serde_json::json!(v.accuracy));
    }
    let backbone_acc = backbone_accuracy(&val);
    let training = serde_json::json!({
        "preset": preset.name(), "task": task, "k": k, "loss": cfg.loss, "steps": state.step,
        "batch": cfg.batch_size, "lr": cfg.schedule, "seed": seed, "train_pairs": train.len(),
        "val_pairs": val.len(), "best": state.extra.get("best"), "val": state.extra.get("val"),
        "val_accuracy_by_rule": by_rule, "val_backbone_accuracy": backbone_acc,
        "gate_calibration": calibration,
    });
    let dtype = if args.has("f32") {
        StoreDtype::F32
    } else {
        StoreDtype::F16
    };
    save_refiner(&refiner, decision, training.clone(), out.join("refiner"), dtype)?;
    let n = state.losses.len().min(20);
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len().max(1) as f32;
    println!(
        "{}",
        serde_json::json!({
            "preset": preset.name(), "task": task, "steps": state.step,
            "loss_first": mean(&state.losses[..n]), "loss_last": mean(&state.losses[state.losses.len() - n..]),
            "best": state.extra.get("best"), "decision": decision, "val_accuracy_by_rule": training["val_accuracy_by_rule"],
            "val_backbone_accuracy": backbone_acc, "refiner": out.join("refiner"),
        })
    );
    Ok(())
}

/// The backbone's token accuracy on `pairs`.
fn backbone_accuracy(pairs: &Pairs) -> f64 {
    let (mut right, mut all) = (0usize, 0usize);
    for (g, t) in pairs.generated.iter().zip(&pairs.truth) {
        right += g.iter().zip(t).filter(|(a, b)| a == b).count();
        all += t.len();
    }
    right as f64 / all.max(1) as f64
}
