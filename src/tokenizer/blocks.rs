//! VQGAN building blocks: ResNet block, single-head spatial attention, resamplers.

use crate::backend::ArBackend;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, PaddingConfig2d};
use burn::tensor::activation::silu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::Tensor;

/// `silu(norm(x))` for `x [n, c, h, w]`: the fused kernels where the backend has them
/// ([`ArBackend`]: the CubeCL backends and their `Autodiff` wrappers, for an affine GroupNorm),
/// else Burn's `GroupNorm` and `silu`.
pub(crate) fn norm_silu<B: ArBackend>(norm: &GroupNorm<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    #[cfg(feature = "cubecl")]
    if let (true, Some(gamma), Some(beta)) = (crate::backend::fused_enabled(), &norm.gamma, &norm.beta) {
        let [n, c, h, w] = x.dims();
        let groups = norm.num_groups;
        if norm.affine && n * h * w > 0 && c == norm.num_channels && groups > 0 && c % groups == 0 {
            if let Some(y) = B::group_norm_silu(x.clone(), gamma.val(), beta.val(), groups, norm.epsilon) {
                return y;
            }
        }
    }
    silu(norm.forward(x))
}

/// GroupNorm with taming's ε = 1e-6.
pub(crate) fn norm<B: ArBackend>(channels: usize, groups: usize, device: &B::Device) -> GroupNorm<B> {
    GroupNormConfig::new(groups, channels)
        .with_epsilon(1e-6)
        .init(device)
}

/// A `k×k` convolution with bias, stride `stride`, zero padding `pad`.
pub(crate) fn conv<B: ArBackend>(
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

/// How a tokenizer runs its convolutions ([`Vqgan::with_conv_path`](super::Vqgan::with_conv_path));
/// both paths compute the same function.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConvPath {
    /// The backend's `conv2d`.
    Backend,
    /// `k²` matrix products over row ranges of the channels-last input (one per window
    /// offset, no im2col copy), so that the backward pass is matrix products, row-range
    /// copies and sums instead of the backend's convolution-backward kernels (default).
    /// Keeps one zero-padded channels-last copy of the input for the backward pass. Several
    /// times faster to train than Burn 0.21's `conv2d` on its CUDA and ndarray backends
    /// (BENCHMARKS.md, run 6).
    #[default]
    Gemm,
}

/// Applies `conv` (square kernel, any stride, symmetric explicit padding or none, no dilation
/// or groups: the convolutions a VQGAN is made of) to `x` `[b, c_in, h, w]` on `path`; returns
/// `[b, c_out, h', w']`.
pub fn apply_conv<B: ArBackend>(path: ConvPath, conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    if path == ConvPath::Backend {
        return conv.forward(x);
    }
    let pad = match conv.padding {
        PaddingConfig2d::Explicit(p, ..) => p,
        _ => 0,
    };
    apply_conv_padded(path, conv, x, [pad; 4])
}

/// `conv` (whose own padding is ignored; square kernel, no dilation or groups, as for
/// [`apply_conv`]) applied to `x` `[b, c_in, h, w]` zero-padded by `pads` =
/// `[left, right, top, bottom]` pixels, on `path`; returns `[b, c_out, h', w']`. The VQGAN's
/// downsampling convolution pads `[0, 1, 0, 1]`.
///
/// # Panics
/// If the padded input is smaller than the kernel.
pub fn apply_conv_padded<B: ArBackend>(
    path: ConvPath,
    conv: &Conv2d<B>,
    x: Tensor<B, 4>,
    pads: [usize; 4],
) -> Tensor<B, 4> {
    let out = match path {
        ConvPath::Backend => {
            let [l, r, t, b] = pads;
            let x = pad_zeros(pad_zeros(x, 3, l, r), 2, t, b);
            burn::tensor::module::conv2d(
                x,
                conv.weight.val(),
                None,
                burn::tensor::ops::ConvOptions::new(conv.stride, [0, 0], conv.dilation, conv.groups),
            )
        }
        ConvPath::Gemm => conv_gemm(x, conv.weight.val(), conv.stride[0], pads),
    };
    match &conv.bias {
        Some(bias) => {
            let c = bias.dims()[0];
            out + bias.val().reshape([1, c, 1, 1])
        }
        None => out,
    }
}

