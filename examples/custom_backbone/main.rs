//! Plugging your own tokenizer and autoregressive model into ar-refine.
//!
//! ```text
//! cargo run --release --example custom_backbone -- [--data DIR] [--steps N] [--out DIR]
//! ```
//!
//! 1. A patch tokenizer (k-means codebook over 4×4 RGB patches, 32×32 images → 8×8 tokens) and
//!    a tiny causal transformer are defined in `models.rs` and implement `Tokenizer` and
//!    `ArBackbone`.
//! 2. The backbone is trained briefly on colorization sentences `[gray_1, colour_1, gray_q,
//!    colour_q]`, then frozen.
//! 3. Its greedy outputs on training prompts and the ground truth form refiner training pairs;
//!    the built-in `TransformerRefiner` is trained with the cosine distance plus a small MSE
//!    term (`RefinementLoss`).
//! 4. `SelfRefinement` runs on held-out prompts; token accuracy and PSNR of the backbone
//!    alone and refined are printed, and `comparison.png` (query | backbone | refined | truth)
//!    is written.
//!
//! Images: `val.u8` of the Tiny-ImageNet folder given by `--data`, by `AR_REFINE_DATA`, or found
//! at `../shared/data`; otherwise generated in code.

mod models;

use std::path::PathBuf;

use ar_refine::io::save_image_grid;
use ar_refine::{
    RefinementLoss, Refiner, Result, Sampling, SelfRefinement, TokenGrid, Tokenizer, TransformerRefinerConfig,
};
use burn::backend::{Autodiff, NdArray};
use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use models::{PatchTokenizer, TinyCausalLm, SPECIALS};

type B = NdArray;
type AD = Autodiff<NdArray>;

const SIZE: usize = 32;

struct Args {
    data: Option<PathBuf>,
    steps: usize,
    out: PathBuf,
}

fn parse_args() -> Args {
    let mut args = Args {
        data: std::env::var_os("AR_REFINE_DATA").map(PathBuf::from),
        steps: 200,
        out: PathBuf::from("target/custom_backbone"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--data" => args.data = Some(val().into()),
            "--steps" => args.steps = val().parse().expect("--steps takes a number"),
            "--out" => args.out = val().into(),
            other => panic!("unknown argument {other}; see the file's header for usage"),
        }
    }
    if args.data.is_none() {
        let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
        args.data = shared.join("val.u8").exists().then_some(shared);
    }
    args
}

