//! `ar-refine train-lora`: the LoRA baseline of the small-LVM measurement.

use std::path::PathBuf;

use ar_refine::backbone::{save_lora, train_lm, Llama, LmTrainConfig, LoraConfig};
use ar_refine::io::StoreDtype;
use ar_refine::ArBackbone;
use burn::backend::Autodiff;
use burn::module::AutodiffModule;

use crate::common::{self, command_line, AnyResult, DataArgs, ModelArgs, TrainPromptArgs, B};
use crate::progress::Progress;

/// The arguments of `ar-refine train-lora` (its help text is the doc comment of
/// `Command::TrainLora` in `main.rs`).
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    models: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    prompts: TrainPromptArgs,
    /// Training steps.
    #[arg(long, default_value_t = 1000)]
    steps: usize,
    /// Sentences per step.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Adapter rank.
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// Adapter scale numerator (the update is scaled by alpha / rank).
    #[arg(long, default_value_t = 16.0)]
    alpha: f64,
    /// Output folder.
    #[arg(long, default_value = "target/lora-run")]
    out: PathBuf,
}

pub fn run(args: Args) -> AnyResult<()> {
    if args.models.lora.is_some() {
        return Err(
            "train-lora trains new adapters on --backbone: give a merged backbone instead of --lora".into(),
        );
    }
    let (vq, lm) = args.models.load()?;
    let out = common::out_dir(&args.out)?;
    let images = args.data.images()?;
    let (task, k) = (&args.prompts.task.task, args.prompts.task.k);
    // the refiner's training prompts: same builder, count and seed (1) as train-refiner
    let (_, tokens) = common::sentences(&vq, &images.train, task, k, args.prompts.train_count, 1)?;
    let offset = lm.image_token_ids().start as i64;
    let seqs: Vec<Vec<i64>> = tokens
        .iter()
        .map(|t| t.prompt.iter().chain(&t.target).map(|c| c + offset).collect())
        .collect();
    let prompt_len = tokens.first().map_or(0, |t| t.prompt.len());
    drop(lm);
    let device = common::device();
    let lcfg = LoraConfig::new(args.rank, args.alpha);
    let lm =
        Llama::<Autodiff<B>>::from_pretrained(&args.models.backbone, &device)?.with_lora(&lcfg, &device)?;
    let adapter_params = lm.lora_param_count();
    eprintln!("LoRA: {adapter_params} adapter parameters");
    let mut cfg = LmTrainConfig::new(args.steps, args.batch, args.lr);
    cfg.loss_from = prompt_len;
    cfg.weight_decay = 0.0;
    let bar = Progress::new("train", cfg.steps, "steps", 50);
    let (lm, state) = train_lm(lm, &seqs, &cfg, Some(&out.join("checkpoints")), &mut |r| {
        let status = format!("loss {:.4} {:.0} tok/s", r.loss, r.tokens_per_sec);
        bar.step(r.step, r.steps, &status);
    })?;
    bar.finish();
    let lm = lm.valid();
    save_lora(&lm, &lcfg, out.join("lora"))?;
    lm.merge_lora()
        .save_pretrained(out.join("backbone"), StoreDtype::F32)?;
    let (first, last) = common::first_last(&state.losses, 20);
    println!(
        "{}",
        serde_json::json!({
            "task": task, "k": k, "steps": state.step, "batch": cfg.batch_size,
            "adapter_params": adapter_params, "loss_first": first, "loss_last": last,
            "merged_backbone": out.join("backbone"), "command": command_line(),
        })
    );
    Ok(())
}
