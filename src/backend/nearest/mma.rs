//! The matrix-unit nearest-code kernel: TF32 `mma` dot products, then an exact f32 decision.
//!
//! [`nearest_mma_kernel`] has the structure of [`super::kernel::nearest_partial_kernel`] (a cube
//! owns `BQ` queries and a range of codes, stages `BQ × 16h` and `BK × 16h` slices in shared
//! memory per step and never writes the `N × K` product), but the dot products run on the matrix
//! units: each warp owns `16·mq` queries × `8·nk` codes of a tile as `m16n8k8` TF32 `mma`
//! fragments, whose accumulators start at `bias/alpha` so that they end as `score/alpha`.
//!
//! TF32 keeps 10 mantissa bits, so its scores are approximate. Each lane keeps, per query it
//! holds, its two best approximate codes (with ids) and its third-best approximate score (no
//! id). At the end, per query (one warp each):
//! 1. the kept candidates within `2E` of the best approximate score are re-scored exactly in
//!    f32, and the lowest score wins (lowest id on exact ties);
//! 2. every code that was not kept scores at least `T − E`, where `T` is the lowest third-best
//!    approximate score of all lanes; if `T − E` is not above the winner's exact score, the cube
//!    scans the query's code range exactly (the fallback).
//!
//! `E` bounds `|approximate − exact f32 score|` for the query: TF32 rounding of both operands
//! (round to nearest when staged, `2⁻¹¹` relative each), the tensor cores' accumulation of at
//! most `D + 8` terms, and the exact path's own f32 rounding, with a margin of 1.5. So the id
//! returned is the exact f32 argmin whenever no fallback ran, and the fallback computes it
//! directly otherwise. On uniform random data the fallback almost never runs (`BENCHMARKS.md`);
//! on clustered codebooks it runs for the queries whose candidates are closer than `E`.

use cubecl::cmma::MmaDefinition;
use cubecl::prelude::*;

/// Tiling of the matrix-unit kernel, chosen per launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MmaTiling {
    /// Warps along queries per cube.
    pub wq: usize,
    /// Warps along codes per cube.
    pub wk: usize,
    /// 16-query `mma` tiles per warp.
    pub mq: usize,
    /// 8-code `mma` tiles per warp.
    pub nk: usize,
    /// 16-dimension groups staged per step (1 or 2).
    pub h: usize,
}

impl MmaTiling {
    /// The default for code dimension `d`: 8 warps as 2 × 4, each 64 queries × 32 codes
    /// (128 × 128 per cube), 32 dimensions per step (16 when `d ≤ 16`). Fastest of the eight
    /// tilings measured at D = 64 and 256 in `BENCHMARKS.md`.
    pub fn default_for(d: usize) -> Self {
        MmaTiling {
            wq: 2,
            wk: 4,
            mq: 4,
            nk: 4,
            h: if d <= 16 { 1 } else { 2 },
        }
    }

    /// Queries per cube.
    pub fn block_q(&self) -> usize {
        16 * self.wq * self.mq
    }

    /// Codes per tile.
    pub fn block_k(&self) -> usize {
        8 * self.wk * self.nk
    }

    /// Units per cube (32 per warp).
    pub fn units(&self) -> usize {
        32 * self.wq * self.wk
    }

    /// Checks sizes: all at least 1, `h` 1 or 2, at most 1024 units, and no more queries per
    /// cube than units (each unit decides at most one query).
    pub fn validate(&self) -> Result<(), String> {
        let sizes = [self.wq, self.wk, self.mq, self.nk];
        if sizes.contains(&0)
            || !(1..=2).contains(&self.h)
            || self.units() > 1024
            || self.block_q() > self.units()
        {
            return Err(format!(
                "invalid matrix-unit tiling {self:?}: sizes must be >= 1, h 1 or 2, \
                 32·wq·wk <= 1024 and 16·wq·mq <= 32·wq·wk"
            ));
        }
        Ok(())
    }
}

