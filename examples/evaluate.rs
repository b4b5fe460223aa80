//! Evaluates a frozen backbone alone and with a trained refiner, and writes a report.
//!
//! ```text
//! cargo run --release --example evaluate -- --tokenizer CKPT [--tokenizer-config F] \
//!     --backbone DIR [--lora DIR] --refiner DIR [--data DIR] [--task colorization] [--k 1,2,3] [--count 64] \
//!     [--mode free|teacher] [--temperature T --top-k K --top-p P --seed S] [--grid 6] \
//!     [--devices 0,1] [--out target/eval-run]
//! ```
//!
//! For every K in `--k`, `--count` validation prompts (K demonstration pairs + query, from the
//! validation photos: `val.u8` of the shared data, or 20 % of an image folder) are run through
//! the frozen backbone (pairs cached in `OUT/pairs-k*`), refined (`--refiner`: a directory
//! written by `examples/train_refiner.rs`), and measured against the task's true outputs: token
//! accuracy, PSNR, SSIM, and the per-position cosine-distance curve with its area over all
//! positions and the last third. Writes `OUT/report.json`, `OUT/report.md`,
//! `OUT/comparison.png` (query | backbone | refined | truth, first K) and
//! `OUT/position_error.png`, and prints the Markdown table. `--pairs-only` stops after the
//! backbone's outputs (cached in `OUT/pairs-k*`; no `--refiner` needed), e.g. to generate them
//! on a GPU machine and evaluate elsewhere with the same flags and `--out`. `--devices 0,1`
//! shards the backbone's generation over several GPUs (one replica each).

#[path = "common/args.rs"]
mod args;
#[path = "common/setup.rs"]
mod setup;

use ar_refine::eval::{evaluate, markdown, write_report, EvalReport};
use ar_refine::refiner::load_refiner;
use args::{AnyResult, Args};
use setup::B;

const USAGE: &str = "cargo run --release --example evaluate -- --tokenizer CKPT [--tokenizer-config F] --backbone DIR [--lora DIR] --refiner DIR [--data DIR] [--task colorization|inpainting|edges] [--k 1,2,3] [--count 64] [--mode free|teacher] [--temperature T --top-k K --top-p P --seed S] [--grid 6] [--pairs-only] [--devices 0,1] [--out DIR]";

fn main() -> AnyResult<()> {
    let args = Args::parse(USAGE, &["pairs-only"])?;
    args.only(&[
        "tokenizer",
        "tokenizer-config",
        "backbone",
        "lora",
        "refiner",
        "data",
        "train-images",
        "task",
        "k",
        "count",
        "mode",
        "temperature",
        "top-k",
        "top-p",
        "seed",
        "grid",
        "out",
        "pairs-only",
        "devices",
    ])?;
    let out = setup::out_dir(&args, "target/eval-run")?;
    let (vq, lm) = setup::models(&args)?;
    let device = setup::device();
    let devices = setup::devices(&args)?;
    let (_, val_imgs) = setup::images(&args)?;
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
    let refiner = match pairs_only {
        true => None,
        false => Some(load_refiner::<B>(args.required::<String>("refiner")?, &device)?.0),
    };
    let mut reports = Vec::new();
    let mut first = None;
    for &k in &ks {
        let (pairs, sentences) = setup::pairs(
            &vq,
            &lm,
            &val_imgs,
            &task,
            k,
            count,
            2,
            &mode,
            &out.join(format!("pairs-k{k}")),
            identity.clone(),
            (&args, &devices),
        )?;
        let Some(refiner) = &refiner else {
            continue;
        };
        let targets: Vec<_> = sentences.iter().map(|s| s.target.clone()).collect();
        let (evaluation, images) = evaluate(&vq, refiner, &pairs, Some(&targets), 16, keep, &device)?;
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
            refiner_params: refiner.param_count(),
            evaluation,
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
