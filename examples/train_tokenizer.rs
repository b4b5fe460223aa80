//! Trains a VQGAN tokenizer from scratch on photos (step 1 of the small-LVM recipe).
//!
//! ```text
//! cargo run --release --example train_tokenizer -- [--data DIR] [--train-images 2048] \
//!     [--val-images 1000] [--resolution 64] [--hidden 64] [--mult 1,2,2] [--res-blocks 2] \
//!     [--codebook 1024] [--dim 32] [--steps 2000] [--batch 32] [--lr 2e-4] [--recon l1|l2] \
//!     [--restart-every 100] [--time-budget SECS] [--log-every 20] [--conv gemm|backend] \
//!     [--seed 0] [--checkpoint-every 500] [--out target/tokenizer-run]
//! cargo run --release --example train_tokenizer -- --eval DIR [--data DIR] [--val-images 1000]
//! ```
//!
//! Images: the shared Tiny-ImageNet training mosaics (`--data`, `AR_REFINE_DATA` or
//! `../shared/data`; the first `--train-images`), validated on `val.u8`; an image folder (80/20
//! split) or generated scenes otherwise. The token grid is `resolution / 2^(levels − 1)` per side
//! (64 px with `--mult 1,2,2` → 16×16 = 256 tokens, as LVM). Prints the validation
//! reconstruction PSNR before and after, and saves the tokenizer (`config.json` +
//! `model.safetensors`, open-MUSE/taming naming) to `OUT/tokenizer` for `examples/tokenize.rs`.
//! Checkpoints go to `OUT/checkpoints` every `--checkpoint-every` steps (an interrupted run
//! resumes: rerun the same command; `--seed` fixes the initial weights and the batches, so the
//! resumed loss curve is the uninterrupted one). `--time-budget` ends the
//! training within that many seconds (the step count is planned from the measured step time, see
//! `ar_refine::train::TimeBudget`). `--log-every N` prints one line per N steps with the step
//! time. With `--features cuda` it trains on the GPU. `--eval DIR` trains nothing: it loads the
//! tokenizer in `DIR` (any layout `Vqgan::load` reads, e.g. `scripts/demo/v2/tokenizer.py`'s
//! export) and prints its validation reconstruction PSNR and how many distinct codes the
//! validation photos use.

#[path = "common/args.rs"]
mod args;
#[path = "common/setup.rs"]
mod setup;

use std::io::Write;
use std::time::Duration;

use ar_refine::io::StoreDtype;
use ar_refine::tokenizer::{
    reconstruction_psnr, set_conv_path, train_vqgan, valid, ConvPath, Layout, PixelRange, Recon,
    VqTrainConfig, Vqgan, VqganConfig,
};
use ar_refine::train::TimeBudget;
use ar_refine::Tokenizer;
use args::{AnyResult, Args};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use setup::B;

const USAGE: &str = "cargo run --release --example train_tokenizer -- [--eval DIR] [--data DIR] [--train-images N] [--val-images N] [--resolution 64] [--hidden 64] [--mult 1,2,2] [--res-blocks 2] [--codebook 1024] [--dim 32] [--steps 2000] [--batch 32] [--lr 2e-4] [--recon l1|l2] [--restart-every 100] [--time-budget SECS] [--log-every 20] [--conv gemm|backend] [--seed 0] [--checkpoint-every 500] [--out DIR]";