/// One cube: queries `CUBE_POS_X · BQ ..`, codes of split `CUBE_POS_Y`. Writes the exact score
/// and id of each query's best code in the split to `best_score`/`best_id[split · N + row]`.
/// `bounds` `[2]`: the largest code norm and the largest `|bias|`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn nearest_mma_kernel<F: Float, I: Int>(
    queries: &Tensor<F>,
    codes: &Tensor<F>,
    bias: &Tensor<f32>,
    bounds: &Tensor<f32>,
    best_score: &mut Tensor<f32>,
    best_id: &mut Tensor<I>,
    alpha: f32,
    k_per_split: usize,
    #[comptime] wq: usize,
    #[comptime] wk: usize,
    #[comptime] mq: usize,
    #[comptime] nk: usize,
    #[comptime] h: usize,
    #[comptime] halves: usize,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let n = queries.shape(0);
    let d = queries.shape(1);
    let k = codes.shape(0);
    let units = 32 * wq * wk;
    let bq = 16 * wq * mq;
    let bk = 8 * wk * nk;
    let vr = 4 * h;
    let slots = 4 * wk;
    let unit = UNIT_POS as usize;
    let lane = UNIT_POS_PLANE as usize;
    let warp = unit / 32;
    let wqi = warp / wk;
    let wki = warp % wk;
    let g = lane / 4;
    let t = lane % 4;
    let q0 = CUBE_POS_X as usize * bq;
    let split = CUBE_POS_Y as usize;
    let k_begin = split * k_per_split;
    let mut k_end = k_begin + k_per_split;
    if k_end > k {
        k_end = k;
    }
    let inv_alpha = 1.0f32 / alpha;
    let floor = -f32::max_value();
    let def = MmaDefinition::<tf32, tf32, f32>::new(16usize, 8usize, 8usize);

    let mut qs = SharedMemory::<Vector<f32, Const<4>>>::new(bq * vr);
    let mut cs = SharedMemory::<Vector<f32, Const<4>>>::new(bk * vr);
    // Accumulators, one array per tile (i, j) so that the `mma` updates it in place: rows g
    // (vector 0) and g + 8 (vector 1), columns 2t, 2t+1.
    let mut acc = Sequence::<Array<Vector<f32, Const<2>>>>::new();
    #[unroll]
    for _ in 0..mq * nk {
        acc.push(Array::<Vector<f32, Const<2>>>::new(2usize));
    }
    // Per query row held by this lane (x = 2i + half): its two best approximate values
    // (maximised: alpha < 0) with their ids, and the third-best value.
    let mut b1 = Array::<f32>::new(mq * 2);
    let mut b2 = Array::<f32>::new(mq * 2);
    let mut b3 = Array::<f32>::new(mq * 2);
    let mut id1 = Array::<u32>::new(mq * 2);
    let mut id2 = Array::<u32>::new(mq * 2);
    #[unroll]
    for x in 0..mq * 2 {
        b1[x] = floor;
        b2[x] = floor;
        b3[x] = floor;
        id1[x] = k_begin as u32;
        id2[x] = k_begin as u32;
    }

    let d_steps = d.div_ceil(16 * h);
    let k_tiles = (k_end - k_begin).div_ceil(bk);
    let steps = k_tiles * d_steps;
    let fq = (bq * vr).div_ceil(units);
    let fc = (bk * vr).div_ceil(units);
    let mut next_q = Array::<Vector<f32, Const<4>>>::new(fq);
    let mut next_c = Array::<Vector<f32, Const<4>>>::new(fc);
    fetch_rows::<F>(queries, &mut next_q, q0, n, 0, d, bq, vr, units, unit);
    fetch_rows::<F>(codes, &mut next_c, k_begin, k_end, 0, d, bk, vr, units, unit);
    for step in 0..steps {
        let kt = step / d_steps;
        let ds = step % d_steps;
        let kbase = k_begin + kt * bk + wki * 8 * nk;
        if ds == 0 {
            // Start every accumulator of the tile at bias/alpha (exact: alpha is -1 or -2);
            // codes past the range start at the floor and never win.
            #[unroll]
            for j in 0..nk {
                let kk = kbase + j * 8 + 2 * t;
                let mut init = Vector::<f32, Const<2>>::empty();
                #[unroll]
                for c in 0..2usize {
                    // Branch-free, so that the tile's bias loads are in flight together.
                    let ok = kk + c < k_end;
                    let b = bias[select(ok, kk + c, 0)];
                    init[c] = select(ok, b * inv_alpha, floor);
                }
                #[unroll]
                for i in 0..mq {
                    let tile = acc.index_mut(i * nk + j);
                    tile[0] = init;
                    tile[1] = init;
                }
            }
        }
        stage_rows(&mut qs, &next_q, bq, vr, h, units, unit);
        stage_rows(&mut cs, &next_c, bk, vr, h, units, unit);
        sync_cube();
        if step + 1 < steps {
            let nkt = (step + 1) / d_steps;
            let nd = ((step + 1) % d_steps) * 16 * h;
            fetch_rows::<F>(queries, &mut next_q, q0, n, nd, d, bq, vr, units, unit);
            fetch_rows::<F>(
                codes,
                &mut next_c,
                k_begin + nkt * bk,
                k_end,
                nd,
                d,
                bk,
                vr,
                units,
                unit,
            );
        }
        #[unroll]
        for gs in 0..h {
            // This lane's dimensions of the group, for rows g and g + 8 of each query tile.
            let mut av = Array::<Vector<f32, Const<4>>>::new(mq * 2);
            #[unroll]
            for i in 0..mq {
                let ra = wqi * 16 * mq + i * 16 + g;
                av[i * 2] = qs[swizzled(ra, gs * 4 + t, vr, h)];
                av[i * 2 + 1] = qs[swizzled(ra + 8, gs * 4 + t, vr, h)];
            }
            let mut bv = Array::<Vector<f32, Const<4>>>::new(nk);
            #[unroll]
            for j in 0..nk {
                bv[j] = cs[swizzled(wki * 8 * nk + j * 8 + g, gs * 4 + t, vr, h)];
            }
            // Half s covers dimensions 16·gs + 8s .. + 8 of the step (zeros past D); with
            // D <= 8 the second half is all zeros and is not computed. No branch in here, so
            // the compiler can interleave the mq · nk independent products.
            #[unroll]
            for s in 0..halves {
                #[unroll]
                for j in 0..nk {
                    let mut bf = Array::<Vector<tf32, Const<1>>>::new(2usize);
                    bf[0] = tf32_vec::<tf32>(bv[j][2 * s]);
                    bf[1] = tf32_vec::<tf32>(bv[j][2 * s + 1]);
                    #[unroll]
                    for i in 0..mq {
                        let mut af = Array::<Vector<tf32, Const<1>>>::new(4usize);
                        af[0] = tf32_vec::<tf32>(av[i * 2][2 * s]);
                        af[1] = tf32_vec::<tf32>(av[i * 2 + 1][2 * s]);
                        af[2] = tf32_vec::<tf32>(av[i * 2][2 * s + 1]);
                        af[3] = tf32_vec::<tf32>(av[i * 2 + 1][2 * s + 1]);
                        def.execute_inplace(&af, &bf, acc.index_mut(i * nk + j));
                    }
                }
            }
        }
        sync_cube();
        if ds + 1 == d_steps {
            // Fold the tile into this lane's bests; its codes ascend with (j, c).
            #[unroll]
            for j in 0..nk {
                #[unroll]
                for c in 0..2usize {
                    let kk = (kbase + j * 8 + 2 * t + c) as u32;
                    #[unroll]
                    for i in 0..mq {
                        #[unroll]
                        for half in 0..2usize {
                            let v = acc.index(i * nk + j)[half][c];
                            let x = i * 2 + half;
                            let above1 = v > b1[x];
                            b3[x] = max(b3[x], min(v, b2[x]));
                            if v > b2[x] {
                                b2[x] = select(above1, b1[x], v);
                                id2[x] = select(above1, id1[x], kk);
                            }
                            if above1 {
                                b1[x] = v;
                                id1[x] = kk;
                            }
                        }
                    }
                }
            }
        }
    }

    // Gather every lane's candidates per query row of the cube: slot (wki, t) holds two ids.
    let cands = 2 * slots;
    let mut m_v = SharedMemory::<f32>::new(bq * cands);
    let mut m_id = SharedMemory::<u32>::new(bq * cands);
    let mut m_b3 = SharedMemory::<f32>::new(bq * slots);
    #[unroll]
    for i in 0..mq {
        #[unroll]
        for half in 0..2usize {
            let qi = wqi * 16 * mq + i * 16 + half * 8 + g;
            let slot = wki * 4 + t;
            let x = i * 2 + half;
            m_v[qi * cands + 2 * slot] = b1[x];
            m_id[qi * cands + 2 * slot] = id1[x];
            m_v[qi * cands + 2 * slot + 1] = b2[x];
            m_id[qi * cands + 2 * slot + 1] = id2[x];
            m_b3[qi * slots + slot] = b3[x];
        }
    }
    sync_cube();

    // Decide each query (a warp per query, lanes splitting the dimensions): re-score the close
    // candidates exactly, flag the query for the exact scan when an unkept code might still
    // win. Values read from shared memory are the same in every lane, so branches on them are
    // uniform within the warp.
    let warps = wq * wk;
    let mut res_s = SharedMemory::<f32>::new(bq);
    let mut res_k = SharedMemory::<u32>::new(bq);
    let mut flag = SharedMemory::<u32>::new(bq);
    for m in 0..bq.div_ceil(warps) {
        let qi = m * warps + warp;
        let row = q0 + qi;
        if qi < bq {
            if row < n {
                let mut vmax = floor;
                #[unroll]
                for s in 0..cands {
                    vmax = max(vmax, m_v[qi * cands + s]);
                }
                let mut qq = 0.0f32;
                let mut dd = lane;
                while dd < d {
                    let x = f32::cast_from(queries[row * d + dd]);
                    qq += x * x;
                    dd += 32;
                }
                let qn = plane_sum(qq).sqrt();
                let e = error_bound(qn, bounds[0], bounds[1], alpha, d);
                let a_best = alpha * vmax;
                let mut sw = f32::max_value();
                let mut kw = k_begin as u32;
                for s in 0..cands {
                    if alpha * m_v[qi * cands + s] <= a_best + 2.0 * e {
                        let id = m_id[qi * cands + s];
                        let sc = warp_score::<F>(queries, codes, bias, row, id as usize, d, alpha, lane);
                        if sc < sw || (sc == sw && id < kw) {
                            sw = sc;
                            kw = id;
                        }
                    }
                }
                let mut tmin = f32::max_value();
                #[unroll]
                for s in 0..slots {
                    tmin = min(tmin, alpha * m_b3[qi * slots + s]);
                }
                if lane == 0 {
                    res_s[qi] = sw;
                    res_k[qi] = kw;
                    flag[qi] = select(tmin - e <= sw, 1u32, 0u32);
                }
            } else if lane == 0 {
                flag[qi] = 0u32;
            }
        }
    }
    sync_cube();

    // The fallback: an exact scan of the split's codes by the whole cube (a warp per code),
    // per flagged query.
    let mut red_s = SharedMemory::<f32>::new(warps);
    let mut red_k = SharedMemory::<u32>::new(warps);
    for qi in 0..bq {
        if flag[qi] == 1u32 {
            let r = q0 + qi;
            let mut s = f32::max_value();
            let mut kid = k_begin as u32;
            let iters = (k_end - k_begin).div_ceil(warps);
            for it in 0..iters {
                let kk = k_begin + it * warps + warp;
                if kk < k_end {
                    let sc = warp_score::<F>(queries, codes, bias, r, kk, d, alpha, lane);
                    if sc < s {
                        s = sc;
                        kid = kk as u32;
                    }
                }
            }
            if lane == 0 {
                red_s[warp] = s;
                red_k[warp] = kid;
            }
            sync_cube();
            if unit == 0 {
                let mut bs = red_s[0];
                let mut bid = red_k[0];
                #[unroll]
                for u in 1..warps {
                    let s2 = red_s[u];
                    let k2 = red_k[u];
                    if s2 < bs || (s2 == bs && k2 < bid) {
                        bs = s2;
                        bid = k2;
                    }
                }
                res_s[qi] = bs;
                res_k[qi] = bid;
            }
            sync_cube();
        }
    }

    let row = q0 + unit;
    if unit < bq && row < n {
        best_score[split * n + row] = res_s[unit];
        best_id[split * n + row] = I::cast_from(res_k[unit]);
    }
}

