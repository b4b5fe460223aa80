//! `ar-refine`: the crate's command line, one binary with a subcommand per job.
//!
//! ```text
//! cargo run --release --example ar-refine -- --help
//! cargo run --release --example ar-refine -- train-refiner --help
//! cargo run --release --example ar-refine --features cuda -- evaluate ...   # on the GPU
//! ```
//!
//! The small-LVM recipe end to end: `train-tokenizer` (a VQGAN from photos), `pretrain` (a
//! LLaMA backbone on visual sentences), `train-refiner` (a refiner on the frozen backbone's
//! outputs), `evaluate` (backbone alone and with refiners, side by side, with a report),
//! `refine` (one prompt of images through backbone + refiner), plus `tokenize`, `generate`,
//! `task-tokens` (a dataset's task pairs as codes) and the `train-lora` baseline. Each subcommand's help (`--help`) is its documentation. Long jobs
//! show a progress bar with rate and ETA on a terminal and print plain progress lines into a log
//! file. Errors exit with status 1 and name what is wrong; bad arguments exit with status 2.
//!
//! Runs on the CPU (Burn's NdArray backend); with `--features cuda`, on the GPU.

mod common;
mod evaluate;
mod generate;
mod pretrain;
mod progress;
mod refine;
mod task_tokens;
mod tokenize;
mod train_lora;
mod train_refiner;
mod train_tokenizer;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Visual self-refinement for autoregressive image models (Wang et al., EMNLP 2025 Findings):
/// train tokenizers, backbones and refiners, generate, refine and evaluate.
#[derive(Parser)]
#[command(name = "ar-refine", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Round-trips an image through a VQGAN checkpoint: prints the token grid and the
    /// round-trip PSNR, writes the decoded image.
    ///
    /// The image is resized to the model's resolution as LVM does (a plain resize of the whole
    /// image to a square, no crop), encoded, printed as a token grid, decoded and written to
    /// `--out`; the round-trip PSNR against the resized input is printed.
    Tokenize(tokenize::Args),
    /// Generates tokens with a LLaMA backbone (Hugging Face layout), from token ids or from a
    /// visual sentence of images.
    ///
    /// The prompt is `--prompt-tokens` (vocabulary ids) or LVM's visual sentence of `--images`:
    /// every image resized to the tokenizer's resolution, encoded, the code blocks concatenated in
    /// order (no separators), code `c` being vocabulary id `image_token_start + c`; with the
    /// tokenizer, the generated image tokens are also decoded (`--out` with `.png`, or `_0.png`,
    /// `_1.png`, ... for several images) and the prompt keeps its last 15 images of context (as
    /// LVM's inference does). Only image-token ids are ever sampled.
    Generate(generate::Args),
    /// Trains a refiner on the outputs of a frozen backbone.
    ///
    /// Training prompts come from `--train-images`, selection prompts (checkpoint choice, gate
    /// calibration) from `--select-images`; the evaluation photos (`val.u8`) are never used here.
    /// The backbone's answers (with its per-token log-probability and entropy) are cached in
    /// `OUT/pairs-*` (resumable). Training: AdamW, warmup + cosine, clip 1; checkpoints in
    /// `OUT/checkpoints` (an interrupted run resumes when the same command runs again); the weights
    /// of the validation step with the best token accuracy are kept. The refiner is saved to
    /// `OUT/refiner` (`config.json` + `model.safetensors`) with its decision rule, for `evaluate`
    /// and `refine`. With several `--devices` the refiner trains data-parallel (the global `--batch`
    /// split between them, gradients all-reduced).
    TrainRefiner(train_refiner::Args),
    /// Evaluates a frozen backbone alone and with refiners on the same cached outputs, and
    /// writes a report with plots.
    ///
    /// For every K in `--k`, `--count` prompts (K demonstration pairs + query) whose images are all
    /// evaluation photos (`val.u8` of the shared data, or 20 % of an image folder; never used for
    /// training or for choosing settings) go through the frozen backbone (answers cached in
    /// `OUT/pairs-k*`), and every method of `--refiners` refines the same answers. Measured against
    /// the task's true outputs: token accuracy, top-5 accuracy, PSNR and SSIM against the true photo
    /// and the decoded true codes, the per-position cosine-distance curve, the codes each method
    /// changed / fixed / broke; per-image deltas against the backbone (mean over seeds) with 95 %
    /// bootstrap intervals. Writes `OUT/report.json`, `OUT/report.md` (with the command as run),
    /// `OUT/comparison.png` (query | backbone | methods | truth, first K), `OUT/position_error.svg`
    /// and `OUT/gate.svg`, and prints the Markdown tables.
    Evaluate(evaluate::Args),
    /// Runs one prompt of images through the backbone and a trained refiner and writes both
    /// answers.
    ///
    /// The prompt is LVM's analogy: K demonstration pairs and a query, `x1,y1,...,xK,yK,query`.
    /// The backbone generates the query's answer, the refiner refines it, and both answers are
    /// decoded: `OUT/backbone.png`, `OUT/refined.png`, and their code ids in `OUT/tokens.txt` (the
    /// backbone's grid, then the refined one, one line each). Prints how many codes the refiner
    /// changed, as JSON.
    Refine(refine::Args),
    /// Trains a VQGAN tokenizer from scratch on photos (step 1 of the small-LVM recipe).
    ///
    /// Photos: the shared Tiny-ImageNet training mosaics (the `--train-images`), validated on
    /// `val.u8`; an image folder or generated scenes otherwise. The token grid is
    /// `resolution / 2^(levels − 1)` per side (64 px with `--mult 1,2,2` → 16×16 = 256 tokens, as
    /// LVM). Prints the validation reconstruction PSNR before and after (one JSON line) and saves the
    /// tokenizer (`config.json` + `model.safetensors`, open-MUSE/taming naming) to `OUT/tokenizer`.
    /// Checkpoints go to `OUT/checkpoints` (an interrupted run resumes when the same command runs
    /// again; `--seed` fixes the initial weights and the batches, so the resumed loss curve is the
    /// uninterrupted one). `--eval DIR` trains nothing: it prints a saved tokenizer's validation
    /// PSNR and how many distinct codes the validation photos use.
    TrainTokenizer(train_tokenizer::Args),
    /// Pretrains a small LLaMA backbone on visual sentences (step 2 of the small-LVM recipe).
    ///
    /// The way LVM was trained: next-token prediction over every token of sentences of K
    /// demonstration pairs and a query with its answer, here for several tasks mixed. The
    /// backbone's vocabulary is the codebook (ids `0..K`, as LVM's image ids). Validation sentences
    /// come from the evaluation photos (never trained on). Checkpoints go to `OUT/checkpoints`; an
    /// interrupted run resumes when the same command runs again. Saves `OUT/backbone`
    /// (`config.json` + f16 `model.safetensors`, Hugging Face layout, for `--backbone`) and prints
    /// one JSON line: parameters, steps, training loss first/last, and the validation cross-entropy
    /// and teacher-forced token accuracy on the query's answer image per task.
    Pretrain(pretrain::Args),
    /// Fine-tunes LoRA adapters on the frozen backbone with the refiner's training prompts (the
    /// baseline a refiner is compared with).
    ///
    /// Low-rank adapters on the frozen backbone, trained with the refiner's training prompts (same
    /// task, K, count and seed as `train-refiner`): next-token loss on the answer image only,
    /// teacher-forced. Saves the adapters (`OUT/lora`, PEFT layout, for `--lora`) and the merged
    /// backbone (`OUT/backbone`, for `--backbone`), and prints the loss before and after.
    TrainLora(train_lora::Args),
    /// Tokenizes every photo's task pairs once, for training a backbone outside the crate
    /// (`scripts/demo/v2/` assembles visual sentences from these files in PyTorch).
    ///
    /// For each task and photo, `--variants` pairs are built by `ar_refine::tasks` as the crate
    /// builds them everywhere else, and both images are encoded with the tokenizer. Writes
    /// `OUT/{split}-{task}.u16`, little-endian `u16 [photos · variants, 2, tokens]` (query codes,
    /// then answer codes; pair `p · variants + v` is variant `v` of photo `p`, photos in mosaic
    /// order), and `OUT/{split}-{task}.json` describing it (photo ids, grid, codebook size).
    TaskTokens(task_tokens::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Tokenize(a) => tokenize::run(a),
        Command::Generate(a) => generate::run(a),
        Command::TrainRefiner(a) => train_refiner::run(a),
        Command::Evaluate(a) => evaluate::run(a),
        Command::Refine(a) => refine::run(a),
        Command::TrainTokenizer(a) => train_tokenizer::run(a),
        Command::Pretrain(a) => pretrain::run(a),
        Command::TrainLora(a) => train_lora::run(a),
        Command::TaskTokens(a) => task_tokens::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
