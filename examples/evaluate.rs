//! Evaluates a frozen backbone alone and with refiners, side by side on the same cached backbone
//! outputs, and writes a report.
//!
//! ```text
//! cargo run --release --example evaluate -- --tokenizer CKPT [--tokenizer-config F] \
//!     --backbone DIR [--lora DIR] --refiners NAME=DIR[:DIR...][@RULE][,NAME=...] [--data DIR] \
//!     [--task colorization] [--k 1,2,3] [--count 64] [--mode free|teacher] \
//!     [--temperature T --top-k K --top-p P --seed S] [--grid 6] [--bootstrap 2000] \
//!     [--gate-curve NAME,...] [--devices 0,1] [--out target/eval-run]
//! ```
//!
//! For every K in `--k`, `--count` prompts (K demonstration pairs + query) whose images are all
//! evaluation photos (`val.u8` of the shared data, or 20 % of an image folder; never used for
//! training or for choosing settings) are run through the frozen backbone (pairs cached in
//! `OUT/pairs-k*`), and every method of `--refiners` refines the same outputs. A method is a
//! name, one refiner directory per seed (written by `examples/train_refiner.rs`, separated by
//! `:`; `init(PRESET)` is that preset's refiner at its initialisation, the identity control) and
//! optionally a decision rule (`@snap`, `@argmax`, `@expected_snap`; default: the rule saved with
//! each refiner, e.g. its calibrated gate). Measured against the task's true outputs:
//! token accuracy, top-5 accuracy, PSNR and SSIM against the true photo and against the decoded
//! true codes, the per-position cosine-distance curve, and the codes each method changed /
//! fixed / broke; per-image deltas against the backbone (mean over seeds) with 95 % bootstrap
//! intervals. `--gate-curve` lists methods whose accuracy-vs-edit-rate curve to record.
//! Writes `OUT/report.json`, `OUT/report.md`, `OUT/comparison.png` (query | backbone |
//! methods | truth, first K), `OUT/position_error.svg` and `OUT/gate.svg`, and prints the
//! Markdown tables. `--pairs-only` stops after the backbone's outputs (no `--refiners` needed),
//! e.g. to generate them on a GPU machine and evaluate elsewhere with the same flags and `--out`.
//! `--devices 0,1` shards the backbone's generation over several GPUs (one replica each).

#[path = "common/args.rs"]
mod args;
#[path = "common/setup.rs"]
mod setup;

use ar_refine::eval::{compare, markdown, write_report, CompareOptions, EvalReport, Method};
use ar_refine::refiner::{load_refiner, Decision, LoadedRefiner, Preset};
use ar_refine::tokenizer::Vqgan;
use ar_refine::train::{BackboneHidden, HiddenSource};
use ar_refine::{Refiner, Tokenizer};
use args::{AnyResult, Args};
use setup::B;

const USAGE: &str = "cargo run --release --example evaluate -- --tokenizer CKPT [--tokenizer-config F] --backbone DIR [--lora DIR] --refiners NAME=DIR[:DIR...][@RULE][,...] [--data DIR] [--task colorization|inpainting|edges] [--k 1,2,3] [--count 64] [--mode free|teacher] [--temperature T --top-k K --top-p P --seed S] [--grid 6] [--bootstrap 2000] [--gate-curve NAME,...] [--pairs-only] [--devices 0,1] [--out DIR]";

/// A method of `--refiners`: its name, refiners (one per seed) and rule override.
struct Spec {
    name: String,
    runs: Vec<LoadedRefiner<B>>,
    rule: Option<Decision>,
}

/// `init(PRESET)`: that preset's refiner at its initialisation (the identity control), else a
/// directory written by `train_refiner`.
fn load(dir: &str, vq: &Vqgan<B>, device: &burn::tensor::Device<B>) -> AnyResult<LoadedRefiner<B>> {
    match dir.strip_prefix("init(").and_then(|r| r.strip_suffix(')')) {
        Some(name) => {
            let preset: Preset = name.parse()?;
            let cfg = preset
                .config(vq.code_dim())
                .with_d_model(32)
                .with_n_heads(4)
                .with_n_layers(1);
            Ok(LoadedRefiner {
                refiner: cfg.init_with_codebook(vq.codebook(), device)?,
                decision: preset.decision(),
                training: serde_json::Value::Null,
            })
        }
        None => Ok(load_refiner::<B>(dir, device)?),
    }
}

