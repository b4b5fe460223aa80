//! RMSNorm and `silu(gate) · up` for training, each with its own backward pass (issue
//! [gpu-speed] item 5).
//!
//! Differentiated as Burn 0.21 tensor operations, RMSNorm is ~6 passes over its input forward
//! and about twice as many backward (run 9: 2.7 ms per norm at `[24 576, 256]` f32 on an H200,
//! where one read and one write take ~0.04 ms), and the gated product's `silu` three more. Here
//! the forward passes are the decode kernels of [`super::fused`] and each backward pass is one
//! kernel:
//! - RMSNorm `y = g ∘ x · r`, `r = (mean(x²) + ε)^(−1/2)` per row: [`rms_norm_grad_kernel`]
//!   writes `dx = r · (dy ∘ g − x · r² · mean(dy ∘ g ∘ x))` and, per block of rows, the partial
//!   sums of `dg = Σ_rows dy ∘ x · r`, which one small reduction adds up;
//! - `y = silu(a) · u`: [`silu_mul_grad_kernel`] writes `du = dy · silu(a)` and
//!   `da = dy · u · σ(a) · (1 + a · (1 − σ(a)))`.
//!
//! Statistics in f32 whatever the storage type. The `Autodiff` side lives in [`crate::backend`];
//! the layers call it through [`crate::ArBackend::rms_norm`] and [`crate::ArBackend::silu_mul`].