/// `count` colour images `[count, 3, 32, 32]`: Tiny-ImageNet photos (64×64, 2×2-averaged) when
/// available, else smooth synthetic scenes.
fn load_images(data: Option<&PathBuf>, count: usize, device: &burn::tensor::Device<B>) -> Tensor<B, 4> {
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

fn main() -> Result<()> {
    let args = parse_args();
    let device = Default::default();
    let (n_train, n_eval) = (256, 32);
    let colour = load_images(args.data.as_ref(), n_train + n_eval, &device);
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
    let sentence = |range: std::ops::Range<usize>| {
        let m = range.len();
        let idx: Vec<i64> = range.clone().map(|i| i as i64).collect();
        let nxt: Vec<i64> = range
            .clone()
            .map(|i| (range.start + (i - range.start + 1) % m) as i64)
            .collect();
        let sel = |t: &Tensor<B, 2, Int>, ids: &Vec<i64>| {
            t.clone().select(
                0,
                Tensor::<B, 1, Int>::from_data(TensorData::new(ids.clone(), [m]), &device),
            )
        };
        let parts = [
            sel(&codes_x, &idx),
            sel(&codes_y, &idx),
            sel(&codes_x, &nxt),
            sel(&codes_y, &nxt),
        ];
        Tensor::cat(parts.to_vec(), 1).add_scalar(SPECIALS as i64)
    };
    let train_seq = sentence(0..n_train);
    let eval_seq = sentence(n_train..n_train + n_eval);

    // 2. Backbone: next-token training, then frozen.
    let mut lm = TinyCausalLm::<AD>::new(tok.codebook_size(), 4 * n, 64, 2, &device);
    let mut opt = AdamWConfig::new().init();
    let ce = CrossEntropyLossConfig::new().init(&device);
    let batch = 16;
    for step in 0..args.steps {
        let start = (step * batch) % n_train;
        let seq =
            Tensor::<AD, 2, Int>::from_inner(train_seq.clone().narrow(0, start, batch.min(n_train - start)));
        let [b, len] = seq.dims();
        let logits = lm
            .logits(seq.clone().narrow(1, 0, len - 1))
            .reshape([b * (len - 1), lm_vocab(&tok)]);
        let loss = ce.forward(logits, seq.narrow(1, 1, len - 1).reshape([b * (len - 1)]));
        if step % 50 == 0 || step + 1 == args.steps {
            println!("backbone step {step:4}: loss {:.3}", loss.clone().into_scalar());
        }
        let grads = GradientsParams::from_grads(loss.backward(), &lm);
        lm = opt.step(1e-3, lm, grads);
    }
    let lm = lm.valid();

    // 3. Refiner pairs: greedy generations on training prompts vs the truth.
    let sampling = Sampling::greedy();
    let prompt_len = 3 * n;
    let gen_codes = |seq: &Tensor<B, 2, Int>| -> Result<Tensor<B, 2, Int>> {
        let prompt = seq.clone().narrow(1, 0, prompt_len);
        Ok(ar_refine::ArBackbone::generate(&lm, prompt, n, &sampling)?.sub_scalar(SPECIALS as i64))
    };
    let pair_count = 128;
    let generated = gen_codes(&train_seq.clone().narrow(0, 0, pair_count))?;
    let truth = train_seq
        .clone()
        .narrow(0, 0, pair_count)
        .narrow(1, prompt_len, n)
        .sub_scalar(SPECIALS as i64);
    println!(
        "refiner pairs: {pair_count}, backbone token accuracy on them {:.3}",
        accuracy(generated.clone(), truth.clone())
    );

    let cfg = TransformerRefinerConfig::new(tok.code_dim())
        .with_d_model(64)
        .with_n_layers(2)
        .with_n_heads(4)
        .with_max_grid(grid.rows.max(grid.cols));
    let mut refiner = cfg.init::<AD>(&device)?;
    println!("refiner: {} parameters", refiner.param_count());
    let book_ad = ar_refine::Codebook::new(
        Tensor::<AD, 2>::from_inner(tok.book.codes().clone()),
        tok.metric(),
    )?;
    let mut opt = AdamWConfig::new().init();
    for step in 0..args.steps {
        let start = (step * batch) % pair_count;
        let take = batch.min(pair_count - start);
        let g = Tensor::<AD, 2, Int>::from_inner(generated.clone().narrow(0, start, take));
        let t = Tensor::<AD, 2, Int>::from_inner(truth.clone().narrow(0, start, take));
        let pred = refiner.refine(book_ad.embed(g)?, grid)?;
        // The paper's cosine distance, plus a small MSE term that keeps the refined vectors'
        // norms near the codes' (the snap back to the codebook is by squared L2).
        let loss = RefinementLoss { mse_weight: 0.5 }.forward(pred, book_ad.embed(t)?, None)?;
        if step % 50 == 0 || step + 1 == args.steps {
            println!("refiner step {step:4}: loss {:.4}", loss.clone().into_scalar());
        }
        let grads = GradientsParams::from_grads(loss.backward(), &refiner);
        refiner = opt.step(1e-3, refiner, grads);
    }
    let refiner = refiner.valid();

    // 4. The pipeline on held-out prompts.
    let pipeline = SelfRefinement::new(&lm, &tok, &refiner)?.with_sampling(sampling);
    let out = pipeline.run_tokens(eval_seq.clone().narrow(1, 0, prompt_len))?;
    let truth = eval_seq.narrow(1, prompt_len, n).sub_scalar(SPECIALS as i64);
    let truth_img = tok.decode(truth.clone())?;
    println!(
        "held-out ({n_eval} prompts): token accuracy backbone {:.3} -> refined {:.3}; PSNR vs tokenized truth backbone {:.2} dB -> refined {:.2} dB",
        accuracy(out.generated_tokens.clone(), truth.clone()),
        accuracy(out.refined_tokens.clone(), truth),
        psnr(out.generated_images.clone(), truth_img.clone()),
        psnr(out.refined_images.clone(), truth_img.clone()),
    );

    // Comparison grid: query input | backbone | refined | ground truth, 8 rows.
    let queries = gray(colour.narrow(0, n_train, n_eval));
    let mut cells = Vec::new();
    for i in 0..8 {
        let q = queries.clone().narrow(0, (i + 1) % n_eval, 1);
        for t in [
            q,
            out.generated_images.clone().narrow(0, i, 1),
            out.refined_images.clone().narrow(0, i, 1),
            truth_img.clone().narrow(0, i, 1),
        ] {
            cells.push(t.squeeze_dim::<3>(0));
        }
    }
    std::fs::create_dir_all(&args.out).map_err(|e| ar_refine::Error::io(&args.out, e))?;
    let path = args.out.join("comparison.png");
    save_image_grid(cells, 4, &path)?;
    println!("wrote {}", path.display());
    Ok(())
}

fn lm_vocab(tok: &PatchTokenizer<B>) -> usize {
    tok.codebook_size() + SPECIALS
}
