//! Shared setup of the train_refiner and evaluate examples: backend, models, images, pairs.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

use ar_refine::backbone::{load_lora, Llama};
use ar_refine::data::{build_sentences, tokenize_sentences, ImageSet, Sentence, TokenSentence};
use ar_refine::tasks::task_by_name;
use ar_refine::tokenizer::Vqgan;
use ar_refine::train::{generate_pairs, generate_pairs_sharded, load_pairs, PairMode, PairOptions, Pairs};
use ar_refine::{ArBackbone, Sampling, Tokenizer};

use super::args::{AnyResult, Args};

/// Flags shared by the examples that train on a frozen backbone's prompts.
pub const TRAINING_FLAGS: [&str; 9] = [
    "tokenizer",
    "tokenizer-config",
    "backbone",
    "data",
    "train-images",
    "select-images",
    "task",
    "k",
    "train-count",
];

/// The CUDA backend with `--features cuda`, else the CPU backend.
#[cfg(feature = "cuda")]
pub type B = burn::backend::Cuda;
#[cfg(not(feature = "cuda"))]
pub type B = burn::backend::NdArray;

pub fn device() -> burn::tensor::Device<B> {
    Default::default()
}

/// `--devices 0,1`: the devices for data-parallel pair generation and refiner training (CUDA
/// ordinals with `--features cuda`; on the CPU backend every entry is a replica on the CPU, which
/// exercises the same code). Default: the one default device.
pub fn devices(args: &Args) -> AnyResult<Vec<burn::tensor::Device<B>>> {
    if args.path("devices").is_none() {
        return Ok(vec![device()]);
    }
    let ids: Vec<usize> = args.list("devices", "0")?;
    #[cfg(feature = "cuda")]
    let devices = ids
        .into_iter()
        .map(burn::backend::cuda::CudaDevice::new)
        .collect();
    #[cfg(not(feature = "cuda"))]
    let devices = ids.iter().map(|_| device()).collect();
    Ok(devices)
}

/// `--backbone DIR [--lora DIR]` on `device` (adapters merged into the weights).
pub fn backbone(args: &Args, device: &burn::tensor::Device<B>) -> ar_refine::Result<Llama<B>> {
    let dir: PathBuf = args
        .path("backbone")
        .ok_or_else(|| ar_refine::Error::Config("--backbone is required".into()))?;
    let lm = Llama::<B>::from_pretrained(dir, device)?;
    match args.path("lora") {
        // adapters (examples/train_lora.rs or PEFT) folded into the weights
        Some(dir) => Ok(load_lora(lm, &dir, device)?.0.merge_lora()),
        None => Ok(lm),
    }
}

/// `--tokenizer CKPT [--tokenizer-config F]` and `--backbone DIR [--lora DIR]`, checked to fit
/// each other.
pub fn models(args: &Args) -> AnyResult<(Vqgan<B>, Llama<B>)> {
    let device = device();
    let ckpt: String = args.required("tokenizer")?;
    let vq = Vqgan::<B>::load(&ckpt, args.path("tokenizer-config").as_deref(), &device)?;
    args.required::<String>("backbone")?;
    let lm = backbone(args, &device)?;
    if let Some(dir) = args.path("lora") {
        eprintln!("LoRA adapters from {} merged", dir.display());
    }
    if vq.codebook_size() != lm.image_token_ids().len() {
        return Err(format!(
            "tokenizer has {} codes but the backbone has {} image ids ({:?})",
            vq.codebook_size(),
            lm.image_token_ids().len(),
            lm.image_token_ids()
        )
        .into());
    }
    eprintln!(
        "tokenizer: {} codes × {}, {} tokens per {}px image; backbone: {} layers, hidden {}",
        vq.codebook_size(),
        vq.code_dim(),
        vq.grid().len(),
        vq.image_size().0,
        lm.config().num_hidden_layers,
        lm.config().hidden_size
    );
    Ok((vq, lm))
}

