//! `ar-refine evaluate`: a frozen backbone alone and with refiners, side by side.

use std::path::PathBuf;

use ar_refine::eval::{compare, markdown, write_report, CompareOptions, EvalReport, Method};
use ar_refine::refiner::{load_refiner, Decision, LoadedRefiner, Preset};
use ar_refine::tokenizer::Vqgan;
use ar_refine::train::{BackboneHidden, HiddenSource};
use ar_refine::{Refiner, Tokenizer};

use crate::common::{self, command_line, AnyResult, DataArgs, ModelArgs, PairArgs, PromptSet, B};

/// The arguments of `ar-refine evaluate` (its help text is the doc comment of
/// `Command::Evaluate` in `main.rs`).
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    models: ModelArgs,
    /// The methods: `NAME=DIR[:DIR...][@RULE]`, comma-separated. One refiner folder per seed
    /// (`train-refiner`'s `OUT/refiner`); `init(PRESET)` is that preset's refiner at its
    /// initialisation (the identity control); `@snap`, `@argmax` or `@expected_snap` overrides
    /// the rule saved with each refiner (e.g. its calibrated gate).
    #[arg(long, value_name = "SPECS", required_unless_present = "pairs_only")]
    refiners: Option<String>,
    #[command(flatten)]
    data: DataArgs,
    /// The task: colorization, inpainting or edges.
    #[arg(long, default_value = "colorization")]
    task: String,
    /// Demonstration pairs per prompt: one evaluation per value.
    #[arg(long, value_name = "K,...", value_delimiter = ',', default_value = "1")]
    k: Vec<usize>,
    /// Prompts per K.
    #[arg(long, default_value_t = 64)]
    count: usize,
    #[command(flatten)]
    pairs: PairArgs,
    /// Prompts shown in the comparison grid.
    #[arg(long, default_value_t = 6)]
    grid: usize,
    /// Bootstrap resamples of the 95 % intervals.
    #[arg(long, default_value_t = 2000)]
    bootstrap: usize,
    /// Methods whose accuracy-vs-edit-rate curve to record.
    #[arg(long, value_name = "NAME,...", value_delimiter = ',')]
    gate_curve: Vec<String>,
    /// Output folder.
    #[arg(long, default_value = "target/eval-run")]
    out: PathBuf,
}

/// A method of `--refiners`: its name, refiners (one per seed) and rule override.
struct Spec {
    name: String,
    runs: Vec<LoadedRefiner<B>>,
    rule: Option<Decision>,
}

/// `init(PRESET)`: that preset's refiner at its initialisation (the identity control), else a
/// folder written by `train-refiner`.
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

pub fn run(args: Args) -> AnyResult<()> {
    let (vq, lm) = args.models.load()?;
    let out = common::out_dir(&args.out)?;
    let device = common::device();
    let images = args.data.images()?;
    let identity = args.models.identity();
    let command = command_line();
    let pairs_only = args.pairs.pairs_only;
    let specs = match (&args.refiners, pairs_only) {
        (Some(text), false) => parse_specs(text, &vq, &device)?,
        _ => Vec::new(),
    };
    let hidden = BackboneHidden::new(&lm);
    let needs_hidden = specs
        .iter()
        .flat_map(|s| &s.runs)
        .any(|r| r.refiner.needs().hidden);
    let mut reports = Vec::new();
    let mut first = None;
    for &k in &args.k {
        let set = PromptSet {
            images: &images.val,
            task: &args.task,
            k,
            count: args.count,
            seed: 2,
            cache: out.join(format!("pairs-k{k}")),
        };
        let (pairs, sentences) = common::pairs(&vq, &lm, set, &args.models, &args.pairs, identity.clone())?;
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
                gate_curve: args.gate_curve.contains(&s.name),
            })
            .collect();
        let targets: Vec<_> = sentences.iter().map(|s| s.target.clone()).collect();
        let opts = CompareOptions {
            keep: args.grid,
            bootstrap: args.bootstrap,
            hidden: needs_hidden.then_some(&hidden as &dyn HiddenSource<B>),
            ..Default::default()
        };
        let (comparison, images) = compare(&vq, &pairs, Some(&targets), &methods, &opts, &device)?;
        if first.is_none() {
            let queries: Vec<_> = sentences
                .iter()
                .take(args.grid)
                .filter_map(|s| s.images.last().cloned())
                .collect();
            first = Some((images, queries));
        }
        reports.push(EvalReport {
            task: args.task.clone(),
            k,
            command: command.clone(),
            comparison,
        });
    }
    if pairs_only {
        println!("pairs for K = {:?} in {}", args.k, out.display());
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
