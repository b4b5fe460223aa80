//! Pretrains a small LLaMA backbone on visual sentences (step 2 of the small-LVM recipe), the
//! way LVM was trained: next-token prediction over every token of sentences of `K`
//! demonstration pairs and a query with its answer, here for colorization, inpainting and edge
//! detection mixed.
//!
//! ```text
//! cargo run --release --example pretrain_backbone -- --tokenizer DIR [--data DIR] \
//!     [--train-images 6144] [--val-images 256] [--tasks colorization,inpainting,edges] \
//!     [--k 1,2,3] [--sentences 2048] [--hidden 320] [--intermediate 864] [--layers 6] \
//!     [--heads 5] [--steps 4000] [--batch 16] [--lr 1e-3] [--time-budget SECS] \
//!     [--log-every 25] [--seed 0] [--checkpoint-every 500] [--out target/backbone-run]
//! ```
//!
//! - `--tokenizer`: a VQGAN checkpoint (e.g. `examples/train_tokenizer.rs`'s `OUT/tokenizer`).
//!   The backbone's vocabulary is the codebook (ids `0..K`, as LVM's image ids).
//! - `--sentences`: sentences per task and per `K` (training images as queries, demonstrations
//!   drawn from the same set); validation sentences come from `val.u8` (never trained on).
//! - `--time-budget`: end within that many seconds (step count planned from the measured rate).
//! - Checkpoints go to `OUT/checkpoints` every `--checkpoint-every` steps; an interrupted run
//!   resumes when the same command runs again. `--seed` fixes the initial weights and the
//!   batches, so the resumed loss curve is the uninterrupted one.
//!
//! Saves `OUT/backbone` (`config.json` + f16 `model.safetensors`, HF layout, for `--backbone`)
//! and prints one JSON line: parameters, steps, training loss first/last, and the validation
//! cross-entropy and teacher-forced token accuracy on the query's answer image per task.

#[path = "common/args.rs"]
mod args;
#[path = "common/setup.rs"]
mod setup;

use std::io::Write;
use std::time::Duration;

use ar_refine::backbone::Llama;
use ar_refine::backbone::{train_lm, LlamaConfig, LmTrainConfig};
use ar_refine::data::{build_sentences, tokenize_sentences, TokenSentence};
use ar_refine::io::StoreDtype;
use ar_refine::tasks::task_by_name;
use ar_refine::tokenizer::Vqgan;
use ar_refine::train::TimeBudget;
use ar_refine::Tokenizer;
use args::{AnyResult, Args};
use burn::backend::Autodiff;
use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use setup::B;

const USAGE: &str = "cargo run --release --example pretrain_backbone -- --tokenizer DIR [--data DIR] [--train-images N] [--val-images N] [--tasks colorization,inpainting,edges] [--k 1,2,3] [--sentences 2048] [--hidden 320] [--intermediate 864] [--layers 6] [--heads 5] [--steps 4000] [--batch 16] [--lr 1e-3] [--time-budget SECS] [--log-every 25] [--seed 0] [--checkpoint-every 500] [--out DIR]";