/// `x` with `before` zeros in front of and `after` zeros behind dimension `dim`, built by
/// concatenation. (Burn 0.21's `Tensor::pad` writes `x` into a filled tensor with
/// `slice_assign`; on CUDA its forward + backward pass took 200–250 ms at `[64, 64, 64, 64]`, where
/// concatenation's backward pass is slices of the gradient: BENCHMARKS.md, run 6.)
pub(crate) fn pad_zeros<B: ArBackend, const D: usize>(
    x: Tensor<B, D>,
    dim: usize,
    before: usize,
    after: usize,
) -> Tensor<B, D> {
    if before + after == 0 {
        return x;
    }
    let device = x.device();
    let zeros = |n: usize| {
        let mut shape = x.dims();
        shape[dim] = n;
        Tensor::<B, D>::zeros(shape, &device)
    };
    let mut parts = Vec::with_capacity(3);
    if before > 0 {
        parts.push(zeros(before));
    }
    let tail = (after > 0).then(|| zeros(after));
    parts.push(x);
    parts.extend(tail);
    Tensor::cat(parts, dim)
}

/// Convolution of `x` `[b, c_in, h, w]`, zero-padded by `pads` `[left, right, top, bottom]`,
/// with `weight` `[c_out, c_in, k, k]` and stride `stride`, as `k²` matrix products in
/// channels-last order, without im2col:
///
/// - `x` becomes the matrix `X [b·h·w, c_in]` (one row per pixel of the padded grid,
///   channels-last; the zeros are concatenated in channels-last order);
/// - the output is computed at *every* pixel of the input grid (those whose window leaves the
///   image are dropped at the end): the window offset `(i, j)` of output row `p` is input row
///   `p + i·w + j`, so each offset reads a *contiguous row range* of `X`, and
///   `Y = Σ_{i,j} X[i·w + j ..][..rows] · W_ij` with `W_ij = weight[:, :, i, j]ᵀ` `[c_in, c_out]`;
/// - each product runs as `chunks` row batches (`[chunks, rows / chunks, c_in]` against the
///   broadcast `[1, c_in, c_out]`), so that its weight gradient, a product whose inner
///   dimension is every pixel, is `chunks` independent products summed afterwards;
/// - stride `s` keeps every `s`-th row and column of the stride-1 result.
///
/// The backward pass is matrix products, row-range copies into a zero matrix and sums: no
/// backend convolution kernel and no gather/scatter. Extra work: the `(h·w) / (h'·w')` border
/// pixels (≈ 6 % at 64×64 with padding 1) and, for stride 2, the skipped positions (4×).
fn conv_gemm<B: ArBackend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    stride: usize,
    pads: [usize; 4],
) -> Tensor<B, 4> {
    let [b, c_in, h, w] = x.dims();
    let [c_out, _, k, _] = weight.dims();
    let s = stride.max(1);
    let [left, right, top, bottom] = pads;
    // channels-last, zero-padded: [b, h, w, c_in]
    let xl = x.permute([0, 2, 3, 1]);
    let xl = pad_zeros(pad_zeros(xl, 2, left, right), 1, top, bottom);
    let (h, w) = (h + top + bottom, w + left + right);
    let (h1, w1) = (h + 1 - k, w + 1 - k); // stride-1 output size
    let pixels = b * h * w;
    let chunks = row_chunks(pixels);
    let rows = pixels.div_ceil(chunks) * chunks;
    let reach = (k - 1) * w + (k - 1); // the largest row offset of a window
    let xm = pad_zeros(xl.reshape([pixels, c_in]), 0, 0, rows + reach - pixels);
    // weight [c_out, c_in, k, k] → [k, k, c_in, c_out]
    let wk = weight.permute([2, 3, 1, 0]);
    let product = |i: usize, j: usize| {
        let wij = wk
            .clone()
            .narrow(0, i, 1)
            .narrow(1, j, 1)
            .reshape([1, c_in, c_out]);
        xm.clone()
            .narrow(0, i * w + j, rows)
            .reshape([chunks, rows / chunks, c_in])
            .matmul(wij)
    };
    // the k² window offsets `(o / k, o % k)`, summed
    let y = (1..k * k).fold(product(0, 0), |acc, o| acc + product(o / k, o % k));
    let y = y.reshape([rows, c_out]).narrow(0, 0, pixels);
    let y = y.reshape([b, h, w, c_out]);
    let y = match s {
        1 => y.narrow(1, 0, h1).narrow(2, 0, w1),
        _ => {
            // output (a, c) is stride-1 position (s·a, s·c): rows and columns grouped by s
            let (ho, wo) = (h1.div_ceil(s), w1.div_ceil(s));
            let y = pad_zeros(y, 1, 0, (ho * s).saturating_sub(h));
            let y = pad_zeros(y, 2, 0, (wo * s).saturating_sub(w));
            y.narrow(1, 0, ho * s)
                .narrow(2, 0, wo * s)
                .reshape([b, ho, s, wo, s, c_out])
                .narrow(2, 0, 1)
                .narrow(4, 0, 1)
                .reshape([b, ho, wo, c_out])
        }
    };
    y.permute([0, 3, 1, 2]) // [b, c_out, h', w']
}

