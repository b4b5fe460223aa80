//! VQGAN building blocks: ResNet block, single-head spatial attention, resamplers.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, PaddingConfig2d};
use burn::tensor::activation::silu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{backend::Backend, Tensor};
use std::sync::atomic::{AtomicU8, Ordering};

/// GroupNorm with taming's ε = 1e-6.
pub(crate) fn norm<B: Backend>(channels: usize, groups: usize, device: &B::Device) -> GroupNorm<B> {
    GroupNormConfig::new(groups, channels)
        .with_epsilon(1e-6)
        .init(device)
}

/// A `k×k` convolution with bias, stride `stride`, zero padding `pad`.
pub(crate) fn conv<B: Backend>(
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    pad: usize,
    device: &B::Device,
) -> Conv2d<B> {
    Conv2dConfig::new([c_in, c_out], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .init(device)
}

/// How the tokenizer runs its convolutions ([`set_conv_path`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvPath {
    /// The backend's `conv2d` (default).
    Backend,
    /// im2col (shifted slices) + one batched matmul per convolution, so that the backward pass
    /// is matmuls and slices instead of the backend's convolution-backward kernels; `k²`× the
    /// input's memory per convolution. Measured on the H200 with Burn 0.21's CUDA backend it
    /// was *slower* for the small-LVM tokenizer (5.7–6.3 s against 2.5 s per training step,
    /// `docs/tiny-lvm/NOTES.md`); kept for backends whose convolution backward is weak.
    Gemm,
}

static CONV_PATH: AtomicU8 = AtomicU8::new(0);

/// Chooses how every VQGAN in this process runs its convolutions (for training-speed
/// comparisons and memory-tight inference); both paths compute the same function.
///
/// ```
/// use ar_refine::tokenizer::{conv_path, set_conv_path, ConvPath};
/// set_conv_path(ConvPath::Gemm);
/// assert_eq!(conv_path(), ConvPath::Gemm);
/// set_conv_path(ConvPath::Backend);
/// ```
pub fn set_conv_path(path: ConvPath) {
    let v = match path {
        ConvPath::Backend => 0,
        ConvPath::Gemm => 1,
    };
    CONV_PATH.store(v, Ordering::Relaxed);
}

/// The current [`ConvPath`].
pub fn conv_path() -> ConvPath {
    match CONV_PATH.load(Ordering::Relaxed) {
        1 => ConvPath::Gemm,
        _ => ConvPath::Backend,
    }
}

/// Applies `conv` (built by [`conv`]: square kernel, stride 1 or 2, symmetric explicit padding,
/// no dilation or groups) to `x` `[b, c_in, h, w]` on the path [`conv_path`] selects.
pub(crate) fn apply_conv<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    if conv_path() == ConvPath::Backend {
        return conv.forward(x);
    }
    let pad = match conv.padding {
        PaddingConfig2d::Explicit(p, ..) => p,
        _ => 0,
    };
    let stride = conv.stride[0];
    let x = if pad > 0 {
        x.pad((pad, pad, pad, pad), 0.0)
    } else {
        x
    };
    let out = conv_gemm(x, conv.weight.val());
    let out = match stride {
        1 => out,
        s => {
            // stride s = the stride-1 output at every s-th position
            let [b, c, h, w] = out.dims();
            let (ho, wo) = (h.div_ceil(s), w.div_ceil(s));
            out.pad((0, wo * s - w, 0, ho * s - h), 0.0)
                .reshape([b, c, ho, s, wo, s])
                .narrow(3, 0, 1)
                .narrow(5, 0, 1)
                .reshape([b, c, ho, wo])
        }
    };
    match &conv.bias {
        Some(bias) => {
            let c = bias.dims()[0];
            out + bias.val().reshape([1, c, 1, 1])
        }
        None => out,
    }
}

/// Valid (unpadded) stride-1 convolution of `x` `[b, c_in, h, w]` with `weight`
/// `[c_out, c_in, k, k]` as `W [c_out, k²·c_in] × cols [k²·c_in, h'·w']` per image.
fn conv_gemm<B: Backend>(x: Tensor<B, 4>, weight: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, c_in, h, w] = x.dims();
    let [c_out, _, k, _] = weight.dims();
    let (ho, wo) = (h + 1 - k, w + 1 - k);
    let cols = if k == 1 {
        x.reshape([b, c_in, h * w])
    } else {
        let mut shifted = Vec::with_capacity(k * k);
        for i in 0..k {
            for j in 0..k {
                shifted.push(x.clone().narrow(2, i, ho).narrow(3, j, wo));
            }
        }
        Tensor::cat(shifted, 1).reshape([b, k * k * c_in, ho * wo])
    };
    let w2 = weight
        .permute([0, 2, 3, 1])
        .reshape([1, c_out, k * k * c_in])
        .repeat_dim(0, b);
    w2.matmul(cols).reshape([b, c_out, ho, wo])
}

/// `x + conv2(silu(norm2(conv1(silu(norm1(x))))))`, with a 1×1 shortcut when channels change.
#[derive(Module, Debug)]
pub struct ResnetBlock<B: Backend> {
    pub(crate) norm1: GroupNorm<B>,
    pub(crate) conv1: Conv2d<B>,
    pub(crate) norm2: GroupNorm<B>,
    pub(crate) conv2: Conv2d<B>,
    pub(crate) shortcut: Option<Conv2d<B>>,
}

