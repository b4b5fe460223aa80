//! Fused CubeCL kernels for the decoder's steps at decode time (issue [gpu-speed]).
//!
//! Burn 0.21 without its fusion backend issues every tensor op as its own kernel, and at decode
//! time (one token per sequence) the host cost of a launch, not the bytes moved, sets the time
//! (`llama_bench_gpu --ops`: the six-op RMSNorm costs ~0.15 ms for 8 KB on an H200). Each
//! kernel here does one such step in one launch:
//! - [`rms_norm`]: RMSNorm with its f32 statistics (was 6 launches), and [`add_rms_norm`] with
//!   the residual add before it folded in (was 7);
//! - [`silu_mul`]: `silu(gate) · up` (was 3), and [`swiglu`]: gate, up and `silu(gate) · up` in
//!   one matrix-unit launch where [`super::mma`] runs (f16/bf16 on CUDA);
//! - [`skinny_linear`]: the projections of at most 16 rows, on the matrix units where
//!   [`super::mma`] runs, else [`skinny_linear_kernel`];
//! - [`rope_kv`]: RoPE of the queries and keys and the write of keys and values into the KV
//!   cache, from the projections as they leave the matmul (was ~14: halves, negation,
//!   concatenation, products, head transposes, two slice-assigns);
//! - [`decode_attention`]: one query per sequence over its cached keys, scores in shared memory,
//!   grouped-query heads read in place (was Burn's unfused attention: ~6 launches and, with
//!   fewer key/value heads than query heads, a copy of the cache).
//!
//! They route through [`crate::ArBackend::decoder_kernels`]: `CubeBackend` (any runtime and
//! element type) has them, its `Autodiff` wrapper does not (the kernels have no backward pass;
//! training takes [`super::training`]'s, which reuse the RMSNorm and `silu(gate) · up` kernels
//! forward), and the functions here hand their inputs back otherwise, so the tensor-op path stays
//! the reference. `AR_REFINE_FUSED=0` in the
//! environment turns them off (see [`crate::backend::fused_enabled`]). Measured on an H200 (BENCHMARKS.md, issue
//! [gpu-speed] run 2): a 100M-shape decode step 32.2 ms with the tensor ops vs 11.9 ms fused.

use burn::tensor::{backend::Backend, Tensor as BurnTensor};
use burn_cubecl::element::BoolElement;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;

use crate::backend::cube::{contiguous, cube_grid, empty, float, per_element, vector_size};

/// Units per cube of [`rms_norm_kernel`]: one cube normalises one row.
const UNITS: usize = 256;

/// One row of `x [rows, h]` per cube: the mean of squares in f32 (each unit sums a strided
/// share, then shared memory), then `out = cast(x / sqrt(mean + eps)) · gain`, the same
/// operations in the same precision as the tensor-op path of `RmsNorm::forward`. With `add`,
/// the row normalised is the residual sum `cast(x + delta)`, also written to `sum` (the decoder's
/// residual add folded into the norm that follows it); without, `delta` and `sum` are not used.
#[cube(launch_unchecked)]
fn rms_norm_kernel<F: Float>(
    x: &Tensor<F>,
    delta: &Tensor<F>,
    gain: &Tensor<F>,
    sum: &mut Tensor<F>,
    out: &mut Tensor<F>,
    eps: f32,
    #[comptime] units: usize,
    #[comptime] add: bool,
    #[define(F)] _dtype: StorageType,
) {
    let h = x.shape(1);
    // one cube per row; a grid over two axes may hold cubes past the last row
    let row = CUBE_POS;
    let live = row < x.shape(0);
    let unit = UNIT_POS_X as usize;
    let base = row * h;
    let steps = h.div_ceil(units);
    let mut acc = 0.0f32;
    for s in 0..steps {
        let i = s * units + unit;
        if i < h && live {
            let mut v = f32::cast_from(x[base + i]);
            if comptime!(add) {
                let r = F::cast_from(v + f32::cast_from(delta[base + i]));
                sum[base + i] = r;
                v = f32::cast_from(r);
            }
            acc += v * v;
        }
    }
    let rms = (crate::backend::cube::cube_sum(acc, units) / f32::cast_from(h) + eps).sqrt();
    for s in 0..steps {
        let i = s * units + unit;
        if i < h && live {
            // With `add`, each unit reads back the sums it wrote itself.
            let v = if comptime!(add) {
                f32::cast_from(sum[base + i])
            } else {
                f32::cast_from(x[base + i])
            };
            out[base + i] = F::cast_from(v / rms) * gain[i];
        }
    }
}

/// `out = silu(gate) · up` element-wise over `[len]` (contiguous), computed in f32 and cast
/// once; `silu(g) = g / (1 + e^(−g))`.
#[cube(launch_unchecked)]
fn silu_mul_kernel<F: Float>(
    gate: &Tensor<F>,
    up: &Tensor<F>,
    out: &mut Tensor<F>,
    #[define(F)] _dtype: StorageType,
) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        let g = f32::cast_from(gate[i]);
        let u = f32::cast_from(up[i]);
        out[i] = F::cast_from(g / (1.0f32 + (-g).exp()) * u);
    }
}

/// RoPE of the new queries and keys and the write of keys and values into the cache, in one
/// launch: one unit per query element. Inputs are the projections as they come out of the
/// matmul, `q [b·n, h·hd]`, `k` and `v [b·n, kv·hd]` (`kv ≤ h`), and the rotate-half tables
/// `cos`, `sin [n, hd]`; outputs are `q_out [b, h, n, hd]` and the caches `[b, kv, cap, hd]`,
/// written at positions `start..start + n`. Rotation in f32, one rounding to `F`.
#[cube(launch_unchecked)]
fn rope_kv_kernel<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    cos: &Tensor<F>,
    sin: &Tensor<F>,
    q_out: &mut Tensor<F>,
    k_cache: &mut Tensor<F>,
    v_cache: &mut Tensor<F>,
    start: u32,
    #[define(F)] _dtype: StorageType,
) {
    let pos = ABSOLUTE_POS;
    if pos < q_out.len() {
        let n = cos.shape(0);
        let hd = cos.shape(1);
        let heads = q_out.shape(1);
        let kv = k_cache.shape(1);
        let cap = k_cache.shape(2);
        let half = hd / 2;
        let d = pos % hd;
        let i = (pos / hd) % n;
        let head = (pos / (hd * n)) % heads;
        let bi = pos / (hd * n * heads);
        let row = bi * n + i;
        let partner = (d + half) % hd;
        let mut sign = 1.0f32;
        if d < half {
            sign = -1.0f32;
        }
        let c = f32::cast_from(cos[i * hd + d]);
        let s = f32::cast_from(sin[i * hd + d]);
        let qb = row * heads * hd + head * hd;
        let xq = f32::cast_from(q[qb + d]);
        let pq = f32::cast_from(q[qb + partner]);
        q_out[pos] = F::cast_from(xq * c + sign * pq * s);
        if head < kv && usize::cast_from(start) + i < cap {
            let kb = row * kv * hd + head * hd;
            let xk = f32::cast_from(k[kb + d]);
            let pk = f32::cast_from(k[kb + partner]);
            let dst = ((bi * kv + head) * cap + usize::cast_from(start) + i) * hd + d;
            k_cache[dst] = F::cast_from(xk * c + sign * pk * s);
            v_cache[dst] = v[kb + d];
        }
    }
}

