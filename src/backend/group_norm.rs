//! GroupNorm followed by SiLU as CubeCL kernels, forward and backward (issue [gpu-speed]).
//!
//! Every residual block of the VQGAN runs `silu(group_norm(x))` twice. Through Burn 0.21's
//! tensor operations that is ~10 launches forward and ~20 backward, each reading or writing the
//! whole activation; on an H200 at `[64, 64, 64, 64]` 3.8 ms (GroupNorm) + 1.9 ms (SiLU)
//! forward + backward against PyTorch's 0.49 + 0.25 (BENCHMARKS.md run 6). Here it is one launch
//! forward and two backward:
//! - [`gn_silu_forward_kernel`]: one cube per (sample, group): mean and variance in f32 (two
//!   passes), then `y = silu(x̂ · γ + β)`; keeps the mean and `1/σ` per group for the backward;
//! - [`gn_silu_input_grad_kernel`]: one cube per (sample, group): `dz = dy · silu'(z)`,
//!   `dx̂ = dz · γ`, then `dx = (dx̂ − mean(dx̂) − x̂ · mean(dx̂ · x̂)) / σ` over the group;
//! - [`gn_silu_param_grad_kernel`]: one cube per (sample, channel): `Σ dz · x̂` and `Σ dz`, summed
//!   over the samples afterwards into `dγ` and `dβ`.
//!
//! Statistics and sums in f32 whatever the storage type. The `Autodiff` side (which saved
//! tensors the backward gets) lives in [`crate::backend`].

use burn::tensor::{DType, Tensor as BurnTensor};
use burn_cubecl::element::BoolElement;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;

use crate::backend::cube::{contiguous, empty, float};

/// Units per cube of the three kernels.
const UNITS: usize = 256;

/// `silu(z)` and its derivative `silu'(z) = s · (1 + z · (1 − s))` with `s = σ(z)`.
#[cube]
fn silu_and_slope(z: f32) -> (f32, f32) {
    let s = 1.0f32 / (1.0f32 + (-z).exp());
    (z * s, s * (1.0f32 + z * (1.0f32 - s)))
}

/// Element `i` (channel `c`) of the backward pass: `x̂ = (x − mean) / σ` and the gradient
/// `dx̂ = dy · silu'(x̂ · γ + β) · γ`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn normed_and_grad<F: Float>(
    x: &Tensor<F>,
    gamma: &Tensor<F>,
    beta: &Tensor<F>,
    dy: &Tensor<F>,
    i: usize,
    c: usize,
    mean: f32,
    rstd: f32,
) -> (f32, f32) {
    let g = f32::cast_from(gamma[c]);
    let xh = (f32::cast_from(x[i]) - mean) * rstd;
    let (_out, slope) = silu_and_slope(xh * g + f32::cast_from(beta[c]));
    (xh, f32::cast_from(dy[i]) * slope * g)
}

/// Forward: `x [n, c, h, w]` (contiguous), rows of `m = cpg · hw` elements, one per (sample,
/// group); `y` like `x`; `stats [rows · 2]` f32 gets (mean, 1/σ) per row.
#[cube(launch_unchecked)]
fn gn_silu_forward_kernel<F: Float>(
    x: &Tensor<F>,
    gamma: &Tensor<F>,
    beta: &Tensor<F>,
    y: &mut Tensor<F>,
    stats: &mut Tensor<f32>,
    cpg: usize,
    hw: usize,
    groups: usize,
    eps: f32,
    #[comptime] units: usize,
    #[define(F)] _dtype: StorageType,
) {
    let row = CUBE_POS_X as usize;
    let unit = UNIT_POS_X as usize;
    let m = cpg * hw;
    let base = row * m;
    let steps = m.div_ceil(units);
    let mut acc = 0.0f32;
    for s in 0..steps {
        let i = s * units + unit;
        if i < m {
            acc += f32::cast_from(x[base + i]);
        }
    }
    let mean = crate::backend::cube::cube_sum(acc, units) / f32::cast_from(m);
    let mut sq = 0.0f32;
    for s in 0..steps {
        let i = s * units + unit;
        if i < m {
            let d = f32::cast_from(x[base + i]) - mean;
            sq += d * d;
        }
    }
    let rstd = 1.0f32 / (crate::backend::cube::cube_sum(sq, units) / f32::cast_from(m) + eps).sqrt();
    let c0 = (row % groups) * cpg;
    for s in 0..steps {
        let i = s * units + unit;
        if i < m {
            let c = c0 + i / hw;
            let z = (f32::cast_from(x[base + i]) - mean) * rstd * f32::cast_from(gamma[c])
                + f32::cast_from(beta[c]);
            let (out, _slope) = silu_and_slope(z);
            y[base + i] = F::cast_from(out);
        }
    }
    if unit == 0 {
        stats[row * 2] = mean;
        stats[row * 2 + 1] = rstd;
    }
}

