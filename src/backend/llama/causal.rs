//! Causal self-attention for training, with its own backward pass (issue [gpu-speed] item 5).
//!
//! Burn 0.21 differentiates `attention` through its fallback (`burn-backend`
//! `attention_fallback`): scores, scale, a causal mask built per call, mask fill, a softmax of
//! six operations, product — each reading and writing the whole `[b, h, n, n]` score tensor,
//! and about twice as many such passes backward. Here the products are Burn's matrix products
//! and everything between them is one kernel each way:
//! - forward: `s = q · kᵀ`; [`causal_softmax_kernel`] writes `p = softmax(scale · s)` over the
//!   keys each query may see (zeros past them); `out = p · v`. `p` is kept for the backward.
//! - backward, for `do`: `dv = pᵀ · do`, `dp = do · vᵀ`; [`softmax_grad_kernel`] writes
//!   `ds = scale · p ∘ (dp − Σ p ∘ dp)`; `dq = ds · k`, `dk = dsᵀ · q`.
//!
//! The queries go in chunks (`default_chunks`: 4 for 1,535), the chunk ending at query `end`
//! against only the keys `0..nk − nq + end` it sees, so the products and kernels touch `(c + 1)/2c`
//! of the causal score matrix instead of all of it; `dk`, `dv` add up over the chunks.
//!
//! Row statistics in f32 whatever the storage type. The `Autodiff` side lives in
//! [`crate::backend`]; the layers call it through [`crate::ArBackend::causal_attention`].

use burn::tensor::Tensor as BurnTensor;
use burn_cubecl::element::BoolElement;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;

use crate::backend::cube::{contiguous, cube_max, cube_sum, empty, float};

/// Units per cube (one cube per score row).
const UNITS: usize = 256;

/// The row of cube `(i, r)` (query `i` of row block `r`) in `[rows, nq, nk]`: its first element,
/// the keys it sees (`0..i + nk − nq + 1`: `nk ≥ nq`, the caller checks, so at least one) and
/// the strides of `units` units over it.
#[cube]
fn row_of(nq: usize, nk: usize, #[comptime] units: usize) -> (usize, usize, usize) {
    let i = CUBE_POS_X as usize;
    (
        (CUBE_POS_Y as usize * nq + i) * nk,
        i + nk - nq + 1,
        nk.div_ceil(units),
    )
}

/// `p = softmax(scale · s)` along the last axis of `s [rows, nq, nk]` (contiguous), over the
/// keys `j ≤ i + nk − nq` of query `i`; `p = 0` past them. Cube `(i, r)` does row `r`, query
/// `i`.
#[cube(launch_unchecked)]
fn causal_softmax_kernel<F: Float>(
    s: &Tensor<F>,
    p: &mut Tensor<F>,
    scale: f32,
    #[comptime] units: usize,
    #[define(F)] _dtype: StorageType,
) {
    let nk = s.shape(2);
    let (base, seen, steps) = row_of(s.shape(1), nk, units);
    let unit = UNIT_POS_X as usize;
    let mut m = f32::new(-3.0e38);
    for t in 0..steps {
        let j = t * units + unit;
        if j < seen {
            let v = f32::cast_from(s[base + j]) * scale;
            if v > m {
                m = v;
            }
        }
    }
    let mx = cube_max(m, units);
    let mut sum = 0.0f32;
    for t in 0..steps {
        let j = t * units + unit;
        if j < seen {
            sum += (f32::cast_from(s[base + j]) * scale - mx).exp();
        }
    }
    let inv = 1.0f32 / cube_sum(sum, units);
    for t in 0..steps {
        let j = t * units + unit;
        if j < nk {
            let mut e = 0.0f32;
            if j < seen {
                e = (f32::cast_from(s[base + j]) * scale - mx).exp() * inv;
            }
            p[base + j] = F::cast_from(e);
        }
    }
}

