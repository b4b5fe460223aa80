//! Fused CubeCL kernels for the decoder's element-wise steps (issue [gpu-speed]).
//!
//! Burn 0.21 without its fusion backend issues every tensor op as its own kernel, and at decode
//! time (one token per sequence) the host cost of a launch, not the bytes moved, sets the time
//! (`llama_bench_gpu --ops`: the six-op RMSNorm costs ~0.15 ms for 8 KB on an H200). The kernels
//! here do such a step in one launch. [`rms_norm`] and [`silu_mul`] route to them for the CubeCL backend types
//! this crate was built with (not their `Autodiff` wrappers: the kernels have no backward pass)
//! and hands the input back otherwise, so the tensor-op path stays the reference.

use burn::tensor::{backend::Backend, Tensor as BurnTensor};
use burn_cubecl::element::BoolElement;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;

/// Units per cube of [`rms_norm_kernel`]: one cube normalises one row.
const UNITS: usize = 256;

/// One row of `x [rows, h]` per cube: the mean of squares in f32 (each unit sums a strided
/// share, then shared memory), then `out = cast(x / sqrt(mean + eps)) · gain`, the same
/// operations in the same precision as the tensor-op path of `RmsNorm::forward`.
#[cube(launch_unchecked)]
fn rms_norm_kernel<F: Float>(
    x: &Tensor<F>,
    gain: &Tensor<F>,
    out: &mut Tensor<F>,
    eps: f32,
    #[comptime] units: usize,
    #[define(F)] _dtype: StorageType,
) {
    let h = x.shape(1);
    let row = CUBE_POS_X as usize;
    let unit = UNIT_POS_X as usize;
    let base = row * h;
    let steps = h.div_ceil(units);
    let mut acc = 0.0f32;
    for s in 0..steps {
        let i = s * units + unit;
        if i < h {
            let v = f32::cast_from(x[base + i]);
            acc += v * v;
        }
    }
    let mut red = SharedMemory::<f32>::new(units);
    red[unit] = acc;
    sync_cube();
    if unit == 0 {
        let mut total = 0.0f32;
        for j in 0..units {
            total += red[j];
        }
        red[0] = total;
    }
    sync_cube();
    let rms = (red[0] / f32::cast_from(h) + eps).sqrt();
    for s in 0..steps {
        let i = s * units + unit;
        if i < h {
            let v = f32::cast_from(x[base + i]) / rms;
            out[base + i] = F::cast_from(v) * gain[i];
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

/// Backends with the fused decoder kernels.
pub(crate) trait FusedBackend: Backend {
    /// RMSNorm of `x [rows, h]` with `gain [h]` → `[rows, h]` (see [`rms_norm_kernel`]).
    fn fused_rms_norm(x: BurnTensor<Self, 2>, gain: BurnTensor<Self, 1>, eps: f64) -> BurnTensor<Self, 2>;
    /// `silu(gate) · up`, both `[rows, n]` → `[rows, n]` (see [`silu_mul_kernel`]).
    fn fused_silu_mul(gate: BurnTensor<Self, 2>, up: BurnTensor<Self, 2>) -> BurnTensor<Self, 2>;
    /// RoPE and cache write (see [`rope_kv_kernel`] and [`RopeKv`]).
    fn fused_rope_kv(args: RopeKv<Self>) -> (BurnTensor<Self, 4>, BurnTensor<Self, 4>, BurnTensor<Self, 4>);
}

/// The inputs of [`rope_kv`]: one layer's projections at positions `start..start + n`.
pub(crate) struct RopeKv<B: Backend> {
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

/// A contiguous uninitialised tensor of `shape` typed like `like`.
fn empty_shaped<R: CubeRuntime>(like: &CubeTensor<R>, shape: [usize; 4]) -> CubeTensor<R> {
    let shape = burn::tensor::Shape::from(shape);
    let handle = like.client.empty(shape.num_elements() * like.dtype.size());
    CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        shape,
        handle,
        like.dtype,
    )
}

/// The primitive of a float tensor, made contiguous.
fn prim<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement, const D: usize>(
    t: BurnTensor<CubeBackend<R, F, I, BT>, D>,
) -> CubeTensor<R> {
    into_contiguous(t.into_primitive().tensor())
}

/// An uninitialised contiguous tensor shaped and typed like `like`.
fn empty_like<R: CubeRuntime>(like: &CubeTensor<R>) -> CubeTensor<R> {
    let shape = like.meta.shape().clone();
    let handle = like.client.empty(shape.num_elements() * like.dtype.size());
    CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        shape,
        handle,
        like.dtype,
    )
}

/// Launch geometry for one unit per element of `len`.
fn per_element(len: usize) -> (CubeCount, CubeDim) {
    (
        CubeCount::Static(len.div_ceil(UNITS) as u32, 1, 1),
        CubeDim::new_1d(UNITS as u32),
    )
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> FusedBackend
    for CubeBackend<R, F, I, BT>
{
    fn fused_rms_norm(x: BurnTensor<Self, 2>, gain: BurnTensor<Self, 1>, eps: f64) -> BurnTensor<Self, 2> {
        let rows = x.dims()[0];
        let (x, gain) = (prim(x), prim(gain));
        let out = empty_like(&x);
        let dtype = x.dtype.into();
        // SAFETY: every global read and write is guarded by `i < h` within row `CUBE_POS_X <
        // rows` of contiguous `[rows, h]` tensors (gain `[h]`); the shared array has `UNITS`
        // entries, indexed by `UNIT_POS_X < UNITS`.
        unsafe {
            rms_norm_kernel::launch_unchecked::<R>(
                &x.client.clone(),
                CubeCount::Static(rows as u32, 1, 1),
                CubeDim::new_1d(UNITS as u32),
                x.clone().into_tensor_arg(),
                gain.clone().into_tensor_arg(),
                out.clone().into_tensor_arg(),
                eps as f32,
                UNITS,
                dtype,
            );
        }
        drop((x, gain));
        BurnTensor::from_primitive(burn::tensor::TensorPrimitive::Float(out))
    }

    fn fused_silu_mul(gate: BurnTensor<Self, 2>, up: BurnTensor<Self, 2>) -> BurnTensor<Self, 2> {
        let (gate, up) = (prim(gate), prim(up));
        let out = empty_like(&gate);
        let (count, dim) = per_element(gate.meta.shape().num_elements());
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
        BurnTensor::from_primitive(burn::tensor::TensorPrimitive::Float(out))
    }
    fn fused_rope_kv(a: RopeKv<Self>) -> (BurnTensor<Self, 4>, BurnTensor<Self, 4>, BurnTensor<Self, 4>) {
        let [rows, qw] = a.q.dims();
        let [n, hd] = a.cos.dims();
        let (b, h) = (a.batch, a.heads);
        let kv = a.k.dims()[1] / hd;
        debug_assert_eq!((rows, qw), (b * n, h * hd));
        let (q, k, v, cos, sin) = (prim(a.q), prim(a.k), prim(a.v), prim(a.cos), prim(a.sin));
        let (kc, vc) = match a.cache {
            Some((kc, vc)) => (
                writable(kc.into_primitive().tensor()),
                writable(vc.into_primitive().tensor()),
            ),
            None => (empty_shaped(&k, [b, kv, n, hd]), empty_shaped(&k, [b, kv, n, hd])),
        };
        let q_out = empty_shaped(&q, [b, h, n, hd]);
        let (count, dim) = per_element(b * h * n * hd);
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
        let wrap = |t| BurnTensor::from_primitive(burn::tensor::TensorPrimitive::Float(t));
        (wrap(q_out), wrap(kc), wrap(vc))
    }
}

/// Expands `$try!(Type)` for every CubeCL backend type this crate was built with (not their
/// `Autodiff` wrappers: the kernels have no backward pass).
macro_rules! for_cube_backends {
    ($try:ident) => {
        #[cfg(feature = "wgpu")]
        {
            $try!(CubeBackend<cubecl::wgpu::WgpuRuntime, f32, i32, u32>);
            $try!(CubeBackend<cubecl::wgpu::WgpuRuntime, half::f16, i32, u32>);
        }
        #[cfg(feature = "cuda")]
        {
            $try!(CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>);
            $try!(CubeBackend<cubecl::cuda::CudaRuntime, half::f16, i32, u8>);
            $try!(CubeBackend<cubecl::cuda::CudaRuntime, half::bf16, i32, u8>);
        }
    };
}

/// `t` as a tensor of backend `C` when `B` is `C`.
fn cast<B: Backend, C: Backend, const D: usize>(t: &BurnTensor<B, D>) -> Option<BurnTensor<C, D>> {
    (t as &dyn std::any::Any)
        .downcast_ref::<BurnTensor<C, D>>()
        .cloned()
}

/// `t` moved to backend `B` when `C` is `B` (either direction of [`cast`]).
fn uncast<C: Backend, B: Backend, const D: usize>(t: BurnTensor<C, D>) -> Option<BurnTensor<B, D>> {
    (Box::new(t) as Box<dyn std::any::Any>)
        .downcast::<BurnTensor<B, D>>()
        .ok()
        .map(|b| *b)
}

/// RMSNorm of `x [rows, h]` with `gain [h]` by the fused kernel; `Err(x)` on other backends.
pub(crate) fn rms_norm<B: Backend>(
    x: BurnTensor<B, 2>,
    gain: &BurnTensor<B, 1>,
    eps: f64,
) -> Result<BurnTensor<B, 2>, BurnTensor<B, 2>> {
    macro_rules! attempt {
        ($c:ty) => {
            if let (Some(xc), Some(gc)) = (cast::<B, $c, 2>(&x), cast::<B, $c, 1>(gain)) {
                if let Some(y) = uncast(<$c>::fused_rms_norm(xc, gc, eps)) {
                    return Ok(y);
                }
            }
        };
    }
    for_cube_backends!(attempt);
    let _ = (gain, eps);
    Err(x)
}

/// `silu(gate) · up` for `[rows, n]` tensors by the fused kernel; `Err((gate, up))` on other
/// backends.
pub(crate) fn silu_mul<B: Backend>(
    gate: BurnTensor<B, 2>,
    up: BurnTensor<B, 2>,
) -> Result<BurnTensor<B, 2>, (BurnTensor<B, 2>, BurnTensor<B, 2>)> {
    macro_rules! attempt {
        ($c:ty) => {
            if let (Some(g), Some(u)) = (cast::<B, $c, 2>(&gate), cast::<B, $c, 2>(&up)) {
                if let Some(y) = uncast(<$c>::fused_silu_mul(g, u)) {
                    return Ok(y);
                }
            }
        };
    }
    for_cube_backends!(attempt);
    Err((gate, up))
}

/// RoPE of `q`, `k` and the write of `k`, `v` into the cache by the fused kernel:
/// `Ok((q [b, h, n, hd], k buffer, v buffer))` (the buffers `[b, kv, cap, hd]`, or `[b, kv, n, hd]`
/// without a cache); `Err(args)` unchanged on other backends.
pub(crate) fn rope_kv<B: Backend>(
    args: RopeKv<B>,
) -> Result<(BurnTensor<B, 4>, BurnTensor<B, 4>, BurnTensor<B, 4>), RopeKv<B>> {
    macro_rules! attempt {
        ($c:ty) => {
            if std::any::TypeId::of::<B>() == std::any::TypeId::of::<$c>() {
                // `B` is `$c`: the moves below cannot fail.
                let a = RopeKv::<$c> {
                    q: uncast(args.q).expect("same type"),
                    k: uncast(args.k).expect("same type"),
                    v: uncast(args.v).expect("same type"),
                    cos: uncast(args.cos).expect("same type"),
                    sin: uncast(args.sin).expect("same type"),
                    cache: args
                        .cache
                        .map(|(k, v)| (uncast(k).expect("same type"), uncast(v).expect("same type"))),
                    start: args.start,
                    batch: args.batch,
                    heads: args.heads,
                };
                let (q, k, v) = <$c>::fused_rope_kv(a);
                return Ok((
                    uncast(q).expect("same type"),
                    uncast(k).expect("same type"),
                    uncast(v).expect("same type"),
                ));
            }
        };
    }
    for_cube_backends!(attempt);
    Err(args)
}

#[cfg(all(test, feature = "wgpu"))]
mod tests {
    use burn::tensor::{backend::Backend, DType, Distribution, Tensor};

    /// The tensor-op RMSNorm of `RmsNorm::forward`, for reference.
    fn reference<B: Backend>(x: Tensor<B, 2>, gain: Tensor<B, 1>, eps: f64) -> Tensor<B, 2> {
        let dtype = x.dtype();
        let x = x.cast(DType::F32);
        let rms = x.clone().powi_scalar(2).mean_dim(1).add_scalar(eps).sqrt();
        x.div(rms).cast(dtype) * gain.unsqueeze::<2>()
    }

    fn check<B: Backend>(tol: f32) {
        let device = Default::default();
        // Widths below, at and above one cube's 256 units, not multiples of it.
        for (rows, h) in [(1, 7), (3, 256), (5, 300), (2, 1030)] {
            let x = Tensor::<B, 2>::random([rows, h], Distribution::Normal(0.0, 3.0), &device);
            let gain = Tensor::<B, 1>::random([h], Distribution::Uniform(0.5, 1.5), &device);
            let want = reference(x.clone(), gain.clone(), 1e-6);
            let xh: Vec<f64> = x
                .clone()
                .cast(DType::F32)
                .into_data()
                .iter::<f32>()
                .map(f64::from)
                .collect();
            let gh: Vec<f64> = gain
                .clone()
                .cast(DType::F32)
                .into_data()
                .iter::<f32>()
                .map(f64::from)
                .collect();
            let got = super::rms_norm(x, &gain, 1e-6).unwrap_or_else(|_| panic!("kernel not routed"));
            let goth: Vec<f64> = got
                .clone()
                .cast(DType::F32)
                .into_data()
                .iter::<f32>()
                .map(f64::from)
                .collect();
            let wanth: Vec<f64> = want
                .clone()
                .cast(DType::F32)
                .into_data()
                .iter::<f32>()
                .map(f64::from)
                .collect();
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
            // lavapipe's f32 sqrt/division are approximate (~1e-3 absolute here, for Burn's ops
            // as much as for the kernel), so both are held against f64 on the host.
            let _ = tol;
            assert!(
                ek <= eo * 1.5 + 1e-5,
                "rows {rows}, h {h}: kernel error {ek}, tensor ops {eo} (against f64)"
            );
        }
    }

    #[test]
    fn fused_rms_norm_matches_tensor_ops_wgpu_f32() {
        check::<burn::backend::Wgpu>(1e-5);
    }

    #[test]
    fn fused_rms_norm_matches_tensor_ops_wgpu_f16() {
        // One f16 rounding step apart at most (|values| < ~8).
        check::<burn_cubecl::CubeBackend<cubecl::wgpu::WgpuRuntime, half::f16, i32, u32>>(1e-2);
    }

    /// `silu(g)·u` by the fused kernel against f64 on the host and the tensor ops.
    fn check_silu<B: Backend>(silu_tol: f32) {
        let device = Default::default();
        for (rows, n) in [(1, 5), (3, 300), (2, 1030)] {
            let g = Tensor::<B, 2>::random([rows, n], Distribution::Normal(0.0, 3.0), &device);
            let u = Tensor::<B, 2>::random([rows, n], Distribution::Normal(0.0, 1.0), &device);
            let want = burn::tensor::activation::silu(g.clone()) * u.clone();
            let (g2, u2) = (g.clone(), u.clone());
            let got = super::silu_mul(g, u).unwrap_or_else(|_| panic!("silu kernel not routed"));
            // Against f64 on the host: lavapipe's f32 `exp` is itself off by up to ~5e-4
            // (relative), for Burn's `silu` as much as for the kernel.
            let host = |t: Tensor<B, 2>| -> Vec<f64> {
                t.cast(DType::F32)
                    .into_data()
                    .iter::<f32>()
                    .map(f64::from)
                    .collect()
            };
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
        check_silu::<burn::backend::Wgpu>(1e-3);
    }

    #[test]
    fn fused_silu_mul_matches_f64_wgpu_f16() {
        check_silu::<burn_cubecl::CubeBackend<cubecl::wgpu::WgpuRuntime, half::f16, i32, u32>>(2e-2);
    }

    /// RoPE and the cache write by the fused kernel against f64 on the host: a grouped-query
    /// layout (4 query heads, 2 key/value heads), two sequences of 3 new tokens after 5 cached
    /// ones; cache positions outside `5..8` keep their sentinel.
    fn check_rope<B: Backend>(tol: f64) {
        let device = Default::default();
        let (b, n, h, kv, hd, cap, start) = (2, 3, 4, 2, 8, 10, 5);
        let normal = Distribution::Normal(0.0, 1.5);
        let q = Tensor::<B, 2>::random([b * n, h * hd], normal, &device);
        let k = Tensor::<B, 2>::random([b * n, kv * hd], normal, &device);
        let v = Tensor::<B, 2>::random([b * n, kv * hd], normal, &device);
        let (cos, sin) = super::super::layers::rope_tables::<B>(start, n, hd, 10_000.0, &device);
        let host = |t: Tensor<B, 2>| -> Vec<f64> {
            t.cast(DType::F32)
                .into_data()
                .iter::<f32>()
                .map(f64::from)
                .collect()
        };
        let (qh, kh, vh) = (host(q.clone()), host(k.clone()), host(v.clone()));
        let sentinel = 7.0;
        let cache = (
            Tensor::<B, 4>::full([b, kv, cap, hd], sentinel, &device),
            Tensor::<B, 4>::full([b, kv, cap, hd], sentinel, &device),
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
        let host4 = |t: Tensor<B, 4>| -> Vec<f64> {
            t.cast(DType::F32)
                .into_data()
                .iter::<f32>()
                .map(f64::from)
                .collect()
        };
        let (qo, ko, vo) = (host4(qo), host4(ko), host4(vo));
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

    #[test]
    fn autodiff_backends_keep_the_tensor_op_path_wgpu() {
        type A = burn::backend::Autodiff<burn::backend::Wgpu>;
        let device = Default::default();
        let x = Tensor::<A, 2>::ones([2, 4], &device);
        let gain = Tensor::<A, 1>::ones([4], &device);
        assert!(super::rms_norm(x, &gain, 1e-6).is_err());
    }
}