fn parse_specs(text: &str, vq: &Vqgan<B>, device: &burn::tensor::Device<B>) -> AnyResult<Vec<Spec>> {
    let mut out = Vec::new();
    for part in text.split(',').filter(|p| !p.trim().is_empty()) {
        let (name, rest) = part
            .split_once('=')
            .ok_or_else(|| format!("--refiners: {part:?} is not NAME=DIR[:DIR...][@RULE]"))?;
        let (dirs, rule) = match rest.rsplit_once('@') {
            Some((d, r)) => (d, Some(r)),
            None => (rest, None),
        };
        let rule = match rule {
            None => None,
            Some("snap") => Some(Decision::Snap),
            Some("argmax") => Some(Decision::Argmax),
            Some("expected_snap") => Some(Decision::ExpectedSnap),
            Some(r) => {
                return Err(format!("--refiners: unknown rule {r:?} (snap, argmax, expected_snap)").into())
            }
        };
        let runs = dirs
            .split(':')
            .map(|d| load(d, vq, device))
            .collect::<AnyResult<Vec<_>>>()?;
        out.push(Spec {
            name: name.trim().to_string(),
            runs,
            rule,
        });
    }
    if out.is_empty() {
        return Err("--refiners names no method".into());
    }
    Ok(out)
}

fn main() -> AnyResult<()> {
    let args = Args::parse(USAGE, &["pairs-only"])?;
    args.only(&[
        "tokenizer",
        "tokenizer-config",
        "backbone",
        "lora",
        "refiners",
        "data",
        "train-images",
        "select-images",
        "task",
        "k",
        "count",
        "mode",
        "temperature",
        "top-k",
        "top-p",
        "seed",
        "grid",
        "bootstrap",
        "gate-curve",
        "out",
        "pairs-only",
        "devices",
    ])?;
    let (vq, lm) = setup::models(&args)?;
    let out = setup::out_dir(&args, "target/eval-run")?;
    let device = setup::device();
    let devices = setup::devices(&args)?;
    let images = setup::images(&args)?;
    let task: String = args.get("task", "colorization".to_string())?;
    let ks: Vec<usize> = args.list("k", "1")?;
    let count: usize = args.get("count", 64)?;
    let keep: usize = args.get("grid", 6)?;
    let mode = setup::mode(&args)?;
    let identity = serde_json::json!({
        "tokenizer": args.required::<String>("tokenizer")?,
        "backbone": args.required::<String>("backbone")?,
        "lora": args.opt::<String>("lora")?,
    });
    let command = std::iter::once("cargo run --release --example evaluate --".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let pairs_only = args.has("pairs-only");
    let specs = match pairs_only {
        true => Vec::new(),
        false => parse_specs(&args.required::<String>("refiners")?, &vq, &device)?,
    };
    let gate_curves: Vec<String> = match args.opt::<String>("gate-curve")? {
        Some(list) => list.split(',').map(|s| s.trim().to_string()).collect(),
        None => Vec::new(),
    };
    let hidden = BackboneHidden::new(&lm);
    let needs_hidden = specs
        .iter()
        .flat_map(|s| &s.runs)
        .any(|r| r.refiner.needs().hidden);
    let mut reports = Vec::new();
    let mut first = None;
    for &k in &ks {
        let (pairs, sentences) = setup::pairs(
            &vq,
            &lm,
            &images.val,
            &task,
            k,
            count,
            2,
            &mode,
            &out.join(format!("pairs-k{k}")),
            identity.clone(),
            (&args, &devices),
        )?;
        if pairs_only {
            continue;
        }
        let methods: Vec<Method<'_, B>> = specs
            .iter()
            .map(|s| Method {
                name: s.name.clone(),
                runs: s
                    .runs
                    .iter()
                    .map(|r| (&r.refiner as &dyn Refiner<B>, Some(s.rule.unwrap_or(r.decision))))
                    .collect(),
                gate_curve: gate_curves.contains(&s.name),
            })
            .collect();
        let targets: Vec<_> = sentences.iter().map(|s| s.target.clone()).collect();
        let opts = CompareOptions {
            keep,
            bootstrap: args.get("bootstrap", 2000)?,
            hidden: needs_hidden.then_some(&hidden as &dyn HiddenSource<B>),
            ..Default::default()
        };
        let (comparison, images) = compare(&vq, &pairs, Some(&targets), &methods, &opts, &device)?;
        if first.is_none() {
            let queries: Vec<_> = sentences
                .iter()
                .take(keep)
                .filter_map(|s| s.images.last().cloned())
                .collect();
            first = Some((images, queries));
        }
        reports.push(EvalReport {
            task: task.clone(),
            k,
            command: command.clone(),
            comparison,
        });
    }
    if pairs_only {
        println!("pairs for K = {ks:?} in {}", out.display());
        return Ok(());
    }
    let Some((images, queries)) = first else {
        return Err("--k is empty".into());
    };
    let files = write_report(&out, &reports, &images, &queries)?;
    println!("{}", markdown(&reports));
    println!(
        "wrote {}, {}, {}, {}",
        files.json.display(),
        files.markdown.display(),
        files.grid.display(),
        files.plot.display()
    );
    Ok(())
}