/// `ds = scale · p ∘ (dp − Σⱼ pⱼ · dpⱼ)` per row of `p`, `dp [rows, nq, nk]` (contiguous): the
/// gradient of the scores through [`causal_softmax_kernel`] (masked keys have `p = 0`, so
/// `ds = 0` there).
#[cube(launch_unchecked)]
fn softmax_grad_kernel<F: Float>(
    p: &Tensor<F>,
    dp: &Tensor<F>,
    ds: &mut Tensor<F>,
    scale: f32,
    #[comptime] units: usize,
    #[define(F)] _dtype: StorageType,
) {
    let nk = p.shape(2);
    let (base, seen, steps) = row_of(p.shape(1), nk, units);
    let unit = UNIT_POS_X as usize;
    let mut dot = 0.0f32;
    for t in 0..steps {
        let j = t * units + unit;
        if j < seen {
            dot += f32::cast_from(p[base + j]) * f32::cast_from(dp[base + j]);
        }
    }
    let total = cube_sum(dot, units);
    for t in 0..steps {
        let j = t * units + unit;
        if j < nk {
            let pj = f32::cast_from(p[base + j]);
            ds[base + j] = F::cast_from(scale * pj * (f32::cast_from(dp[base + j]) - total));
        }
    }
}

/// Launches one of the two row kernels over `a [rows, nq, nk]` (contiguous) into a new tensor
/// like it: `grad = None` runs the softmax of `a`, `Some(dp)` (shaped like `a`, contiguous) the
/// softmax gradient with `p = a`.
fn rows<R: CubeRuntime>(a: CubeTensor<R>, grad: Option<CubeTensor<R>>, scale: f32) -> CubeTensor<R> {
    let dims = a.meta.shape().clone();
    let (rows, nq) = (dims[0], dims[1]);
    let out = empty(&a, dims, a.dtype);
    let (count, dim) = (
        CubeCount::Static(nq as u32, rows as u32, 1),
        CubeDim::new_1d(UNITS as u32),
    );
    let dtype = a.dtype.into();
    // SAFETY: cube `(i, r)`, `i < nq`, `r < rows`, reads and writes the row at
    // `(r · nq + i) · nk` of `nk` elements of tensors that are all contiguous `[rows, nq, nk]`;
    // the shared reductions have `UNITS` entries indexed by `UNIT_POS_X < UNITS`.
    unsafe {
        match grad {
            None => causal_softmax_kernel::launch_unchecked::<R>(
                &a.client.clone(),
                count,
                dim,
                a.into_tensor_arg(),
                out.clone().into_tensor_arg(),
                scale,
                UNITS,
                dtype,
            ),
            Some(dp) => softmax_grad_kernel::launch_unchecked::<R>(
                &a.client.clone(),
                count,
                dim,
                a.into_tensor_arg(),
                dp.into_tensor_arg(),
                out.clone().into_tensor_arg(),
                scale,
                UNITS,
                dtype,
            ),
        }
    }
    out
}

/// What the backward pass of [`forward`] needs: the inputs and each query chunk's attention
/// weights.
#[derive(Clone, Debug)]
pub struct CausalSaved<B: burn::tensor::backend::Backend> {
    pub(crate) q: BurnTensor<B, 4>,
    pub(crate) k: BurnTensor<B, 4>,
    pub(crate) v: BurnTensor<B, 4>,
    /// Each chunk's `softmax` of the scaled, masked scores `[b, h, m, nk − nq + end]` (`m`
    /// queries ending at `end`), in query order.
    pub(crate) p: Vec<BurnTensor<B, 4>>,
}

/// How many query chunks [`forward`] takes by default for `nq` queries: one per 256 queries, at
/// most 4 (4 for the 1,535 queries of a K = 2 training sentence). Chunk `j` needs only the keys
/// up to its last query, so `c` chunks compute about `(c + 1) / 2c` of the full score matrix
/// (5/8 for 4).
pub(crate) fn default_chunks(nq: usize) -> usize {
    (nq / 256).clamp(1, 4)
}

/// The query ranges of `chunks` chunks of `nq` queries: `⌈nq / chunks⌉` each, the last shorter.
fn chunk_ranges(nq: usize, chunks: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let m = nq.div_ceil(chunks.max(1));
    (0..nq)
        .step_by(m.max(1))
        .map(move |start| start..(start + m).min(nq))
}

