//! What the subcommands share: the backend, argument groups (whose doc comments are the help),
//! models, images, pairs and the command line as it was run.

use std::ops::Range;
use std::path::{Path, PathBuf};

use ar_refine::backbone::{load_lora, Llama};
use ar_refine::data::{build_sentences, tokenize_sentences, ImageSet, Sentence, TokenSentence};
use ar_refine::tasks::task_by_name;
use ar_refine::tokenizer::Vqgan;
use ar_refine::train::{generate_pairs, generate_pairs_sharded, load_pairs, PairMode, PairOptions, Pairs};
use ar_refine::{ArBackbone, Sampling, Tokenizer};

use crate::progress::Progress;

pub type AnyResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The CUDA backend with `--features cuda`, else the CPU backend.
#[cfg(feature = "cuda")]
pub type B = burn::backend::Cuda;
#[cfg(not(feature = "cuda"))]
pub type B = burn::backend::NdArray;

/// The backend's default device.
pub fn device() -> burn::tensor::Device<B> {
    Default::default()
}

/// The frozen models: a VQGAN tokenizer and a LLaMA backbone whose image ids match its codes.
#[derive(clap::Args, Clone, Debug)]
pub struct ModelArgs {
    /// VQGAN checkpoint: an open-MUSE `pytorch_model.bin`, a diffusers
    /// `diffusion_pytorch_model.safetensors`, a taming `.ckpt`, this crate's `config.json` +
    /// `model.safetensors` folder, or a directory holding one.
    #[arg(long, value_name = "CKPT")]
    pub tokenizer: PathBuf,
    /// The tokenizer's configuration (default: the `config.json` beside the checkpoint).
    #[arg(long, value_name = "FILE")]
    pub tokenizer_config: Option<PathBuf>,
    /// LLaMA backbone in Hugging Face layout (`config.json` + `model.safetensors`, or sharded
    /// with `model.safetensors.index.json`) whose image-token ids match the tokenizer's codes.
    #[arg(long, value_name = "DIR")]
    pub backbone: PathBuf,
    /// LoRA adapters (PEFT layout, e.g. `train-lora`'s `OUT/lora`), merged into the backbone.
    #[arg(long, value_name = "DIR")]
    pub lora: Option<PathBuf>,
}

impl ModelArgs {
    /// The backbone (adapters merged) on `device`.
    pub fn backbone(&self, device: &burn::tensor::Device<B>) -> ar_refine::Result<Llama<B>> {
        let lm = Llama::<B>::from_pretrained(&self.backbone, device)?;
        match &self.lora {
            Some(dir) => Ok(load_lora(lm, dir, device)?.0.merge_lora()),
            None => Ok(lm),
        }
    }