/// Attention of one new query per sequence over its cached keys: one cube per (sequence, head),
/// `q [b, h, 1, hd]` (contiguous), `k`, `v [b, kv, t, hd]` with any strides whose last is 1 and
/// the others multiples of the vector size `N = nv` (views of the cache), all read as
/// `nv`-element vectors (`hv = hd / nv` a row); query head `i` reads key/value head `i / (h / kv)`;
/// `out [b, h, 1, hd]`. The scores stay in shared memory (`max_t ≥ t` entries), softmax in
/// f32, `hd ≤ units`.
///
/// Scores: each unit owns keys `unit, unit + units, …` and reads a key's row as `hv` vectors
/// issued together (unrolled). Weighted values: `units / hv` slots of `hv` units, slot `s`
/// owning keys `s, s + slots, …`, four keys' loads in flight per step; a slot reads whole rows,
/// so the loads of a warp are contiguous. The slots' sums are added through shared memory.
#[cube(launch_unchecked)]
fn decode_attention_kernel<F: Float, N: Size>(
    q: &Tensor<Vector<F, N>>,
    k: &Tensor<Vector<F, N>>,
    v: &Tensor<Vector<F, N>>,
    out: &mut Tensor<F>,
    scale: f32,
    #[comptime] units: usize,
    #[comptime] max_t: usize,
    #[comptime] hv: usize,
    #[comptime] nv: usize,
    #[define(F)] _dtype: StorageType,
) {
    let heads = q.shape(1);
    let hd = q.shape(3);
    let kvh = k.shape(1);
    let t = k.shape(2);
    let bh = CUBE_POS_X as usize;
    let bi = bh / heads;
    let g = (bh % heads) / (heads / kvh);
    let unit = UNIT_POS_X as usize;
    // Element offsets of the (sequence, head) block and of one key; all multiples of `nv`.
    let kb = bi * k.stride(0) + g * k.stride(1);
    let vb = bi * v.stride(0) + g * v.stride(1);
    let ks = k.stride(2);
    let vs = v.stride(2);
    let qb = bh * hv;
    let mut scores = SharedMemory::<f32>::new(max_t);
    let mut red = SharedMemory::<f32>::new(units * nv);
    let steps = t.div_ceil(units);
    // Scores and their maximum.
    let mut m = f32::new(-3.0e38);
    for s in 0..steps {
        let j = s * units + unit;
        if j < t {
            let row = (kb + j * ks) / nv;
            let mut acc = Vector::<f32, N>::new(0.0f32);
            #[unroll]
            for d in 0..hv {
                acc += Vector::<f32, N>::cast_from(q[qb + d]) * Vector::<f32, N>::cast_from(k[row + d]);
            }
            let mut dot = 0.0f32;
            #[unroll]
            for e in 0..acc.size() {
                dot += acc[e];
            }
            let sc = dot * scale;
            scores[j] = sc;
            if sc > m {
                m = sc;
            }
        }
    }
    let mx = crate::backend::cube::cube_max(m, units);
    // Exponentials and their sum.
    let mut sum = 0.0f32;
    for s in 0..steps {
        let j = s * units + unit;
        if j < t {
            let p = (scores[j] - mx).exp();
            scores[j] = p;
            sum += p;
        }
    }
    let total = crate::backend::cube::cube_sum(sum, units);
    // Weighted values (`cube_sum` ended with a sync, so every score is written).
    let slots = units / hv;
    let slot = unit / hv;
    let dv = unit % hv;
    let mut acc = Vector::<f32, N>::new(0.0f32);
    if slot < slots {
        for s in 0..t.div_ceil(slots * 4) {
            #[unroll]
            for u in 0..4usize {
                let j = (s * 4 + u) * slots + slot;
                let ok = j < t;
                let jj = select(ok, j, 0);
                let p = select(ok, scores[jj], 0.0f32);
                let val = Vector::<f32, N>::cast_from(v[(vb + jj * vs) / nv + dv]);
                acc += val * Vector::<f32, N>::new(p);
            }
        }
    }
    #[unroll]
    for e in 0..acc.size() {
        red[unit * nv + e] = acc[e];
    }
    sync_cube();
    if unit < hd {
        // Element `unit` of the row is element `unit % nv` of vector `unit / nv`.
        let mut o = 0.0f32;
        for p in 0..slots {
            o += red[p * hd + unit];
        }
        out[bh * hd + unit] = F::cast_from(o / total);
    }
}

/// `y [m, n] = x [m, k] · wᵀ` for a few rows (`m ≤ 16`, decode time) with `w [n, k]` in the
/// layout the weights are stored (HF's `[out, in]`): each group of `lanes` units (a warp on
/// CUDA) owns `r` consecutive outputs and walks `k` in vectors of `N` elements, so a group reads
/// `lanes · N` contiguous elements of each of its weight rows per step; every weight vector,
/// converted to f32 once, serves all `m` rows of `x` (`m · r` f32 accumulators per unit). The
/// units' partial sums are then added through shared memory. The cube is `[lanes, groups]`;
/// `x`, `w` contiguous; one rounding to `F` at the end.
#[cube(launch_unchecked)]
fn skinny_linear_kernel<F: Float, N: Size>(
    x: &Tensor<Vector<F, N>>,
    w: &Tensor<Vector<F, N>>,
    y: &mut Tensor<F>,
    #[comptime] m: usize,
    #[comptime] r: usize,
    #[comptime] lanes: usize,
    #[comptime] groups: usize,
    #[define(F)] _dtype: StorageType,
) {
    let n = w.shape(0);
    let kv = w.shape(1) / w.vector_size();
    let lane = UNIT_POS_X as usize;
    let group = UNIT_POS_Y as usize;
    let o0 = (CUBE_POS_X as usize * groups + group) * r;
    let mut acc = Array::<f32>::new(m * r);
    #[unroll]
    for i in 0..m * r {
        acc[i] = 0.0f32;
    }
    let mut wf = Array::<Vector<f32, N>>::new(r);
    let steps = kv.div_ceil(lanes);
    for s in 0..steps {
        let j = s * lanes + lane;
        let ok = j < kv;
        #[unroll]
        for ri in 0..r {
            // Rows past `n` read row 0 (a valid address) and are never written.
            let row = select(o0 + ri < n, o0 + ri, 0);
            let v = Vector::<f32, N>::cast_from(w[select(ok, row * kv + j, 0)]);
            wf[ri] = select(ok, v, Vector::<f32, N>::new(0.0f32));
        }
        #[unroll]
        for mi in 0..m {
            let xv = Vector::<f32, N>::cast_from(x[select(ok, mi * kv + j, 0)]);
            #[unroll]
            for ri in 0..r {
                let p = xv * wf[ri];
                let mut t = acc[mi * r + ri];
                #[unroll]
                for e in 0..p.size() {
                    t += p[e];
                }
                acc[mi * r + ri] = t;
            }
        }
    }
    // Partial sums across the lanes through shared memory, `chunk` accumulators per unit at a
    // time (at most 8.4 KB: WebGPU guarantees 16 KB), row stride `lanes + 1` against bank
    // conflicts: each round adds `groups · chunk` rows of `lanes` values, split over the units.
    let mr = m * r;
    let chunk = comptime!(if mr < 16 { mr } else { 16 });
    let stride = lanes + 1;
    let units = lanes * groups;
    let unit = group * lanes + lane;
    let rows = groups * chunk;
    let mut red = SharedMemory::<f32>::new(groups * chunk * (lanes + 1));
    #[unroll]
    for c in 0..mr.div_ceil(chunk) {
        #[unroll]
        for i in 0..chunk {
            if comptime!(c * chunk + i < mr) {
                red[(group * chunk + i) * stride + lane] = acc[c * chunk + i];
            }
        }
        sync_cube();
        for p in 0..rows.div_ceil(units) {
            let row = p * units + unit;
            // row = (group g, accumulator c·chunk + i) of the cube.
            let a = c * chunk + row % chunk;
            if row < rows && a < mr {
                let mut total = 0.0f32;
                for l in 0..lanes {
                    total += red[row * stride + l];
                }
                let o = (CUBE_POS_X as usize * groups + row / chunk) * r + a % r;
                if o < n {
                    y[(a / r) * n + o] = F::cast_from(total);
                }
            }
        }
        sync_cube();
    }
}

