//! Plugging your own tokenizer and autoregressive model into ar-refine.
//!
//! ```text
//! cargo run --release --example custom_backbone -- [--data DIR] [--steps 200] [--refiner-steps 300] [--out DIR]
//! ```
//!
//! 1. A patch tokenizer (k-means codebook over 4×4 RGB patches, 32×32 images → 8×8 tokens) and
//!    a tiny causal transformer are defined in `models.rs` and implement `Tokenizer` and
//!    `ArBackbone`.
//! 2. The backbone is trained briefly on colorization sentences `[gray_1, colour_1, gray_q,
//!    colour_q]`, then frozen.
//! 3. Its greedy outputs on training prompts, with its per-token confidence and the ground
//!    truth, form refiner training pairs (`generate_pairs`). Two built-in refiners are trained
//!    on them with `train_refiner`: the **corrector** preset (the query image as a prefix, the
//!    backbone's confidence, identity-initialised code logits and a critic; cross-entropy; a
//!    gate calibrated on separate validation prompts) and, beside it, the **paper**'s (the
//!    answer alone, cosine loss, nearest-code snap).
//! 4. `SelfRefinement` runs both on held-out prompts; token accuracy and PSNR of the backbone
//!    alone and refined are printed, and `comparison.png` (query | backbone | paper refiner |
//!    corrector | truth) is written.
//!
//! Images: `val.u8` of the Tiny-ImageNet folder given by `--data`, by `AR_REFINE_DATA`, or found
//! at `../shared/data`; otherwise generated in code.

mod models;

use std::path::{Path, PathBuf};

use ar_refine::data::TokenSentence;
use ar_refine::io::save_image_grid;
use ar_refine::refiner::{Decision, Preset};
use ar_refine::train::{
    calibrate_gate, generate_pairs, train_refiner, PairMode, PairOptions, Pairs, RefinerData,
    RefinerTrainConfig,
};
use ar_refine::{
    Codebook, RefinementOutput, Sampling, SelfRefinement, TokenGrid, Tokenizer, TransformerRefiner,
};
use burn::backend::{Autodiff, NdArray};
use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use clap::Parser;
use models::{PatchTokenizer, TinyCausalLm, SPECIALS};

type B = NdArray;
type AD = Autodiff<NdArray>;

const SIZE: usize = 32;

type AnyResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// A custom backbone and tokenizer through the crate's traits, with a refiner trained on its
/// outputs.
#[derive(Parser)]
struct Args {
    /// The Tiny-ImageNet folder whose `val.u8` to use [default: `$AR_REFINE_DATA`, else
    /// `../shared/data`, else generated images].
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Training steps of the backbone.
    #[arg(long, default_value_t = 200)]
    steps: usize,
    /// Training steps of the refiner.
    #[arg(long, default_value_t = 300)]
    refiner_steps: usize,
    /// Output folder.
    #[arg(long, default_value = "target/custom_backbone")]
    out: PathBuf,
}

/// `count` colour images `[count, 3, 32, 32]`: Tiny-ImageNet photos (64×64, 2×2-averaged) when
/// available, else smooth synthetic scenes.
fn load_images(data: Option<&Path>, count: usize, device: &burn::tensor::Device<B>) -> Tensor<B, 4> {
    if let Some(dir) = data {
        let path = dir.join("val.u8");
        match std::fs::read(&path) {
            Ok(bytes) if bytes.len() >= count * 64 * 64 * 3 => {
                println!("images: {count} photos from {}", path.display());
                let mut v = vec![0f32; count * 3 * SIZE * SIZE];
                for n in 0..count {
                    for y in 0..SIZE {
                        for x in 0..SIZE {
                            for c in 0..3 {
                                let px = |dy: usize, dx: usize| {
                                    bytes[((n * 64 + 2 * y + dy) * 64 + 2 * x + dx) * 3 + c] as f32
                                };
                                let mean = (px(0, 0) + px(0, 1) + px(1, 0) + px(1, 1)) / (4.0 * 255.0);
                                v[((n * 3 + c) * SIZE + y) * SIZE + x] = mean;
                            }
                        }
                    }
                }
                return Tensor::from_data(TensorData::new(v, [count, 3, SIZE, SIZE]), device);
            }
            _ => println!(
                "{} not readable or too short; using generated images",
                path.display()
            ),
        }
    }
    println!("images: {count} generated scenes");
    let mut v = vec![0f32; count * 3 * SIZE * SIZE];
    for n in 0..count {
        let f = |k: usize| ((n * 7919 + k * 104729) % 1000) as f32 / 1000.0;
        let (cx, cy, r) = (f(1) * SIZE as f32, f(2) * SIZE as f32, 4.0 + 8.0 * f(3));
        for y in 0..SIZE {
            for x in 0..SIZE {
                let inside = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)).sqrt() < r;
                for c in 0..3 {
                    let base = f(4 + c) * (0.5 + 0.5 * y as f32 / SIZE as f32);
                    v[((n * 3 + c) * SIZE + y) * SIZE + x] = if inside { f(7 + c) } else { base };
                }
            }
        }
    }
    Tensor::from_data(TensorData::new(v, [count, 3, SIZE, SIZE]), device)
}

