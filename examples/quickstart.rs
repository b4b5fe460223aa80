//! The README's first command: the shipped small LVM (tokenizer + backbone, trained from
//! scratch by the recipes in `scripts/demo/v2/`, `models/tiny-lvm-v2/MODEL_CARD.md`) and its
//! refiners, on real photos, CPU only.
//!
//! ```text
//! cargo run --release --example quickstart -- [--images DIR] [--models models/tiny-lvm-v2] [--k 2] \
//!     [--out target/quickstart]
//! ```
//!
//! For colorization, inpainting and edge detection, every photo becomes a query once (its `K`
//! demonstrations are other photos), the frozen backbone generates the answer token by token,
//! and two refiners refine it: the task's best built-in refiner (`refiner-TASK`: the
//! categorical corrector with its calibrated gate) and the paper's (`refiner-TASK-paper`: cosine
//! loss, nearest-code snap). All are scored against the true answer. Prints one table per task
//! (token accuracy, PSNR, SSIM, what each refiner changed) and writes `OUT/TASK/comparison.png`
//! (query | backbone | paper refiner | best refiner | truth) with the full report beside it.
//! Photos: `--images DIR` (any image files, centre-cropped to 64×64), else the six bundled
//! CC0/public-domain photos in `assets/photos/` (credits there). A `--models` folder without
//! `refiner-*` folders (a backbone whose refiners are not trained yet) shows the backbone alone.
//! Models: `--models DIR`, else `$AR_REFINE_MODELS`, else `models/tiny-lvm-v2` of the checkout
//! (the weights are not in the published crate).

use std::path::PathBuf;
use std::time::Instant;

use ar_refine::backbone::Llama;
use ar_refine::data::{build_sentences, tokenize_sentences, ImageSet};
use ar_refine::eval::{compare, markdown, write_report, CompareOptions, EvalReport, Method};
use ar_refine::refiner::load_refiner;
use ar_refine::tasks::task_by_name;
use ar_refine::tokenizer::Vqgan;
use ar_refine::train::{generate_pairs, PairMode, PairOptions};
use ar_refine::{Refiner, Sampling, Tokenizer};
use burn::backend::NdArray;
use clap::Parser;

type B = NdArray;

type AnyResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The shipped small LVM and its refiners on real photos: a table per task and a comparison
/// grid.
#[derive(Parser)]
struct Args {
    /// A folder of photos (any image files, centre-cropped to 64×64) [default: the bundled
    /// photos in `assets/photos/`].
    #[arg(long, value_name = "DIR")]
    images: Option<PathBuf>,
    /// The model folder (`tokenizer/`, `backbone/`, `refiner-*/`) [default:
    /// `$AR_REFINE_MODELS`, else `models/tiny-lvm-v2` of the checkout].
    #[arg(long, value_name = "DIR")]
    models: Option<PathBuf>,
    /// Demonstration pairs per prompt.
    #[arg(long, default_value_t = 2)]
    k: usize,
    /// Output folder.
    #[arg(long, default_value = "target/quickstart")]
    out: PathBuf,
}
const TASKS: [&str; 3] = ["colorization", "inpainting", "edges"];

fn main() -> AnyResult<()> {
    let args = Args::parse();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // --models, else $AR_REFINE_MODELS, else the checkout's models/tiny-lvm-v2 (the published
    // crate does not carry the 21 MB of weights: point either at a checkout's copy)
    let models = args
        .models
        .clone()
        .or_else(|| std::env::var_os("AR_REFINE_MODELS").map(PathBuf::from))
        .unwrap_or_else(|| root.join("models/tiny-lvm-v2"));
    let (out, k) = (args.out.clone(), args.k);
    let device = Default::default();
    let start = Instant::now();
    // the command as it was run, for the reports
    let given: Vec<String> = std::env::args().skip(1).collect();
    let command = if given.is_empty() {
        "cargo run --release --example quickstart".to_string()
    } else {
        format!("cargo run --release --example quickstart -- {}", given.join(" "))
    };

    let vq = Vqgan::<B>::load(models.join("tokenizer"), None, &device)?;
    let lm = Llama::<B>::from_pretrained(models.join("backbone"), &device)?;
    let dir = args.images.clone().unwrap_or_else(|| root.join("assets/photos"));
    let photos = ImageSet::from_folder(&dir, vq.image_size().0)?;
    eprintln!(
        "{} photos from {}; tokenizer {} codes, backbone {} parameters",
        photos.len(),
        dir.display(),
        vq.codebook_size(),
        burn::module::Module::num_params(&lm)
    );

    let mut reports = Vec::new();
    for task in TASKS {
        // the refiners the model folder has (a backbone without refiners yet is shown alone)
        let mut refiners = Vec::new();
        for (name, folder) in [
            ("paper refiner", format!("refiner-{task}-paper")),
            ("best refiner", format!("refiner-{task}")),
        ] {
            if models.join(&folder).exists() {
                refiners.push((name, load_refiner::<B>(models.join(folder), &device)?));
            }
        }
        let t = task_by_name(task)?;
        let sentences = build_sentences(&photos, t.as_ref(), k, photos.len(), 11)?;
        let tokens = tokenize_sentences(&vq, &sentences, 16, &device)?;
        let opts = PairOptions {
            mode: PairMode::FreeRunning(Sampling::greedy()),
            batch: 8,
            cache: None,
            config: serde_json::Value::Null,
        };
        let t0 = Instant::now();
        let pairs = generate_pairs(&lm, &tokens, &opts, &device, &mut |_, _| {})?;
        let gen_ms = t0.elapsed().as_secs_f64() * 1e3 / pairs.len() as f64;
        let targets: Vec<_> = sentences.iter().map(|s| s.target.clone()).collect();
        let methods: Vec<_> = refiners
            .iter()
            .map(|(name, r)| Method {
                name: (*name).into(),
                runs: vec![(&r.refiner as &dyn Refiner<B>, Some(r.decision))],
                gate_curve: false,
            })
            .collect();
        let opts = CompareOptions {
            batch: 8,
            bootstrap: 1000,
            ..Default::default()
        };
        let (comparison, images) = compare(&vq, &pairs, Some(&targets), &methods, &opts, &device)?;
        let refine: Vec<String> = comparison
            .methods
            .iter()
            .map(|m| format!(", {} {:.1} ms", m.name, m.refine_ms_per_sample))
            .collect();
        eprintln!(
            "{task}: generation {gen_ms:.0} ms per image{} (refinement per image)",
            refine.concat()
        );
        let report = EvalReport {
            task: task.to_string(),
            k,
            command: command.clone(),
            comparison,
        };
        let queries: Vec<_> = sentences
            .iter()
            .take(6)
            .filter_map(|s| s.images.last().cloned())
            .collect();
        let files = write_report(out.join(task), std::slice::from_ref(&report), &images, &queries)?;
        eprintln!("  wrote {}", files.grid.display());
        reports.push(report);
    }
    println!("{}", markdown(&reports));
    println!("done in {:.0} s", start.elapsed().as_secs_f64());
    Ok(())
}
