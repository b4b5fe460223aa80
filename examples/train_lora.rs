//! The LoRA baseline of the small-LVM measurement: fine-tunes low-rank adapters on the frozen
//! backbone with the refiner's training prompts (same task, `K`, count and seed as
//! `examples/train_refiner.rs`), next-token loss on the answer image only, teacher-forced.
//!
//! ```text
//! cargo run --release --example train_lora -- --tokenizer CKPT --backbone DIR [--data DIR] \
//!     [--train-images 2048 | A..B] [--task colorization] [--k 1] [--train-count 512] [--steps 1000] \
//!     [--batch 32] [--lr 1e-3] [--rank 8] [--alpha 16] [--out target/lora-run]
//! ```
//!
//! Saves the adapters (`OUT/lora`, PEFT layout) and the merged backbone (`OUT/backbone`, for
//! `--backbone` of `examples/evaluate.rs`), and prints the loss before and after.

#[path = "common/args.rs"]
mod args;
#[path = "common/setup.rs"]
mod setup;

use std::io::Write;

use ar_refine::backbone::{save_lora, train_lm, Llama, LmTrainConfig, LoraConfig};
use ar_refine::io::StoreDtype;
use ar_refine::ArBackbone;
use args::{AnyResult, Args};
use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use setup::B;

const USAGE: &str = "cargo run --release --example train_lora -- --tokenizer CKPT [--tokenizer-config F] --backbone DIR [--data DIR] [--train-images N|A..B] [--task colorization|inpainting|edges] [--k 1] [--train-count 512] [--steps 1000] [--batch 32] [--lr 1e-3] [--rank 8] [--alpha 16] [--out DIR]";

fn main() -> AnyResult<()> {
    let args = Args::parse(USAGE, &[])?;
    args.only(
        &[
            &setup::TRAINING_FLAGS[..],
            &["steps", "batch", "lr", "rank", "alpha", "out"],
        ]
        .concat(),
    )?;
    let (vq, lm) = setup::models(&args)?;
    let out = setup::out_dir(&args, "target/lora-run")?;
    let images = setup::images(&args)?;
    let task: String = args.get("task", "colorization".to_string())?;
    let k: usize = args.get("k", 1)?;
    // the refiner's training prompts: same builder, count and seed (1) as train_refiner
    let (_, tokens) = setup::sentences(&vq, &images.train, &task, k, args.get("train-count", 512)?, 1)?;
    let offset = lm.image_token_ids().start as i64;
    let seqs: Vec<Vec<i64>> = tokens
        .iter()
        .map(|t| t.prompt.iter().chain(&t.target).map(|c| c + offset).collect())
        .collect();
    let prompt_len = tokens[0].prompt.len();
    drop(lm);
    let device = setup::device();
    let lcfg = LoraConfig::new(args.get("rank", 8)?, args.get("alpha", 16.0)?);
    let lm = Llama::<Autodiff<B>>::from_pretrained(args.required::<String>("backbone")?, &device)?
        .with_lora(&lcfg, &device)?;
    let adapter_params = lm.lora_param_count();
    eprintln!("LoRA: {adapter_params} adapter parameters");
    let mut cfg = LmTrainConfig::new(
        args.get("steps", 1000)?,
        args.get("batch", 32)?,
        args.get("lr", 1e-3)?,
    );
    cfg.loss_from = prompt_len;
    cfg.weight_decay = 0.0;
    let (lm, state) = train_lm(lm, &seqs, &cfg, Some(&out.join("checkpoints")), &mut |r| {
        if r.step % 50 == 0 || r.step == r.steps {
            eprint!(
                "\rstep {}/{} loss {:.4} {:.0} tok/s   ",
                r.step, r.steps, r.loss, r.tokens_per_sec
            );
            let _ = std::io::stderr().flush();
        }
    })?;
    eprintln!();
    let lm = lm.valid();
    save_lora(&lm, &lcfg, out.join("lora"))?;
    lm.merge_lora()
        .save_pretrained(out.join("backbone"), StoreDtype::F32)?;
    let n = state.losses.len().min(20);
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len().max(1) as f32;
    println!(
        "{}",
        serde_json::json!({
            "task": task, "k": k, "steps": state.step, "batch": cfg.batch_size,
            "adapter_params": adapter_params, "loss_first": mean(&state.losses[..n]),
            "loss_last": mean(&state.losses[state.losses.len() - n..]),
            "merged_backbone": out.join("backbone"),
        })
    );
    Ok(())
}
