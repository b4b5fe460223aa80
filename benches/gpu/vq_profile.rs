//! Where the VQGAN training step's time goes on a CUDA GPU (issue [gpu-speed] item 5): the
//! step of `ar-refine train-tokenizer` split into its phases, and the layers it is made of
//! timed alone at the largest activation shape, forward and forward + backward. Convolutions
//! take the path `--conv` selects (`ar_refine::tokenizer::apply_conv`).
//!
//! ```text
//! bash scripts/bench/build_gpu.sh vq_profile_gpu   # .bin/vq_profile_gpu.xz
//! .bin/vq_profile_gpu [--batch 64] [--size 64] [--hidden 64] [--reps 10] [--conv gemm|backend]
//! ```
//!
//! Every time is the median of `--reps` runs after two warm-up runs, each run ended by a device
//! sync. Prints one JSON line per row: `{"what", "ms"}` (and `gflops` for convolutions).
//! The network is the small-LVM tokenizer (`channel_mult [1, 2, 2]`, 2 ResNet blocks per level,
//! codebook 1024 × 32); `scripts/bench/torch_vq_step.py` times the same step in PyTorch.

mod timing;

use ar_refine::decode::{nearest_codes, Metric};
use ar_refine::tokenizer::{
    apply_conv, apply_conv_padded, vq_losses, ConvPath, PixelRange, Recon, Vqgan, VqganConfig,
};
use ar_refine::train::FusedAdamW;
use ar_refine::ArBackend;
use burn::backend::{Autodiff, Cuda};
use burn::module::AutodiffModule;
use burn::nn::conv::Conv2dConfig;
use burn::nn::{GroupNormConfig, PaddingConfig2d};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::{Distribution, Tensor};
use timing::{row, time};

type B = Cuda;
type A = Autodiff<Cuda>;

type AnyResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// One VQGAN training step split into its phases, and the layers it is made of, timed.
#[derive(clap::Parser)]
struct Args {
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Image side in pixels.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Channels of the first level.
    #[arg(long, default_value_t = 64)]
    hidden: usize,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 10)]
    reps: usize,
    /// How convolutions run: `gemm` (im2col + matmul) or `backend` (Burn's conv2d).
    #[arg(long, default_value = "gemm", value_parser = ["gemm", "backend"])]
    conv: String,
    /// Only the layers, not the whole step.
    #[arg(long)]
    layers_only: bool,
    /// Also the pieces of a layer.
    #[arg(long)]
    pieces: bool,
}

fn main() -> AnyResult<()> {
    let args = <Args as clap::Parser>::parse();
    let (batch, size, hidden, reps) = (args.batch, args.size, args.hidden, args.reps);
    let path = match args.conv.as_str() {
        "backend" => ConvPath::Backend,
        _ => ConvPath::Gemm,
    };
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
    let vq = Vqgan::<A>::new(config.clone(), &device)?.with_conv_path(path);
    eprintln!(
        "VQGAN {} parameters, batch {batch} of {size}×{size}",
        vq.num_params()
    );
    let mut model = vq.into_model();
    let images = Tensor::<A, 4>::random([batch, 3, size, size], Distribution::Uniform(0.0, 1.0), &device);

    if args.pieces {
        pieces(batch, size, hidden, &device, reps);
        return Ok(());
    }
    layers(path, batch, size, hidden, &device, reps);
    if !args.layers_only {
        phases(&mut model, &images, &device, reps);
    }
    Ok(())
}

type Model = ar_refine::tokenizer::VqganModel<A>;

