//! The fused nearest-code kernels (exact f32 accumulation).
//!
//! [`nearest_partial_kernel`] works like a register-tiled matrix product that never stores its
//! product: a cube owns `BQ = tq · rq` queries and a range of codes; per step it stages a
//! `BQ × dt` slice of the queries and a `BK × dt` slice of the codes (`BK = tk · rk`) in shared
//! memory, and each unit accumulates an `rq × rk` block of dot products in registers, over the
//! dimensions in ascending order. After each code tile every unit folds its block into a running
//! `(best score, best id)` per query; at the end the `tk` units that share a query reduce their
//! bests through shared memory. Score: `bias[k] + alpha · q·c_k` (`‖c‖² − 2q·c` for squared L2,
//! `−q·ĉ` for cosine). Only a strictly smaller score replaces a best, and ids are visited in
//! ascending order within a unit and reduced with the lower id winning, so exact ties give the
//! lowest id. No `N × K` matrix is written.
//!
//! When there are too few queries to fill the device, the codes are split over `splits` cubes
//! per query block (`CUBE_POS_Y`); each writes a partial best and
//! [`nearest_reduce_kernel`] picks the winner across splits.

use cubecl::prelude::*;

/// Tiling of the fused kernel, chosen per launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tiling {
    /// Units along queries per cube.
    pub tq: usize,
    /// Units along codes per cube.
    pub tk: usize,
    /// Queries per unit (a multiple of 4).
    pub rq: usize,
    /// Codes per unit and code tile (a multiple of 4).
    pub rk: usize,
    /// Dimensions staged per step.
    pub dt: usize,
}

impl Tiling {
    /// Queries per cube.
    pub fn block_q(&self) -> usize {
        self.tq * self.rq
    }

    /// Codes per tile.
    pub fn block_k(&self) -> usize {
        self.tk * self.rk
    }

    /// Units per cube.
    pub fn units(&self) -> usize {
        self.tq * self.tk
    }

