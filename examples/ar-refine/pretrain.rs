//! `ar-refine pretrain`: a small LLaMA backbone pretrained on visual sentences.

use std::path::PathBuf;
use std::time::Duration;

use ar_refine::backbone::{train_lm, Llama, LlamaConfig, LmTrainConfig};
use ar_refine::data::{build_sentences, tokenize_sentences, TokenSentence};
use ar_refine::io::StoreDtype;
use ar_refine::tasks::task_by_name;
use ar_refine::tokenizer::Vqgan;
use ar_refine::train::TimeBudget;
use ar_refine::Tokenizer;
use burn::backend::Autodiff;
use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};

use crate::common::{self, command_line, AnyResult, DataArgs, B};
use crate::progress::Progress;

/// The arguments of `ar-refine pretrain` (its help text is the doc comment of
/// `Command::Pretrain` in `main.rs`).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// VQGAN checkpoint (e.g. `train-tokenizer`'s `OUT/tokenizer`).
    #[arg(long, value_name = "CKPT")]
    tokenizer: PathBuf,
    /// The tokenizer's configuration (default: the `config.json` beside the checkpoint).
    #[arg(long, value_name = "FILE")]
    tokenizer_config: Option<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
    /// Validation photos (the first N of the evaluation photos).
    #[arg(long, default_value_t = 256)]
    val_images: usize,
    /// Tasks mixed in training.
    #[arg(long, value_delimiter = ',', default_value = "colorization,inpainting,edges")]
    tasks: Vec<String>,
    /// Demonstration pairs per sentence (one set of sentences per value).
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    k: Vec<usize>,
    /// Sentences per task and per K.
    #[arg(long, default_value_t = 2048)]
    sentences: usize,
    /// Hidden size.
    #[arg(long, default_value_t = 320)]
    hidden: usize,
    /// MLP size.
    #[arg(long, default_value_t = 864)]
    intermediate: usize,
    /// Transformer layers.
    #[arg(long, default_value_t = 6)]
    layers: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 5)]
    heads: usize,
    /// Training steps (planned from the measured step time under `--time-budget`).
    #[arg(long, default_value_t = 4000)]
    steps: usize,
    /// Sentences per step.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// End the training within this many seconds.
    #[arg(long, value_name = "SECS")]
    time_budget: Option<f64>,
    /// Without a terminal: a progress line every N steps.
    #[arg(long, default_value_t = 25)]
    log_every: usize,
    /// Seed of the initial weights and the batches.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Steps between checkpoints.
    #[arg(long, default_value_t = 500)]
    checkpoint_every: usize,
    /// Output folder.
    #[arg(long, default_value = "target/backbone-run")]
    out: PathBuf,
}

pub fn run(args: Args) -> AnyResult<()> {
    let device = common::device();
    let vq = Vqgan::<B>::load(&args.tokenizer, args.tokenizer_config.as_deref(), &device)?;
    let out = common::out_dir(&args.out)?;
    let ks = &args.k;
    if ks.is_empty() || args.tasks.is_empty() {
        return Err("--k and --tasks need at least one value".into());
    }
    let common::Images {
        train: train_imgs,
        val: val_imgs,
        ..
    } = args.data.images()?;
    let side = vq.image_size().0;
    let train_imgs = train_imgs.resized(side)?;
    let val_imgs = val_imgs.split(args.val_images).0.resized(side)?;
    let n_tok = vq.grid().len();
    // visual sentences, tokenized once
    let start = std::time::Instant::now();
    let mut train: Vec<Vec<i64>> = Vec::new();
    let mut val: Vec<(String, Vec<TokenSentence>)> = Vec::new();
    for (ti, task) in args.tasks.iter().enumerate() {
        let t = task_by_name(task)?;
        for (ki, &k) in ks.iter().enumerate() {
            let seed = 1000 + 10 * ti as u64 + ki as u64;
            let s = build_sentences(&train_imgs, t.as_ref(), k, args.sentences, seed)?;
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
        args.hidden,
        args.intermediate,
        args.layers,
        args.heads,
    )
    .with_context(max_len.next_power_of_two())
    .with_image_tokens(0..vq.codebook_size());
    // seeded initial weights: a rerun (or a run killed before its first checkpoint) starts alike
    <Autodiff<B> as Backend>::seed(&device, args.seed);
    let lm = Llama::<Autodiff<B>>::new(config.clone(), &device)?;
    eprintln!(
        "backbone: {} parameters; {} training sentences of {:?} tokens",
        lm.num_params(),
        train.len(),
        ks.iter().map(|k| (2 * k + 2) * n_tok).collect::<Vec<_>>()
    );
    let mut cfg = LmTrainConfig::new(args.steps, args.batch, args.lr);
    if let Some(secs) = args.time_budget {
        cfg.time_budget = Some(TimeBudget::new(Duration::from_secs_f64(secs)));
    }
    cfg.seed = args.seed;
    cfg.checkpoint_every = args.checkpoint_every;
    let mut train_secs = 0.0;
    let bar = Progress::new("train", cfg.steps, "steps", args.log_every);
    let (lm, state) = train_lm(lm, &train, &cfg, Some(&out.join("checkpoints")), &mut |r| {
        train_secs = r.elapsed.as_secs_f64();
        let status = format!(
            "loss {:.4} lr {:.2e} grad {:.2} {:.0} tok/s",
            r.loss, r.lr, r.grad_norm, r.tokens_per_sec
        );
        bar.step(r.step, r.steps, &status);
    })?;
    bar.finish();
    let lm = lm.valid();
    lm.save_pretrained(out.join("backbone"), StoreDtype::F16)?;
    // validation: teacher-forced cross-entropy and accuracy on the answer image
    let mut per_task = serde_json::Map::new();
    for (task, sents) in &val {
        let (ce, acc) = answer_metrics(&lm, sents, n_tok, &device)?;
        eprintln!("validation {task}: answer cross-entropy {ce:.4}, token accuracy {acc:.4}");
        per_task.insert(task.clone(), serde_json::json!({ "ce": ce, "token_acc": acc }));
    }
    let (first, last_loss) = common::first_last(&state.losses, 50);
    println!(
        "{}",
        serde_json::json!({
            "params": lm.num_params(),
            "config": config,
            "steps": state.step,
            "batch": cfg.batch_size,
            "train_secs": train_secs,
            "loss_first": first,
            "loss_last": last_loss,
            "val": per_task,
            "command": command_line(),
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