/// `E`: a bound on `|approximate − exact f32 score|` for a query of norm `qn` (see the module
/// documentation), with a margin of 1.5.
#[cube]
fn error_bound(qn: f32, max_code_norm: f32, max_bias: f32, alpha: f32, d: usize) -> f32 {
    let aa = -alpha; // alpha is -1 or -2
    let terms = f32::cast_from(d + 40);
    let dots = qn * max_code_norm;
    // TF32 operands rounded to nearest (2⁻¹¹ relative each, so 2⁻¹⁰ + 2⁻²² per product) and
    // tensor-core accumulation (2⁻²² per addition, on magnitudes up to max_bias/|alpha| +
    // |q|·|c|).
    let approx = aa * (dots * 9.77e-4 + terms * 2.384_185_8e-7 * (max_bias / aa + dots));
    // The exact path's f32 rounding (2⁻²³ per operation).
    let exact = terms * 1.192_092_9e-7 * (max_bias + aa * dots);
    1.5 * (approx + exact)
}

/// `bias[code] + alpha · q·c` in f32, computed by one warp: lane `l` sums dimensions
/// `l, l + 32, …` in ascending order, then the lanes' sums are added (`plane_sum`). Every lane
/// gets the result.
#[cube]
#[allow(clippy::too_many_arguments)]
fn warp_score<F: Float>(
    queries: &Tensor<F>,
    codes: &Tensor<F>,
    bias: &Tensor<f32>,
    row: usize,
    code: usize,
    d: usize,
    alpha: f32,
    lane: usize,
) -> f32 {
    let mut dot = 0.0f32;
    let mut dd = lane;
    while dd < d {
        dot += f32::cast_from(queries[row * d + dd]) * f32::cast_from(codes[code * d + dd]);
        dd += 32;
    }
    bias[code] + alpha * plane_sum(dot)
}