/// How many row batches [`conv_gemm`] splits `rows` into: up to 64, with at least 1,024 rows
/// per batch (1 for small inputs).
fn row_chunks(rows: usize) -> usize {
    (rows / 1024).clamp(1, 64)
}

/// `x + conv2(silu(norm2(conv1(silu(norm1(x))))))`, with a 1×1 shortcut when channels change.
#[derive(Module, Debug)]
pub struct ResnetBlock<B: ArBackend> {
    pub(crate) norm1: GroupNorm<B>,
    pub(crate) conv1: Conv2d<B>,
    pub(crate) norm2: GroupNorm<B>,
    pub(crate) conv2: Conv2d<B>,
    pub(crate) shortcut: Option<Conv2d<B>>,
}

impl<B: ArBackend> ResnetBlock<B> {
    pub(crate) fn new(c_in: usize, c_out: usize, groups: usize, device: &B::Device) -> Self {
        Self {
            norm1: norm(c_in, groups, device),
            conv1: conv(c_in, c_out, 3, 1, 1, device),
            norm2: norm(c_out, groups, device),
            conv2: conv(c_out, c_out, 3, 1, 1, device),
            shortcut: (c_in != c_out).then(|| conv(c_in, c_out, 1, 1, 0, device)),
        }
    }

    pub(crate) fn forward(&self, path: ConvPath, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let h = apply_conv(path, &self.conv1, norm_silu(&self.norm1, x.clone()));
        let h = apply_conv(path, &self.conv2, norm_silu(&self.norm2, h));
        let x = match &self.shortcut {
            Some(s) => apply_conv(path, s, x),
            None => x,
        };
        x + h
    }
}

/// Single-head self-attention over the `H·W` positions with 1×1 projections and a residual.
#[derive(Module, Debug)]
pub struct AttnBlock<B: ArBackend> {
    pub(crate) norm: GroupNorm<B>,
    pub(crate) q: Conv2d<B>,
    pub(crate) k: Conv2d<B>,
    pub(crate) v: Conv2d<B>,
    pub(crate) proj_out: Conv2d<B>,
}

impl<B: ArBackend> AttnBlock<B> {
    pub(crate) fn new(c: usize, groups: usize, device: &B::Device) -> Self {
        Self {
            norm: norm(c, groups, device),
            q: conv(c, c, 1, 1, 0, device),
            k: conv(c, c, 1, 1, 0, device),
            v: conv(c, c, 1, 1, 0, device),
            proj_out: conv(c, c, 1, 1, 0, device),
        }
    }

    pub(crate) fn forward(&self, path: ConvPath, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, c, h, w] = x.dims();
        let n = self.norm.forward(x.clone());
        // [b, c, h, w] → [b, 1, h·w, c]
        let seq = |t: Tensor<B, 4>| t.reshape([b, c, h * w]).swap_dims(1, 2).unsqueeze_dim::<4>(1);
        let out = attention(
            seq(apply_conv(path, &self.q, n.clone())),
            seq(apply_conv(path, &self.k, n.clone())),
            seq(apply_conv(path, &self.v, n)),
            None,
            None,
            AttentionModuleOptions::default(),
        );
        let out = out.reshape([b, h * w, c]).swap_dims(1, 2).reshape([b, c, h, w]);
        x + apply_conv(path, &self.proj_out, out)
    }
}

