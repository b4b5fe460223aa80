//! The tensor-op nearest-code search: `‖c‖² − 2e·c` (or the negated cosine) per chunk of
//! queries, then the lowest index among the exact minima.

use crate::backend::ArBackend;
use burn::tensor::{Int, Tensor};

use super::codebook::{Codebook, Metric, NORM_EPS};

/// Temporaries per query row and code: the scores, the equality mask and the candidate ids.
const BYTES_PER_SCORE: usize = 12;

/// Rows per chunk so that the `[rows, K]` temporaries stay within `budget` bytes.
pub(crate) fn chunk_rows(budget: usize, k: usize) -> usize {
    (budget / (k * BYTES_PER_SCORE).max(1)).max(1)
}

/// `queries` `[N, D]` (already validated) → ids `[N]`.
pub(crate) fn nearest_rows<B: ArBackend>(book: &Codebook<B>, queries: Tensor<B, 2>) -> Tensor<B, 1, Int> {
    let [n, _] = queries.dims();
    let k = book.size();
    let device = queries.device();
    let rows = chunk_rows(book.memory_budget(), k);
    // Candidate ids [1, K]; non-minimal entries are replaced by K so that the int minimum is the
    // lowest index among the exact minima, whatever the backend's argmin does with ties.
    let ids = Tensor::<B, 1, Int>::arange(0..k as i64, &device).reshape([1, k]);
    let search_t = book.search().clone().transpose(); // [D, K]
    let mut out = Vec::with_capacity(n.div_ceil(rows));
    let mut start = 0;
    while start < n {
        let len = rows.min(n - start);
        let q = queries.clone().narrow(0, start, len);
        let scores = match book.metric() {
            Metric::SquaredL2 => book.sq_norms().clone() - q.matmul(search_t.clone()).mul_scalar(2.0),
            Metric::Cosine => {
                let norm = q.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(NORM_EPS);
                (q / norm).matmul(search_t.clone()).neg()
            }
        };
        let best = scores.clone().min_dim(1); // [len, 1]
        let not_best = scores.equal(best).bool_not();
        let cand = ids.clone().expand([len, k]).mask_fill(not_best, k as i64);
        // Clamp: a row whose scores all overflowed to NaN has no minimum; it maps to K - 1
        // rather than to an out-of-range id (inputs are checked finite before this point).
        out.push(cand.min_dim(1).clamp_max(k as i64 - 1).reshape([len]));
        start += len;
    }
    Tensor::cat(out, 0)
}