/// Backends with the fused decoder kernels.
pub(crate) trait FusedBackend: Backend {
    /// RMSNorm of `x [rows, h]` with `gain [h]` → `[rows, h]` (see [`rms_norm_kernel`]).
    fn fused_rms_norm(
        x: BurnTensor<Self, 2>,
        delta: Option<BurnTensor<Self, 2>>,
        gain: BurnTensor<Self, 1>,
        eps: f64,
    ) -> (BurnTensor<Self, 2>, BurnTensor<Self, 2>);
    /// `silu(gate) · up`, both `[rows, n]` → `[rows, n]` (see [`silu_mul_kernel`]).
    fn fused_silu_mul(gate: BurnTensor<Self, 2>, up: BurnTensor<Self, 2>) -> BurnTensor<Self, 2>;
    /// RoPE and cache write (see [`rope_kv_kernel`] and [`RopeKv`]).
    fn fused_rope_kv(args: RopeKv<Self>) -> Qkv<Self>;
    /// One query per sequence over `t ≤ max_t` keys (see [`decode_attention_kernel`]):
    /// `q [b, h, 1, hd]`, `k`, `v [b, kv, t, hd]` → `[b, h, 1, hd]`.
    fn fused_decode_attention(
        q: BurnTensor<Self, 4>,
        k: BurnTensor<Self, 4>,
        v: BurnTensor<Self, 4>,
        max_t: usize,
    ) -> BurnTensor<Self, 4>;
    /// `x [m, k] · wᵀ` with `w [n, k]` → `[m, n]` for `m ≤` [`SKINNY_MAX_ROWS`] (see
    /// [`skinny_linear_kernel`]); `Err(x)` for more rows.
    fn fused_skinny_linear(
        x: BurnTensor<Self, 2>,
        w: BurnTensor<Self, 2>,
    ) -> Result<BurnTensor<Self, 2>, BurnTensor<Self, 2>>;
    /// `silu(x · gateᵀ) · (x · upᵀ)` for `x [m, k]`, `gate`, `up [n, k]` → `[m, n]` in one
    /// launch where the matrix-unit kernel runs (see [`super::mma`]); `Err(x)` otherwise.
    fn fused_swiglu(
        x: BurnTensor<Self, 2>,
        gate: BurnTensor<Self, 2>,
        up: BurnTensor<Self, 2>,
    ) -> Result<BurnTensor<Self, 2>, BurnTensor<Self, 2>>;
}

/// Queries, keys and values, each `[b, heads, positions, hd]`.
pub type Qkv<B> = (BurnTensor<B, 4>, BurnTensor<B, 4>, BurnTensor<B, 4>);

/// The inputs of [`rope_kv`]: one layer's projections at positions `start..start + n`.
pub struct RopeKv<B: Backend> {
    /// Queries `[b·n, h·hd]`.
    pub q: BurnTensor<B, 2>,
    /// Keys `[b·n, kv·hd]`.
    pub k: BurnTensor<B, 2>,
    /// Values `[b·n, kv·hd]`.
    pub v: BurnTensor<B, 2>,
    /// Rotate-half tables `[n, hd]`.
    pub cos: BurnTensor<B, 2>,
    /// Rotate-half tables `[n, hd]`.
    pub sin: BurnTensor<B, 2>,
    /// The key and value buffers `[b, kv, cap, hd]` to write into (`start + n ≤ cap`), or
    /// `None` to get fresh `[b, kv, n, hd]` ones (`start` must then be 0).
    pub cache: Option<(BurnTensor<B, 4>, BurnTensor<B, 4>)>,
    /// Position of the first new token.
    pub start: usize,
    /// Batch size `b`.
    pub batch: usize,
    /// Query heads `h`.
    pub heads: usize,
}