    /// Tokenizer and backbone, checked to fit each other.
    pub fn load(&self) -> AnyResult<(Vqgan<B>, Llama<B>)> {
        let device = device();
        let vq = Vqgan::<B>::load(&self.tokenizer, self.tokenizer_config.as_deref(), &device)?;
        let lm = self.backbone(&device)?;
        if let Some(dir) = &self.lora {
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

    /// What the models are, for cache identities.
    pub fn identity(&self) -> serde_json::Value {
        serde_json::json!({
            "tokenizer": self.tokenizer, "backbone": self.backbone, "lora": self.lora,
        })
    }
}

/// Where the photos come from.
#[derive(clap::Args, Clone, Debug)]
pub struct DataArgs {
    /// The shared Tiny-ImageNet folder (`train-jpg/` mosaics and `val.u8`) or any folder of
    /// images (split 70/10/20 into training, selection and evaluation photos). Default:
    /// `$AR_REFINE_DATA`, else `../shared/data` beside the checkout, else generated scenes.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Training photos of the shared data: `N` (the first N) or `A..B` of the mosaics.
    #[arg(long, value_name = "N|A..B", default_value = "2048", value_parser = parse_range)]
    pub train_images: Range<usize>,
    /// Selection photos of the shared data (checkpoint choice, gate calibration): `A..B` of the
    /// mosaics, disjoint from the training photos [default: the 1,024 after them].
    #[arg(long, value_name = "A..B", value_parser = parse_range)]
    pub select_images: Option<Range<usize>>,
}

/// `A..B` or `N` (= `0..N`), with `A < B`.
fn parse_range(text: &str) -> Result<Range<usize>, String> {
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
        _ => Err(format!("takes N or A..B with A < B, got {text:?}")),
    }
}

/// The images of a run: training prompts, selection prompts (checkpoints, calibration) and the
/// evaluation photos; no image is in two of them.
pub struct Images {
    pub train: ImageSet,
    pub select: ImageSet,
    pub val: ImageSet,
    /// What they are, for cache identities.
    pub describe: serde_json::Value,
}

impl DataArgs {
    /// The shared data's `--train-images` / `--select-images` ranges of the mosaics and the
    /// 1,000 photos of `val.u8` for evaluation (never used to train or to choose settings); a
    /// folder of images split 70 / 10 / 20 %; otherwise generated scenes.
    pub fn images(&self) -> AnyResult<Images> {
        // An explicit --data must exist: a typo must not fall back to other photos.
        if let Some(dir) = self.data.as_deref().filter(|d| !d.exists()) {
            return Err(format!("--data {}: no such file or directory", dir.display()).into());
        }
        if let Some(dir) = shared_data_dir(self.data.as_deref()) {
            let train_range = self.train_images.clone();
            let select_range = self
                .select_images
                .clone()
                .unwrap_or(train_range.end..train_range.end + 1024);
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
            let describe = serde_json::json!({
                "train": format!("{train_range:?}"), "select": format!("{select_range:?}"),
            });
            return Ok(Images {
                train,
                select,
                val,
                describe,
            });
        }
        let (all, what) = match &self.data {
            Some(dir) => (ImageSet::from_folder(dir, 64)?, format!("{}", dir.display())),
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
}

/// The task and its prompts' shape.
#[derive(clap::Args, Clone, Debug)]
pub struct TaskArgs {
    /// The task: colorization, inpainting or edges.
    #[arg(long, default_value = "colorization")]
    pub task: String,
    /// Demonstration pairs per prompt.
    #[arg(long, default_value_t = 1)]
    pub k: usize,
}

/// The training prompts of a model trained on the frozen backbone (a refiner, LoRA adapters):
/// the same builder, count and seed for both, so that they see the same prompts.
#[derive(clap::Args, Clone, Debug)]
pub struct TrainPromptArgs {
    #[command(flatten)]
    pub task: TaskArgs,
    /// Training prompts (from the training photos).
    #[arg(long, default_value_t = 512)]
    pub train_count: usize,
}

/// How the frozen backbone answers the prompts.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Generation with the sampling flags.
    Free,
    /// Teacher-forced argmax (each token given the true ones before it).
    Teacher,
}

/// How the backbone samples.
#[derive(clap::Args, Clone, Debug)]
pub struct SamplingArgs {
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Sample among the K most likely image tokens.
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,
    /// Nucleus sampling: the smallest set of image tokens whose probability reaches P.
    #[arg(long, value_name = "P")]
    pub top_p: Option<f32>,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SamplingArgs {
    pub fn sampling(&self) -> Sampling {
        let mut s = Sampling::temperature(self.temperature).with_seed(self.seed);
        s.top_k = self.top_k;
        s.top_p = self.top_p;
        s
    }
}

/// The backbone's answers to prompts: how they are made and on which devices.
#[derive(clap::Args, Clone, Debug)]
pub struct PairArgs {
    /// How the frozen backbone answers: free-running generation or teacher-forced argmax.
    #[arg(long, value_enum, default_value = "free")]
    pub mode: Mode,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Several devices (CUDA ordinals with `--features cuda`; CPU replicas otherwise): pair
    /// generation is sharded, one backbone replica per device.
    #[arg(long, value_name = "IDS", value_delimiter = ',')]
    pub devices: Vec<usize>,
    /// Stop after the backbone's answers (e.g. make them on a GPU machine, continue elsewhere
    /// from the cache with the same flags and `--out`).
    #[arg(long)]
    pub pairs_only: bool,
}

impl PairArgs {
    pub fn mode(&self) -> PairMode {
        match self.mode {
            Mode::Teacher => PairMode::TeacherForced,
            Mode::Free => PairMode::FreeRunning(self.sampling.sampling()),
        }
    }