/// Input gradient: one cube per row as in the forward kernel; `dx` like `x`.
#[cube(launch_unchecked)]
fn gn_silu_input_grad_kernel<F: Float>(
    x: &Tensor<F>,
    gamma: &Tensor<F>,
    beta: &Tensor<F>,
    stats: &Tensor<f32>,
    dy: &Tensor<F>,
    dx: &mut Tensor<F>,
    cpg: usize,
    hw: usize,
    groups: usize,
    #[comptime] units: usize,
    #[define(F)] _dtype: StorageType,
) {
    let row = CUBE_POS_X as usize;
    let unit = UNIT_POS_X as usize;
    let m = cpg * hw;
    let base = row * m;
    let steps = m.div_ceil(units);
    let mean = stats[row * 2];
    let rstd = stats[row * 2 + 1];
    let c0 = (row % groups) * cpg;
    let mut sum_d = 0.0f32;
    let mut sum_dx = 0.0f32;
    for s in 0..steps {
        let i = s * units + unit;
        if i < m {
            let (xh, d) = normed_and_grad(x, gamma, beta, dy, base + i, c0 + i / hw, mean, rstd);
            sum_d += d;
            sum_dx += d * xh;
        }
    }
    let inv_m = 1.0f32 / f32::cast_from(m);
    let mean_d = crate::backend::cube::cube_sum(sum_d, units) * inv_m;
    let mean_dx = crate::backend::cube::cube_sum(sum_dx, units) * inv_m;
    for s in 0..steps {
        let i = s * units + unit;
        if i < m {
            let (xh, d) = normed_and_grad(x, gamma, beta, dy, base + i, c0 + i / hw, mean, rstd);
            dx[base + i] = F::cast_from((d - mean_d - xh * mean_dx) * rstd);
        }
    }
}

/// Parameter gradients per (sample, channel), one cube each: `dgamma [n · c]` gets `Σ dz · x̂`
/// and `dbeta [n · c]` gets `Σ dz` over the channel's `hw` positions (f32).
#[cube(launch_unchecked)]
fn gn_silu_param_grad_kernel<F: Float>(
    x: &Tensor<F>,
    gamma: &Tensor<F>,
    beta: &Tensor<F>,
    stats: &Tensor<f32>,
    dy: &Tensor<F>,
    dgamma: &mut Tensor<f32>,
    dbeta: &mut Tensor<f32>,
    channels: usize,
    cpg: usize,
    hw: usize,
    #[comptime] units: usize,
    #[define(F)] _dtype: StorageType,
) {
    let nc = CUBE_POS_X as usize;
    let unit = UNIT_POS_X as usize;
    let c = nc % channels;
    // Row (sample, group) of this channel.
    let row = (nc / channels) * (channels / cpg) + c / cpg;
    let mean = stats[row * 2];
    let rstd = stats[row * 2 + 1];
    let g = f32::cast_from(gamma[c]);
    let b = f32::cast_from(beta[c]);
    let base = nc * hw;
    let mut sum_g = 0.0f32;
    let mut sum_b = 0.0f32;
    for s in 0..hw.div_ceil(units) {
        let i = s * units + unit;
        if i < hw {
            let xh = (f32::cast_from(x[base + i]) - mean) * rstd;
            let (_out, slope) = silu_and_slope(xh * g + b);
            let dz = f32::cast_from(dy[base + i]) * slope;
            sum_g += dz * xh;
            sum_b += dz;
        }
    }
    let total_g = crate::backend::cube::cube_sum(sum_g, units);
    let total_b = crate::backend::cube::cube_sum(sum_b, units);
    if unit == 0 {
        dgamma[nc] = total_g;
        dbeta[nc] = total_b;
    }
}

/// `silu(group_norm(x))` of `x [n, c, h, w]` with `gamma`, `beta [c]` and `groups` dividing `c`
/// (the caller checks the shapes): `(y [n, c, h, w], stats [n · groups · 2] f32)`.
pub(crate) fn forward<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: BurnTensor<CubeBackend<R, F, I, BT>, 4>,
    gamma: BurnTensor<CubeBackend<R, F, I, BT>, 1>,
    beta: BurnTensor<CubeBackend<R, F, I, BT>, 1>,
    groups: usize,
    eps: f64,
) -> Normed<CubeBackend<R, F, I, BT>> {
    let [n, c, h, w] = x.dims();
    let (x, gamma, beta) = (contiguous(x), contiguous(gamma), contiguous(beta));
    let y = empty(&x, [n, c, h, w], x.dtype);
    let rows = n * groups;
    let stats = empty(&x, [rows * 2], DType::F32);
    let dtype = x.dtype.into();
    // SAFETY: cube `row < n · groups` reads and writes `x`, `y` at `row · m + i` with `i < m =
    // (c / groups) · h · w` (contiguous `[n, c, h, w]`), `gamma`, `beta` at a channel `< c`, and
    // writes `stats` at `2 · row + {0, 1} < 2 · rows`; the shared arrays have `UNITS` entries
    // indexed by `UNIT_POS_X < UNITS`.
    unsafe {
        gn_silu_forward_kernel::launch_unchecked::<R>(
            &x.client.clone(),
            CubeCount::Static(rows as u32, 1, 1),
            CubeDim::new_1d(UNITS as u32),
            x.clone().into_tensor_arg(),
            gamma.into_tensor_arg(),
            beta.into_tensor_arg(),
            y.clone().into_tensor_arg(),
            stats.clone().into_tensor_arg(),
            c / groups,
            h * w,
            groups,
            eps as f32,
            UNITS,
            dtype,
        );
    }
    (float(y), float(stats))
}

