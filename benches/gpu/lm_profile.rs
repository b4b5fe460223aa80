//! Where the backbone's training step goes on a CUDA GPU (issue [gpu-speed] item 5): the step of
//! `ar_refine::backbone::train_lm` split into its phases, and the operations it is made of timed
//! alone at the step's shapes, forward + backward.
//!
//! ```text
//! bash scripts/bench/build_gpu.sh lm_profile_gpu   # .bin/lm_profile_gpu.xz
//! .bin/lm_profile_gpu [--batch 16] [--len 1536] [--hidden 256] [--intermediate 704]
//!     [--layers 6] [--heads 4] [--vocab 1024] [--reps 10]
//! ```
//!
//! Every time is the median of `--reps` runs after two warm-up runs, each run ended by a device
//! sync. Prints one JSON line per row: `{"what", "ms"}` (and `tflops` for matrix products).
//! The defaults are the v1 demo backbone's shape (`scripts/bench/configs/tiny-lvm-v1-backbone.json`) at K = 2;
//! `scripts/bench/torch_lm_step.py` times the same step in PyTorch.

mod timing;

use ar_refine::backbone::{linear_t, lm_loss, Llama, LlamaConfig};
use ar_refine::train::clip_grad_norm;
use ar_refine::train::FusedAdamW;
use ar_refine::ArBackend;
use burn::backend::{Autodiff, Cuda};
use burn::module::{AutodiffModule, Module};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::activation::{log_softmax, silu, softmax};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Distribution, FloatDType, Int, Tensor};
use timing::{row, time};

type B = Cuda;
type A = Autodiff<Cuda>;

type AnyResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The phases of one LLaMA training step and the operations they are made of, timed.
#[derive(clap::Parser)]
struct Args {
    /// Sequences per step.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 1536)]
    len: usize,
    /// Hidden size.
    #[arg(long, default_value_t = 256)]
    hidden: usize,
    /// MLP size.
    #[arg(long, default_value_t = 704)]
    intermediate: usize,
    /// Transformer layers.
    #[arg(long, default_value_t = 6)]
    layers: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Vocabulary size.
    #[arg(long, default_value_t = 1024)]
    vocab: usize,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 10)]
    reps: usize,
}

fn main() -> AnyResult<()> {
    let a = <Args as clap::Parser>::parse();
    let (b, n, d, inter, layers, heads, vocab, reps) = (
        a.batch,
        a.len,
        a.hidden,
        a.intermediate,
        a.layers,
        a.heads,
        a.vocab,
        a.reps,
    );
    ar_refine::watch_device_panics();
    let device = Default::default();
    let config = LlamaConfig::new(vocab, d, inter, layers, heads).with_context(n.next_power_of_two());
    let model = Llama::<A>::new(config, &device)?;
    eprintln!("LLaMA {} parameters, batch {b} of {n} tokens", model.num_params());
    let tokens = Tensor::<A, 2, Int>::random([b, n], Distribution::Uniform(0.0, vocab as f64), &device);
    phases(model, &tokens, &device, reps)?;
    pieces(b, n - 1, d, inter, heads, vocab, &device, reps);
    Ok(())
}

/// The phases of one training step of `model` on `tokens`.
fn phases(
    mut model: Llama<A>,
    tokens: &Tensor<A, 2, Int>,
    device: &burn::tensor::Device<B>,
    reps: usize,
) -> AnyResult<()> {
    let inner = model.valid();
    let inner_tokens = tokens.clone().inner();
    row(
        "forward, no autodiff (hidden + logits)",
        time(device, reps, || {
            let n = inner_tokens.dims()[1];
            let h = inner
                .forward_hidden(inner_tokens.clone().narrow(1, 0, n - 1), None)
                .unwrap();
            let _ = inner.logits(h);
        }),
        None,
    );
    // (no forward-only row under autodiff: a graph that is never differentiated is freed only at
    // the next backward, and the rows of such graphs exhaust the device's memory)
    row(
        "lm_loss forward + backward",
        time(device, reps, || {
            let _ = lm_loss(&model, tokens.clone(), 1).unwrap().backward();
        }),
        None,
    );
    row(
        "+ gradients by parameter + clip_grad_norm",
        time(device, reps, || {
            let g = lm_loss(&model, tokens.clone(), 1).unwrap().backward();
            let mut grads = GradientsParams::from_grads(g, &model);
            clip_grad_norm(&model, &mut grads, 1.0).unwrap();
        }),
        None,
    );
    let mut burn_optim = AdamWConfig::new().with_weight_decay(0.1).init::<A, Llama<A>>();
    row(
        "full step (+ Burn's AdamW)",
        time(device, reps, || {
            let g = lm_loss(&model, tokens.clone(), 1).unwrap().backward();
            let mut grads = GradientsParams::from_grads(g, &model);
            clip_grad_norm(&model, &mut grads, 1.0).unwrap();
            model = burn_optim.step(1e-5, model.clone(), grads);
        }),
        None,
    );
    // what `train_lm` runs
    let mut optim = FusedAdamW::init::<A, Llama<A>>(0.9, 0.999, 0.1);
    row(
        "full step (+ AdamW)",
        time(device, reps, || {
            let g = lm_loss(&model, tokens.clone(), 1).unwrap().backward();
            let mut grads = GradientsParams::from_grads(g, &model);
            clip_grad_norm(&model, &mut grads, 1.0).unwrap();
            model = optim.step(1e-5, model.clone(), grads);
        }),
        None,
    );
    Ok(())
}