/// Colorization input: luma (0.2989 R + 0.5870 G + 0.1140 B) replicated to three channels.
fn gray<Bk: Backend>(img: Tensor<Bk, 4>) -> Tensor<Bk, 4> {
    let w = Tensor::<Bk, 1>::from_floats([0.2989, 0.5870, 0.1140], &img.device()).reshape([1, 3, 1, 1]);
    (img * w).sum_dim(1).repeat_dim(1, 3)
}

fn psnr(a: Tensor<B, 4>, b: Tensor<B, 4>) -> f32 {
    let mse: f32 = (a - b).powi_scalar(2).mean().into_scalar();
    10.0 * (1.0 / mse.max(1e-10)).log10()
}

fn accuracy(a: Tensor<B, 2, Int>, b: Tensor<B, 2, Int>) -> f32 {
    a.equal(b).float().mean().into_scalar()
}

fn main() -> AnyResult<()> {
    let args = Args::parse();
    let data = args
        .data
        .clone()
        .or_else(|| std::env::var_os("AR_REFINE_DATA").map(PathBuf::from))
        .or_else(|| {
            let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
            shared.join("val.u8").exists().then_some(shared)
        });
    let (steps, refiner_steps, out_dir) = (args.steps, args.refiner_steps, args.out);
    let device = Default::default();
    let (n_train, n_eval) = (256, 32);
    let colour = load_images(data.as_deref(), n_train + n_eval, &device);
    let query_x = gray(colour.clone());

    // 1. Tokenizer: 128 codes of 4×4×3 patches.
    let tok = PatchTokenizer::fit(Tensor::cat(vec![colour.clone(), query_x.clone()], 0), 4, 128, 8)?;
    let grid: TokenGrid = tok.grid();
    let n = grid.len();
    let codes_y = tok.encode(colour.clone())?;
    let codes_x = tok.encode(query_x.clone())?;
    let recon = psnr(tok.decode(codes_y.clone())?, colour.clone());
    println!(
        "tokenizer: {} codes x {} dims, {}x{} grid, reconstruction PSNR {recon:.2} dB",
        tok.codebook_size(),
        tok.code_dim(),
        grid.rows,
        grid.cols
    );

    // Sentences [x_demo, y_demo, x_query, y_query]: demo i is paired with query (i+1) mod count.
    let host = |t: &Tensor<B, 2, Int>| -> Vec<Vec<i64>> {
        let v: Vec<i64> = t.to_data().iter::<i64>().collect();
        v.chunks(n).map(<[i64]>::to_vec).collect()
    };
    let (xs, ys) = (host(&codes_x), host(&codes_y));
    let sentences = |range: std::ops::Range<usize>| -> Vec<TokenSentence> {
        let m = range.len();
        range
            .clone()
            .map(|i| {
                let q = range.start + (i - range.start + 1) % m;
                TokenSentence {
                    prompt: [xs[i].clone(), ys[i].clone(), xs[q].clone()].concat(),
                    target: ys[q].clone(),
                }
            })
            .collect()
    };
    let to_tensor = |s: &[TokenSentence]| -> Tensor<B, 2, Int> {
        let flat: Vec<i64> = s
            .iter()
            .flat_map(|t| t.prompt.iter().chain(&t.target).map(|c| c + SPECIALS as i64))
            .collect();
        Tensor::from_data(TensorData::new(flat, [s.len(), 4 * n]), &device)
    };
    let train_sentences = sentences(0..n_train);
    let eval_sentences = sentences(n_train..n_train + n_eval);
    let train_seq = to_tensor(&train_sentences);

    // 2. Backbone: next-token training, then frozen.
    let mut lm = TinyCausalLm::<AD>::new(tok.codebook_size(), 4 * n, 64, 2, &device);
    let mut opt = AdamWConfig::new().init();
    let ce = CrossEntropyLossConfig::new().init(&device);
    let batch = 16;
    for step in 0..steps {
        let start = (step * batch) % n_train;
        let seq =
            Tensor::<AD, 2, Int>::from_inner(train_seq.clone().narrow(0, start, batch.min(n_train - start)));
        let [b, len] = seq.dims();
        let logits = lm
            .logits(seq.clone().narrow(1, 0, len - 1))
            .reshape([b * (len - 1), lm_vocab(&tok)]);
        let loss = ce.forward(logits, seq.narrow(1, 1, len - 1).reshape([b * (len - 1)]));
        if step % 50 == 0 || step + 1 == steps {
            println!("backbone step {step:4}: loss {:.3}", loss.clone().into_scalar());
        }
        let grads = GradientsParams::from_grads(loss.backward(), &lm);
        lm = opt.step(1e-3, lm, grads);
    }
    let lm = lm.valid();

    // 3. Refiner pairs: the backbone's greedy outputs (with its confidence) on training prompts:
    //    128 to train on, 64 others to choose checkpoints and calibrate the gate.
    let opts = PairOptions {
        mode: PairMode::FreeRunning(Sampling::greedy()),
        batch: 32,
        cache: None,
        config: serde_json::Value::Null,
    };
    let train_pairs = generate_pairs(&lm, &train_sentences[..128], &opts, &device, &mut |_, _| {})?;
    let val_pairs = generate_pairs(&lm, &train_sentences[128..192], &opts, &device, &mut |_, _| {})?;
    let accuracy_of = |p: &Pairs| {
        let right: usize = p
            .generated
            .iter()
            .zip(&p.truth)
            .map(|(g, t)| g.iter().zip(t).filter(|(a, b)| a == b).count())
            .sum();
        right as f64 / (p.len() * n) as f64
    };
    println!(
        "refiner pairs: {} train + {} validation; backbone token accuracy on them {:.3} / {:.3}",
        train_pairs.len(),
        val_pairs.len(),
        accuracy_of(&train_pairs),
        accuracy_of(&val_pairs)
    );
    let book_ad = Codebook::<AD>::new(Tensor::from_inner(tok.book.codes().clone()), tok.metric())?;
    let train = |preset: Preset| -> AnyResult<(TransformerRefiner<B>, Decision)> {
        let cfg = preset
            .config(tok.code_dim())
            .with_d_model(64)
            .with_n_layers(2)
            .with_n_heads(4)
            .with_max_grid(grid.rows.max(grid.cols));
        let refiner = cfg.init_with_codebook(&book_ad, &device)?;
        let mut tcfg = RefinerTrainConfig::new(refiner_steps, 16, 1e-3);
        tcfg.loss = preset.loss();
        tcfg.validate_every = (refiner_steps / 10).max(1);
        let data = RefinerData {
            codebook: &book_ad,
            grid,
            train: &train_pairs,
            val: Some(&val_pairs),
            devices: &[],
            hidden: None,
        };
        let (refiner, state) = train_refiner(refiner, data, &tcfg, None, &mut |_| {})?;
        let refiner = refiner.valid();
        let decision = match preset.decision() {
            Decision::Gate { .. } => calibrate_gate(&refiner, &tok.book, grid, &val_pairs, 32, None)?.0,
            rule => rule,
        };
        println!(
            "refiner {:>9}: {} parameters, training loss {:.4} -> {:.4}, best validation step {}, decision {decision:?}",
            preset.name(),
            refiner.param_count(),
            state.losses.first().copied().unwrap_or(f32::NAN),
            state.losses.last().copied().unwrap_or(f32::NAN),
            state.extra["best"]["step"]
        );
        Ok((refiner, decision))
    };
    let (corrector, corrector_rule) = train(Preset::Corrector)?;
    let (paper, paper_rule) = train(Preset::Paper)?;

    // 4. The pipeline on held-out prompts, for both refiners.
    let prompt = to_tensor(&eval_sentences).narrow(1, 0, 3 * n);
    let truth = to_tensor(&eval_sentences)
        .narrow(1, 3 * n, n)
        .sub_scalar(SPECIALS as i64);
    let truth_img = tok.decode(truth.clone())?;
    let run = |refiner: &TransformerRefiner<B>, rule: Decision| -> AnyResult<RefinementOutput<B>> {
        let pipeline = SelfRefinement::new(&lm, &tok, refiner)?.with_decision(rule)?;
        Ok(pipeline.run_tokens(prompt.clone())?)
    };
    let best = run(&corrector, corrector_rule)?;
    let base = run(&paper, paper_rule)?;
    println!("held-out ({n_eval} prompts), token accuracy / PSNR vs tokenized truth:");
    for (name, tokens, images) in [
        ("backbone", &best.generated_tokens, &best.generated_images),
        ("paper refiner", &base.refined_tokens, &base.refined_images),
        ("corrector", &best.refined_tokens, &best.refined_images),
    ] {
        println!(
            "  {name:<14} {:.3} / {:.2} dB",
            accuracy(tokens.clone(), truth.clone()),
            psnr(images.clone(), truth_img.clone())
        );
    }

    // Comparison grid: query input | backbone | paper refiner | corrector | ground truth, 8 rows.
    let queries = gray(colour.narrow(0, n_train, n_eval));
    let mut cells = Vec::new();
    for i in 0..8 {
        let q = queries.clone().narrow(0, (i + 1) % n_eval, 1);
        for t in [
            q,
            best.generated_images.clone().narrow(0, i, 1),
            base.refined_images.clone().narrow(0, i, 1),
            best.refined_images.clone().narrow(0, i, 1),
            truth_img.clone().narrow(0, i, 1),
        ] {
            cells.push(t.squeeze_dim::<3>(0));
        }
    }
    std::fs::create_dir_all(&out_dir)?;
    let path = out_dir.join("comparison.png");
    save_image_grid(cells, 5, &path)?;
    println!("wrote {}", path.display());
    Ok(())
}

fn lm_vocab(tok: &PatchTokenizer<B>) -> usize {
    tok.codebook_size() + SPECIALS
}