/// The images of a run: training prompts, validation (selection) prompts for checkpoints and
/// calibration, and the evaluation photos; no image is in two of them.
pub struct Images {
    pub train: ImageSet,
    pub select: ImageSet,
    pub val: ImageSet,
    /// What they are, for cache identities.
    pub describe: serde_json::Value,
}

/// `A..B` or `N` (= `0..N`).
fn range(args: &Args, name: &str, default: std::ops::Range<usize>) -> AnyResult<std::ops::Range<usize>> {
    let Some(text) = args.opt::<String>(name)? else {
        return Ok(default);
    };
    let parsed = match text.split_once("..") {
        Some((a, b)) => a
            .trim()
            .parse()
            .ok()
            .zip(b.trim().parse().ok())
            .map(|(a, b)| a..b),
        None => text.trim().parse().ok().map(|n| 0..n),
    };
    match parsed {
        Some(r) if r.start < r.end => Ok(r),
        _ => Err(format!("--{name} takes N or A..B with A < B, got {text:?}").into()),
    }
}

/// With `--data DIR` holding the shared Tiny-ImageNet files: `--train-images` (N or A..B,
/// default 0..2048) and `--select-images` (A..B, default the 1,024 photos after the training
/// range) of the training mosaics, and the 1,000 photos of `val.u8` for evaluation (never used
/// to train or to choose settings). With a folder of images: 70 / 10 / 20 %. Otherwise generated
/// scenes.
pub fn images(args: &Args) -> AnyResult<Images> {
    let explicit = args.path("data");
    // An explicit --data must exist: without this check a typo silently fell back to
    // AR_REFINE_DATA or ../shared/data.
    if let Some(dir) = explicit.as_deref().filter(|d| !d.exists()) {
        return Err(format!("--data {}: no such file or directory", dir.display()).into());
    }
    if let Some(dir) = shared_data_dir(explicit.as_deref()) {
        let train_range = range(args, "train-images", 0..2048)?;
        let select_range = range(args, "select-images", train_range.end..train_range.end + 1024)?;
        if select_range.start < train_range.end && train_range.start < select_range.end {
            return Err("--select-images overlaps --train-images".into());
        }
        let train = ImageSet::from_mosaics(dir.join("train-jpg"), train_range.clone())?;
        let select = ImageSet::from_mosaics(dir.join("train-jpg"), select_range.clone())?;
        let val = ImageSet::from_raw_u8(dir.join("val.u8"), 64)?;
        eprintln!(
            "images: {} train ({train_range:?}) + {} selection ({select_range:?}) mosaic photos, {} val photos from {}",
            train.len(),
            select.len(),
            val.len(),
            dir.display()
        );
        let describe =
            serde_json::json!({ "train": format!("{train_range:?}"), "select": format!("{select_range:?}") });
        return Ok(Images {
            train,
            select,
            val,
            describe,
        });
    }
    let (all, what) = match explicit {
        Some(dir) => (ImageSet::from_folder(&dir, 64)?, format!("{}", dir.display())),
        None => (ImageSet::synthetic(700, 64, 1), "generated scenes".to_string()),
    };
    let (train, rest) = all.split(all.len() * 7 / 10);
    let (select, val) = rest.split(all.len() / 10);
    eprintln!(
        "images: {} train + {} selection + {} val from {what} (70/10/20 split)",
        train.len(),
        select.len(),
        val.len()
    );
    let describe = serde_json::json!({ "split": "70/10/20", "source": what });
    Ok(Images {
        train,
        select,
        val,
        describe,
    })
}

/// `--mode free|teacher` with the sampling flags.
pub fn mode(args: &Args) -> AnyResult<PairMode> {
    match args.get("mode", "free".to_string())?.as_str() {
        "teacher" => Ok(PairMode::TeacherForced),
        "free" => {
            let mut s = Sampling::temperature(args.get("temperature", 0.0)?).with_seed(args.get("seed", 0)?);
            s.top_k = args.opt("top-k")?;
            s.top_p = args.opt("top-p")?;
            Ok(PairMode::FreeRunning(s))
        }
        other => Err(format!("--mode must be free or teacher, got {other}").into()),
    }
}