use burn::tensor::{DType, Tensor as BurnTensor};
use burn_cubecl::element::BoolElement;
use burn_cubecl::{CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;

use super::fused::FusedBackend;
use crate::backend::cube::{contiguous, cube_sum, empty, float, per_element};

/// Rows per cube of [`rms_norm_grad_kernel`]: the partial gain gradients are `[rows / 32, h]`.
const BLOCK_ROWS: usize = 32;

/// Units per cube.
const UNITS: usize = 256;

/// The backward pass of RMSNorm over rows `32·c .. 32·c + 32` of `x`, `dy [rows, h]`
/// (contiguous) with `gain [h]`, in cube `c`: `dx [rows, h]` and the block's share of the gain's
/// gradient, `dgain [blocks, h]` (f32). First the two row sums of each row (`Σ x²`, `Σ dy·g·x`,
/// kept in shared memory), then each unit walks its columns down the block's rows.
#[cube(launch_unchecked)]
fn rms_norm_grad_kernel<F: Float>(
    x: &Tensor<F>,
    dy: &Tensor<F>,
    gain: &Tensor<F>,
    dx: &mut Tensor<F>,
    dgain: &mut Tensor<f32>,
    eps: f32,
    #[comptime] units: usize,
    #[comptime] block_rows: usize,
    #[define(F)] _dtype: StorageType,
) {
    let rows = x.shape(0);
    let h = x.shape(1);
    let unit = UNIT_POS_X as usize;
    let first = CUBE_POS_X as usize * block_rows;
    let steps = h.div_ceil(units);
    let hf = f32::cast_from(h);
    // per row: `r` and `c = r³ · mean(dy ∘ g ∘ x)`
    let mut stats = SharedMemory::<f32>::new(block_rows * 2);
    for r in 0..block_rows {
        let row = first + r;
        let mut sq = 0.0f32;
        let mut dot = 0.0f32;
        if row < rows {
            for s in 0..steps {
                let j = s * units + unit;
                if j < h {
                    let xv = f32::cast_from(x[row * h + j]);
                    sq += xv * xv;
                    dot += f32::cast_from(dy[row * h + j]) * f32::cast_from(gain[j]) * xv;
                }
            }
        }
        let sq = cube_sum(sq, units);
        let dot = cube_sum(dot, units);
        if unit == 0 {
            let rs = 1.0f32 / (sq / hf + eps).sqrt();
            stats[2 * r] = rs;
            stats[2 * r + 1] = rs * rs * rs * dot / hf;
        }
    }
    sync_cube();
    for s in 0..steps {
        let j = s * units + unit;
        if j < h {
            let g = f32::cast_from(gain[j]);
            let mut acc = 0.0f32;
            for r in 0..block_rows {
                let row = first + r;
                if row < rows {
                    let i = row * h + j;
                    let xv = f32::cast_from(x[i]);
                    let d = f32::cast_from(dy[i]);
                    let rs = stats[2 * r];
                    dx[i] = F::cast_from(rs * d * g - xv * stats[2 * r + 1]);
                    acc += d * xv * rs;
                }
            }
            dgain[CUBE_POS_X as usize * h + j] = acc;
        }
    }
}

/// The backward pass of `y = silu(a) · u` per element of `a`, `u`, `dy` (contiguous, one shape):
/// `da`, `du`.
#[cube(launch_unchecked)]
fn silu_mul_grad_kernel<F: Float>(
    a: &Tensor<F>,
    u: &Tensor<F>,
    dy: &Tensor<F>,
    da: &mut Tensor<F>,
    du: &mut Tensor<F>,
    #[define(F)] _dtype: StorageType,
) {
    let i = ABSOLUTE_POS;
    if i < a.len() {
        let av = f32::cast_from(a[i]);
        let uv = f32::cast_from(u[i]);
        let d = f32::cast_from(dy[i]);
        let sig = 1.0f32 / (1.0f32 + (-av).exp());
        du[i] = F::cast_from(d * av * sig);
        da[i] = F::cast_from(d * uv * sig * (1.0f32 + av * (1.0f32 - sig)));
    }
}

/// RoPE (HF's rotate-half form) between the projection's layout and the heads' layout, one unit
/// per element: with `tables [2n, hd]` (`cos` rows, then `sin` rows; `hd` even) and `x` at
/// `[b·n, heads·hd]` (token `t = bi·n + i`, head `hh`, lane `j`):
/// - forward (`back = false`): `src = x`, `dst [b·heads·n, hd]` gets
///   `x[j] · cos[i, j] + rot(x)[j] · sin[i, j]`, `rot(x)[j] = −x[j + hd/2]` below the half,
///   `x[j − hd/2]` above;
/// - backward (`back = true`): `src = dy [b·heads·n, hd]`, `dst [b·n, heads·hd]` gets the
///   transpose, `dy[j] · cos[i, j] + dy[j + hd/2] · sin[i, j + hd/2]` below the half and
///   `dy[j] · cos[i, j] − dy[j − hd/2] · sin[i, j − hd/2]` above.
#[cube(launch_unchecked)]
fn rope_kernel<F: Float>(
    src: &Tensor<F>,
    tables: &Tensor<F>,
    dst: &mut Tensor<F>,
    #[comptime] back: bool,
    #[define(F)] _dtype: StorageType,
) {
    let o = ABSOLUTE_POS;
    if o < dst.len() {
        let n = tables.shape(0) / 2;
        let hd = tables.shape(1);
        let half = hd / 2;
        let mut w = src.shape(1);
        if comptime!(back) {
            w = dst.shape(1);
        }
        // `o` indexes the token-major layout
        let row = o / w;
        let col = o % w;
        let hh = col / hd;
        let j = col % hd;
        let bi = row / n;
        let i = row % n;
        let hm = ((bi * (w / hd) + hh) * n + i) * hd + j;
        let mut at = o;
        if comptime!(back) {
            at = hm;
        }
        let mut partner = at - half;
        let mut js = j - half;
        let mut sign = 1.0f32;
        if j < half {
            partner = at + half;
            js = j + half;
            sign = -1.0f32;
        }
        let mut sin_at = j;
        if comptime!(back) {
            sin_at = js;
            sign = -sign;
        }
        let v = f32::cast_from(src[at]) * f32::cast_from(tables[i * hd + j])
            + sign * f32::cast_from(src[partner]) * f32::cast_from(tables[(n + i) * hd + sin_at]);
        if comptime!(back) {
            dst[o] = F::cast_from(v);
        } else {
            dst[hm] = F::cast_from(v);
        }
    }
}

/// Launches [`rope_kernel`] from `src` (contiguous) into a new `dst` of `shape`.
fn rope_launch<R: CubeRuntime>(
    src: burn_cubecl::tensor::CubeTensor<R>,
    tables: burn_cubecl::tensor::CubeTensor<R>,
    shape: [usize; 2],
    back: bool,
) -> burn_cubecl::tensor::CubeTensor<R> {
    let dst = empty(&src, shape, src.dtype);
    let (count, dim) = per_element(&src, shape[0] * shape[1]);
    let f = src.dtype.into();
    // SAFETY: unit `o < dst.len()` writes one element of `dst` and reads two of `src`, which
    // holds the same elements in the other layout (the caller checks the shapes: `hd` even and
    // dividing the width, the token count a multiple of `n`), and two of `tables [2n, hd]`.
    unsafe {
        rope_kernel::launch_unchecked::<R>(
            &src.client.clone(),
            count,
            dim,
            src.into_tensor_arg(),
            tables.into_tensor_arg(),
            dst.clone().into_tensor_arg(),
            back,
            f,
        );
    }
    dst
}

/// What the backward passes need: the forward pass's two inputs (`x` and the gain, or `a` and
/// `u`) and RMSNorm's `ε`.
#[derive(Clone, Debug)]
pub struct TrainSaved<B: burn::tensor::backend::Backend> {
    pub(crate) a: BurnTensor<B, 2>,
    pub(crate) b: BurnTensor<B, 2>,
    pub(crate) eps: f64,
}

/// The gradients of the two inputs saved in [`TrainSaved`], in that order.
type Grads<B> = [Option<BurnTensor<B, 2>>; 2];

/// RMSNorm of `x [rows, h]` with `gain [1, h]` (the decode kernel): `(y [rows, h], saved)`.
fn rms_forward<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: BurnTensor<CubeBackend<R, F, I, BT>, 2>,
    gain: BurnTensor<CubeBackend<R, F, I, BT>, 2>,
    eps: f64,
) -> Forwarded<CubeBackend<R, F, I, BT>> {
    let h = gain.dims()[1];
    let (_, y) = CubeBackend::<R, F, I, BT>::fused_rms_norm(x.clone(), None, gain.clone().reshape([h]), eps);
    (y, TrainSaved { a: x, b: gain, eps })
}