impl<B: Backend> ResnetBlock<B> {
    pub(crate) fn new(c_in: usize, c_out: usize, groups: usize, device: &B::Device) -> Self {
        Self {
            norm1: norm(c_in, groups, device),
            conv1: conv(c_in, c_out, 3, 1, 1, device),
            norm2: norm(c_out, groups, device),
            conv2: conv(c_out, c_out, 3, 1, 1, device),
            shortcut: (c_in != c_out).then(|| conv(c_in, c_out, 1, 1, 0, device)),
        }
    }

    pub(crate) fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let h = apply_conv(&self.conv1, silu(self.norm1.forward(x.clone())));
        let h = apply_conv(&self.conv2, silu(self.norm2.forward(h)));
        let x = match &self.shortcut {
            Some(s) => apply_conv(s, x),
            None => x,
        };
        x + h
    }
}

/// Single-head self-attention over the `H·W` positions with 1×1 projections and a residual.
#[derive(Module, Debug)]
pub struct AttnBlock<B: Backend> {
    pub(crate) norm: GroupNorm<B>,
    pub(crate) q: Conv2d<B>,
    pub(crate) k: Conv2d<B>,
    pub(crate) v: Conv2d<B>,
    pub(crate) proj_out: Conv2d<B>,
}

impl<B: Backend> AttnBlock<B> {
    pub(crate) fn new(c: usize, groups: usize, device: &B::Device) -> Self {
        Self {
            norm: norm(c, groups, device),
            q: conv(c, c, 1, 1, 0, device),
            k: conv(c, c, 1, 1, 0, device),
            v: conv(c, c, 1, 1, 0, device),
            proj_out: conv(c, c, 1, 1, 0, device),
        }
    }

    pub(crate) fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, c, h, w] = x.dims();
        let n = self.norm.forward(x.clone());
        // [b, c, h, w] → [b, 1, h·w, c]
        let seq = |t: Tensor<B, 4>| t.reshape([b, c, h * w]).swap_dims(1, 2).unsqueeze_dim::<4>(1);
        let out = attention(
            seq(apply_conv(&self.q, n.clone())),
            seq(apply_conv(&self.k, n.clone())),
            seq(apply_conv(&self.v, n)),
            None,
            None,
            AttentionModuleOptions::default(),
        );
        let out = out.reshape([b, h * w, c]).swap_dims(1, 2).reshape([b, c, h, w]);
        x + apply_conv(&self.proj_out, out)
    }
}

/// Stride-2 downsampling: pad right and bottom by one, then a 3×3 stride-2 convolution.
pub(crate) fn downsample<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    apply_conv(conv, x.pad((0, 1, 0, 1), 0.0))
}

/// Nearest-neighbour ×2 upsampling (built from reshapes, so it differentiates everywhere),
/// then a 3×3 convolution.
pub(crate) fn upsample<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    let up = x
        .reshape([b, c, h, 1, w, 1])
        .expand([b, c, h, 2, w, 2])
        .reshape([b, c, 2 * h, 2 * w]);
    apply_conv(conv, up)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::Distribution;

    type A = Autodiff<NdArray>;

    /// The im2col path equals the backend's conv2d, values and gradients, for every shape the
    /// VQGAN uses (3×3 same, 3×3 stride 2 after right/bottom padding, 1×1, odd sizes).
    #[test]
    fn gemm_convolution_matches_the_backend() {
        let device = Default::default();
        for (c_in, c_out, k, stride, pad, h, w) in [
            (3, 8, 3, 1, 1, 9, 7),
            (4, 6, 1, 1, 0, 5, 5),
            (5, 5, 3, 2, 0, 9, 9),
            (2, 3, 3, 2, 0, 8, 11),
        ] {
            let c = conv::<A>(c_in, c_out, k, stride, pad, &device);
            let x0 = Tensor::<A, 4>::random([2, c_in, h, w], Distribution::Normal(0.0, 1.0), &device);
            let run = |path: ConvPath| {
                let x = x0.clone().detach().require_grad();
                let y = match path {
                    ConvPath::Gemm => {
                        let y = {
                            set_conv_path(ConvPath::Gemm);
                            apply_conv(&c, x.clone())
                        };
                        set_conv_path(ConvPath::Backend);
                        y
                    }
                    _ => c.forward(x.clone()),
                };
                let g = (y.clone() * y.clone()).sum().backward();
                let gx = x.grad(&g).unwrap();
                let gw = c.weight.val().grad(&g).unwrap();
                (y.inner(), gx, gw)
            };
            let (y1, gx1, gw1) = run(ConvPath::Backend);
            let (y2, gx2, gw2) = run(ConvPath::Gemm);
            assert_eq!(y1.dims(), y2.dims(), "{c_in} {c_out} {k} {stride} {h}×{w}");
            for (a, b, what) in [(y1, y2, "output"), (gx1, gx2, "input grad")] {
                let d = (a.clone() - b).abs().max().into_scalar();
                let m = a.abs().max().into_scalar();
                assert!(d <= 1e-4 * m.max(1.0), "{what}: {d} vs scale {m}");
            }
            let d = (gw1.clone() - gw2).abs().max().into_scalar();
            assert!(
                d <= 1e-4 * gw1.abs().max().into_scalar().max(1.0),
                "weight grad {d}"
            );
        }
    }
}