    /// Checks that every size is at least 1, that `rq` and `rk` are multiples of 4 (units read
    /// 4 rows per shared-memory load) and that a cube has at most 1024 units.
    pub fn validate(&self) -> Result<(), String> {
        let sizes = [self.tq, self.tk, self.rq, self.rk, self.dt];
        if sizes.contains(&0)
            || !self.rq.is_multiple_of(4)
            || !self.rk.is_multiple_of(4)
            || self.units() > 1024
        {
            return Err(format!(
                "invalid tiling {self:?}: sizes must be >= 1, rq and rk multiples of 4, tq·tk <= 1024"
            ));
        }
        Ok(())
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn nearest_partial_kernel<F: Float, I: Int>(
    queries: &Tensor<F>,
    codes: &Tensor<F>,
    bias: &Tensor<f32>,
    best_score: &mut Tensor<f32>,
    best_id: &mut Tensor<I>,
    alpha: f32,
    k_per_split: usize,
    #[comptime] tq: usize,
    #[comptime] tk: usize,
    #[comptime] rq: usize,
    #[comptime] rk: usize,
    #[comptime] dt: usize,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let n = queries.shape(0);
    let d = queries.shape(1);
    let k = codes.shape(0);
    let units = tq * tk;
    let bq = tq * rq;
    let bk = tk * rk;
    let unit = UNIT_POS_X as usize;
    let uq = unit / tk;
    let uk = unit % tk;
    let q0 = CUBE_POS_X as usize * bq;
    let split = CUBE_POS_Y as usize;
    let k_begin = split * k_per_split;
    let mut k_end = k_begin + k_per_split;
    if k_end > k {
        k_end = k;
    }

    // Rows padded by one float so that the transposed stores of `stage` spread over banks.
    // Shared tiles hold vectors of 4 consecutive rows at one dimension, `tile[dd][group]`, each
    // dimension's row of groups padded by one vector so that the stores of `stage` spread over
    // banks; a unit reads its 4-row groups with one 128-bit load each.
    let gq = bq / 4;
    let gk = bk / 4;
    let mut qs = SharedMemory::<Vector<f32, Const<4>>>::new(dt * (gq + 1));
    let mut cs = SharedMemory::<Vector<f32, Const<4>>>::new(dt * (gk + 1));
    let mut acc = Array::<f32>::new(rq * rk);
    let mut a = Array::<f32>::new(rq);
    let mut b = Array::<f32>::new(rk);
    let mut best = Array::<f32>::new(rq);
    let mut best_k = Array::<u32>::new(rq);
    #[unroll]
    for i in 0..rq {
        // A valid id even if every score overflows (inputs are checked finite beforehand).
        best[i] = f32::max_value();
        best_k[i] = k_begin as u32;
    }

    // Steps walk (code tile, dimension tile) pairs; the next step's slices are fetched from
    // global memory into registers while the current step computes (double buffering).
    let d_tiles = d.div_ceil(dt);
    let k_tiles = (k_end - k_begin).div_ceil(bk);
    let steps = k_tiles * d_tiles;
    let fq = (gq * dt).div_ceil(units);
    let fc = (gk * dt).div_ceil(units);
    let mut next_q = Array::<Vector<f32, Const<4>>>::new(fq);
    let mut next_c = Array::<Vector<f32, Const<4>>>::new(fc);
    fetch::<F>(queries, &mut next_q, q0, n, 0, d, gq, dt, units, unit);
    fetch::<F>(codes, &mut next_c, k_begin, k_end, 0, d, gk, dt, units, unit);
    #[unroll]
    for x in 0..rq * rk {
        acc[x] = 0.0f32;
    }
    for step in 0..steps {
        let kt = step / d_tiles;
        let t = step % d_tiles;
        stage(&mut qs, &next_q, gq, dt, units, unit);
        stage(&mut cs, &next_c, gk, dt, units, unit);
        sync_cube();
        if step + 1 < steps {
            let nk = (step + 1) / d_tiles;
            let nd = ((step + 1) % d_tiles) * dt;
            fetch::<F>(queries, &mut next_q, q0, n, nd, d, gq, dt, units, unit);
            fetch::<F>(
                codes,
                &mut next_c,
                k_begin + nk * bk,
                k_end,
                nd,
                d,
                gk,
                dt,
                units,
                unit,
            );
        }
        #[unroll]
        for dd in 0..dt {
            unpack(&qs, &mut a, dd * (gq + 1) + uq, tq, rq);
            unpack(&cs, &mut b, dd * (gk + 1) + uk, tk, rk);
            #[unroll]
            for i in 0..rq {
                #[unroll]
                for j in 0..rk {
                    acc[i * rk + j] += a[i] * b[j];
                }
            }
        }
        sync_cube();
        if t + 1 == d_tiles {
            // Fold this code tile into the running bests; this unit's codes ascend with j.
            let k0 = k_begin + kt * bk;
            #[unroll]
            for j in 0..rk {
                let kk = k0 + 4 * (uk + (j / 4) * tk) + j % 4;
                if kk < k_end {
                    let bias_k = bias[kk];
                    #[unroll]
                    for i in 0..rq {
                        let score = bias_k + alpha * acc[i * rk + j];
                        if score < best[i] {
                            best[i] = score;
                            best_k[i] = kk as u32;
                        }
                    }
                }
            }
            #[unroll]
            for x in 0..rq * rk {
                acc[x] = 0.0f32;
            }
        }
    }

    // Reduce over the tk units that share each query: lowest score, then lowest id.
    let mut red_s = SharedMemory::<f32>::new(bq * tk);
    let mut red_k = SharedMemory::<u32>::new(bq * tk);
    #[unroll]
    for i in 0..rq {
        let qi = 4 * (uq + (i / 4) * tq) + i % 4;
        red_s[qi * tk + uk] = best[i];
        red_k[qi * tk + uk] = best_k[i];
    }
    sync_cube();
    #[unroll]
    for step in 0..bq.div_ceil(units) {
        let qi = step * units + unit;
        let row = q0 + qi;
        if qi < bq && row < n {
            let mut s = red_s[qi * tk];
            let mut id = red_k[qi * tk];
            #[unroll]
            for u in 1..tk {
                let s2 = red_s[qi * tk + u];
                let id2 = red_k[qi * tk + u];
                if s2 < s || (s2 == s && id2 < id) {
                    s = s2;
                    id = id2;
                }
            }
            best_score[split * n + row] = s;
            best_id[split * n + row] = I::cast_from(id);
        }
    }
}

/// Loads this unit's share of `src[row0 .. row0 + 4·groups, d0 .. d0+dt]` (zero outside
/// `row_end` and `d`) into registers as vectors of 4 consecutive rows at one dimension; slot
/// `e = step · units + unit` is group `e / dt`, dimension `e % dt`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn fetch<F: Float>(
    src: &Tensor<F>,
    regs: &mut Array<Vector<f32, Const<4>>>,
    row0: usize,
    row_end: usize,
    d0: usize,
    d: usize,
    #[comptime] groups: usize,
    #[comptime] dt: usize,
    #[comptime] units: usize,
    unit: usize,
) {
    #[unroll]
    for step in 0..(groups * dt).div_ceil(units) {
        let e = step * units + unit;
        let dd = d0 + e % dt;
        let mut v = Vector::<f32, Const<4>>::empty();
        #[unroll]
        for x in 0..4usize {
            let row = row0 + 4 * (e / dt) + x;
            let mut val = 0.0f32;
            if e < groups * dt && row < row_end && dd < d {
                val = f32::cast_from(src[row * d + dd]);
            }
            v[x] = val;
        }
        regs[step] = v;
    }
}

/// Stores the registers of [`fetch`] into shared memory as `tile[dd][group]`, rows of
/// `groups + 1` vectors.
#[cube]
fn stage(
    tile: &mut SharedMemory<Vector<f32, Const<4>>>,
    regs: &Array<Vector<f32, Const<4>>>,
    #[comptime] groups: usize,
    #[comptime] dt: usize,
    #[comptime] units: usize,
    unit: usize,
) {
    #[unroll]
    for step in 0..(groups * dt).div_ceil(units) {
        let e = step * units + unit;
        if e < groups * dt {
            tile[(e % dt) * (groups + 1) + e / dt] = regs[step];
        }
    }
}

/// Reads `count / 4` vectors `tile[first + v · stride]` into `out[4v .. 4v + 4]`: a unit's
/// rows of one staged dimension, one 128-bit shared-memory load per 4 rows.
#[cube]
fn unpack(
    tile: &SharedMemory<Vector<f32, Const<4>>>,
    out: &mut Array<f32>,
    first: usize,
    #[comptime] stride: usize,
    #[comptime] count: usize,
) {
    #[unroll]
    for v in 0..count / 4 {
        let vec = tile[first + v * stride];
        #[unroll]
        for x in 0..4usize {
            out[v * 4 + x] = vec[x];
        }
    }
}

/// Picks, per query, the best of the `splits` partial results (earlier split wins ties, and
/// splits cover ascending code ranges, so the lowest id wins).
#[cube(launch)]
pub(crate) fn nearest_reduce_kernel<I: Int>(
    best_score: &Tensor<f32>,
    best_id: &Tensor<I>,
    out: &mut Tensor<I>,
    splits: usize,
    #[define(I)] _dtype: StorageType,
) {
    let n = out.shape(0);
    let row = ABSOLUTE_POS;
    if row < n {
        let mut s = best_score[row];
        let mut id = best_id[row];
        for split in 1..splits {
            let s2 = best_score[split * n + row];
            if s2 < s {
                s = s2;
                id = best_id[split * n + row];
            }
        }
        out[row] = id;
    }
}