/// `softmax(q · kᵀ / √hd, causal) · v` of `q [b, h, nq, hd]`, `k`, `v [b, h, nk, hd]`
/// (`nk ≥ nq`; query `i` sees keys `0..=i + nk − nq`) in `chunks` query chunks
/// ([`chunk_ranges`]), each against only the keys its queries see: `(out [b, h, nq, hd],
/// saved)`.
pub(crate) fn forward<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    q: BurnTensor<CubeBackend<R, F, I, BT>, 4>,
    k: BurnTensor<CubeBackend<R, F, I, BT>, 4>,
    v: BurnTensor<CubeBackend<R, F, I, BT>, 4>,
    chunks: usize,
) -> Attended<CubeBackend<R, F, I, BT>> {
    let ([b, h, nq, hd], nk) = (q.dims(), k.dims()[2]);
    let scale = 1.0 / (hd as f32).sqrt();
    let (mut outs, mut ps) = (Vec::with_capacity(chunks), Vec::with_capacity(chunks));
    for range in chunk_ranges(nq, chunks) {
        let (m, keys) = (range.len(), nk - nq + range.end);
        let s = q
            .clone()
            .narrow(2, range.start, m)
            .matmul(k.clone().narrow(2, 0, keys).swap_dims(2, 3));
        let s = contiguous(s.reshape([b * h, m, keys]));
        let p = float::<R, F, I, BT, 3>(rows(s, None, scale)).reshape([b, h, m, keys]);
        outs.push(p.clone().matmul(v.clone().narrow(2, 0, keys)));
        ps.push(p);
    }
    (BurnTensor::cat(outs, 2), CausalSaved { q, k, v, p: ps })
}

/// The gradients `(dq, dk, dv)` of [`forward`] for `dout [b, h, nq, hd]`: per chunk, `dk` and
/// `dv` of the keys it saw added into the keys' prefix.
pub(crate) fn backward<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    saved: CausalSaved<CubeBackend<R, F, I, BT>>,
    dout: BurnTensor<CubeBackend<R, F, I, BT>, 4>,
) -> [BurnTensor<CubeBackend<R, F, I, BT>, 4>; 3] {
    let CausalSaved { q, k, v, p } = saved;
    let [b, h, _, hd] = q.dims();
    let scale = 1.0 / (hd as f32).sqrt();
    let mut dq = Vec::with_capacity(p.len());
    let [mut dk, mut dv] = [0; 2].map(|_| BurnTensor::zeros(k.shape(), &k.device()));
    let mut start = 0;
    for p in p {
        let [_, _, m, keys] = p.dims();
        let (kj, vj, qj) = (
            k.clone().narrow(2, 0, keys),
            v.clone().narrow(2, 0, keys),
            q.clone().narrow(2, start, m),
        );
        let doj = dout.clone().narrow(2, start, m);
        start += m;
        let dvj = p.clone().swap_dims(2, 3).matmul(doj.clone());
        let dp = contiguous(doj.matmul(vj.swap_dims(2, 3)).reshape([b * h, m, keys]));
        let p = contiguous(p.reshape([b * h, m, keys]));
        let ds = float::<R, F, I, BT, 3>(rows(p, Some(dp), scale)).reshape([b, h, m, keys]);
        dq.push(ds.clone().matmul(kj));
        let dkj = ds.swap_dims(2, 3).matmul(qj);
        let prefix = [0..b, 0..h, 0..keys, 0..hd];
        [dk, dv] = [(dk, dkj), (dv, dvj)].map(|(sum, d)| {
            let add = sum.clone().slice(prefix.clone()) + d;
            sum.slice_assign(prefix.clone(), add)
        });
    }
    [BurnTensor::cat(dq, 2), dk, dv]
}

/// The forward and backward functions of one backend (`CubeBackend` has them): what
/// [`crate::ArBackend::causal_attention_kernels`] hands out.
#[doc(hidden)]
pub struct CausalAttention<B: burn::tensor::backend::Backend> {
    pub(crate) forward: CausalForward<B>,
    pub(crate) backward: CausalBackward<B>,
}

impl<B: burn::tensor::backend::Backend> Clone for CausalAttention<B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: burn::tensor::backend::Backend> Copy for CausalAttention<B> {}

/// The output `[b, h, nq, hd]` of [`forward`] and what its backward pass needs.
type Attended<B> = (BurnTensor<B, 4>, CausalSaved<B>);

