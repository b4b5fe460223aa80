//! Nearest-neighbour decoding: refined embeddings → codebook ids.
//!
//! [`nearest_codes`] is the entry point; [`Codebook`] caches the per-codebook work so that
//! repeated decoding (the common case: one tokenizer, many images) does not redo it. With the
//! `wgpu` or `cuda` feature, `cube` holds the fused GPU kernel that `Codebook::nearest` uses on
//! those backends.

mod codebook;
#[cfg(feature = "cubecl")]
#[cfg_attr(docsrs, doc(cfg(any(feature = "wgpu", feature = "cuda"))))]
pub use crate::backend::nearest as cube;
mod reference;

#[cfg(all(test, feature = "wgpu", feature = "ndarray"))]
pub(crate) use codebook::kernel_dispatch;
pub use codebook::{Codebook, KernelPrecision, Metric, AUTO_MATRIX_UNITS_MIN_DIM, DEFAULT_MEMORY_BUDGET};

use crate::backend::ArBackend;
use burn::tensor::{Int, Tensor};

use crate::error::Result;

/// Snaps every embedding to its nearest codebook entry.
///
/// - `embeddings`: `[b, n, D]`
/// - `codebook`: `[K, D]`
/// - returns ids `[b, n]` in `0..K`
///
/// Squared L2 is computed as `‖c‖² − 2e·c` (the `‖e‖²` term does not change the argmin);
/// cosine as the dot product of unit vectors. Queries are processed in chunks whose `[rows, K]`
/// temporaries stay within `memory_budget` bytes (`None`: [`DEFAULT_MEMORY_BUDGET`]), so no
/// full `N × K` distance matrix is materialised. Exact ties resolve to the lowest index.
///
/// NaN or infinite input gives [`crate::Error::NonFinite`]; a wrong `D` gives
/// [`crate::Error::Shape`]. To decode many batches against one codebook, build a [`Codebook`]
/// once and call [`Codebook::nearest`].
///
/// ```
/// use ar_refine::{nearest_codes, Metric};
/// use burn::backend::NdArray;
/// use burn::tensor::Tensor;
/// let device = Default::default();
/// let book = Tensor::<NdArray, 2>::from_floats([[1.0, 0.0], [0.0, 1.0]], &device);
/// let e = Tensor::<NdArray, 3>::from_floats([[[0.2, 0.9], [5.0, 0.1]]], &device);
/// let ids = nearest_codes(e, book, Metric::Cosine, None).unwrap();
/// assert_eq!(ids.into_data().iter::<i64>().collect::<Vec<_>>(), vec![1, 0]);
/// ```
pub fn nearest_codes<B: ArBackend>(
    embeddings: Tensor<B, 3>,
    codebook: Tensor<B, 2>,
    metric: Metric,
    memory_budget: Option<usize>,
) -> Result<Tensor<B, 2, Int>> {
    let book =
        Codebook::new(codebook, metric)?.with_memory_budget(memory_budget.unwrap_or(DEFAULT_MEMORY_BUDGET));
    book.nearest(embeddings)
}
