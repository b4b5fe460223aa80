//! Where the VQGAN training step's time goes on a CUDA GPU (issue [gpu-speed] item 5): the
//! step of `examples/train_tokenizer.rs` split into its phases, and the layers it is made of
//! timed alone at the largest activation shape, forward and forward + backward. Convolutions
//! take the path `--conv` selects (`ar_refine::tokenizer::apply_conv`).
//!
//! ```text
//! cargo build --release --no-default-features --features cuda --example vq_profile_gpu
//! target/release/examples/vq_profile_gpu [--batch 64] [--size 64] [--hidden 64] [--reps 10] [--conv backend|gemm]
//! ```
//!
//! Every time is the median of `--reps` runs after two warm-up runs, each run ended by a device
//! sync. Prints one JSON line per row: `{"what", "ms"}` (and `gflops` for convolutions).
//! The network is the small-LVM tokenizer (`channel_mult [1, 2, 2]`, 2 ResNet blocks per level,
//! codebook 1024 × 32); `scripts/torch_vq_step.py` times the same step in PyTorch.

#[path = "common/args.rs"]
mod args;

use std::time::Instant;

use ar_refine::decode::{nearest_codes, Metric};
use ar_refine::tokenizer::{
    apply_conv, set_conv_path, vq_losses, ConvPath, PixelRange, Recon, Vqgan, VqganConfig,
};
use args::{AnyResult, Args};
use burn::backend::{Autodiff, Cuda};
use burn::module::AutodiffModule;
use burn::nn::conv::Conv2dConfig;
use burn::nn::{GroupNormConfig, PaddingConfig2d};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};

type B = Cuda;
type A = Autodiff<Cuda>;

const USAGE: &str =
    "vq_profile_gpu [--batch 64] [--size 64] [--hidden 64] [--reps 10] [--conv backend|gemm] [--layers-only] [--pieces]";

/// Median milliseconds of `reps` runs of `f` (after two warm-up runs), each ended by a sync.
fn time(device: &burn::tensor::Device<B>, reps: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..2 {
        f();
        B::sync(device).expect("device sync");
    }
    let mut ms: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            B::sync(device).expect("device sync");
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    // a panic of the CUDA runtime's worker (a failed allocation) leaves garbage timings: stop
    if let Err(e) = ar_refine::check_device() {
        eprintln!("{e}");
        std::process::exit(1);
    }
    ms.sort_by(f64::total_cmp);
    ms[ms.len() / 2]
}

fn row(what: &str, ms: f64, gflop: Option<f64>) {
    let mut v = serde_json::json!({ "what": what, "ms": (ms * 1000.0).round() / 1000.0 });
    if let Some(g) = gflop {
        v["tflops"] = serde_json::json!(((g / ms) * 100.0).round() / 100.0);
    }
    println!("{v}");
}

fn main() -> AnyResult<()> {
    let args = Args::parse(USAGE, &["layers-only", "pieces"])?;
    args.only(&["batch", "size", "hidden", "reps", "conv", "layers-only", "pieces"])?;
    let (batch, size, hidden, reps): (usize, usize, usize, usize) = (
        args.get("batch", 64)?,
        args.get("size", 64)?,
        args.get("hidden", 64)?,
        args.get("reps", 10)?,
    );
    set_conv_path(match args.get("conv", "backend".to_string())?.as_str() {
        "gemm" => ConvPath::Gemm,
        "backend" => ConvPath::Backend,
        other => return Err(format!("--conv must be backend or gemm, got {other}").into()),
    });
    ar_refine::watch_device_panics();
    let device = Default::default();
    let config = VqganConfig {
        in_channels: 3,
        out_channels: 3,
        hidden_channels: hidden,
        channel_mult: vec![1, 2, 2],
        num_res_blocks: 2,
        attn_resolutions: vec![],
        mid_attention: false,
        z_channels: 32,
        embed_dim: 32,
        num_embeddings: 1024,
        resolution: size,
        num_groups: 32,
        commitment_cost: 0.25,
        pixel_range: PixelRange::ZeroOne,
    };
    let vq = Vqgan::<A>::new(config.clone(), &device)?;
    eprintln!(
        "VQGAN {} parameters, batch {batch} of {size}×{size}",
        vq.num_params()
    );
    let mut model = vq.into_model();
    let images = Tensor::<A, 4>::random([batch, 3, size, size], Distribution::Uniform(0.0, 1.0), &device);

    if args.has("pieces") {
        pieces(batch, size, hidden, &device, reps);
        return Ok(());
    }
    layers(batch, size, hidden, &device, reps);
    if !args.has("layers-only") {
        phases(&mut model, &images, &device, reps);
    }
    Ok(())
}

