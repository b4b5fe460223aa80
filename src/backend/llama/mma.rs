//! The few-row projection on the matrix units: `y [m, n] = x [m, k] · wᵀ` for `m ≤ 16` rows
//! (decode steps of up to 16 sequences) with `w [n, k]` in HF's `[out, in]` layout, f16 or
//! bf16, by `m16n8k16` `mma` instructions with f32 accumulators.
//!
//! Decoding reads every weight once per step, so the projection is bound by memory bandwidth;
//! the CUDA-core kernel ([`super::fused`]'s `skinny_linear_kernel`) keeps `m · r` f32
//! accumulators per unit and converts every weight to f32, which at 16 rows costs registers
//! and instructions, not bytes (BENCHMARKS.md run 3: 10–13 % of HBM bandwidth at batch 16).
//! Here the `x` rows are the `mma`'s 16 rows (zeros past `m`) and each warp owns `8 · nt`
//! outputs: per 32 elements of `k` a lane loads one 16-byte vector of each of its weight rows and
//! of its two `x` rows, and the warp issues `2 · nt` `mma`s. The order of `k` inside a 32-element
//! chunk is permuted (lane `(g, t)` holds elements `8t .. 8t + 8` of the chunk, which the `mma`
//! reads as its logical `k` `2t, 2t + 1, 2t + 8, 2t + 9` in two steps) the same way for `x` and
//! `w`, so the dot products are unchanged. The warps of a cube split `k` (interleaved 32-element
//! chunks) and add their accumulators through shared memory at the end.
//!
//! The gated form computes `silu(x · w_gateᵀ) · (x · w_upᵀ)` in one launch (LLaMA's SwiGLU
//! before its down projection): each warp takes the same outputs of both weights, so the `x`
//! loads serve both, and the two sums meet in f32 before the one rounding (the tensor-op path
//! rounds each projection to the float type first, then applies `silu` and the product).

use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::cmma::MmaDefinition;
use cubecl::prelude::*;

/// Geometry of one launch: outputs per warp in tiles of 8 (`nt`), warps per cube splitting `k`
/// and 32-element chunks per warp whose loads are issued together (`unroll`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub nt: usize,
    pub warps: usize,
    pub unroll: usize,
}