/// One row: the whole training step of `model` on `images` with `optim`.
fn step_row(
    what: &str,
    mut optim: impl Optimizer<Model, A>,
    model: &mut Model,
    images: &Tensor<A, 4>,
    device: &burn::tensor::Device<B>,
    reps: usize,
) {
    row(
        what,
        time(device, reps, || {
            let l = vq_losses(model, images.clone(), Recon::L1, 1.0, 0.25).unwrap();
            let grads = GradientsParams::from_grads(l.total.backward(), &*model);
            *model = optim.step(1e-4, model.clone(), grads);
        }),
        None,
    );
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
    // Burn's AdamW, then the optimizer `train_vqgan` uses (each parameter tensor's update in
    // one kernel).
    let burn_adamw = AdamWConfig::new().init::<A, Model>();
    step_row(
        "full step (+ gradients collected, AdamW)",
        burn_adamw,
        model,
        images,
        device,
        reps,
    );
    let fused = FusedAdamW::init::<A, Model>(0.5, 0.9, 0.0);
    step_row(
        "full step (+ gradients collected, FusedAdamW)",
        fused,
        model,
        images,
        device,
        reps,
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

/// The tensor operations the row-range convolution (`ConvPath::Gemm`) is made of, at the first
/// level's shape (`X [b·h·w, c]` channels-last, 3×3 window), each alone, forward + backward
/// unless noted: where its backward pass spends its time.
fn pieces(batch: usize, size: usize, hidden: usize, device: &burn::tensor::Device<B>, reps: usize) {
    let rows = batch * size * size;
    let c = hidden;
    let reach = 2 * size + 2;
    let gflop = 2.0 * (rows * c * c) as f64 / 1e9;
    let dist = Distribution::Normal(0.0, 1.0);
    let xm = Tensor::<A, 2>::random([rows + reach, c], dist, device).require_grad();
    let xp = xm.clone().inner();
    let w = Tensor::<A, 3>::random([1, c, c], dist, device).require_grad();
    let g = Tensor::<B, 2>::random([rows, c], dist, device);
    row(
        "zeros [rows + reach, c] (no autodiff)",
        time(device, reps, || {
            let _ = Tensor::<B, 2>::zeros([rows + reach, c], device);
        }),
        None,
    );
    row(
        "zeros + slice_assign of a row range (no autodiff)",
        time(device, reps, || {
            let z = Tensor::<B, 2>::zeros([rows + reach, c], device);
            let _ = z.slice_assign([65..65 + rows, 0..c], g.clone());
        }),
        None,
    );
    row(
        "row-range narrow, forward only (no autodiff)",
        time(device, reps, || {
            let _ = xp.clone().narrow(0, 65, rows);
        }),
        None,
    );
    row(
        "sum of X, forward + backward (baseline)",
        time(device, reps, || {
            let _ = xm.clone().sum().backward();
        }),
        None,
    );
    row(
        "1 row-range narrow, sum, forward + backward",
        time(device, reps, || {
            let _ = xm.clone().narrow(0, 65, rows).sum().backward();
        }),
        None,
    );
    row(
        "9 row-range narrows summed, forward + backward",
        time(device, reps, || {
            let y = (1..9).fold(xm.clone().narrow(0, 0, rows), |acc, o| {
                acc + xm.clone().narrow(0, (o / 3) * size + o % 3, rows)
            });
            let _ = y.sum().backward();
        }),
        None,
    );
    let x0 = Tensor::<A, 2>::random([rows, c], dist, device).require_grad();
    row(
        "1 product, 64 row batches, contiguous X, forward + backward",
        time(device, reps, || {
            let _ = x0
                .clone()
                .reshape([64, rows / 64, c])
                .matmul(w.clone())
                .sum()
                .backward();
        }),
        Some(3.0 * gflop),
    );
    row(
        "1 product, 64 row batches, row-range view of X, forward + backward",
        time(device, reps, || {
            let _ = xm
                .clone()
                .narrow(0, 65, rows)
                .reshape([64, rows / 64, c])
                .matmul(w.clone())
                .sum()
                .backward();
        }),
        Some(3.0 * gflop),
    );
    row(
        "9 products on row ranges summed, forward + backward",
        time(device, reps, || {
            let p = |o: usize| {
                xm.clone()
                    .narrow(0, (o / 3) * size + o % 3, rows)
                    .reshape([64, rows / 64, c])
                    .matmul(w.clone())
            };
            let _ = (1..9).fold(p(0), |acc, o| acc + p(o)).sum().backward();
        }),
        Some(27.0 * gflop),
    );
    let w9 = Tensor::<A, 3>::random([1, 9 * c, c], dist, device).require_grad();
    row(
        "9 row ranges side by side (cat) + one product, 64 row batches, forward + backward",
        time(device, reps, || {
            let cols = Tensor::cat(
                (0..9)
                    .map(|o| xm.clone().narrow(0, (o / 3) * size + o % 3, rows))
                    .collect(),
                1,
            );
            let _ = cols
                .reshape([64, rows / 64, 9 * c])
                .matmul(w9.clone())
                .sum()
                .backward();
        }),
        Some(27.0 * gflop),
    );
    let w4 = Tensor::<A, 4>::random([c, c, 3, 3], dist, device).require_grad();
    row(
        "9 weight taps: permute, narrow, reshape, forward + backward",
        time(device, reps, || {
            let wk = w4.clone().permute([2, 3, 1, 0]);
            let taps = (0..9).map(|o| {
                wk.clone()
                    .narrow(0, o / 3, 1)
                    .narrow(1, o % 3, 1)
                    .reshape([1, c, c])
                    .sum()
            });
            let _ = taps.reduce(|a, b| a + b).map(|t| t.backward());
        }),
        None,
    );
    let y = Tensor::<A, 2>::random([rows, c], dist, device).require_grad();
    let (h1, w1) = (size - 2, size - 2);
    row(
        "output border dropped + channels-first, forward + backward",
        time(device, reps, || {
            let _ = y
                .clone()
                .reshape([batch, size, size, c])
                .narrow(1, 0, h1)
                .narrow(2, 0, w1)
                .permute([0, 3, 1, 2])
                .sum()
                .backward();
        }),
        None,
    );
    let x4 = Tensor::<A, 4>::random([batch, c, size, size], dist, device).require_grad();
    row(
        "pad 1 on each side, forward + backward",
        time(device, reps, || {
            let _ = x4.clone().pad((1, 1, 1, 1), 0.0).sum().backward();
        }),
        None,
    );
    let r = Tensor::<A, 4>::random([batch, c, size + 2, size + 2], dist, device);
    row(
        "pad 1 on each side, gradient not a broadcast, forward + backward",
        time(device, reps, || {
            let _ = (x4.clone().pad((1, 1, 1, 1), 0.0) * r.clone()).sum().backward();
        }),
        None,
    );
    row(
        "pad 1 on each side, inner backend, forward only",
        time(device, reps, || {
            let _ = x4.clone().inner().pad((1, 1, 1, 1), 0.0);
        }),
        None,
    );
    row(
        "zero padding by concatenation (width, then height), forward + backward",
        time(device, reps, || {
            let zw = Tensor::<A, 4>::zeros([batch, c, size, 1], device);
            let zh = Tensor::<A, 4>::zeros([batch, c, 1, size + 2], device);
            let p = Tensor::cat(vec![zw.clone(), x4.clone(), zw], 3);
            let p = Tensor::cat(vec![zh.clone(), p, zh], 2);
            let _ = (p * r.clone()).sum().backward();
        }),
        None,
    );
    row(
        "channels-last and back (permute, reshape), forward + backward",
        time(device, reps, || {
            let _ = x4
                .clone()
                .permute([0, 2, 3, 1])
                .reshape([rows, c])
                .reshape([batch, size, size, c])
                .permute([0, 3, 1, 2])
                .sum()
                .backward();
        }),
        None,
    );
}

/// The layers alone, at the first level's shape `[batch, hidden, size, size]`.
fn layers(
    path: ConvPath,
    batch: usize,
    size: usize,
    hidden: usize,
    device: &burn::tensor::Device<B>,
    reps: usize,
) {
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
            let _ = apply_conv(path, &conv_plain, xp.clone());
        }),
        Some(gflop),
    );
    row(
        "conv 3x3 forward + backward (input and weight gradients)",
        time(device, reps, || {
            let _ = apply_conv(path, &conv, x.clone()).sum().backward();
        }),
        Some(3.0 * gflop),
    );
    let down = Conv2dConfig::new([hidden, hidden], [3, 3])
        .with_stride([2, 2])
        .init::<A>(device);
    row(
        "conv 3x3 stride 2 forward + backward",
        time(device, reps, || {
            let _ = apply_conv_padded(path, &down, x.clone(), [0, 1, 0, 1])
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
    // `silu(group_norm(x))` as the residual blocks run it: Burn's tensor operations against the
    // crate's fused kernels (`ArBackend::group_norm_silu`, what `AR_REFINE_FUSED=0` turns off).
    row(
        "GroupNorm(32) + SiLU forward + backward, tensor ops",
        time(device, reps, || {
            let _ = burn::tensor::activation::silu(gn.forward(x.clone()))
                .sum()
                .backward();
        }),
        None,
    );
    let (gamma, beta) = (
        gn.gamma.as_ref().expect("affine").val(),
        gn.beta.as_ref().expect("affine").val(),
    );
    let fused = |x: Tensor<A, 4>| {
        <A as ArBackend>::group_norm_silu(x, gamma.clone(), beta.clone(), 32, 1e-6).expect("CubeCL backend")
    };
    row(
        "GroupNorm(32) + SiLU forward, fused",
        time(device, reps, || {
            let _ = <B as ArBackend>::group_norm_silu(
                xp.clone(),
                gamma.clone().inner(),
                beta.clone().inner(),
                32,
                1e-6,
            );
        }),
        None,
    );
    row(
        "GroupNorm(32) + SiLU forward + backward, fused",
        time(device, reps, || {
            let _ = fused(x.clone()).sum().backward();
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
