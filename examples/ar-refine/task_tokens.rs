//! `ar-refine task-tokens`: every photo's task pairs tokenized once, for training a backbone
//! outside the crate.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ar_refine::data::ImageSet;
use ar_refine::rng::SplitMix64;
use ar_refine::tasks::task_by_name;
use ar_refine::tokenizer::Vqgan;
use ar_refine::Tokenizer;
use image::RgbImage;

use crate::common::{self, AnyResult, B};
use crate::progress::Progress;

/// The arguments of `ar-refine task-tokens` (its help text is the doc comment of
/// `Command::TaskTokens` in `main.rs`).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// VQGAN checkpoint (any layout the loader reads).
    #[arg(long, value_name = "CKPT")]
    tokenizer: PathBuf,
    /// Every `train-NNN.jpg` mosaic below DIR (searched recursively), in order of `NNN`; photo
    /// `g` is tile `g % 1024` of mosaic `g / 1024`.
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with = "raw",
        required_unless_present = "raw"
    )]
    mosaics: Option<PathBuf>,
    /// A raw `uint8 [n, 64, 64, 3]` file such as `val.u8`.
    #[arg(long, value_name = "FILE")]
    raw: Option<PathBuf>,
    /// Name of the split in the output files.
    #[arg(long, default_value = "train")]
    split: String,
    /// Tasks to tokenize.
    #[arg(long, value_delimiter = ',', default_value = "colorization,inpainting,edges")]
    tasks: Vec<String>,
    /// Pairs per photo and task (each with its own random choices, e.g. inpainting masks).
    #[arg(long, default_value_t = 1)]
    variants: usize,
    /// Only the first N photos [default: all].
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Pairs encoded at once.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Seed of the tasks' random choices.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

pub fn run(args: Args) -> AnyResult<()> {
    let device = common::device();
    let tokenizer = &args.tokenizer;
    let vq = Vqgan::<B>::load(tokenizer, None, &device)?;
    let size = vq.config().resolution;
    let (photos, ids) = match (&args.mosaics, &args.raw) {
        (Some(dir), _) => mosaics(dir)?,
        (None, Some(file)) => {
            let set = ImageSet::from_raw_u8(file, size)?;
            let ids = (0..set.len()).collect();
            (set, ids)
        }
        (None, None) => return Err("give one of --mosaics DIR and --raw FILE".into()),
    };
    let n = args.limit.unwrap_or(photos.len()).min(photos.len());
    let (split, variants, batch, seed) = (&args.split, args.variants, args.batch.max(1), args.seed);
    let out = common::out_dir(&args.out)?;
    let tokens = vq.grid().rows * vq.grid().cols;
    eprintln!("{n} photos, {variants} variant(s) each, {tokens} codes per image");
    for (t, name) in args.tasks.iter().enumerate() {
        let task = task_by_name(name)?;
        let start = Instant::now();
        // one generator per task, so a task's pairs do not depend on the others asked for
        let mut rng = SplitMix64::new(seed ^ (t as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let path = out.join(format!("{split}-{}.u16", task.name()));
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let mut pending: Vec<RgbImage> = Vec::with_capacity(2 * batch);
        let mut written = 0usize;
        let bar = Progress::new(name, n, "photos", 1);
        for p in 0..n {
            let px = photos.pixels(p).ok_or("photo missing")?;
            let image = RgbImage::from_raw(size as u32, size as u32, px.to_vec()).ok_or("bad photo")?;
            for _ in 0..variants {
                let (query, answer) = task.pair(&image, &mut rng)?;
                pending.push(query);
                pending.push(answer);
            }
            if pending.len() >= 2 * batch || p + 1 == n {
                written += encode(&vq, &pending, size, &device, &mut file)?;
                pending.clear();
                bar.set(p + 1, n, String::new, || format!("{name}: {}/{n} photos", p + 1));
            }
        }
        file.flush()?;
        bar.finish();
        let meta = serde_json::json!({
            "task": task.name(),
            "split": split,
            "pairs": written / 2,
            "variants": variants,
            "tokens_per_image": tokens,
            "grid": [vq.grid().rows, vq.grid().cols],
            "codebook": vq.config().num_embeddings,
            "layout": "little-endian u16 [pairs, 2 (query, answer), tokens]; pair p*variants+v = variant v of photo_ids[p]",
            "photo_ids": &ids[..n],
            "seed": seed,
            "tokenizer": tokenizer.display().to_string(),
            "command": common::command_line(),
        });
        std::fs::write(
            out.join(format!("{split}-{}.json", task.name())),
            meta.to_string(),
        )?;
        eprintln!(
            "{}: {} pairs in {:.1} s -> {}",
            task.name(),
            written / 2,
            start.elapsed().as_secs_f64(),
            path.display()
        );
    }
    Ok(())
}

/// The photos of every `train-NNN.jpg` below `dir`, in order of `NNN`, and their global ids.
fn mosaics(dir: &Path) -> AnyResult<(ImageSet, Vec<usize>)> {
    let mut found: Vec<(usize, PathBuf)> = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Some(m) = path
                .file_name()
                .and_then(|f| f.to_str())
                .and_then(|f| f.strip_prefix("train-")?.strip_suffix(".jpg")?.parse().ok())
            {
                found.push((m, path));
            }
        }
    }
    found.sort();
    if found.is_empty() {
        return Err(format!("no train-NNN.jpg mosaic below {}", dir.display()).into());
    }
    let (mut pixels, mut ids) = (Vec::new(), Vec::new());
    for (m, path) in &found {
        let parent = path.parent().ok_or("mosaic without a folder")?;
        let set = ImageSet::from_mosaics(parent, m * 1024..(m + 1) * 1024)?;
        for i in 0..set.len() {
            pixels.extend_from_slice(set.pixels(i).ok_or("tile missing")?);
        }
        ids.extend(m * 1024..(m + 1) * 1024);
    }
    Ok((ImageSet::from_pixels(pixels, 64)?, ids))
}

/// Encodes `images` (query, answer, query, ...) and appends their codes as u16; returns how many
/// images it wrote.
fn encode(
    vq: &Vqgan<B>,
    images: &[RgbImage],
    size: usize,
    device: &burn::tensor::Device<B>,
    file: &mut impl Write,
) -> AnyResult<usize> {
    let pixels: Vec<u8> = images.iter().flat_map(|i| i.as_raw().iter().copied()).collect();
    let set = ImageSet::from_pixels(pixels, size)?;
    let idx: Vec<usize> = (0..set.len()).collect();
    let codes = vq.encode(set.batch::<B>(&idx, device)?)?;
    let mut bytes = Vec::with_capacity(codes.dims()[0] * codes.dims()[1] * 2);
    for c in codes.into_data().iter::<i64>() {
        let c = u16::try_from(c).map_err(|_| format!("code {c} does not fit u16"))?;
        bytes.extend_from_slice(&c.to_le_bytes());
    }
    file.write_all(&bytes)?;
    Ok(images.len())
}