/// The gradients `[dx [rows, h], dgain [1, h]]` of [`rms_forward`] for `dy [rows, h]`.
fn rms_backward<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    saved: TrainSaved<CubeBackend<R, F, I, BT>>,
    dy: BurnTensor<CubeBackend<R, F, I, BT>, 2>,
) -> Grads<CubeBackend<R, F, I, BT>> {
    let dtype = dy.dtype();
    let [rows, h] = saved.a.dims();
    let (x, gain, dy) = (contiguous(saved.a), contiguous(saved.b), contiguous(dy));
    let blocks = rows.div_ceil(BLOCK_ROWS);
    let dx = empty(&x, [rows, h], x.dtype);
    let dgain = empty(&x, [blocks, h], DType::F32);
    let units = UNITS.min(h.next_power_of_two()).max(32);
    let f = x.dtype.into();
    // SAFETY: cube `c < blocks` reads and writes rows `32·c + r < rows` of contiguous
    // `[rows, h]` tensors and row `c` of `dgain [blocks, h]`, at columns `j < h`; `gain` is
    // contiguous with `h` elements; the shared arrays have `units` and `2 · 32` entries, indexed
    // by `UNIT_POS_X < units` and `2 · r + 1 < 64`.
    unsafe {
        rms_norm_grad_kernel::launch_unchecked::<R>(
            &x.client.clone(),
            CubeCount::Static(blocks as u32, 1, 1),
            CubeDim::new_1d(units as u32),
            x.into_tensor_arg(),
            dy.into_tensor_arg(),
            gain.into_tensor_arg(),
            dx.clone().into_tensor_arg(),
            dgain.clone().into_tensor_arg(),
            saved.eps as f32,
            units,
            BLOCK_ROWS,
            f,
        );
    }
    let dgain = float::<R, F, I, BT, 2>(dgain).sum_dim(0).cast(dtype);
    [Some(float(dx)), Some(dgain)]
}

/// `silu(a) · u` of `a`, `u [rows, n]` (the decode kernel; `ε` unused): `(y [rows, n], saved)`.
fn silu_mul_forward<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    a: BurnTensor<CubeBackend<R, F, I, BT>, 2>,
    u: BurnTensor<CubeBackend<R, F, I, BT>, 2>,
    _eps: f64,
) -> Forwarded<CubeBackend<R, F, I, BT>> {
    let y = CubeBackend::<R, F, I, BT>::fused_silu_mul(a.clone(), u.clone());
    (y, TrainSaved { a, b: u, eps: 0.0 })
}

/// The gradients `[da, du]` (`[rows, n]` each) of [`silu_mul_forward`] for `dy [rows, n]`.
fn silu_mul_backward<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    saved: TrainSaved<CubeBackend<R, F, I, BT>>,
    dy: BurnTensor<CubeBackend<R, F, I, BT>, 2>,
) -> Grads<CubeBackend<R, F, I, BT>> {
    let (a, u, dy) = (contiguous(saved.a), contiguous(saved.b), contiguous(dy));
    let shape = a.meta.shape().clone();
    let (da, du) = (empty(&a, shape.clone(), a.dtype), empty(&a, shape, a.dtype));
    let (count, dim) = per_element(&a, a.meta.shape().num_elements());
    let f = a.dtype.into();
    // SAFETY: unit `i` reads and writes index `i` of five contiguous tensors of one shape, only
    // when `i < a.len()`.
    unsafe {
        silu_mul_grad_kernel::launch_unchecked::<R>(
            &a.client.clone(),
            count,
            dim,
            a.into_tensor_arg(),
            u.into_tensor_arg(),
            dy.into_tensor_arg(),
            da.clone().into_tensor_arg(),
            du.clone().into_tensor_arg(),
            f,
        );
    }
    [Some(float(da)), Some(float(du))]
}