/// Stride-2 downsampling: pad right and bottom by one, then a 3×3 stride-2 convolution.
pub(crate) fn downsample<B: ArBackend>(path: ConvPath, conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    apply_conv_padded(path, conv, x, [0, 1, 0, 1])
}

/// Nearest-neighbour ×2 upsampling (built from reshapes, so it differentiates everywhere),
/// then a 3×3 convolution.
pub(crate) fn upsample<B: ArBackend>(path: ConvPath, conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    let up = x
        .reshape([b, c, h, 1, w, 1])
        .expand([b, c, h, 2, w, 2])
        .reshape([b, c, 2 * h, 2 * w]);
    apply_conv(path, conv, up)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::Distribution;

    type A = Autodiff<NdArray>;

    /// `f(x)`, the gradient of `sum(f(x)²)` with respect to `x` and to `c`'s weight.
    fn value_and_grads(
        c: &Conv2d<A>,
        x0: &Tensor<A, 4>,
        f: impl Fn(Tensor<A, 4>) -> Tensor<A, 4>,
    ) -> [Tensor<NdArray, 4>; 3] {
        let x = x0.clone().detach().require_grad();
        let y = f(x.clone());
        let g = (y.clone() * y.clone()).sum().backward();
        let gx = x.grad(&g).unwrap();
        let gw = c.weight.val().grad(&g).unwrap();
        [y.inner(), gx, gw]
    }

    /// Asserts that each pair of tensors agrees to 1e-4 of the first one's largest magnitude.
    fn assert_close(a: [Tensor<NdArray, 4>; 3], b: [Tensor<NdArray, 4>; 3], case: &str) {
        assert_eq!(a[0].dims(), b[0].dims(), "{case}");
        for ((a, b), what) in a.into_iter().zip(b).zip(["output", "input grad", "weight grad"]) {
            let d = (a.clone() - b).abs().max().into_scalar();
            let m = a.abs().max().into_scalar();
            assert!(d <= 1e-4 * m.max(1.0), "{case}: {what}: {d} vs scale {m}");
        }
    }

    /// The matrix-product path equals the backend's conv2d, values and gradients, for every
    /// shape the VQGAN uses (3×3 same, 3×3 stride 2, 1×1, odd sizes, more than one row batch).
    #[test]
    fn gemm_convolution_matches_the_backend() {
        let device = Default::default();
        for (c_in, c_out, k, stride, pad, h, w) in [
            (3, 8, 3, 1, 1, 9, 7),
            (4, 6, 1, 1, 0, 5, 5),
            (5, 5, 3, 2, 0, 9, 9),
            (2, 3, 3, 2, 0, 8, 11),
            // 3,526 pixels: three row batches and two spare rows
            (3, 4, 3, 1, 1, 41, 43),
        ] {
            let c = conv::<A>(c_in, c_out, k, stride, pad, &device);
            let x0 = Tensor::<A, 4>::random([2, c_in, h, w], Distribution::Normal(0.0, 1.0), &device);
            let want = value_and_grads(&c, &x0, |x| c.forward(x));
            let got = value_and_grads(&c, &x0, |x| apply_conv_padded(ConvPath::Gemm, &c, x, [pad; 4]));
            assert_close(want, got, &format!("{c_in} {c_out} {k} {stride} {h}×{w}"));
        }
    }

    /// Downsampling (right/bottom zero padding by concatenation, then the stride-2
    /// convolution) equals `Tensor::pad` followed by the backend's conv2d on both paths.
    #[test]
    fn downsampling_matches_pad_then_conv2d() {
        let device = Default::default();
        for (c_in, c_out, h, w) in [(3, 4, 8, 8), (2, 3, 9, 7)] {
            let c = conv::<A>(c_in, c_out, 3, 2, 0, &device);
            let x0 = Tensor::<A, 4>::random([2, c_in, h, w], Distribution::Normal(0.0, 1.0), &device);
            let want = value_and_grads(&c, &x0, |x| c.forward(x.pad((0, 1, 0, 1), 0.0)));
            for path in [ConvPath::Backend, ConvPath::Gemm] {
                let got = value_and_grads(&c, &x0, |x| apply_conv_padded(path, &c, x, [0, 1, 0, 1]));
                assert_close(want.clone(), got, &format!("{path:?} {c_in} {c_out} {h}×{w}"));
            }
        }
    }
}
