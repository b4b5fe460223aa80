//! VQGAN building blocks: ResNet block, single-head spatial attention, resamplers.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, PaddingConfig2d};
use burn::tensor::activation::silu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{backend::Backend, Tensor};

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
        let h = self.conv1.forward(silu(self.norm1.forward(x.clone())));
        let h = self.conv2.forward(silu(self.norm2.forward(h)));
        let x = match &self.shortcut {
            Some(s) => s.forward(x),
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
            seq(self.q.forward(n.clone())),
            seq(self.k.forward(n.clone())),
            seq(self.v.forward(n)),
            None,
            None,
            AttentionModuleOptions::default(),
        );
        let out = out.reshape([b, h * w, c]).swap_dims(1, 2).reshape([b, c, h, w]);
        x + self.proj_out.forward(out)
    }
}

/// Stride-2 downsampling: pad right and bottom by one, then a 3×3 stride-2 convolution.
pub(crate) fn downsample<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    conv.forward(x.pad((0, 1, 0, 1), 0.0))
}

/// Nearest-neighbour ×2 upsampling (built from reshapes, so it differentiates everywhere),
/// then a 3×3 convolution.
pub(crate) fn upsample<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    let up = x
        .reshape([b, c, h, 1, w, 1])
        .expand([b, c, h, 2, w, 2])
        .reshape([b, c, 2 * h, 2 * w]);
    conv.forward(up)
}