/// The gradients of [`forward`] for `dy [n, c, h, w]`: `(dx [n, c, h, w], dgamma [c],
/// dbeta [c])`, the parameter gradients in `F`.
pub(crate) fn backward<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    saved: GroupNormSiluSaved<CubeBackend<R, F, I, BT>>,
    dy: BurnTensor<CubeBackend<R, F, I, BT>, 4>,
) -> Grads<CubeBackend<R, F, I, BT>> {
    let [n, c, h, w] = dy.dims();
    let groups = saved.groups;
    let (x, gamma, beta, stats, dy) = (
        contiguous(saved.x),
        contiguous(saved.gamma),
        contiguous(saved.beta),
        contiguous(saved.stats),
        contiguous(dy),
    );
    let dx = empty(&x, [n, c, h, w], x.dtype);
    let dgamma = empty(&x, [n * c], DType::F32);
    let dbeta = empty(&x, [n * c], DType::F32);
    let client = x.client.clone();
    let dtype = x.dtype.into();
    // SAFETY: as in `forward` for `x`, `dy`, `dx`, `gamma`, `beta` and `stats` (read at
    // `2 · row + {0, 1}`); the parameter kernel's cube `nc < n · c` reads `x`, `dy` at
    // `nc · h · w + i`, `i < h · w`, its row `(nc / c) · groups + (nc % c) / (c / groups) <
    // n · groups`, and writes `dgamma`, `dbeta` at `nc`.
    unsafe {
        gn_silu_input_grad_kernel::launch_unchecked::<R>(
            &client,
            CubeCount::Static((n * groups) as u32, 1, 1),
            CubeDim::new_1d(UNITS as u32),
            x.clone().into_tensor_arg(),
            gamma.clone().into_tensor_arg(),
            beta.clone().into_tensor_arg(),
            stats.clone().into_tensor_arg(),
            dy.clone().into_tensor_arg(),
            dx.clone().into_tensor_arg(),
            c / groups,
            h * w,
            groups,
            UNITS,
            dtype,
        );
        gn_silu_param_grad_kernel::launch_unchecked::<R>(
            &client,
            CubeCount::Static((n * c) as u32, 1, 1),
            CubeDim::new_1d(UNITS as u32),
            x.into_tensor_arg(),
            gamma.into_tensor_arg(),
            beta.into_tensor_arg(),
            stats.into_tensor_arg(),
            dy.into_tensor_arg(),
            dgamma.clone().into_tensor_arg(),
            dbeta.clone().into_tensor_arg(),
            c,
            c / groups,
            h * w,
            UNITS,
            dtype,
        );
    }
    let sum = |t: CubeTensor<R>| {
        float::<R, F, I, BT, 2>(t)
            .reshape([n, c])
            .sum_dim(0)
            .reshape([c])
            .cast(F::dtype())
    };
    Grads {
        x: float(dx),
        gamma: sum(dgamma),
        beta: sum(dbeta),
    }
}

/// What the backward pass of `silu(group_norm(x))` keeps from the forward pass: the input
/// `[n, c, h, w]`, `gamma`, `beta [c]`, the per-(sample, group) `stats [n · groups · 2]` (f32
/// mean and 1/σ) and the group count.
#[derive(Clone, Debug)]
pub struct GroupNormSiluSaved<B: burn::tensor::backend::Backend> {
    pub(crate) x: BurnTensor<B, 4>,
    pub(crate) gamma: BurnTensor<B, 1>,
    pub(crate) beta: BurnTensor<B, 1>,
    pub(crate) stats: BurnTensor<B, 1>,
    pub(crate) groups: usize,
}

/// The gradients of `silu(group_norm(x))`: input `[n, c, h, w]`, `gamma` and `beta [c]`.
pub struct Grads<B: burn::tensor::backend::Backend> {
    pub(crate) x: BurnTensor<B, 4>,
    pub(crate) gamma: BurnTensor<B, 1>,
    pub(crate) beta: BurnTensor<B, 1>,
}