/// RoPE of `x [b·n, heads·hd]` with `tables [2n, hd]` (`ε` unused): `(y [b·heads·n, hd], saved)`.
fn rope_forward<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: BurnTensor<CubeBackend<R, F, I, BT>, 2>,
    tables: BurnTensor<CubeBackend<R, F, I, BT>, 2>,
    _eps: f64,
) -> Forwarded<CubeBackend<R, F, I, BT>> {
    let ([rows, w], hd) = (x.dims(), tables.dims()[1]);
    let y = rope_launch(
        contiguous(x.clone()),
        contiguous(tables.clone()),
        [rows * w / hd, hd],
        false,
    );
    (
        float(y),
        TrainSaved {
            a: x,
            b: tables,
            eps: 0.0,
        },
    )
}

/// The gradient `[dx [b·n, heads·hd], None]` of [`rope_forward`] for `dy [b·heads·n, hd]` (the
/// tables are constants).
fn rope_backward<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    saved: TrainSaved<CubeBackend<R, F, I, BT>>,
    dy: BurnTensor<CubeBackend<R, F, I, BT>, 2>,
) -> Grads<CubeBackend<R, F, I, BT>> {
    let dx = rope_launch(contiguous(dy), contiguous(saved.b), saved.a.dims(), true);
    [Some(float(dx)), None]
}

/// One operation's forward and backward functions.
#[doc(hidden)]
pub struct TrainOp<B: burn::tensor::backend::Backend> {
    pub(crate) forward: Forward<B>,
    pub(crate) backward: Backward<B>,
}

impl<B: burn::tensor::backend::Backend> Clone for TrainOp<B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: burn::tensor::backend::Backend> Copy for TrainOp<B> {}

/// The operations of one backend (`CubeBackend` has them): what
/// [`crate::ArBackend::training_kernels`] hands out.
#[doc(hidden)]
pub struct TrainKernels<B: burn::tensor::backend::Backend> {
    /// `(x [rows, h], gain [1, h], ε)`.
    pub(crate) rms_norm: TrainOp<B>,
    /// `(a [rows, n], u [rows, n], _)`.
    pub(crate) silu_mul: TrainOp<B>,
    /// `(x [b·n, heads·hd], tables [2n, hd], _)` → `[b·heads·n, hd]`.
    pub(crate) rope: TrainOp<B>,
}

/// A forward pass's output `[rows, n]` and what its backward pass needs.
type Forwarded<B> = (BurnTensor<B, 2>, TrainSaved<B>);

/// The signature of the forward functions: two inputs and RMSNorm's `ε`.
type Forward<B> = fn(BurnTensor<B, 2>, BurnTensor<B, 2>, f64) -> Forwarded<B>;

/// The signature of the backward functions.
type Backward<B> = fn(TrainSaved<B>, BurnTensor<B, 2>) -> Grads<B>;

/// The kernels of a CubeCL backend.
pub(crate) fn kernels<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
) -> TrainKernels<CubeBackend<R, F, I, BT>> {
    TrainKernels {
        rms_norm: TrainOp {
            forward: rms_forward::<R, F, I, BT>,
            backward: rms_backward::<R, F, I, BT>,
        },
        silu_mul: TrainOp {
            forward: silu_mul_forward::<R, F, I, BT>,
            backward: silu_mul_backward::<R, F, I, BT>,
        },
        rope: TrainOp {
            forward: rope_forward::<R, F, I, BT>,
            backward: rope_backward::<R, F, I, BT>,
        },
    }
}

/// The kernels under `Autodiff` against Burn's differentiated tensor operations: outputs and
/// both inputs' gradients, for rows shorter and longer than a cube and row counts that are and
/// are not multiples of a block.
#[cfg(all(test, feature = "wgpu"))]
mod wgpu_tests {
    use burn::backend::{Autodiff, Wgpu};
    use burn::tensor::activation::silu;
    use burn::tensor::{Distribution, Tensor};

    use crate::backend::ArBackend;

    type Ad = Autodiff<Wgpu>;

    /// Largest difference relative to the largest magnitude of the reference.
    fn check(what: &str, ours: Tensor<Wgpu, 2>, burn: Tensor<Wgpu, 2>) {
        let [a, b] = [ours, burn].map(|t| t.into_data().convert::<f32>().to_vec::<f32>().unwrap());
        let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
        let diff = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(diff <= 1e-5 * scale, "{what}: {diff} of {scale}");
    }