fn main() -> AnyResult<()> {
    let args = Args::parse(USAGE, &[])?;
    args.only(&[
        "data",
        "train-images",
        "val-images",
        "resolution",
        "hidden",
        "mult",
        "res-blocks",
        "codebook",
        "dim",
        "steps",
        "batch",
        "lr",
        "recon",
        "restart-every",
        "time-budget",
        "log-every",
        "conv",
        "seed",
        "checkpoint-every",
        "out",
        "eval",
    ])?;
    if let Some(dir) = args.path("eval") {
        return evaluate(&args, &dir);
    }
    let resolution: usize = args.get("resolution", 64)?;
    let mult: Vec<usize> = args.list("mult", "1,2,2")?;
    let dim: usize = args.get("dim", 32)?;
    let config = VqganConfig {
        in_channels: 3,
        out_channels: 3,
        hidden_channels: args.get("hidden", 64)?,
        channel_mult: mult,
        num_res_blocks: args.get("res-blocks", 2)?,
        attn_resolutions: vec![],
        mid_attention: false,
        z_channels: dim,
        embed_dim: dim,
        num_embeddings: args.get("codebook", 1024)?,
        resolution,
        num_groups: 32,
        commitment_cost: 0.25,
        pixel_range: PixelRange::ZeroOne,
    };
    config.validate()?;
    let setup::Images { train, val, .. } = setup::images(&args)?;
    let out = setup::out_dir(&args, "target/tokenizer-run")?;
    let val_n: usize = args.get("val-images", 1000)?;
    let (train, val) = (
        train.resized(resolution)?,
        val.split(val_n).0.resized(resolution)?,
    );
    let device = setup::device();
    let seed: u64 = args.get("seed", 0)?;
    // the initial weights come from the backend's generator: seeded, a rerun (or a run killed
    // before its first checkpoint) starts from the same model
    <Autodiff<B> as Backend>::seed(&device, seed);
    let vq = Vqgan::<Autodiff<B>>::new(config.clone(), &device)?;
    eprintln!(
        "tokenizer: {} parameters, {}×{} tokens per image, codebook {} × {}",
        vq.num_params(),
        config.grid_size(),
        config.grid_size(),
        config.num_embeddings,
        config.embed_dim
    );
    let before = reconstruction_psnr(&valid(vq.clone())?, &val, 64, &device)?;
    let mut cfg = VqTrainConfig::new(
        args.get("steps", 2000)?,
        args.get("batch", 32)?,
        args.get("lr", 2e-4)?,
    );
    cfg.recon = match args.get("recon", "l1".to_string())?.as_str() {
        "l1" => Recon::L1,
        "l2" => Recon::L2,
        other => return Err(format!("--recon must be l1 or l2, got {other}").into()),
    };
    cfg.seed = seed;
    cfg.checkpoint_every = args.get("checkpoint-every", 500)?;
    let restart: usize = args.get("restart-every", 100)?;
    cfg.restart_dead_every = (restart > 0).then_some(restart);
    if let Some(secs) = args.opt::<f64>("time-budget")? {
        cfg.time_budget = Some(TimeBudget::new(Duration::from_secs_f64(secs)));
    }
    let log_every: usize = args.get("log-every", 20)?;
    set_conv_path(match args.get("conv", "gemm".to_string())?.as_str() {
        "gemm" => ConvPath::Gemm,
        "backend" => ConvPath::Backend,
        other => return Err(format!("--conv must be backend or gemm, got {other}").into()),
    });
    let mut used_sum = 0usize;
    let mut restarted = 0usize;
    let (mut last, mut last_step) = (Duration::ZERO, 0usize);
    let (vq, state) = train_vqgan(vq, &train, &cfg, Some(&out.join("checkpoints")), &mut |r| {
        used_sum += r.codes_used;
        restarted += r.restarted;
        if r.step % log_every.max(1) == 0 || r.step == r.steps {
            let per_step = (r.elapsed - last).as_secs_f64() * 1e3 / (r.step - last_step).max(1) as f64;
            (last, last_step) = (r.elapsed, r.step);
            eprintln!(
                "step {}/{} loss {:.4} recon {:.4} codes/batch {} restarted {restarted} {:.0} img/s, {per_step:.1} ms/step lately, {:.1} s",
                r.step, r.steps, r.loss, r.recon, r.codes_used, r.images_per_sec, r.elapsed.as_secs_f64()
            );
            let _ = std::io::stderr().flush();
        }
    })?;
    let train_secs = last.as_secs_f64();
    let vq = valid(vq)?;
    let after = reconstruction_psnr(&vq, &val, 64, &device)?;
    vq.save(out.join("tokenizer"), Layout::Taming, StoreDtype::F16)?;
    let n = state.losses.len().min(50);
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len().max(1) as f32;
    println!(
        "{{\"codebook\":{},\"dim\":{},\"hidden\":{},\"steps\":{},\"loss_first\":{:.4},\"loss_last\":{:.4},\"val_psnr_before\":{before:.2},\"val_psnr_after\":{after:.2},\"mean_codes_per_batch\":{:.0},\"restarted\":{restarted},\"train_secs\":{train_secs:.1}}}",
        config.num_embeddings,
        config.embed_dim,
        config.hidden_channels,
        state.step,
        mean(&state.losses[..n]),
        mean(&state.losses[state.losses.len() - n..]),
        used_sum as f64 / state.step.max(1) as f64
    );
    Ok(())
}

/// `--eval DIR`: the validation reconstruction PSNR of a saved tokenizer.
fn evaluate(args: &Args, dir: &std::path::Path) -> AnyResult<()> {
    let device = setup::device();
    let vq = Vqgan::<B>::load(dir, None, &device)?;
    let setup::Images { val, .. } = setup::images(args)?;
    let val_n: usize = args.get("val-images", 1000)?;
    let val = val.split(val_n).0.resized(vq.config().resolution)?;
    // one pass: the same sum as `reconstruction_psnr`, and the codes the photos use
    let (mut total, mut used) = (0.0, std::collections::BTreeSet::new());
    for s in (0..val.len()).step_by(64) {
        let idx: Vec<usize> = (s..(s + 64).min(val.len())).collect();
        let x = val.batch::<B>(&idx, &device)?;
        let ids = vq.encode(x.clone())?;
        total += ar_refine::eval::psnr(x, vq.decode(ids.clone())?)? * idx.len() as f64;
        used.extend(ids.into_data().iter::<i64>());
    }
    let psnr = total / val.len().max(1) as f64;
    println!(
        "{{\"tokenizer\":{:?},\"val_images\":{},\"val_psnr\":{psnr:.3},\"distinct_codes\":{},\"codebook\":{}}}",
        dir.display().to_string(),
        val.len(),
        used.len(),
        vq.config().num_embeddings
    );
    Ok(())
}
