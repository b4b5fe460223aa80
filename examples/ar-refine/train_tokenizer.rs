//! `ar-refine train-tokenizer`: a VQGAN trained from scratch on photos.

use std::path::PathBuf;
use std::time::Duration;

use ar_refine::io::StoreDtype;
use ar_refine::tokenizer::{
    reconstruction_psnr, train_vqgan, valid, ConvPath, Layout, PixelRange, Recon, VqTrainConfig, Vqgan,
    VqganConfig,
};
use ar_refine::train::TimeBudget;
use ar_refine::Tokenizer;
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;

use crate::common::{self, command_line, AnyResult, DataArgs, B};
use crate::progress::Progress;

/// The arguments of `ar-refine train-tokenizer` (its help text is the doc comment of
/// `Command::TrainTokenizer` in `main.rs`).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Evaluate the tokenizer in DIR (any layout the loader reads) instead of training.
    #[arg(long, value_name = "DIR")]
    eval: Option<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
    /// Validation photos (the first N of the evaluation photos).
    #[arg(long, default_value_t = 1000)]
    val_images: usize,
    /// Image side in pixels.
    #[arg(long, default_value_t = 64)]
    resolution: usize,
    /// Channels of the first level.
    #[arg(long, default_value_t = 64)]
    hidden: usize,
    /// Channel multiplier per level (each level after the first halves the grid).
    #[arg(long, value_delimiter = ',', default_value = "1,2,2")]
    mult: Vec<usize>,
    /// Residual blocks per level.
    #[arg(long, default_value_t = 2)]
    res_blocks: usize,
    /// Codebook size.
    #[arg(long, default_value_t = 1024)]
    codebook: usize,
    /// Code dimension.
    #[arg(long, default_value_t = 32)]
    dim: usize,
    /// Training steps (planned from the measured step time under `--time-budget`).
    #[arg(long, default_value_t = 2000)]
    steps: usize,
    /// Images per step.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-4)]
    lr: f64,
    /// Reconstruction loss.
    #[arg(long, value_enum, default_value = "l1")]
    recon: ReconArg,
    /// Restart unused codes every N steps (0: never).
    #[arg(long, default_value_t = 100)]
    restart_every: usize,
    /// End the training within this many seconds.
    #[arg(long, value_name = "SECS")]
    time_budget: Option<f64>,
    /// Without a terminal: a progress line every N steps.
    #[arg(long, default_value_t = 20)]
    log_every: usize,
    /// How convolutions run: `gemm` (im2col + matmul, the crate's) or `backend` (Burn's conv2d).
    #[arg(long, value_enum, default_value = "gemm")]
    conv: ConvArg,
    /// Seed of the initial weights and the batches.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Steps between checkpoints.
    #[arg(long, default_value_t = 500)]
    checkpoint_every: usize,
    /// Output folder.
    #[arg(long, default_value = "target/tokenizer-run")]
    out: PathBuf,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum ReconArg {
    L1,
    L2,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum ConvArg {
    Gemm,
    Backend,
}

pub fn run(args: Args) -> AnyResult<()> {
    if let Some(dir) = &args.eval {
        return evaluate(&args, dir);
    }
    let config = VqganConfig {
        in_channels: 3,
        out_channels: 3,
        hidden_channels: args.hidden,
        channel_mult: args.mult.clone(),
        num_res_blocks: args.res_blocks,
        attn_resolutions: vec![],
        mid_attention: false,
        z_channels: args.dim,
        embed_dim: args.dim,
        num_embeddings: args.codebook,
        resolution: args.resolution,
        num_groups: 32,
        commitment_cost: 0.25,
        pixel_range: PixelRange::ZeroOne,
    };
    config.validate()?;
    let common::Images { train, val, .. } = args.data.images()?;
    let out = common::out_dir(&args.out)?;
    let (train, val) = (
        train.resized(args.resolution)?,
        val.split(args.val_images).0.resized(args.resolution)?,
    );
    let device = common::device();
    // the initial weights come from the backend's generator: seeded, a rerun (or a run killed
    // before its first checkpoint) starts from the same model
    <Autodiff<B> as Backend>::seed(&device, args.seed);
    let path = match args.conv {
        ConvArg::Gemm => ConvPath::Gemm,
        ConvArg::Backend => ConvPath::Backend,
    };
    let vq = Vqgan::<Autodiff<B>>::new(config.clone(), &device)?.with_conv_path(path);
    eprintln!(
        "tokenizer: {} parameters, {}×{} tokens per image, codebook {} × {}",
        vq.num_params(),
        config.grid_size(),
        config.grid_size(),
        config.num_embeddings,
        config.embed_dim
    );
    let before = reconstruction_psnr(&valid(vq.clone())?, &val, 64, &device)?;
    let mut cfg = VqTrainConfig::new(args.steps, args.batch, args.lr);
    cfg.recon = match args.recon {
        ReconArg::L1 => Recon::L1,
        ReconArg::L2 => Recon::L2,
    };
    cfg.seed = args.seed;
    cfg.checkpoint_every = args.checkpoint_every;
    cfg.restart_dead_every = (args.restart_every > 0).then_some(args.restart_every);
    if let Some(secs) = args.time_budget {
        cfg.time_budget = Some(TimeBudget::new(Duration::from_secs_f64(secs)));
    }
    let mut used_sum = 0usize;
    let mut restarted = 0usize;
    let mut train_secs = 0.0;
    let bar = Progress::new("train", cfg.steps, "steps", args.log_every);
    let (vq, state) = train_vqgan(vq, &train, &cfg, Some(&out.join("checkpoints")), &mut |r| {
        used_sum += r.codes_used;
        restarted += r.restarted;
        let status = format!(
            "loss {:.4} recon {:.4} codes/batch {} restarted {restarted} {:.0} img/s",
            r.loss, r.recon, r.codes_used, r.images_per_sec
        );
        bar.step(r.step, r.steps, &status);
        train_secs = r.elapsed.as_secs_f64();
    })?;
    bar.finish();
    let vq = valid(vq)?;
    let after = reconstruction_psnr(&vq, &val, 64, &device)?;
    vq.save(out.join("tokenizer"), Layout::Taming, StoreDtype::F16)?;
    let (first, last_loss) = common::first_last(&state.losses, 50);
    println!(
        "{}",
        serde_json::json!({
            "codebook": config.num_embeddings, "dim": config.embed_dim, "hidden": config.hidden_channels,
            "steps": state.step, "loss_first": round(first as f64, 4), "loss_last": round(last_loss as f64, 4),
            "val_psnr_before": round(before, 2), "val_psnr_after": round(after, 2),
            "mean_codes_per_batch": (used_sum as f64 / state.step.max(1) as f64).round(),
            "restarted": restarted, "train_secs": round(train_secs, 1), "command": command_line(),
        })
    );
    Ok(())
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

/// `--eval DIR`: the validation reconstruction PSNR of a saved tokenizer.
fn evaluate(args: &Args, dir: &std::path::Path) -> AnyResult<()> {
    let device = common::device();
    let vq = Vqgan::<B>::load(dir, None, &device)?;
    let common::Images { val, .. } = args.data.images()?;
    let val = val.split(args.val_images).0.resized(vq.config().resolution)?;
    // one pass: the same sum as `reconstruction_psnr`, and the codes the photos use
    let (mut total, mut used) = (0.0, std::collections::BTreeSet::new());
    for s in (0..val.len()).step_by(64) {
        let idx: Vec<usize> = (s..(s + 64).min(val.len())).collect();
        let x = val.batch::<B>(&idx, &device)?;
        let ids = vq.encode(x.clone())?;
        total += ar_refine::metrics::psnr(x, vq.decode(ids.clone())?)? * idx.len() as f64;
        used.extend(ids.into_data().iter::<i64>());
    }
    let psnr = total / val.len().max(1) as f64;
    println!(
        "{}",
        serde_json::json!({
            "tokenizer": dir, "val_images": val.len(), "val_psnr": round(psnr, 3),
            "distinct_codes": used.len(), "codebook": vq.config().num_embeddings,
        })
    );
    Ok(())
}