    fn rms_case(rows: usize, h: usize) {
        let device = Default::default();
        let dist = Distribution::Normal(0.0, 1.0);
        let x = Tensor::<Wgpu, 2>::random([rows, h], dist, &device);
        let g = Tensor::<Wgpu, 1>::random([h], Distribution::Uniform(0.5, 1.5), &device);
        let up = Tensor::<Ad, 2>::random([rows, h], dist, &device);
        let run = |ours: bool| {
            let x = Tensor::<Ad, 2>::from_inner(x.clone()).require_grad();
            let g = Tensor::<Ad, 1>::from_inner(g.clone()).require_grad();
            let y = if ours {
                Ad::rms_norm(x.clone(), g.clone(), 1e-6).expect("Autodiff<Wgpu> has the kernels")
            } else {
                let rms = x.clone().powi_scalar(2).mean_dim(1).add_scalar(1e-6).sqrt();
                x.clone().div(rms) * g.clone().unsqueeze::<2>()
            };
            let grads = (y.clone() * up.clone()).sum().backward();
            let dg = g.grad(&grads).unwrap().unsqueeze::<2>();
            [y.inner(), x.grad(&grads).unwrap(), dg]
        };
        let (ours, burn) = (run(true), run(false));
        for ((what, a), e) in ["y", "dx", "dgain"].iter().zip(ours).zip(burn) {
            check(&format!("RMSNorm {what} at [{rows}, {h}]"), a, e);
        }
    }

    /// RoPE against rotate-half in tensor operations on the heads' layout, grouped-query widths.
    fn rope_case(b: usize, n: usize, heads: usize, hd: usize) {
        let device = Default::default();
        let x = Tensor::<Wgpu, 2>::random([b * n, heads * hd], Distribution::Normal(0.0, 1.0), &device);
        let (cos, sin) = super::super::host_rope_tables::<Ad>(3, n, hd, 10_000.0, &device);
        let up = Tensor::<Ad, 2>::random([b * heads * n, hd], Distribution::Normal(0.0, 1.0), &device);
        let run = |ours: bool| {
            let x = Tensor::<Ad, 2>::from_inner(x.clone()).require_grad();
            let y = if ours {
                Ad::rope(x.clone(), cos.clone(), sin.clone()).expect("Autodiff<Wgpu> has the kernels")
            } else {
                let heads4 = x.clone().reshape([b, n, heads, hd]).swap_dims(1, 2);
                let [c, s] = [&cos, &sin].map(|t| t.clone().reshape([1, 1, n, hd]));
                // rotate-half: [x1, x2] → [−x2, x1]
                let half = hd / 2;
                let (x1, x2) = (
                    heads4.clone().narrow(3, 0, half),
                    heads4.clone().narrow(3, half, half),
                );
                let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
                (heads4 * c + rotated * s).reshape([b * heads * n, hd])
            };
            let grads = (y.clone() * up.clone()).sum().backward();
            [y.inner(), x.grad(&grads).unwrap()]
        };
        for ((what, a), e) in ["y", "dx"].iter().zip(run(true)).zip(run(false)) {
            check(
                &format!("RoPE {what} at b {b}, n {n}, heads {heads}, hd {hd}"),
                a,
                e,
            );
        }
    }

    #[test]
    fn rope_matches_burn_wgpu() {
        rope_case(2, 5, 3, 8);
        rope_case(1, 33, 2, 64);
    }

    #[test]
    fn rms_norm_and_silu_mul_match_burn_wgpu() {
        rms_case(5, 24);
        rms_case(70, 300);
        let device = Default::default();
        let dist = Distribution::Normal(0.0, 2.0);
        let [a, u] = [0; 2].map(|_| Tensor::<Wgpu, 2>::random([37, 45], dist, &device));
        let up = Tensor::<Ad, 2>::random([37, 45], dist, &device);
        let run = |ours: bool| {
            let [a, u] = [&a, &u].map(|t| Tensor::<Ad, 2>::from_inner(t.clone()).require_grad());
            let y = if ours {
                Ad::silu_mul(a.clone(), u.clone()).expect("Autodiff<Wgpu> has the kernels")
            } else {
                silu(a.clone()) * u.clone()
            };
            let grads = (y.clone() * up.clone()).sum().backward();
            [y.inner(), a.grad(&grads).unwrap(), u.grad(&grads).unwrap()]
        };
        for ((what, a), e) in ["y", "da", "du"].iter().zip(run(true)).zip(run(false)) {
            check(&format!("silu(a) · u {what}"), a, e);
        }
    }
}