/// The phases of one training step of `model` on `images`.
fn phases(
    model: &mut ar_refine::tokenizer::VqganModel<A>,
    images: &Tensor<A, 4>,
    device: &burn::tensor::Device<B>,
    reps: usize,
) {
    let inference = model.valid();
    let plain = images.clone().inner();
    row(
        "forward, no autodiff (encode + decode)",
        time(device, reps, || {
            let z = inference.encode_latent(plain.clone());
            let _ = inference.decode_latent(z);
        }),
        None,
    );
    row(
        "forward + losses + backward",
        time(device, reps, || {
            let l = vq_losses(model, images.clone(), Recon::L1, 1.0, 0.25).unwrap();
            let _ = l.total.backward();
        }),
        None,
    );
    let mut optim = AdamWConfig::new().init::<A, _>();
    row(
        "full step (+ gradients collected, AdamW)",
        time(device, reps, || {
            let l = vq_losses(model, images.clone(), Recon::L1, 1.0, 0.25).unwrap();
            let grads = GradientsParams::from_grads(l.total.backward(), &*model);
            *model = optim.step(1e-4, model.clone(), grads);
        }),
        None,
    );
    // Forward passes under `Autodiff` that are never differentiated: Burn 0.21 frees the graphs
    // of dropped tensors (and every tensor saved for their backward pass) only at the next
    // backward pass (burn-autodiff's `cleanup_orphaned_entries`), so each of these runs
    // allocates afresh: they come last, and they time graph recording plus allocation.
    let z = model.encode_latent(images.clone());
    row(
        "encode under autodiff",
        time(device, reps, || {
            let _ = model.encode_latent(images.clone());
        }),
        None,
    );
    let [b, d, h, w] = z.dims();
    let flat = z
        .clone()
        .reshape([b, d, h * w])
        .swap_dims(1, 2)
        .reshape([1, b * h * w, d]);
    let codes = model.codebook();
    row(
        "nearest codes of the latents (autodiff tensors, detached)",
        time(device, reps, || {
            let _ = nearest_codes(
                flat.clone().detach(),
                codes.clone().detach(),
                Metric::SquaredL2,
                None,
            )
            .unwrap();
        }),
        None,
    );
    row(
        "decode under autodiff",
        time(device, reps, || {
            let _ = model.decode_latent(z.clone().detach());
        }),
        None,
    );
    row(
        "forward + losses, autodiff graph",
        time(device, reps, || {
            let _ = vq_losses(model, images.clone(), Recon::L1, 1.0, 0.25).unwrap();
        }),
        None,
    );
}

