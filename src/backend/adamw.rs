//! The fused AdamW update kernel (one launch per parameter tensor) that
//! [`crate::training::FusedAdamW`] runs on CubeCL backends.

use burn::tensor::Tensor as BurnTensor;
use burn_cubecl::element::BoolElement;
use burn_cubecl::{CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;

use super::cube::{contiguous, empty, float, per_element};

/// One unit per element: `m' = β₁·m + (1 − β₁)·g`, `v' = β₂·v + (1 − β₂)·g²` (`m = v = 0` on
/// the first step), `p' = keep·p − lr · (m'/bias₁) / (√(v'/bias₂) + ε)`, in the order and
/// precision of Burn's `AdamW` operations (f32 arithmetic, each result stored in `F`).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn adamw_kernel<F: Float>(
    p: &Tensor<F>,
    g: &Tensor<F>,
    m: &Tensor<F>,
    v: &Tensor<F>,
    p_out: &mut Tensor<F>,
    m_out: &mut Tensor<F>,
    v_out: &mut Tensor<F>,
    beta_1: f32,
    beta_2: f32,
    bias_1: f32,
    bias_2: f32,
    epsilon: f32,
    lr: f32,
    keep: f32,
    #[comptime] first: bool,
    #[define(F)] _dtype: StorageType,
) {
    let i = ABSOLUTE_POS;
    if i < p.len() {
        let gv = f32::cast_from(g[i]);
        let mut s1 = f32::cast_from(F::cast_from(gv * (1.0f32 - beta_1)));
        let mut s2 = f32::cast_from(F::cast_from(
            f32::cast_from(F::cast_from(gv * gv)) * (1.0f32 - beta_2),
        ));
        if comptime!(!first) {
            s1 += f32::cast_from(F::cast_from(f32::cast_from(m[i]) * beta_1));
            s2 += f32::cast_from(F::cast_from(f32::cast_from(v[i]) * beta_2));
        }
        let m1 = F::cast_from(s1);
        let m2 = F::cast_from(s2);
        m_out[i] = m1;
        v_out[i] = m2;
        let mhat = f32::cast_from(F::cast_from(f32::cast_from(m1) / bias_1));
        let vhat = f32::cast_from(F::cast_from(f32::cast_from(m2) / bias_2));
        let denom = f32::cast_from(F::cast_from(f32::cast_from(F::cast_from(vhat.sqrt())) + epsilon));
        let delta = f32::cast_from(F::cast_from(mhat / denom));
        let mut kept = f32::cast_from(p[i]);
        if keep != 1.0f32 {
            kept = f32::cast_from(F::cast_from(kept * keep));
        }
        p_out[i] = F::cast_from(kept - f32::cast_from(F::cast_from(delta * lr)));
    }
}

/// A flat tensor `[n]` of the CubeCL backend.
type Flat<R, F, I, BT> = BurnTensor<CubeBackend<R, F, I, BT>, 1>;

/// The two moments `(m [n], v [n])`, `None` before the first step.
type Moments<B> = Option<(BurnTensor<B, 1>, BurnTensor<B, 1>)>;

/// The AdamW update of the flat parameter `p [n]` with gradient `g [n]` and the moments
/// `(m, v)` (`None` on the first step): `[p', m', v']`.
pub(crate) fn update<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    p: Flat<R, F, I, BT>,
    g: Flat<R, F, I, BT>,
    moments: Moments<CubeBackend<R, F, I, BT>>,
    s: AdamwScalars,
) -> [Flat<R, F, I, BT>; 3] {
    let (p, g) = (contiguous(p), contiguous(g));
    let first = moments.is_none();
    let (m, v) = match moments {
        Some((m, v)) => (contiguous(m), contiguous(v)),
        None => (g.clone(), g.clone()),
    };
    let n = p.meta.shape().num_elements();
    let [po, mo, vo] = [0; 3].map(|_| empty(&p, [n], p.dtype));
    let (count, dim) = per_element(&p, n);
    let f = p.dtype.into();
    // SAFETY: unit `i < n` reads element `i` of four contiguous tensors of `n` elements (on
    // the first step `m` and `v` stand in as `g` and are not read) and writes element `i`
    // of three new ones.
    unsafe {
        adamw_kernel::launch_unchecked::<R>(
            &p.client.clone(),
            count,
            dim,
            p.into_tensor_arg(),
            g.into_tensor_arg(),
            m.into_tensor_arg(),
            v.into_tensor_arg(),
            po.clone().into_tensor_arg(),
            mo.clone().into_tensor_arg(),
            vo.clone().into_tensor_arg(),
            s.beta_1,
            s.beta_2,
            s.bias_1,
            s.bias_2,
            s.epsilon,
            s.lr,
            s.keep,
            first,
            f,
        );
    }
    [float(po), float(mo), float(vo)]
}

/// The scalars of one AdamW update, in the precision Burn's tensor operations use them.
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub struct AdamwScalars {
    pub(crate) beta_1: f32,
    pub(crate) beta_2: f32,
    /// `1 − β₁ᵗ`, `1 − β₂ᵗ` (f32, as Burn computes them).
    pub(crate) bias_1: f32,
    pub(crate) bias_2: f32,
    pub(crate) epsilon: f32,
    pub(crate) lr: f32,
    /// `1 − lr · weight_decay`, or exactly 1 without decay.
    pub(crate) keep: f32,
}