    /// The devices of `--devices` (default: the one default device).
    pub fn devices(&self) -> Vec<burn::tensor::Device<B>> {
        if self.devices.is_empty() {
            return vec![device()];
        }
        #[cfg(feature = "cuda")]
        let devices = self
            .devices
            .iter()
            .map(|&i| burn::backend::cuda::CudaDevice::new(i))
            .collect();
        #[cfg(not(feature = "cuda"))]
        let devices = self.devices.iter().map(|_| device()).collect();
        devices
    }
}

/// One set of prompts for the frozen backbone.
pub struct PromptSet<'a> {
    pub images: &'a ImageSet,
    pub task: &'a str,
    pub k: usize,
    pub count: usize,
    pub seed: u64,
    /// Where the pairs are cached (resumable).
    pub cache: PathBuf,
}

/// The frozen backbone's answers to `set` (cached, resumable), and the sentences themselves
/// (for targets and grids). With several devices, generation is sharded over them.
pub fn pairs(
    vq: &Vqgan<B>,
    lm: &Llama<B>,
    set: PromptSet<'_>,
    models: &ModelArgs,
    how: &PairArgs,
    identity: serde_json::Value,
) -> AnyResult<(Pairs, Vec<Sentence>)> {
    let mode = how.mode();
    let (task, k, count, seed, cache) = (set.task, set.k, set.count, set.seed, set.cache.as_path());
    let config =
        serde_json::json!({ "task": task, "k": k, "count": count, "seed": seed, "models": identity });
    if let Some(pairs) = load_pairs(cache, &mode, &config)? {
        // complete cache (e.g. generated on a GPU machine): no tokenizing or generating
        let t = task_by_name(task)?;
        let sentences = build_sentences(
            &set.images.resized(vq.image_size().0)?,
            t.as_ref(),
            k,
            count,
            seed,
        )?;
        eprintln!("pairs: {} from {}", pairs.len(), cache.display());
        return Ok((pairs, sentences));
    }
    let (sentences, tokens) = sentences(vq, set.images, task, k, count, seed)?;
    let opts = PairOptions {
        mode: mode.clone(),
        batch: pair_batch(),
        cache: Some(cache),
        config,
    };
    let start = std::time::Instant::now();
    let bar = Progress::new("pairs", tokens.len(), "prompts", pair_batch());
    let mut progress = |done: usize, total: usize| {
        bar.set(done, total, String::new, || {
            format!("pairs {done}/{total} ({:.0} s)", start.elapsed().as_secs_f64())
        })
    };
    let devices = how.devices();
    let pairs = if devices.len() > 1 {
        let load = |d: &burn::tensor::Device<B>| models.backbone(d);
        generate_pairs_sharded::<B, _, _>(&devices, load, &tokens, &opts, &mut progress)?
    } else {
        generate_pairs(lm, &tokens, &opts, &device(), &mut progress)?
    };
    bar.finish();
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

/// Creates `out` (and its parents).
pub fn out_dir(out: &Path) -> AnyResult<PathBuf> {
    std::fs::create_dir_all(out)?;
    Ok(out.to_path_buf())
}

/// The command as it was run (`ar-refine SUBCOMMAND ARGS`, quoted for a POSIX shell), for the
/// reports.
pub fn command_line() -> String {
    let quote = |a: &str| {
        let plain = !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./,=:@%+".contains(c));
        match plain {
            true => a.to_string(),
            false => format!("'{}'", a.replace('\'', r"'\''")),
        }
    };
    std::iter::once("ar-refine".to_string())
        .chain(std::env::args().skip(1).map(|a| quote(&a)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Mean of the first and of the last `n` losses.
pub fn first_last(losses: &[f32], n: usize) -> (f32, f32) {
    let n = losses.len().min(n);
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len().max(1) as f32;
    (mean(&losses[..n]), mean(&losses[losses.len() - n..]))
}

#[path = "../common/data_dir.rs"]
mod data_dir;
pub use data_dir::shared_data_dir;