/// See the module docs. `x`, `w`, `w2` contiguous, read as 8-element vectors (`k % 32 == 0`);
/// `y` contiguous `[m, n]`; the cube is `[32, warps]`. `hi`: whether `m > 8` (rows 8–15 of the
/// `mma` are all zeros otherwise and are not loaded). `gated`: `y = silu(x·wᵀ) · (x·w2ᵀ)` (`w2`
/// shaped like `w`), else `y = x·wᵀ` (`w2` is not read).
#[cube(launch_unchecked)]
fn skinny_mma_kernel<F: Float, N: Size>(
    x: &Tensor<Vector<F, N>>,
    w: &Tensor<Vector<F, N>>,
    w2: &Tensor<Vector<F, N>>,
    y: &mut Tensor<F>,
    #[comptime] hi: bool,
    #[comptime] gated: bool,
    #[comptime] nt: usize,
    #[comptime] warps: usize,
    #[comptime] unroll: usize,
    #[define(F)] _dtype: StorageType,
) {
    let m = y.shape(0);
    let n = w.shape(0);
    let kv = w.shape(1) / w.vector_size();
    let chunks = kv / 4;
    let lane = UNIT_POS_X as usize;
    let warp = UNIT_POS_Y as usize;
    let g = lane / 4;
    let t = lane % 4;
    let n0 = CUBE_POS_X as usize * nt * 8;
    let def = MmaDefinition::<F, F, f32>::new(16usize, 8usize, 16usize);
    let zero = Vector::<F, N>::new(F::new(0.0));

    // Weights read per warp: `w`, and `w2` when gated.
    let nw = comptime!(if gated { 2 } else { 1 });
    // Accumulators of tile j of weight i at `i·nt + j`: rows g (vector 0) and g + 8 (vector 1),
    // outputs 2t, 2t + 1.
    let mut acc = Sequence::<Array<Vector<f32, Const<2>>>>::new();
    #[unroll]
    for _ in 0..nw * nt {
        let mut a = Array::<Vector<f32, Const<2>>>::new(2usize);
        a[0] = Vector::<f32, Const<2>>::new(0.0f32);
        a[1] = Vector::<f32, Const<2>>::new(0.0f32);
        acc.push(a);
    }
    // Weight rows of this lane (past `n`: row 0, a valid address, never written).
    let mut rows = Array::<usize>::new(nt);
    #[unroll]
    for j in 0..nt {
        let r = n0 + j * 8 + g;
        rows[j] = select(r < n, r, 0) * kv;
    }
    let lo_ok = g < m;
    let hi_ok = g + 8 < m;
    let xlo = select(lo_ok, g, 0) * kv;
    let xhi = select(hi_ok, g + 8, 0) * kv;

    let iters = chunks.div_ceil(warps * unroll);
    let mut wv = Array::<Vector<F, N>>::new(unroll * nt * nw);
    let mut xl = Array::<Vector<F, N>>::new(unroll);
    let mut xh = Array::<Vector<F, N>>::new(unroll);
    for it in 0..iters {
        // Every load of `unroll` chunks first, branch-free, so that they are in flight together.
        #[unroll]
        for u in 0..unroll {
            let c = (it * unroll + u) * warps + warp;
            let ok = c < chunks;
            let col = select(ok, c * 4 + t, 0);
            #[unroll]
            for j in 0..nt {
                wv[u * nt * nw + j] = select(ok, w[rows[j] + col], zero);
                if comptime!(gated) {
                    wv[u * nt * nw + nt + j] = select(ok, w2[rows[j] + col], zero);
                }
            }
            xl[u] = select(ok && lo_ok, x[xlo + col], zero);
            if comptime!(hi) {
                xh[u] = select(ok && hi_ok, x[xhi + col], zero);
            } else {
                xh[u] = zero;
            }
        }
        #[unroll]
        for u in 0..unroll {
            #[unroll]
            for s in 0..2usize {
                let mut af = Array::<Vector<F, Const<2>>>::new(4usize);
                af[0] = pair::<F, N>(xl[u], 4 * s);
                af[1] = pair::<F, N>(xh[u], 4 * s);
                af[2] = pair::<F, N>(xl[u], 4 * s + 2);
                af[3] = pair::<F, N>(xh[u], 4 * s + 2);
                #[unroll]
                for j in 0..nt * nw {
                    let mut bf = Array::<Vector<F, Const<2>>>::new(2usize);
                    bf[0] = pair::<F, N>(wv[u * nt * nw + j], 4 * s);
                    bf[1] = pair::<F, N>(wv[u * nt * nw + j], 4 * s + 2);
                    def.execute_inplace(&af, &bf, acc.index_mut(j));
                }
            }
        }
    }

    // The warps' partial sums through shared memory: slot (warp, weight·tile, row, output).
    let tile = 16 * 8;
    let mut red = SharedMemory::<f32>::new(warps * nw * nt * tile);
    #[unroll]
    for j in 0..nw * nt {
        let a = acc.index(j);
        #[unroll]
        for half in 0..2usize {
            #[unroll]
            for c in 0..2usize {
                red[(warp * nw * nt + j) * tile + (g + 8 * half) * 8 + 2 * t + c] = a[half][c];
            }
        }
    }
    sync_cube();
    let unit = warp * 32 + lane;
    let per_cube = nt * tile;
    for p in 0..per_cube.div_ceil(warps * 32) {
        let i = p * warps * 32 + unit;
        if i < per_cube {
            let j = i / tile;
            let row = (i % tile) / 8;
            let o = n0 + j * 8 + i % 8;
            if row < m && o < n {
                let mut total = 0.0f32;
                for wi in 0..warps {
                    total += red[wi * nw * per_cube + i];
                }
                if comptime!(gated) {
                    let mut up = 0.0f32;
                    for wi in 0..warps {
                        up += red[(wi * nw + 1) * per_cube + i];
                    }
                    total = total / (1.0f32 + (-total).exp()) * up;
                }
                y[row * n + o] = F::cast_from(total);
            }
        }
    }
}

/// Elements `e`, `e + 1` of `v` as an `mma` register.
#[cube]
fn pair<F: Float, N: Size>(v: Vector<F, N>, #[comptime] e: usize) -> Vector<F, Const<2>> {
    let mut p = Vector::<F, Const<2>>::empty();
    p[0] = v[e];
    p[1] = v[e + 1];
    p
}

/// The geometry of a launch: `AR_REFINE_SKINNY_MMA=nt,warps,unroll` in the environment (read
/// once) for measuring, else the default (see [`launch`]; also for values out of range);
/// `AR_REFINE_SKINNY_MMA=0` turns the kernel off (the CUDA-core kernel runs).
fn geometry() -> Option<Geometry> {
    static SET: std::sync::OnceLock<Option<Geometry>> = std::sync::OnceLock::new();
    *SET.get_or_init(|| {
        let default = Geometry {
            nt: 2,
            warps: 16,
            unroll: 2,
        };
        let Ok(v) = std::env::var("AR_REFINE_SKINNY_MMA") else {
            return Some(default);
        };
        if v.trim() == "0" {
            return None;
        }
        let p: Vec<usize> = v.split(',').filter_map(|s| s.trim().parse().ok()).collect();
        match p[..] {
            // At most 48 tile-warps: the gated form's shared memory, `warps · 2 · nt · 512` bytes,
            // stays within the 48 KB every CUDA device gives a cube.
            [nt, warps, unroll]
                if (1..=8).contains(&nt)
                    && (1..=16).contains(&warps)
                    && (1..=8).contains(&unroll)
                    && nt * warps <= 48 =>
            {
                Some(Geometry { nt, warps, unroll })
            }
            _ => Some(default),
        }
    })
}