/// The forward and backward functions of one backend, as [`crate::backend::ArBackend`] hands them out.
#[doc(hidden)]
pub struct GroupNormSilu<B: burn::tensor::backend::Backend> {
    pub(crate) forward: GnForward<B>,
    pub(crate) backward: fn(GroupNormSiluSaved<B>, BurnTensor<B, 4>) -> Grads<B>,
}

/// The signature of [`forward`].
type GnForward<B> = fn(BurnTensor<B, 4>, BurnTensor<B, 1>, BurnTensor<B, 1>, usize, f64) -> Normed<B>;

/// The output `[n, c, h, w]` of `silu(group_norm(x))` and its statistics `[n · groups · 2]`.
type Normed<B> = (BurnTensor<B, 4>, BurnTensor<B, 1>);

/// The kernels of a CubeCL backend.
pub(crate) fn kernels<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
) -> GroupNormSilu<CubeBackend<R, F, I, BT>> {
    GroupNormSilu {
        forward: forward::<R, F, I, BT>,
        backward: backward::<R, F, I, BT>,
    }
}

/// The fused path against Burn's `GroupNorm` + `silu`: values, and the gradients of the input,
/// `gamma` and `beta` through `Autodiff`, for groups shorter and longer than a cube's units.
#[cfg(all(test, feature = "wgpu"))]
mod wgpu_tests {
    use burn::backend::{Autodiff, Wgpu};
    use burn::module::Param;
    use burn::nn::GroupNormConfig;
    use burn::tensor::activation::silu;
    use burn::tensor::{DType, Distribution, Tensor};

    use crate::backend::ArBackend;

    type Ad = Autodiff<Wgpu>;

    fn host<const D: usize>(t: Tensor<Wgpu, D>) -> Vec<f32> {
        t.into_data().iter::<f32>().collect()
    }

    /// Largest `|a − b|` relative to the largest `|b|`.
    fn rel(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    fn case(shape: [usize; 4], groups: usize) {
        let device = Default::default();
        let c = shape[1];
        let mut norm = GroupNormConfig::new(groups, c)
            .with_epsilon(1e-6)
            .init::<Ad>(&device);
        // Burn 0.21 keeps one default float type per device, and the LLaMA kernel tests in this
        // process make f16 tensors on it: every tensor here is cast to f32 explicitly.
        let random = |n: usize, d: Distribution| Tensor::<Ad, 1>::random([n], d, &device).cast(DType::F32);
        norm.gamma = Some(Param::from_tensor(random(c, Distribution::Uniform(0.5, 1.5))));
        norm.beta = Some(Param::from_tensor(random(c, Distribution::Normal(0.0, 0.5))));
        let x0 = Tensor::<Wgpu, 4>::random(shape, Distribution::Normal(0.3, 2.0), &device).cast(DType::F32);
        let w = Tensor::<Ad, 4>::random(shape, Distribution::Normal(0.0, 1.0), &device).cast(DType::F32);
        let (gamma, beta) = (
            norm.gamma.clone().unwrap().val(),
            norm.beta.clone().unwrap().val(),
        );
        let run = |fused: bool| {
            let x = Tensor::<Ad, 4>::from_inner(x0.clone()).require_grad();
            let y = if fused {
                Ad::group_norm_silu(x.clone(), gamma.clone(), beta.clone(), groups, 1e-6)
                    .expect("fused route")
            } else {
                silu(norm.forward(x.clone()))
            };
            let grads = (y.clone() * w.clone()).sum().backward();
            let dx = x.grad(&grads).expect("input gradient");
            let dg = gamma.grad(&grads).expect("gamma gradient");
            let db = beta.grad(&grads).expect("beta gradient");
            [host(y.inner()), host(dx), host(dg), host(db)]
        };
        let (got, want) = (run(true), run(false));
        for (name, (g, w)) in ["y", "dx", "dgamma", "dbeta"].iter().zip(got.iter().zip(&want)) {
            let e = rel(g, w);
            assert!(
                e < 2e-4,
                "{shape:?} groups {groups}: {name} differs by {e} (relative)"
            );
        }
        // Without autodiff: the forward kernel alone.
        let y = Wgpu::group_norm_silu(x0.clone(), gamma.inner(), beta.inner(), groups, 1e-6)
            .expect("fused route");
        assert!(rel(&host(y), &want[0]) < 2e-4, "{shape:?}: inner forward");
    }

    #[test]
    fn group_norm_silu_matches_burn_wgpu() {
        case([2, 8, 5, 3], 4); // 30 elements per group: fewer than the 256 units
        case([3, 6, 20, 21], 2); // 1,260 per group, not a multiple of 256
        case([1, 64, 16, 16], 32); // the VQGAN's 32 groups
    }
}