/// Sentences of `task` with `k` demonstrations from `set`, their pairs from the frozen backbone
/// (cached under `cache`), and the sentences themselves (for targets and grids). With several
/// `devices`, generation is sharded over them (one replica of `--backbone` per device).
#[allow(clippy::too_many_arguments)]
pub fn pairs(
    vq: &Vqgan<B>,
    lm: &Llama<B>,
    set: &ImageSet,
    task: &str,
    k: usize,
    count: usize,
    seed: u64,
    mode: &PairMode,
    cache: &Path,
    identity: serde_json::Value,
    (args, devices): (&Args, &[burn::tensor::Device<B>]),
) -> AnyResult<(Pairs, Vec<Sentence>)> {
    let device = device();
    let config =
        serde_json::json!({ "task": task, "k": k, "count": count, "seed": seed, "models": identity });
    if let Some(pairs) = load_pairs(cache, mode, &config)? {
        // complete cache (e.g. generated on a GPU machine): no tokenizing or generating
        let t = task_by_name(task)?;
        let sentences = build_sentences(&set.resized(vq.image_size().0)?, t.as_ref(), k, count, seed)?;
        eprintln!("pairs: {} from {}", pairs.len(), cache.display());
        return Ok((pairs, sentences));
    }
    let (sentences, tokens) = sentences(vq, set, task, k, count, seed)?;
    let opts = PairOptions {
        mode: mode.clone(),
        batch: pair_batch(),
        cache: Some(cache),
        config,
    };
    let start = std::time::Instant::now();
    let mut progress = |done, total| {
        eprint!("\rpairs {done}/{total} ({:.0} s)", start.elapsed().as_secs_f64());
        let _ = std::io::stderr().flush();
    };
    let pairs = if devices.len() > 1 {
        let load = |d: &burn::tensor::Device<B>| backbone(args, d);
        generate_pairs_sharded::<B, _, _>(devices, load, &tokens, &opts, &mut progress)?
    } else {
        generate_pairs(lm, &tokens, &opts, &device, &mut progress)?
    };
    eprintln!();
    // generation time beside the cache, for "refinement time as a fraction of generation time"
    let timing = serde_json::json!({
        "seconds": start.elapsed().as_secs_f64(),
        "prompts": pairs.len(),
        "batch": pair_batch(),
        "backend": std::any::type_name::<B>(),
        "devices": devices.len().max(1),
    });
    std::fs::write(cache.join("generation.json"), timing.to_string())?;
    Ok((pairs, sentences))
}

/// `count` visual sentences of `task` with `k` demonstrations from `set` (seeded), and their
/// codes.
pub fn sentences(
    vq: &Vqgan<B>,
    set: &ImageSet,
    task: &str,
    k: usize,
    count: usize,
    seed: u64,
) -> AnyResult<(Vec<Sentence>, Vec<TokenSentence>)> {
    let t = task_by_name(task)?;
    let sentences = build_sentences(&set.resized(vq.image_size().0)?, t.as_ref(), k, count, seed)?;
    let tokens = tokenize_sentences(vq, &sentences, 128, &device())?;
    Ok((sentences, tokens))
}

/// Prompts generated at once: `AR_REFINE_PAIR_BATCH` (default 16; larger on a GPU).
pub fn pair_batch() -> usize {
    std::env::var("AR_REFINE_PAIR_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&b| b > 0)
        .unwrap_or(16)
}

pub fn out_dir(args: &Args, default: &str) -> AnyResult<PathBuf> {
    let out = args.path("out").unwrap_or_else(|| PathBuf::from(default));
    std::fs::create_dir_all(&out)?;
    Ok(out)
}

#[path = "data_dir.rs"]
mod data_dir;
pub use data_dir::shared_data_dir;