/// The signature of [`forward`].
type CausalForward<B> = fn(BurnTensor<B, 4>, BurnTensor<B, 4>, BurnTensor<B, 4>, usize) -> Attended<B>;

/// The signature of [`backward`].
type CausalBackward<B> = fn(CausalSaved<B>, BurnTensor<B, 4>) -> [BurnTensor<B, 4>; 3];

/// The kernels of a CubeCL backend.
pub(crate) fn kernels<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
) -> CausalAttention<CubeBackend<R, F, I, BT>> {
    CausalAttention {
        forward: forward::<R, F, I, BT>,
        backward: backward::<R, F, I, BT>,
    }
}

/// The kernels under `Autodiff` against Burn's `attention` (its differentiated fallback):
/// output and the gradients of `q`, `k`, `v`, for rows shorter and longer than a cube's units,
/// whole and in query chunks.
#[cfg(all(test, feature = "wgpu"))]
mod wgpu_tests {
    use burn::backend::{Autodiff, Wgpu};
    use burn::tensor::module::attention;
    use burn::tensor::ops::AttentionModuleOptions;
    use burn::tensor::{Distribution, Tensor};

    use crate::backend::ArBackend;

    type Ad = Autodiff<Wgpu>;

    fn host(t: Tensor<Wgpu, 4>) -> Vec<f32> {
        t.into_data().convert::<f32>().to_vec().unwrap()
    }

    /// Largest difference relative to the largest magnitude of `b`.
    fn rel(a: &[f32], b: &[f32]) -> f32 {
        let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    fn case(b: usize, h: usize, n: usize, hd: usize, chunks: Option<usize>) {
        let device = Default::default();
        let dist = Distribution::Normal(0.0, 1.0);
        let [q, k, v] = [0; 3].map(|_| Tensor::<Wgpu, 4>::random([b, h, n, hd], dist, &device));
        // a weighted sum, so that every output element has its own upstream gradient
        let w = Tensor::<Ad, 4>::random([b, h, n, hd], dist, &device);
        let run = |ours: bool| {
            let [q, k, v] = [&q, &k, &v].map(|t| Tensor::<Ad, 4>::from_inner(t.clone()).require_grad());
            let out = if ours {
                Ad::causal_attention(q.clone(), k.clone(), v.clone(), chunks)
                    .expect("Autodiff<Wgpu> has the kernels")
            } else {
                let causal = AttentionModuleOptions {
                    is_causal: true,
                    ..Default::default()
                };
                attention(q.clone(), k.clone(), v.clone(), None, None, causal)
            };
            let grads = (out.clone() * w.clone()).sum().backward();
            let g = |t: &Tensor<Ad, 4>| host(t.grad(&grads).unwrap());
            [host(out.inner()), g(&q), g(&k), g(&v)]
        };
        let (ours, burn) = (run(true), run(false));
        for (what, (a, e)) in ["out", "dq", "dk", "dv"].iter().zip(ours.iter().zip(&burn)) {
            let r = rel(a, e);
            assert!(
                r < 1e-4,
                "{what} at [{b}, {h}, {n}, {hd}] in {chunks:?} chunks: relative difference {r}"
            );
        }
    }

    #[test]
    fn causal_attention_matches_burn_wgpu() {
        case(2, 3, 5, 8, None);
        case(2, 3, 5, 8, Some(5));
        case(1, 2, 300, 16, None);
        case(1, 2, 300, 16, Some(3));
        case(1, 2, 299, 16, Some(4));
        // more chunks than queries: Burn's attention instead
        let q = Tensor::<Ad, 4>::zeros([1, 1, 3, 4], &Default::default());
        assert!(Ad::causal_attention(q.clone(), q.clone(), q, Some(4)).is_none());
        let ranges = |nq, c| {
            super::chunk_ranges(nq, c)
                .map(|r| (r.start, r.end))
                .collect::<Vec<_>>()
        };
        assert_eq!(ranges(1535, 4), [(0, 384), (384, 768), (768, 1152), (1152, 1535)]);
        assert_eq!(ranges(5, 5), [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]);
        assert_eq!(super::default_chunks(1535), 4);
        assert_eq!(super::default_chunks(600), 2);
        assert_eq!(super::default_chunks(300), 1);
    }
}