/// The tensor operations the im2col convolution is made of, forward + backward, at the first
/// level's shape: `[b·h·w, 9·c] × [9·c, c]` as one product and as row batches, the shifted
/// views side by side, and the layout changes.
fn pieces(batch: usize, size: usize, hidden: usize, device: &burn::tensor::Device<B>, reps: usize) {
    let rows = batch * size * size;
    let k9 = 9 * hidden;
    let gflop = 2.0 * (rows * k9 * hidden) as f64 / 1e9;
    let dist = Distribution::Normal(0.0, 1.0);
    let cols = Tensor::<A, 2>::random([rows, k9], dist, device).require_grad();
    let w = Tensor::<A, 2>::random([k9, hidden], dist, device).require_grad();
    let (cp, wp) = (cols.clone().inner(), w.clone().inner());
    row(
        "matmul [rows, 9c] x [9c, c] forward",
        time(device, reps, || {
            let _ = cp.clone().matmul(wp.clone());
        }),
        Some(gflop),
    );
    row(
        "matmul [rows, 9c] x [9c, c] forward + backward",
        time(device, reps, || {
            let _ = cols.clone().matmul(w.clone()).sum().backward();
        }),
        Some(3.0 * gflop),
    );
    row(
        "matmul, 64 row batches, forward + backward",
        time(device, reps, || {
            let _ = cols
                .clone()
                .reshape([64, rows / 64, k9])
                .matmul(w.clone().unsqueeze::<3>())
                .sum()
                .backward();
        }),
        Some(3.0 * gflop),
    );
    let g = Tensor::<B, 2>::random([rows, hidden], dist, device);
    row(
        "weight gradient alone: cols^T [9c, rows] x grad [rows, c]",
        time(device, reps, || {
            let _ = cp.clone().transpose().matmul(g.clone());
        }),
        Some(gflop),
    );
    row(
        "weight gradient alone, cols^T made contiguous first",
        time(device, reps, || {
            let t = cp.clone().transpose();
            let t = t.clone().reshape([k9 * rows]).reshape([k9, rows]);
            let _ = t.matmul(g.clone());
        }),
        Some(gflop),
    );
    row(
        "input gradient alone: grad [rows, c] x W^T [c, 9c]",
        time(device, reps, || {
            let _ = g.clone().matmul(wp.clone().transpose());
        }),
        Some(gflop),
    );
    let x = Tensor::<A, 4>::random([batch, hidden, size, size], dist, device).require_grad();
    row(
        "pad + channels-last + 9 shifted views side by side, forward + backward",
        time(device, reps, || {
            let xl = x.clone().pad((1, 1, 1, 1), 0.0).permute([0, 2, 3, 1]);
            let mut v = Vec::new();
            for i in 0..3 {
                for j in 0..3 {
                    v.push(xl.clone().narrow(1, i, size).narrow(2, j, size));
                }
            }
            let _ = Tensor::cat(v, 3).sum().backward();
        }),
        None,
    );
    row(
        "channels-last and back (permute, reshape), forward + backward",
        time(device, reps, || {
            let _ = x
                .clone()
                .permute([0, 2, 3, 1])
                .reshape([rows, hidden])
                .reshape([batch, size, size, hidden])
                .permute([0, 3, 1, 2])
                .sum()
                .backward();
        }),
        None,
    );
}

/// The layers alone, at the first level's shape `[batch, hidden, size, size]`.
fn layers(batch: usize, size: usize, hidden: usize, device: &burn::tensor::Device<B>, reps: usize) {
    let x = Tensor::<A, 4>::random(
        [batch, hidden, size, size],
        Distribution::Normal(0.0, 1.0),
        device,
    )
    .require_grad();
    let conv = Conv2dConfig::new([hidden, hidden], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init::<A>(device);
    let gflop = 2.0 * (batch * size * size * hidden * hidden * 9) as f64 / 1e9;
    let conv_plain = conv.valid();
    let xp = x.clone().inner();
    row(
        "conv 3x3 forward",
        time(device, reps, || {
            let _ = apply_conv(&conv_plain, xp.clone());
        }),
        Some(gflop),
    );
    row(
        "conv 3x3 forward + backward (input and weight gradients)",
        time(device, reps, || {
            let _ = apply_conv(&conv, x.clone()).sum().backward();
        }),
        Some(3.0 * gflop),
    );
    let down = Conv2dConfig::new([hidden, hidden], [3, 3])
        .with_stride([2, 2])
        .init::<A>(device);
    row(
        "conv 3x3 stride 2 forward + backward",
        time(device, reps, || {
            let _ = apply_conv(&down, x.clone().pad((0, 1, 0, 1), 0.0))
                .sum()
                .backward();
        }),
        Some(3.0 * gflop / 4.0),
    );
    let gn = GroupNormConfig::new(32, hidden)
        .with_epsilon(1e-6)
        .init::<A>(device);
    let gn_plain = gn.valid();
    row(
        "GroupNorm(32) forward",
        time(device, reps, || {
            let _ = gn_plain.forward(xp.clone());
        }),
        None,
    );
    row(
        "GroupNorm(32) forward + backward",
        time(device, reps, || {
            let _ = gn.forward(x.clone()).sum().backward();
        }),
        None,
    );
    row(
        "SiLU forward",
        time(device, reps, || {
            let _ = burn::tensor::activation::silu(xp.clone());
        }),
        None,
    );
    row(
        "SiLU forward + backward",
        time(device, reps, || {
            let _ = burn::tensor::activation::silu(x.clone()).sum().backward();
        }),
        None,
    );
    row(
        "sum forward + backward (the reduction every row above ends with)",
        time(device, reps, || {
            let _ = x.clone().sum().backward();
        }),
        None,
    );
}