fn main() -> AnyResult<()> {
    let args = Args::parse(USAGE, &[])?;
    args.only(&[
        "tokenizer",
        "tokenizer-config",
        "data",
        "train-images",
        "val-images",
        "tasks",
        "k",
        "sentences",
        "hidden",
        "intermediate",
        "layers",
        "heads",
        "steps",
        "batch",
        "lr",
        "time-budget",
        "log-every",
        "seed",
        "checkpoint-every",
        "out",
    ])?;
    let device = setup::device();
    let vq = Vqgan::<B>::load(
        args.required::<String>("tokenizer")?,
        args.path("tokenizer-config").as_deref(),
        &device,
    )?;
    let out = setup::out_dir(&args, "target/backbone-run")?;
    let tasks: Vec<String> = args.list("tasks", "colorization,inpainting,edges")?;
    let ks: Vec<usize> = args.list("k", "1,2,3")?;
    let per: usize = args.get("sentences", 2048)?;
    let setup::Images {
        train: train_imgs,
        val: val_imgs,
        ..
    } = setup::images(&args)?;
    let side = vq.image_size().0;
    let train_imgs = train_imgs.resized(side)?;
    let val_imgs = val_imgs.split(args.get("val-images", 256)?).0.resized(side)?;
    let n_tok = vq.grid().len();

    // visual sentences, tokenized once
    let start = std::time::Instant::now();
    let mut train: Vec<Vec<i64>> = Vec::new();
    let mut val: Vec<(String, Vec<TokenSentence>)> = Vec::new();
    for (ti, task) in tasks.iter().enumerate() {
        let t = task_by_name(task)?;
        for (ki, &k) in ks.iter().enumerate() {
            let seed = 1000 + 10 * ti as u64 + ki as u64;
            let s = build_sentences(&train_imgs, t.as_ref(), k, per, seed)?;
            for ts in tokenize_sentences(&vq, &s, 256, &device)? {
                let mut seq = ts.prompt;
                seq.extend(ts.target);
                train.push(seq);
            }
        }
        let k = ks[ks.len() / 2];
        let s = build_sentences(&val_imgs, t.as_ref(), k, val_imgs.len(), 7 + ti as u64)?;
        val.push((task.clone(), tokenize_sentences(&vq, &s, 256, &device)?));
        eprintln!("tokenized {task}: {:.0} s", start.elapsed().as_secs_f64());
    }
    let max_len = train.iter().map(Vec::len).max().unwrap_or(0);

    let config = LlamaConfig::new(
        vq.codebook_size(),
        args.get("hidden", 320)?,
        args.get("intermediate", 864)?,
        args.get("layers", 6)?,
        args.get("heads", 5)?,
    )
    .with_context(max_len.next_power_of_two())
    .with_image_tokens(0..vq.codebook_size());
    let seed: u64 = args.get("seed", 0)?;
    // seeded initial weights: a rerun (or a run killed before its first checkpoint) starts alike
    <Autodiff<B> as Backend>::seed(&device, seed);
    let lm = Llama::<Autodiff<B>>::new(config.clone(), &device)?;
    eprintln!(
        "backbone: {} parameters; {} training sentences of {:?} tokens",
        lm.num_params(),
        train.len(),
        ks.iter().map(|k| (2 * k + 2) * n_tok).collect::<Vec<_>>()
    );
    let mut cfg = LmTrainConfig::new(
        args.get("steps", 4000)?,
        args.get("batch", 16)?,
        args.get("lr", 1e-3)?,
    );
    if let Some(secs) = args.opt::<f64>("time-budget")? {
        cfg.time_budget = Some(TimeBudget::new(Duration::from_secs_f64(secs)));
    }
    cfg.seed = seed;
    cfg.checkpoint_every = args.get("checkpoint-every", 500)?;
    let log_every: usize = args.get("log-every", 25)?;
    let (mut last, mut last_step) = (Duration::ZERO, 0usize);
    let (lm, state) = train_lm(lm, &train, &cfg, Some(&out.join("checkpoints")), &mut |r| {
        if r.step % log_every.max(1) == 0 || r.step == r.steps {
            let per_step = (r.elapsed - last).as_secs_f64() * 1e3 / (r.step - last_step).max(1) as f64;
            (last, last_step) = (r.elapsed, r.step);
            eprintln!(
                "step {}/{} loss {:.4} lr {:.2e} grad {:.2} {:.0} tok/s, {per_step:.1} ms/step lately, {:.1} s",
                r.step,
                r.steps,
                r.loss,
                r.lr,
                r.grad_norm,
                r.tokens_per_sec,
                r.elapsed.as_secs_f64()
            );
            let _ = std::io::stderr().flush();
        }
    })?;
    let lm = lm.valid();
    lm.save_pretrained(out.join("backbone"), StoreDtype::F16)?;

    // validation: teacher-forced cross-entropy and accuracy on the answer image
    let mut per_task = serde_json::Map::new();
    for (task, sents) in &val {
        let (ce, acc) = answer_metrics(&lm, sents, n_tok, &device)?;
        eprintln!("validation {task}: answer cross-entropy {ce:.4}, token accuracy {acc:.4}");
        per_task.insert(task.clone(), serde_json::json!({ "ce": ce, "token_acc": acc }));
    }
    let n = state.losses.len().min(50);
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len().max(1) as f32;
    println!(
        "{}",
        serde_json::json!({
            "params": lm.num_params(),
            "config": config,
            "steps": state.step,
            "batch": cfg.batch_size,
            "train_secs": last.as_secs_f64(),
            "loss_first": mean(&state.losses[..n]),
            "loss_last": mean(&state.losses[state.losses.len() - n..]),
            "val": per_task,
        })
    );
    Ok(())
}

/// Mean cross-entropy and argmax accuracy of the answer's `n` tokens given the prompt and the
/// answer's earlier tokens (teacher forcing), in batches of 16.
fn answer_metrics(
    lm: &Llama<B>,
    sents: &[TokenSentence],
    n: usize,
    device: &burn::tensor::Device<B>,
) -> AnyResult<(f64, f64)> {
    let (mut ce, mut correct, mut count) = (0.0, 0usize, 0usize);
    for chunk in sents.chunks(16) {
        let len = chunk[0].prompt.len() + n;
        let flat: Vec<i64> = chunk
            .iter()
            .flat_map(|s| s.prompt.iter().chain(&s.target).copied())
            .collect();
        let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [chunk.len(), len]), device);
        let hidden = lm.forward_hidden(tokens.clone().narrow(1, 0, len - 1), None)?;
        let logits = lm.logits(hidden.narrow(1, len - 1 - n, n));
        let targets = tokens.narrow(1, len - n, n);
        let logp = burn::tensor::activation::log_softmax(logits.clone(), 2);
        let nll = logp
            .gather(2, targets.clone().unsqueeze_dim(2))
            .neg()
            .sum()
            .into_scalar();
        let hits = logits
            .argmax(2)
            .squeeze_dim::<2>(2)
            .equal(targets)
            .int()
            .sum()
            .into_scalar();
        ce += nll.elem::<f64>();
        correct += hits.elem::<i64>() as usize;
        count += chunk.len() * n;
    }
    Ok((ce / count.max(1) as f64, correct as f64 / count.max(1) as f64))
}