/// A buffer that a kernel may write in place: contiguous and not shared with another tensor.
fn writable<R: CubeRuntime>(t: CubeTensor<R>) -> CubeTensor<R> {
    let t = into_contiguous(t);
    if t.can_mut() {
        t
    } else {
        t.copy()
    }
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> FusedBackend
    for CubeBackend<R, F, I, BT>
{
    fn fused_rms_norm(
        x: BurnTensor<Self, 2>,
        delta: Option<BurnTensor<Self, 2>>,
        gain: BurnTensor<Self, 1>,
        eps: f64,
    ) -> (BurnTensor<Self, 2>, BurnTensor<Self, 2>) {
        let rows = x.dims()[0];
        let add = delta.is_some();
        let (x, gain) = (contiguous(x), contiguous(gain));
        let delta = delta.map_or_else(|| x.clone(), contiguous);
        let out = empty(&x, x.meta.shape().clone(), x.dtype);
        // Without `add` the kernel writes no sums: a one-element buffer stands in.
        let sum = if add {
            empty(&x, x.meta.shape().clone(), x.dtype)
        } else {
            empty(&x, [1], x.dtype)
        };
        let dtype = x.dtype.into();
        // SAFETY: every global read and write is guarded by `i < h` within row `CUBE_POS <
        // rows` of contiguous `[rows, h]` tensors (gain `[h]`; `delta` and `sum` are that shape
        // whenever `add` reads or writes them); the shared array has `UNITS` entries, indexed by
        // `UNIT_POS_X < UNITS`.
        unsafe {
            rms_norm_kernel::launch_unchecked::<R>(
                &x.client.clone(),
                cube_grid(&x, rows),
                CubeDim::new_1d(UNITS as u32),
                x.clone().into_tensor_arg(),
                delta.clone().into_tensor_arg(),
                gain.clone().into_tensor_arg(),
                sum.clone().into_tensor_arg(),
                out.clone().into_tensor_arg(),
                eps as f32,
                UNITS,
                add,
                dtype,
            );
        }
        drop((delta, gain));
        (float(if add { sum } else { x }), float(out))
    }

    fn fused_silu_mul(gate: BurnTensor<Self, 2>, up: BurnTensor<Self, 2>) -> BurnTensor<Self, 2> {
        let (gate, up) = (contiguous(gate), contiguous(up));
        let out = empty(&gate, gate.meta.shape().clone(), gate.dtype);
        let (count, dim) = per_element(&gate, gate.meta.shape().num_elements());
        let dtype = gate.dtype.into();
        // SAFETY: the kernel writes and reads index `i` only when `i < out.len()`, and the three
        // contiguous tensors have the same shape.
        unsafe {
            silu_mul_kernel::launch_unchecked::<R>(
                &gate.client.clone(),
                count,
                dim,
                gate.clone().into_tensor_arg(),
                up.clone().into_tensor_arg(),
                out.clone().into_tensor_arg(),
                dtype,
            );
        }
        drop((gate, up));
        float(out)
    }
    fn fused_rope_kv(a: RopeKv<Self>) -> Qkv<Self> {
        let [rows, qw] = a.q.dims();
        let [n, hd] = a.cos.dims();
        let (b, h) = (a.batch, a.heads);
        let kv = a.k.dims()[1] / hd;
        debug_assert_eq!((rows, qw), (b * n, h * hd));
        let (q, k, v, cos, sin) = (
            contiguous(a.q),
            contiguous(a.k),
            contiguous(a.v),
            contiguous(a.cos),
            contiguous(a.sin),
        );
        let (kc, vc) = match a.cache {
            Some((kc, vc)) => (
                writable(kc.into_primitive().tensor()),
                writable(vc.into_primitive().tensor()),
            ),
            None => (
                empty(&k, [b, kv, n, hd], k.dtype),
                empty(&k, [b, kv, n, hd], k.dtype),
            ),
        };
        let q_out = empty(&q, [b, h, n, hd], q.dtype);
        let (count, dim) = per_element(&q, b * h * n * hd);
        let dtype = q.dtype.into();
        // SAFETY: unit `pos < q_out.len() = b·h·n·hd` reads `q` at row `bi·n + i < b·n`, column
        // `head·hd + d' < h·hd`; `k`, `v` at column `head·hd + d' < kv·hd` (only when `head <
        // kv`); the tables at `i·hd + d < n·hd`; and writes the caches at position `start + i <
        // cap` (checked in the kernel) of head `head < kv`, batch `bi < b`. All
        // tensors are contiguous; the caches are not shared (`writable`).
        unsafe {
            rope_kv_kernel::launch_unchecked::<R>(
                &q.client.clone(),
                count,
                dim,
                q.clone().into_tensor_arg(),
                k.clone().into_tensor_arg(),
                v.clone().into_tensor_arg(),
                cos.clone().into_tensor_arg(),
                sin.clone().into_tensor_arg(),
                q_out.clone().into_tensor_arg(),
                kc.clone().into_tensor_arg(),
                vc.clone().into_tensor_arg(),
                a.start as u32,
                dtype,
            );
        }
        drop((q, k, v, cos, sin));
        (float(q_out), float(kc), float(vc))
    }
    fn fused_decode_attention(
        q: BurnTensor<Self, 4>,
        k: BurnTensor<Self, 4>,
        v: BurnTensor<Self, 4>,
        max_t: usize,
    ) -> BurnTensor<Self, 4> {
        let [b, h, _, hd] = q.dims();
        let q = contiguous(q);
        // Keys and values are read as rows of `hd` elements: a last stride other than 1 (never
        // the cache's) is made contiguous first.
        let row_major = |t: CubeTensor<R>| {
            if t.meta.strides()[3] == 1 {
                t
            } else {
                into_contiguous(t)
            }
        };
        let (k, v) = (
            row_major(k.into_primitive().tensor()),
            row_major(v.into_primitive().tensor()),
        );
        let out = empty(&q, q.meta.shape().clone(), q.dtype);
        let dtype = q.dtype.into();
        // The widest vector (at most 16 bytes) that divides `hd` and the other strides.
        let vs = vector_size(&q, |n| {
            hd % n == 0
                && [&k, &v]
                    .iter()
                    .all(|t| t.meta.strides()[..3].iter().all(|s| s % n == 0))
        });
        // SAFETY: cube `bh < b·h` reads `q` at vectors `bh·hv + d`, `d < hv = hd / vs`
        // (contiguous `[b, h, 1, hd]`) and writes `out` at `bh·hd + e`, `e < hd`; `k`, `v` are
        // read at element offsets `bi·s0 + g·s1 + j·s2` (batch `bi < b`, head `g < kv`, key
        // `j < t`; `j = 0` for the masked loads), all multiples of `vs`, plus vectors `d < hv`
        // along their last axis (stride 1); shared `scores` has `max_t ≥ t` entries (the caller
        // checks) and `red` `UNITS · vs ≥ hd` entries, indexed below them (`hd ≤ UNITS`,
        // checked by the caller).
        unsafe {
            decode_attention_kernel::launch_unchecked::<R>(
                &q.client.clone(),
                CubeCount::Static((b * h) as u32, 1, 1),
                CubeDim::new_1d(UNITS as u32),
                vs,
                q.clone().into_tensor_arg(),
                k.clone().into_tensor_arg(),
                v.clone().into_tensor_arg(),
                out.clone().into_tensor_arg(),
                1.0 / (hd as f32).sqrt(),
                UNITS,
                max_t,
                hd / vs,
                vs,
                dtype,
            );
        }
        drop((q, k, v));
        float(out)
    }

    fn fused_skinny_linear(
        x: BurnTensor<Self, 2>,
        w: BurnTensor<Self, 2>,
    ) -> Result<BurnTensor<Self, 2>, BurnTensor<Self, 2>> {
        let ([m, k], [n, _]) = (x.dims(), w.dims());
        if m == 0 || m > SKINNY_MAX_ROWS {
            return Err(x);
        }
        let (x, w) = (contiguous(x), contiguous(w));
        // The matrix units where the device has them for the type (f16, bf16 on CUDA).
        if let Some(out) = super::mma::launch(&x, &w) {
            return Ok(float(out));
        }
        // The widest vector (at most 16 bytes) that divides `k`.
        let vs = vector_size(&x, |n| k % n == 0);
        // Outputs per group: more rows of `x` reuse each weight vector more, so a group takes
        // fewer outputs to keep its `m · r` accumulators in registers.
        let (r, groups) = skinny_geometry(m);
        let lanes = SKINNY_LANES;
        let out = empty(&x, [m, n], x.dtype);
        let dtype = x.dtype.into();
        // SAFETY: lanes read `w` at row `min(o, 0 if o ≥ n)` < n, vector `j < k / vs` (index 0
        // when `j` is past the row), `x` at row `mi < m`, same vector; `y` is written at
        // `mi·n + o` only for `o < n`. All three are contiguous with the shapes above, `vs`
        // divides `k`; the shared array has `groups · m · r · (lanes + 1)` entries, indexed
        // below that by `group < groups`, `lane < lanes` (the cube is `[lanes, groups]`).
        unsafe {
            skinny_linear_kernel::launch_unchecked::<R>(
                &x.client.clone(),
                CubeCount::Static(n.div_ceil(groups * r) as u32, 1, 1),
                CubeDim::new_2d(lanes as u32, groups as u32),
                vs,
                x.clone().into_tensor_arg(),
                w.clone().into_tensor_arg(),
                out.clone().into_tensor_arg(),
                m,
                r,
                lanes,
                groups,
                dtype,
            );
        }
        drop((x, w));
        Ok(float(out))
    }

    fn fused_swiglu(
        x: BurnTensor<Self, 2>,
        gate: BurnTensor<Self, 2>,
        up: BurnTensor<Self, 2>,
    ) -> Result<BurnTensor<Self, 2>, BurnTensor<Self, 2>> {
        // Only the matrix-unit kernel has the gated form: where it cannot run (f32, wgpu, `k`
        // not a multiple of 32, more than 16 rows), give up before copying anything.
        let ([m, k], [n, kg]) = (x.dims(), gate.dims());
        let p = x.clone().into_primitive().tensor();
        if up.dims() != [n, kg] || kg != k || !super::mma::available(&p.client, p.dtype, m, k) {
            return Err(x);
        }
        drop(p);
        let (xc, gate, up) = (contiguous(x.clone()), contiguous(gate), contiguous(up));
        match super::mma::launch_gated(&xc, &gate, &up) {
            Some(out) => Ok(float(out)),
            None => Err(x),
        }
    }
}

/// The LLaMA decoder's fused decode kernels for one backend, as function pointers: what
/// [`crate::ArBackend::decoder_kernels`] hands out (`CubeBackend` has them, other backends none).
#[doc(hidden)]
pub struct DecoderKernels<B: Backend> {
    rms_norm: RmsNormAdd<B>,
    silu_mul: fn(BurnTensor<B, 2>, BurnTensor<B, 2>) -> BurnTensor<B, 2>,
    rope_kv: fn(RopeKv<B>) -> Qkv<B>,
    decode_attention: DecodeAttention<B>,
    skinny_linear: SkinnyLinear<B>,
    swiglu: Swiglu<B>,
}

/// The signature of [`FusedBackend::fused_decode_attention`].
type DecodeAttention<B> = fn(BurnTensor<B, 4>, BurnTensor<B, 4>, BurnTensor<B, 4>, usize) -> BurnTensor<B, 4>;

/// The signature of [`FusedBackend::fused_skinny_linear`].
type SkinnyLinear<B> = fn(BurnTensor<B, 2>, BurnTensor<B, 2>) -> Result<BurnTensor<B, 2>, BurnTensor<B, 2>>;

/// The signature of [`FusedBackend::fused_rms_norm`].
type RmsNormAdd<B> = fn(
    BurnTensor<B, 2>,
    Option<BurnTensor<B, 2>>,
    BurnTensor<B, 1>,
    f64,
) -> (BurnTensor<B, 2>, BurnTensor<B, 2>);

/// The signature of [`FusedBackend::fused_swiglu`].
type Swiglu<B> =
    fn(BurnTensor<B, 2>, BurnTensor<B, 2>, BurnTensor<B, 2>) -> Result<BurnTensor<B, 2>, BurnTensor<B, 2>>;

/// The kernels of a backend that has them.
pub(crate) fn decoder_kernels<B: FusedBackend>() -> DecoderKernels<B> {
    DecoderKernels {
        rms_norm: B::fused_rms_norm,
        silu_mul: B::fused_silu_mul,
        rope_kv: B::fused_rope_kv,
        decode_attention: B::fused_decode_attention,
        skinny_linear: B::fused_skinny_linear,
        swiglu: B::fused_swiglu,
    }
}

/// `B`'s kernels when it has them and they are enabled ([`crate::backend::fused_enabled`]).
fn kernels<B: crate::backend::ArBackend>() -> Option<DecoderKernels<B>> {
    if crate::backend::fused_enabled() {
        B::decoder_kernels()
    } else {
        None
    }
}

/// RMSNorm of `x [rows, h]` with `gain [h]` by the fused kernel; `Err(x)` on other backends.
pub(crate) fn rms_norm<B: crate::backend::ArBackend>(
    x: BurnTensor<B, 2>,
    gain: &BurnTensor<B, 1>,
    eps: f64,
) -> Result<BurnTensor<B, 2>, BurnTensor<B, 2>> {
    match kernels::<B>() {
        Some(k) => Ok((k.rms_norm)(x, None, gain.clone(), eps).1),
        None => Err(x),
    }
}

/// Two `[rows, h]` tensors: `(x, delta)` in, `(sum, norm)` out of [`add_rms_norm`].
type Pair<B> = (BurnTensor<B, 2>, BurnTensor<B, 2>);

/// The residual sum `s = x + delta` (`[rows, h]` each) and RMSNorm of `s` with `gain [h]` in one
/// launch: `Ok((s, norm(s)))`; `Err((x, delta))` on other backends.
pub(crate) fn add_rms_norm<B: crate::backend::ArBackend>(
    x: BurnTensor<B, 2>,
    delta: BurnTensor<B, 2>,
    gain: &BurnTensor<B, 1>,
    eps: f64,
) -> Result<Pair<B>, Pair<B>> {
    match kernels::<B>() {
        Some(k) if x.dims() == delta.dims() => Ok((k.rms_norm)(x, Some(delta), gain.clone(), eps)),
        _ => Err((x, delta)),
    }
}

/// `silu(gate) · up` for `[rows, n]` tensors by the fused kernel; `Err((gate, up))` on other
/// backends.
pub(crate) fn silu_mul<B: crate::backend::ArBackend>(
    gate: BurnTensor<B, 2>,
    up: BurnTensor<B, 2>,
) -> Result<BurnTensor<B, 2>, (BurnTensor<B, 2>, BurnTensor<B, 2>)> {
    match kernels::<B>() {
        Some(k) => Ok((k.silu_mul)(gate, up)),
        None => Err((gate, up)),
    }
}

/// RoPE of `q`, `k` and the write of `k`, `v` into the cache by the fused kernel:
/// `Ok((q [b, h, n, hd], k buffer, v buffer))` (the buffers `[b, kv, cap, hd]`, or `[b, kv, n, hd]`
/// without a cache); `Err(args)` unchanged on other backends.
pub(crate) fn rope_kv<B: crate::backend::ArBackend>(args: RopeKv<B>) -> Result<Qkv<B>, RopeKv<B>> {
    match kernels::<B>() {
        Some(k) => Ok((k.rope_kv)(args)),
        None => Err(args),
    }
}

/// Most keys [`decode_attention`] takes (its scores live in 32 KB of shared memory).
const MAX_KEYS: usize = 8192;

/// Attention of one new query per sequence, `q [b, h, 1, hd]`, over `k`, `v [b, kv, t, hd]`
/// (`kv` dividing `h`; views of the cache are fine) by the fused kernel, scaled by `1/√hd`
/// without a mask: `Ok([b, h, 1, hd])`; `Err((q, k, v))` on other backends, for `t > 8192`
/// keys or `hd > 256`.
pub(crate) fn decode_attention<B: crate::backend::ArBackend>(
    q: BurnTensor<B, 4>,
    k: BurnTensor<B, 4>,
    v: BurnTensor<B, 4>,
) -> Result<BurnTensor<B, 4>, Qkv<B>> {
    let ([_, h, n, hd], [_, kv, t, _]) = (q.dims(), k.dims());
    if n != 1 || t == 0 || t > MAX_KEYS || hd > UNITS || kv == 0 || h % kv != 0 {
        return Err((q, k, v));
    }
    let Some(kernels) = kernels::<B>() else {
        return Err((q, k, v));
    };
    // Shared memory is sized at compile time: one kernel per power of two of the key count.
    let max_t = t.next_power_of_two().max(UNITS);
    Ok((kernels.decode_attention)(q, k, v, max_t))
}

/// Units along `k` per output row in [`skinny_linear_kernel`] (a warp on CUDA).
const SKINNY_LANES: usize = 32;

/// Outputs per group and groups per cube of [`skinny_linear_kernel`] for `m` rows of `x`:
/// `AR_REFINE_SKINNY=r,groups` in the environment (read once) sets both for every `m` — for
/// measuring. The defaults are the fastest of seven geometries at the 7B shapes on an H200
/// (`docs/benchmarks/gpu-speed/gpu-speed-v3-proj-sweep-skinny.jsonl`): 4 outputs per group and 2 groups
/// per cube for one row (decode at batch 1), 8 and 2 from 8 rows (batch 16).
fn skinny_geometry(m: usize) -> (usize, usize) {
    static SET: std::sync::OnceLock<Option<(usize, usize)>> = std::sync::OnceLock::new();
    let set = SET.get_or_init(|| {
        let v = std::env::var("AR_REFINE_SKINNY").ok()?;
        let (r, g) = v.split_once(',')?;
        let (r, g) = (r.trim().parse().ok()?, g.trim().parse().ok()?);
        ((1..=8).contains(&r) && (1..=16).contains(&g)).then_some((r, g))
    });
    set.unwrap_or(if m >= 8 { (8, 2) } else { (4, 2) })
}

/// Most rows of `x` that [`skinny_linear`] takes: decode steps of up to 16 sequences.
pub(crate) const SKINNY_MAX_ROWS: usize = 16;

/// `x [m, k] · wᵀ` with `w [n, k]` (HF's `[out, in]`) → `[m, n]` by the fused kernel, for
/// `m ≤` [`SKINNY_MAX_ROWS`]; `Err(x)` on other backends or for more rows.
pub(crate) fn skinny_linear<B: crate::backend::ArBackend>(
    x: BurnTensor<B, 2>,
    w: &BurnTensor<B, 2>,
) -> Result<BurnTensor<B, 2>, BurnTensor<B, 2>> {
    if x.dims()[0] > SKINNY_MAX_ROWS || x.dims()[1] != w.dims()[1] {
        return Err(x);
    }
    match kernels::<B>() {
        Some(k) => (k.skinny_linear)(x, w.clone()),
        None => Err(x),
    }
}

/// `silu(x · gateᵀ) · (x · upᵀ)` for `x [m, k]`, `gate`, `up [n, k]` (HF's `[out, in]`) →
/// `[m, n]` in one launch, for `m ≤` [`SKINNY_MAX_ROWS`] where the matrix-unit kernel runs
/// (f16/bf16 on CUDA, `k % 32 == 0`); `Err(x)` otherwise.
pub(crate) fn swiglu<B: crate::backend::ArBackend>(
    x: BurnTensor<B, 2>,
    gate: &BurnTensor<B, 2>,
    up: &BurnTensor<B, 2>,
) -> Result<BurnTensor<B, 2>, BurnTensor<B, 2>> {
    if x.dims()[0] > SKINNY_MAX_ROWS || x.dims()[1] != gate.dims()[1] || gate.dims() != up.dims() {
        return Err(x);
    }
    match kernels::<B>() {
        Some(k) => (k.swiglu)(x, gate.clone(), up.clone()),
        None => Err(x),
    }
}

#[cfg(all(test, feature = "wgpu"))]
mod tests {
    use burn::tensor::{DType, Distribution, Tensor};

    /// `t` in the float type of `B`'s element. Burn 0.21 keeps one default float dtype per
    /// device for every backend type on it (`burn_backend::get_device_settings`, keyed by device,
    /// not by backend), so once a `f16` backend has made tensors on the lavapipe device, `random`
    /// and `full` on the `f32` backend make `f16` tensors too; the kernels then (rightly) compute
    /// in f16 and an f32 tolerance fails. Tests state the type they mean.
    fn own<B: crate::backend::ArBackend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
        t.cast(<B::FloatElem as burn::tensor::Element>::dtype())
    }

    /// The values of `t` on the host, in f64.
    fn host<B: crate::backend::ArBackend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
        t.cast(DType::F32)
            .into_data()
            .iter::<f32>()
            .map(f64::from)
            .collect()
    }

    /// The tensor-op RMSNorm of `RmsNorm::forward`, for reference.
    fn reference<B: crate::backend::ArBackend>(
        x: Tensor<B, 2>,
        gain: Tensor<B, 1>,
        eps: f64,
    ) -> Tensor<B, 2> {
        let dtype = x.dtype();
        let x = x.cast(DType::F32);
        let rms = x.clone().powi_scalar(2).mean_dim(1).add_scalar(eps).sqrt();
        x.div(rms).cast(dtype) * gain.unsqueeze::<2>()
    }

    fn check<B: crate::backend::ArBackend>(tol: f32) {
        let device = Default::default();
        // Widths below, at and above one cube's 256 units, not multiples of it.
        for (rows, h) in [(1, 7), (3, 256), (5, 300), (2, 1030)] {
            let x = own::<B, _>(Tensor::<B, 2>::random(
                [rows, h],
                Distribution::Normal(0.0, 3.0),
                &device,
            ));
            let gain = own::<B, _>(Tensor::<B, 1>::random(
                [h],
                Distribution::Uniform(0.5, 1.5),
                &device,
            ));
            let want = reference(x.clone(), gain.clone(), 1e-6);
            let xh = host(x.clone());
            let gh = host(gain.clone());
            let x2 = x.clone();
            let got = super::rms_norm(x, &gain, 1e-6).unwrap_or_else(|_| panic!("kernel not routed"));
            let goth = host(got.clone());
            let wanth = host(want.clone());
            let (mut ek, mut eo) = (0.0f64, 0.0f64);
            for r in 0..rows {
                let row = &xh[r * h..(r + 1) * h];
                let ms = row.iter().map(|v| v * v).sum::<f64>() / h as f64;
                let rms = (ms + 1e-6).sqrt();
                for i in 0..h {
                    let t = row[i] / rms * gh[i];
                    ek = ek.max((goth[r * h + i] - t).abs());
                    eo = eo.max((wanth[r * h + i] - t).abs());
                }
            }
            assert!(
                ek <= f64::from(tol).max(eo),
                "rows {rows}, h {h}: kernel error {ek}, tensor ops {eo} (against f64, tolerance {tol})"
            );
            // The residual add folded in: the sum as the tensor op rounds it, and the norm of
            // that sum exactly as the kernel without the add computes it.
            let d = own::<B, _>(Tensor::<B, 2>::random(
                [rows, h],
                Distribution::Normal(0.0, 1.0),
                &device,
            ));
            let want_sum = x2.clone() + d.clone();
            let (sum, y) =
                super::add_rms_norm(x2, d, &gain, 1e-6).unwrap_or_else(|_| panic!("kernel not routed"));
            let alone = super::rms_norm(want_sum.clone(), &gain, 1e-6)
                .unwrap_or_else(|_| panic!("kernel not routed"));
            assert_eq!(host(sum), host(want_sum), "rows {rows}, h {h}: residual sum");
            assert_eq!(
                host(y),
                host(alone),
                "rows {rows}, h {h}: norm of the residual sum"
            );
        }
    }

    #[test]
    fn fused_rms_norm_matches_tensor_ops_wgpu_f32() {
        check::<burn::backend::Wgpu>(2e-5);
    }

    #[test]
    fn fused_rms_norm_matches_tensor_ops_wgpu_f16() {
        // One f16 rounding step apart at most (|values| < ~8).
        check::<burn_cubecl::CubeBackend<cubecl::wgpu::WgpuRuntime, half::f16, i32, u32>>(1e-2);
    }

    /// `silu(g)·u` by the fused kernel against f64 on the host and the tensor ops.
    fn check_silu<B: crate::backend::ArBackend>(silu_tol: f32) {
        let device = Default::default();
        for (rows, n) in [(1, 5), (3, 300), (2, 1030)] {
            let g = own::<B, _>(Tensor::<B, 2>::random(
                [rows, n],
                Distribution::Normal(0.0, 3.0),
                &device,
            ));
            let u = own::<B, _>(Tensor::<B, 2>::random(
                [rows, n],
                Distribution::Normal(0.0, 1.0),
                &device,
            ));
            let want = burn::tensor::activation::silu(g.clone()) * u.clone();
            let (g2, u2) = (g.clone(), u.clone());
            let got = super::silu_mul(g, u).unwrap_or_else(|_| panic!("silu kernel not routed"));
            let (gv, uv, got_v, want_v) = (host(g2), host(u2), host(got), host(want));
            let (mut err_kernel, mut err_ops) = (0.0f64, 0.0f64);
            for k in 0..gv.len() {
                let r = gv[k] / (1.0 + (-gv[k]).exp()) * uv[k];
                err_kernel = err_kernel.max((got_v[k] - r).abs() / (1.0 + r.abs()));
                err_ops = err_ops.max((want_v[k] - r).abs() / (1.0 + r.abs()));
            }
            assert!(
                err_kernel <= f64::from(silu_tol).max(err_ops),
                "silu·up [{rows}, {n}]: kernel error {err_kernel}, tensor ops {err_ops}"
            );
        }
    }

    #[test]
    fn fused_silu_mul_matches_f64_wgpu_f32() {
        check_silu::<burn::backend::Wgpu>(1e-5);
    }

    #[test]
    fn fused_silu_mul_matches_f64_wgpu_f16() {
        check_silu::<burn_cubecl::CubeBackend<cubecl::wgpu::WgpuRuntime, half::f16, i32, u32>>(2e-2);
    }

    /// RoPE and the cache write by the fused kernel against f64 on the host: a grouped-query
    /// layout (4 query heads, 2 key/value heads), two sequences of 3 new tokens after 5 cached
    /// ones; cache positions outside `5..8` keep their sentinel.
    fn check_rope<B: crate::backend::ArBackend>(tol: f64) {
        let device = Default::default();
        let (b, n, h, kv, hd, cap, start) = (2, 3, 4, 2, 8, 10, 5);
        let normal = Distribution::Normal(0.0, 1.5);
        let q = own::<B, _>(Tensor::<B, 2>::random([b * n, h * hd], normal, &device));
        let k = own::<B, _>(Tensor::<B, 2>::random([b * n, kv * hd], normal, &device));
        let v = own::<B, _>(Tensor::<B, 2>::random([b * n, kv * hd], normal, &device));
        let (cos, sin) = super::super::host_rope_tables::<B>(start, n, hd, 10_000.0, &device);
        let (cos, sin) = (own::<B, 2>(cos), own::<B, 2>(sin));
        let (qh, kh, vh) = (host(q.clone()), host(k.clone()), host(v.clone()));
        let sentinel = 7.0;
        let cache = (
            own::<B, _>(Tensor::<B, 4>::full([b, kv, cap, hd], sentinel, &device)),
            own::<B, _>(Tensor::<B, 4>::full([b, kv, cap, hd], sentinel, &device)),
        );
        let args = super::RopeKv {
            q,
            k,
            v,
            cos,
            sin,
            cache: Some(cache),
            start,
            batch: b,
            heads: h,
        };
        let (qo, ko, vo) = super::rope_kv(args).unwrap_or_else(|_| panic!("rope kernel not routed"));
        assert_eq!(qo.dims(), [b, h, n, hd]);
        assert_eq!(ko.dims(), [b, kv, cap, hd]);
        let (qo, ko, vo) = (host(qo), host(ko), host(vo));
        let rotate = |x: &[f64], pos: usize, d: usize| {
            let half = hd / 2;
            let inv = 1.0 / 10_000f64.powf((2 * (d % half)) as f64 / hd as f64);
            let a = pos as f64 * inv;
            let rot = if d < half { -x[d + half] } else { x[d - half] };
            x[d] * a.cos() + rot * a.sin()
        };
        let mut err = 0.0f64;
        for bi in 0..b {
            for i in 0..n {
                let row = bi * n + i;
                for head in 0..h {
                    let x = &qh[row * h * hd + head * hd..][..hd];
                    for d in 0..hd {
                        let got = qo[((bi * h + head) * n + i) * hd + d];
                        err = err.max((got - rotate(x, start + i, d)).abs());
                    }
                }
                for head in 0..kv {
                    let x = &kh[row * kv * hd + head * hd..][..hd];
                    for d in 0..hd {
                        let at = ((bi * kv + head) * cap + start + i) * hd + d;
                        err = err.max((ko[at] - rotate(x, start + i, d)).abs());
                        err = err.max((vo[at] - vh[row * kv * hd + head * hd + d]).abs());
                    }
                }
            }
            for head in 0..kv {
                for p in (0..cap).filter(|p| !(start..start + n).contains(p)) {
                    for d in 0..hd {
                        let at = ((bi * kv + head) * cap + p) * hd + d;
                        assert_eq!(
                            (ko[at], vo[at]),
                            (sentinel, sentinel),
                            "cache position {p} overwritten"
                        );
                    }
                }
            }
        }
        assert!(err <= tol, "rope/cache error {err} against f64 (tolerance {tol})");
    }

    #[test]
    fn fused_rope_kv_matches_f64_wgpu_f32() {
        // The f32 tables (HF computes them in f32 too) dominate: ~1e-6 · |x|.
        check_rope::<burn::backend::Wgpu>(1e-4);
    }

    #[test]
    fn fused_rope_kv_matches_f64_wgpu_f16() {
        // f16 inputs, tables and output: a few f16 roundings of values below ~8.
        check_rope::<burn_cubecl::CubeBackend<cubecl::wgpu::WgpuRuntime, half::f16, i32, u32>>(2e-2);
    }

    /// Decode attention by the fused kernel against f64 on the host: grouped-query heads, keys
    /// and values as views of a larger cache (strided), key counts below, at and above one
    /// cube's 256 units.
    fn check_attention<B: crate::backend::ArBackend>(tol: f64) {
        let device = Default::default();
        let (b, h, kv, cap) = (2, 4, 2, 600);
        let normal = Distribution::Normal(0.0, 1.0);
        for (hd, t) in [
            (16, 1),
            (16, 37),
            (16, 256),
            (16, 517),
            (128, 5),
            (128, 300),
            (8, 70),
        ] {
            let q = own::<B, _>(Tensor::<B, 4>::random([b, h, 1, hd], normal, &device));
            let kc = own::<B, _>(Tensor::<B, 4>::random([b, kv, cap, hd], normal, &device));
            let vc = own::<B, _>(Tensor::<B, 4>::random([b, kv, cap, hd], normal, &device));
            let k = kc.clone().slice([0..b, 0..kv, 0..t, 0..hd]);
            let v = vc.clone().slice([0..b, 0..kv, 0..t, 0..hd]);
            let (qh, kh, vh) = (host(q.clone()), host(kc), host(vc));
            let got =
                super::decode_attention(q, k, v).unwrap_or_else(|_| panic!("attention kernel not routed"));
            assert_eq!(got.dims(), [b, h, 1, hd]);
            let got = host(got);
            let mut err = 0.0f64;
            for bi in 0..b {
                for head in 0..h {
                    let g = head / (h / kv);
                    let qv = &qh[(bi * h + head) * hd..][..hd];
                    let row = |j: usize| ((bi * kv + g) * cap + j) * hd;
                    let scores: Vec<f64> = (0..t)
                        .map(|j| (0..hd).map(|d| qv[d] * kh[row(j) + d]).sum::<f64>() / (hd as f64).sqrt())
                        .collect();
                    let mx = scores.iter().cloned().fold(f64::MIN, f64::max);
                    let p: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
                    let z: f64 = p.iter().sum();
                    for d in 0..hd {
                        let want = (0..t).map(|j| p[j] * vh[row(j) + d]).sum::<f64>() / z;
                        err = err.max((got[(bi * h + head) * hd + d] - want).abs());
                    }
                }
            }
            assert!(
                err <= tol,
                "hd = {hd}, t = {t}: attention error {err} against f64 (tolerance {tol})"
            );
        }
    }

    #[test]
    fn fused_decode_attention_matches_f64_wgpu_f32() {
        check_attention::<burn::backend::Wgpu>(1e-5);
    }

    #[test]
    fn fused_decode_attention_matches_f64_wgpu_f16() {
        check_attention::<burn_cubecl::CubeBackend<cubecl::wgpu::WgpuRuntime, half::f16, i32, u32>>(2e-2);
    }

    /// `x · wᵀ` by the skinny kernel against f64 on the host: row counts 1–16 (the outputs
    /// per group change at 8), widths that take vectors of 1, 2 and 4 elements, output counts
    /// that leave a cube's last outputs past the end. The error is scaled by `Σ|x||w|`,
    /// the bound of the f32 accumulation and the final rounding.
    fn check_skinny<B: crate::backend::ArBackend>(tol: f64) {
        let device = Default::default();
        let normal = Distribution::Normal(0.0, 1.0);
        for (m, k, n) in [(1, 7, 5), (2, 64, 33), (3, 1030, 17), (8, 256, 130), (16, 520, 9)] {
            let x = own::<B, _>(Tensor::<B, 2>::random([m, k], normal, &device));
            let w = own::<B, _>(Tensor::<B, 2>::random([n, k], normal, &device));
            let (xh, wh) = (host(x.clone()), host(w.clone()));
            let got = super::skinny_linear(x, &w).unwrap_or_else(|_| panic!("skinny kernel not routed"));
            assert_eq!(got.dims(), [m, n]);
            let got = host(got);
            let mut err = 0.0f64;
            for i in 0..m {
                for o in 0..n {
                    let terms = (0..k).map(|j| xh[i * k + j] * wh[o * k + j]);
                    let want: f64 = terms.clone().sum();
                    let scale: f64 = terms.map(f64::abs).sum();
                    err = err.max((got[i * n + o] - want).abs() / scale);
                }
            }
            assert!(
                err <= tol,
                "[{m}, {k}] · [{n}, {k}]ᵀ: error {err} of Σ|x||w| (tolerance {tol})"
            );
        }
        let many = own::<B, _>(Tensor::<B, 2>::ones([super::SKINNY_MAX_ROWS + 1, 8], &device));
        let w = own::<B, _>(Tensor::<B, 2>::ones([3, 8], &device));
        assert!(
            super::skinny_linear(many, &w).is_err(),
            "more than 16 rows take the matmul"
        );
    }

    #[test]
    fn fused_skinny_linear_matches_f64_wgpu_f32() {
        check_skinny::<burn::backend::Wgpu>(1e-6);
    }

    #[test]
    fn fused_skinny_linear_matches_f64_wgpu_f16() {
        // Exact products of f16 inputs, f32 sums, one f16 rounding of the result.
        check_skinny::<burn_cubecl::CubeBackend<cubecl::wgpu::WgpuRuntime, half::f16, i32, u32>>(1e-3);
    }

    /// An elementwise kernel over more elements than 65,535 cubes of 256 cover (wgpu's limit per
    /// grid axis) and RMSNorm over more than 65,535 rows launch, and their last rows are computed.
    #[test]
    fn elementwise_kernels_span_more_than_one_grid_axis_wgpu() {
        type W = burn::backend::Wgpu;
        let device = Default::default();
        let rows = 65_600; // × 256 columns: 65,600 cubes of 256 units, or one cube per row
        let ones = Tensor::<W, 2>::ones([rows, 256], &device);
        let y = super::silu_mul(ones.clone(), ones.clone())
            .map_err(|_| ())
            .expect("Wgpu has the kernels");
        let last: Vec<f32> = y.narrow(0, rows - 1, 1).into_data().to_vec().unwrap();
        let want = 1.0 / (1.0 + (-1.0f32).exp());
        assert!(last.iter().all(|v| (v - want).abs() < 1e-6), "{:?}", &last[..4]);
        // RMSNorm: one cube per row
        let gain = Tensor::<W, 1>::ones([256], &device).mul_scalar(2.0);
        let y = super::rms_norm(ones, &gain, 0.0)
            .map_err(|_| ())
            .expect("Wgpu has the kernels");
        let last: Vec<f32> = y.narrow(0, rows - 1, 1).into_data().to_vec().unwrap();
        assert!(last.iter().all(|v| (v - 2.0).abs() < 1e-6), "{:?}", &last[..4]);
    }

    #[test]
    fn autodiff_backends_keep_the_tensor_op_path_wgpu() {
        type A = burn::backend::Autodiff<burn::backend::Wgpu>;
        let device = Default::default();
        let x = Tensor::<A, 2>::ones([2, 4], &device);
        let gain = Tensor::<A, 1>::ones([4], &device);
        assert!(super::rms_norm(x, &gain, 1e-6).is_err());
    }
}