/// Whether `client`'s device has the `m16n8k16` `mma` for `dtype` (f16 or bf16) with f32
/// accumulators.
fn has_mma<R: CubeRuntime>(client: &cubecl::client::ComputeClient<R>, dtype: burn::tensor::DType) -> bool {
    use burn::tensor::DType;
    let ty = match dtype {
        DType::F16 => half::f16::cube_type(),
        DType::BF16 => half::bf16::cube_type(),
        _ => return false,
    };
    client
        .features()
        .matmul
        .mma
        .contains(&cubecl::features::MmaConfig {
            a_type: ty,
            b_type: ty,
            cd_type: f32::cube_type(),
            m: 16,
            n: 8,
            k: 16,
        })
}

/// Whether [`launch`] and [`launch_gated`] run for `m` rows of `k` elements of type `dtype` on
/// `client`'s device: the device has the `mma` for the type, `1 ≤ m ≤ 16`, `k` is a multiple of
/// 32 and `AR_REFINE_SKINNY_MMA` is not `0`.
pub(crate) fn available<R: CubeRuntime>(
    client: &cubecl::client::ComputeClient<R>,
    dtype: burn::tensor::DType,
    m: usize,
    k: usize,
) -> bool {
    (1..=16).contains(&m) && k.is_multiple_of(32) && geometry().is_some() && has_mma(client, dtype)
}

/// `x [m, k] · wᵀ` (`w [n, k]`, both contiguous, one float type) into a new `[m, n]` tensor on
/// the matrix units, when the device has the `mma` for the type, `1 ≤ m ≤ 16` and `k` is a
/// multiple of 32; `None` otherwise (the caller runs the CUDA-core kernel). Default geometry:
/// 2 tiles of 8 outputs per warp, 16 warps per cube splitting `k`, 2 chunks of 32 in flight per
/// warp — the fastest of eight at the 7B shapes on an H200, at batch 1 and 16
/// (`docs/benchmarks/gpu-speed/gpu-speed-v8-mma-sweep.jsonl`, BENCHMARKS.md run 8).
pub(crate) fn launch<R: CubeRuntime>(x: &CubeTensor<R>, w: &CubeTensor<R>) -> Option<CubeTensor<R>> {
    run(x, w, None)
}

/// `silu(x · w_gateᵀ) · (x · w_upᵀ)` → `[m, n]` (both weights `[n, k]`) in one launch, under
/// the conditions of [`launch`]; `None` otherwise.
pub(crate) fn launch_gated<R: CubeRuntime>(
    x: &CubeTensor<R>,
    gate: &CubeTensor<R>,
    up: &CubeTensor<R>,
) -> Option<CubeTensor<R>> {
    if gate.meta.shape() != up.meta.shape() || gate.dtype != up.dtype {
        return None;
    }
    run(x, gate, Some(up))
}

fn run<R: CubeRuntime>(
    x: &CubeTensor<R>,
    w: &CubeTensor<R>,
    up: Option<&CubeTensor<R>>,
) -> Option<CubeTensor<R>> {
    let (m, k) = (x.meta.shape()[0], x.meta.shape()[1]);
    let n = w.meta.shape()[0];
    if x.dtype != w.dtype || !available(&x.client, x.dtype, m, k) {
        return None;
    }
    let geo = geometry()?;
    let out = crate::backend::cube::empty(x, [m, n], x.dtype);
    let per_cube = geo.nt * 8;
    // SAFETY: `w` (and `up`, shaped like it) is read at rows `min(o, 0 if o ≥ n)` < n and vector
    // `c·4 + t < k/8` (index 0 past the last chunk), `x` at rows `< m` (row 0 otherwise) and the
    // same vectors; all are contiguous `[·, k]` read as 8-element vectors and 8 divides `k`. `y`
    // is written at `row·n + o` only for `row < m`, `o < n`. Shared memory has
    // `warps · (1 or 2) · nt · 128` entries, indexed below that (`warp < warps`, the cube is
    // `[32, warps]`).
    unsafe {
        skinny_mma_kernel::launch_unchecked::<R>(
            &x.client.clone(),
            CubeCount::Static(n.div_ceil(per_cube) as u32, 1, 1),
            CubeDim::new_2d(32, geo.warps as u32),
            8,
            x.clone().into_tensor_arg(),
            w.clone().into_tensor_arg(),
            up.unwrap_or(w).clone().into_tensor_arg(),
            out.clone().into_tensor_arg(),
            m > 8,
            up.is_some(),
            geo.nt,
            geo.warps,
            geo.unroll,
            x.dtype.into(),
        );
    }
    Some(out)
}