/// A TF32 fragment element holding `x` (already rounded to TF32 when staged).
#[cube]
fn tf32_vec<T: Float>(x: f32) -> Vector<T, Const<1>> {
    let mut v = Vector::<T, Const<1>>::empty();
    v[0] = T::reinterpret(x);
    v
}

/// `x` rounded to the nearest TF32 value (`T` is `tf32`), as f32.
#[cube]
fn round_tf32<T: Float>(x: f32) -> f32 {
    f32::cast_from(T::cast_from(x))
}

/// Shared-memory slot of vector `v` of staged row `row` (`vr` vectors a row). With two
/// 16-dimension groups a row, odd rows swap their halves so that the 128-bit loads of rows `g`
/// and `g + 1` in one quarter-warp hit different banks.
#[cube]
fn swizzled(row: usize, v: usize, #[comptime] vr: usize, #[comptime] h: usize) -> usize {
    row * vr + (v ^ ((row % h) * 4))
}

/// Loads this unit's share of `src[row0 .. row0 + rows, d0 .. d0 + 16h]` (zero outside
/// `row_end` and `d`) as vectors: slot `e = step · units + unit` is row `e / vr`, vector
/// `v = e % vr` (the same `v` for every step, as `vr` divides `units`), which holds dimensions
/// `16·(v/4) + v%4 + {0, 4, 8, 12}` of the step (so that lane `t` of an `mma` finds its
/// `k = t, t + 4` of both 8-dimension halves in one vector).
#[cube]
#[allow(clippy::too_many_arguments)]
fn fetch_rows<F: Float>(
    src: &Tensor<F>,
    regs: &mut Array<Vector<f32, Const<4>>>,
    row0: usize,
    row_end: usize,
    d0: usize,
    d: usize,
    #[comptime] rows: usize,
    #[comptime] vr: usize,
    #[comptime] units: usize,
    unit: usize,
) {
    let v = unit % vr;
    let first = d0 + 16 * (v / 4) + v % 4;
    let lead = unit / vr;
    #[unroll]
    for step in 0..(rows * vr).div_ceil(units) {
        let local = step * (units / vr) + lead;
        let row = row0 + local;
        let row_ok = local < rows && row < row_end;
        let base = row * d + first;
        let mut out = Vector::<f32, Const<4>>::empty();
        #[unroll]
        for x in 0..4usize {
            // Branch-free: every load reads a valid address (element 0 when out of range) and
            // nothing consumes it before `stage_rows`, so the loads of a step are all in flight
            // together.
            let ok = row_ok && first + 4 * x < d;
            let val = f32::cast_from(src[select(ok, base + 4 * x, 0)]);
            out[x] = select(ok, val, 0.0f32);
        }
        regs[step] = out;
    }
}

/// Stores the registers of [`fetch_rows`], rounded to TF32, into shared memory at their
/// swizzled slots.
#[cube]
fn stage_rows(
    tile: &mut SharedMemory<Vector<f32, Const<4>>>,
    regs: &Array<Vector<f32, Const<4>>>,
    #[comptime] rows: usize,
    #[comptime] vr: usize,
    #[comptime] h: usize,
    #[comptime] units: usize,
    unit: usize,
) {
    let v = unit % vr;
    let lead = unit / vr;
    #[unroll]
    for step in 0..(rows * vr).div_ceil(units) {
        let local = step * (units / vr) + lead;
        if local < rows {
            let raw = regs[step];
            let mut r = Vector::<f32, Const<4>>::empty();
            #[unroll]
            for x in 0..4usize {
                r[x] = round_tf32::<tf32>(raw[x]);
            }
            tile[swizzled(local, v, vr, h)] = r;
        }
    }
}