fn leaf<const D: usize>(shape: [usize; D], device: &burn::tensor::Device<B>) -> Tensor<A, D> {
    Tensor::<A, D>::random(shape, Distribution::Normal(0.0, 0.05), device).require_grad()
}

/// The step's operations alone, forward + backward (each ended by `sum().backward()`).
#[allow(clippy::too_many_arguments)]
fn pieces(
    b: usize,
    n: usize,
    d: usize,
    inter: usize,
    heads: usize,
    vocab: usize,
    device: &burn::tensor::Device<B>,
    reps: usize,
) {
    let t = b * n;
    let hd = d / heads;
    let x = leaf([t, d], device);
    row(
        "sum of x [tokens, hidden], forward + backward (baseline)",
        time(device, reps, || {
            let _ = x.clone().sum().backward();
        }),
        None,
    );
    // projections
    let gf = |k: usize, m: usize| 3.0 * 2.0 * (t * k * m) as f64 / 1e9;
    let w = leaf([d, d], device);
    row(
        "projection [tokens, hidden] · [hidden, hidden] f32",
        time(device, reps, || {
            let _ = x.clone().matmul(w.clone()).sum().backward();
        }),
        Some(gf(d, d)),
    );
    let wt = leaf([d, d], device);
    row(
        "projection [tokens, hidden] · [hidden, hidden], linear_t (weight gradient split by rows)",
        time(device, reps, || {
            let _ = linear_t(x.clone(), wt.clone()).sum().backward();
        }),
        Some(gf(d, d)),
    );
    let wv = leaf([vocab, d], device);
    row(
        "logits projection, linear_t (weight gradient split by rows)",
        time(device, reps, || {
            let _ = linear_t(x.clone(), wv.clone()).sum().backward();
        }),
        Some(gf(d, vocab)),
    );
    let bf = |t: Tensor<A, 2>| t.cast(FloatDType::BF16);
    let (wg, wu, wd) = (
        leaf([d, inter], device),
        leaf([d, inter], device),
        leaf([inter, d], device),
    );
    let mlp = |x: Tensor<A, 2>, wg: Tensor<A, 2>, wu: Tensor<A, 2>, wd: Tensor<A, 2>| {
        (silu(x.clone().matmul(wg)) * x.matmul(wu)).matmul(wd)
    };
    row(
        "MLP (gate, up, SiLU·, down) f32",
        time(device, reps, || {
            let _ = mlp(x.clone(), wg.clone(), wu.clone(), wd.clone())
                .sum()
                .backward();
        }),
        Some(3.0 * gf(d, inter)),
    );
    let (wg_t, wu_t, wd_t) = (
        leaf([inter, d], device),
        leaf([inter, d], device),
        leaf([d, inter], device),
    );
    row(
        "MLP as the layers run it (linear_t, ArBackend::silu_mul kernels)",
        time(device, reps, || {
            let (gate, up) = (
                linear_t(x.clone(), wg_t.clone()),
                linear_t(x.clone(), wu_t.clone()),
            );
            let h = A::silu_mul(gate.clone(), up.clone()).unwrap_or_else(|| silu(gate) * up);
            let _ = linear_t(h, wd_t.clone()).sum().backward();
        }),
        Some(3.0 * gf(d, inter)),
    );
    // normalisation and position
    let g = leaf([d], device);
    row(
        "RMSNorm (tensor ops)",
        time(device, reps, || {
            let r = (x.clone().powi_scalar(2).mean_dim(1) + 1e-5).sqrt().recip();
            let _ = (x.clone() * r * g.clone().unsqueeze::<2>()).sum().backward();
        }),
        None,
    );
    row(
        "RMSNorm (ArBackend::rms_norm kernels)",
        time(device, reps, || {
            if let Some(y) = A::rms_norm(x.clone(), g.clone(), 1e-5) {
                let _ = y.sum().backward();
            }
        }),
        None,
    );
    let q = leaf([b, heads, n, hd], device);
    let (k, v) = (leaf([b, heads, n, hd], device), leaf([b, heads, n, hd], device));
    let cos = Tensor::<A, 4>::random([1, 1, n, hd], Distribution::Uniform(-1.0, 1.0), device);
    let sin = Tensor::<A, 4>::random([1, 1, n, hd], Distribution::Uniform(-1.0, 1.0), device);
    row(
        "RoPE on q (tensor ops)",
        time(device, reps, || {
            let h = hd / 2;
            let rot = Tensor::cat(
                vec![q.clone().narrow(3, h, h).neg(), q.clone().narrow(3, 0, h)],
                3,
            );
            let _ = (q.clone() * cos.clone() + rot * sin.clone()).sum().backward();
        }),
        None,
    );
    let [cos2, sin2] = [&cos, &sin].map(|t| t.clone().reshape([n, hd]));
    row(
        "RoPE on q from the projection's layout (ArBackend::rope kernels)",
        time(device, reps, || {
            if let Some(r) = A::rope(x.clone(), cos2.clone(), sin2.clone()) {
                let _ = r.sum().backward();
            }
        }),
        None,
    );
    // attention
    let agf = 3.0 * 2.0 * 2.0 * (b * heads * n * n * hd) as f64 / 1e9;
    let causal = AttentionModuleOptions {
        is_causal: true,
        ..Default::default()
    };
    row(
        "attention, burn::module::attention causal (one layer)",
        time(device, reps, || {
            let _ = attention(q.clone(), k.clone(), v.clone(), None, None, causal)
                .sum()
                .backward();
        }),
        Some(agf),
    );
    for chunks in [1, 2, 4, 8] {
        row(
            &format!("attention, ar_refine causal kernels (ArBackend::causal_attention, one layer), {chunks} query chunks"),
            time(device, reps, || {
                if let Some(out) = A::causal_attention(q.clone(), k.clone(), v.clone(), Some(chunks)) {
                    let _ = out.sum().backward();
                }
            }),
            Some(agf),
        );
    }
    let mask = Tensor::<A, 2, Bool>::tril_mask([n, n], 0, device).unsqueeze::<4>();
    row(
        "attention, matmul + mask_fill + softmax + matmul (one layer)",
        time(device, reps, || {
            let s = q.clone().matmul(k.clone().swap_dims(2, 3)) * (1.0 / (hd as f64).sqrt());
            let p = softmax(s.mask_fill(mask.clone(), f32::NEG_INFINITY), 3);
            let _ = p.matmul(v.clone()).sum().backward();
        }),
        Some(agf),
    );
    row(
        "attention scores q·kᵀ alone",
        time(device, reps, || {
            let _ = q.clone().matmul(k.clone().swap_dims(2, 3)).sum().backward();
        }),
        Some(agf / 2.0),
    );
    // the loss
    let we = leaf([d, vocab], device);
    row(
        "logits projection [tokens, hidden] · [hidden, vocab] f32",
        time(device, reps, || {
            let _ = x.clone().matmul(we.clone()).sum().backward();
        }),
        Some(gf(d, vocab)),
    );
    let logits = leaf([t, vocab], device);
    let targets = Tensor::<A, 2, Int>::random([t, 1], Distribution::Uniform(0.0, vocab as f64), device);
    row(
        "log_softmax + gather + mean over [tokens, vocab]",
        time(device, reps, || {
            let _ = log_softmax(logits.clone(), 1)
                .gather(1, targets.clone())
                .mean()
                .neg()
                .backward();
        }),
        None,
    );
    // mixed precision: the same products with bf16 inputs (f32 parameters cast per call), last
    // because a backend without bf16 products stops the program here
    row(
        "projection [tokens, hidden] · [hidden, hidden], bf16 casts",
        time(device, reps, || {
            let _ = bf(x.clone())
                .matmul(bf(w.clone()))
                .cast(FloatDType::F32)
                .sum()
                .backward();
        }),
        Some(gf(d, d)),
    );
    row(
        "MLP (gate, up, SiLU·, down), bf16 casts",
        time(device, reps, || {
            let _ = mlp(bf(x.clone()), bf(wg.clone()), bf(wu.clone()), bf(wd.clone()))
                .cast(FloatDType::F32)
                .sum()
                .backward();
        }),
        Some(3.0 * gf(d, inter)),
    );
    let bf4 = |t: Tensor<A, 4>| t.cast(FloatDType::BF16);
    row(
        "attention, burn::module::attention causal, bf16 casts",
        time(device, reps, || {
            let _ = attention(bf4(q.clone()), bf4(k.clone()), bf4(v.clone()), None, None, causal)
                .cast(FloatDType::F32)
                .sum()
                .backward();
        }),
        Some(agf),
    );
}
