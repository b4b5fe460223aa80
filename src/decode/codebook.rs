//! The codebook object: code vectors plus the derived tensors that nearest-code search needs,
//! computed once.

use crate::backend::ArBackend;
#[cfg(feature = "cubecl")]
use burn::tensor::DType;
use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::checks::{ensure_finite, ensure_ids_in, expect_dims, expect_non_empty};
use crate::error::{Error, Result};

/// The distance a vector quantizer uses to pick a code.
///
/// LVM's VQGAN (open-MUSE `vqgan-f16-8192-laion`) uses plain squared L2 on unnormalised codes
/// (open-MUSE `vqvae_muse.py`, `VectorQuantizer.compute_distances`: `‖z‖² + ‖e‖² − 2 z·e`,
/// then `argmin`); LlamaGen-style tokenizers use cosine (l2-normalised codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Metric {
    /// `‖e − c‖²`, the nearest code minimises it.
    #[default]
    SquaredL2,
    /// `1 − cos(e, c)`, the nearest code maximises the cosine similarity.
    Cosine,
}

/// How the fused GPU kernel computes its dot products (backends without the kernel ignore it).
///
/// Every choice gives the same ids: the exact f32 argmin of `‖c‖² − 2e·c` (or of the negated
/// cosine), lowest index on exact ties. `MatrixUnits` computes approximate scores on the matrix
/// units (TF32 `mma`, CUDA sm_80+), re-scores each query's close candidates in f32 and falls
/// back to an exact scan for any query whose winner the approximation cannot certify; on
/// devices without TF32 matrix units (wgpu, older GPUs) it runs the exact kernel. Which is
/// faster depends on `D` and the GPU (measurements in `BENCHMARKS.md`: there the matrix units
/// win at `D = 256`, the f32 kernel at `D ≤ 64`).
///
/// ```
/// use ar_refine::{Codebook, KernelPrecision, Metric};
/// use burn::backend::NdArray;
/// use burn::tensor::Tensor;
/// let codes = Tensor::<NdArray, 2>::from_floats([[0.0, 1.0], [1.0, 0.0]], &Default::default());
/// let book = Codebook::new(codes, Metric::SquaredL2).unwrap();
/// assert_eq!(book.kernel_precision(), KernelPrecision::Auto);
/// let book = book.with_kernel_precision(KernelPrecision::Exact);
/// assert_eq!(book.kernel_precision(), KernelPrecision::Exact);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum KernelPrecision {
    /// `MatrixUnits` when `D >= AUTO_MATRIX_UNITS_MIN_DIM` and the device has them,
    /// otherwise `Exact`.
    #[default]
    Auto,
    /// f32 FMAs for every dot product.
    Exact,
    /// TF32 matrix units for every dot product, then an exact f32 decision per query.
    MatrixUnits,
}

/// The smallest code dimension at which [`KernelPrecision::Auto`] uses the matrix units
/// (in `BENCHMARKS.md` slower than the f32 kernel at `D = 64`, faster at `D = 256`).
pub const AUTO_MATRIX_UNITS_MIN_DIM: usize = 128;

impl KernelPrecision {
    /// Whether a search over codes of dimension `d` should try the matrix units.
    pub fn wants_matrix_units(self, d: usize) -> bool {
        match self {
            KernelPrecision::Auto => d >= AUTO_MATRIX_UNITS_MIN_DIM,
            KernelPrecision::Exact => false,
            KernelPrecision::MatrixUnits => true,
        }
    }
}

/// Norms below this are treated as this when normalising (zero vectors stay finite).
pub(crate) const NORM_EPS: f64 = 1e-12;

/// A codebook `[K, D]` with the search tensors derived once, so repeated decoding does not
/// recompute norms or normalised copies.
///
/// ```
/// use ar_refine::{Codebook, Metric};
/// use burn::backend::NdArray;
/// use burn::tensor::Tensor;
/// let device = Default::default();
/// let codes = Tensor::<NdArray, 2>::from_floats([[0.0, 0.0], [1.0, 1.0], [4.0, 0.0]], &device);
/// let book = Codebook::new(codes, Metric::SquaredL2).unwrap();
/// assert_eq!((book.size(), book.dim()), (3, 2));
/// let q = Tensor::<NdArray, 3>::from_floats([[[0.9, 1.2], [3.0, 0.1]]], &device);
/// let ids = book.nearest(q).unwrap();
/// assert_eq!(ids.into_data().iter::<i64>().collect::<Vec<_>>(), vec![1, 2]);
/// ```
#[derive(Clone, Debug)]
pub struct Codebook<B: ArBackend> {
    codes: Tensor<B, 2>,
    /// `[K, D]`: the codes (L2) or the unit-normalised codes (cosine).
    search: Tensor<B, 2>,
    /// `[1, K]`: `‖c‖²` for L2; unused for cosine.
    sq_norms: Tensor<B, 2>,
    /// `[K]` in f32: the kernel's per-code bias (`‖c‖²` from f32 codes for L2, zeros for cosine).
    #[cfg(feature = "cubecl")]
    kernel_bias: Tensor<B, 1>,
    /// `[2]` in f32: the largest code norm and the largest `|bias|` (the matrix-unit kernel's
    /// error bound).
    #[cfg(feature = "cubecl")]
    kernel_bounds: Tensor<B, 1>,
    precision: KernelPrecision,
    metric: Metric,
    memory_budget: usize,
}

/// Default bound on the temporary distance block of the tensor-op search: 256 MiB.
pub const DEFAULT_MEMORY_BUDGET: usize = 256 << 20;

impl<B: ArBackend> Codebook<B> {
    /// Wraps `codes` `[K, D]`. Fails on an empty or non-finite codebook.
    pub fn new(codes: Tensor<B, 2>, metric: Metric) -> Result<Self> {
        let dims = codes.dims();
        expect_non_empty("codebook", "[K, D]", &dims)?;
        if dims[0] > i32::MAX as usize {
            return Err(Error::Config(format!(
                "codebook of {} codes is too large",
                dims[0]
            )));
        }
        ensure_finite(&codes, "codebook")?;
        let sq_norms = codes.clone().powi_scalar(2).sum_dim(1); // [K, 1]
        let search = match metric {
            Metric::SquaredL2 => codes.clone(),
            Metric::Cosine => codes.clone() / sq_norms.clone().sqrt().clamp_min(NORM_EPS),
        };
        #[cfg(feature = "cubecl")]
        let kernel_bias = match metric {
            Metric::SquaredL2 => codes
                .clone()
                .cast(DType::F32)
                .powi_scalar(2)
                .sum_dim(1)
                .reshape([dims[0]]),
            Metric::Cosine => Tensor::zeros([dims[0]], (&codes.device(), DType::F32)),
        };
        // The matrix-unit kernel's error bound needs the largest search-code norm and the
        // largest bias (both biases are >= 0). For L2 the bias is ‖c‖² already.
        #[cfg(feature = "cubecl")]
        let kernel_bounds = {
            let max_bias = kernel_bias.clone().max();
            let max_sq_norm = match metric {
                Metric::SquaredL2 => max_bias.clone(),
                Metric::Cosine => search.clone().cast(DType::F32).powi_scalar(2).sum_dim(1).max(),
            };
            Tensor::cat(vec![max_sq_norm.sqrt().reshape([1]), max_bias.reshape([1])], 0)
        };
        Ok(Self {
            search,
            #[cfg(feature = "cubecl")]
            kernel_bias,
            #[cfg(feature = "cubecl")]
            kernel_bounds,
            precision: KernelPrecision::default(),
            sq_norms: sq_norms.transpose(),
            codes,
            metric,
            memory_budget: DEFAULT_MEMORY_BUDGET,
        })
    }

    /// Sets the bound, in bytes, on the temporary distance block the tensor-op search allocates
    /// (queries are processed in chunks that fit). At least one query row is always processed.
    pub fn with_memory_budget(mut self, bytes: usize) -> Self {
        self.memory_budget = bytes.max(1);
        self
    }

    /// The same codes searched with `metric` (caches recomputed for it), e.g. the cosine
    /// codebook that refined embeddings snap to (see [`crate::pipeline::SelfRefinement`]).
    ///
    /// ```
    /// use ar_refine::{Codebook, Metric};
    /// use burn::backend::NdArray;
    /// use burn::tensor::Tensor;
    /// let d = Default::default();
    /// let book = Codebook::new(Tensor::<NdArray, 2>::from_floats([[1., 0.], [3., 0.1]], &d), Metric::SquaredL2).unwrap();
    /// let q = Tensor::<NdArray, 3>::from_floats([[[2.9, 0.0]]], &d);
    /// assert_eq!(book.nearest(q.clone()).unwrap().into_data().to_vec::<i64>().unwrap(), vec![1]);
    /// // by direction, [1, 0] is the closer code
    /// let cos = book.with_metric(Metric::Cosine).unwrap();
    /// assert_eq!(cos.nearest(q).unwrap().into_data().to_vec::<i64>().unwrap(), vec![0]);
    /// ```
    pub fn with_metric(&self, metric: Metric) -> Result<Self> {
        Ok(Self::new(self.codes.clone(), metric)?
            .with_memory_budget(self.memory_budget)
            .with_kernel_precision(self.precision))
    }

    /// Sets how the fused GPU kernel computes dot products (default
    /// [`KernelPrecision::Auto`]); the ids are the same either way.
    pub fn with_kernel_precision(mut self, precision: KernelPrecision) -> Self {
        self.precision = precision;
        self
    }

    /// How the fused GPU kernel computes dot products.
    pub fn kernel_precision(&self) -> KernelPrecision {
        self.precision
    }

    /// Number of codes `K`.
    pub fn size(&self) -> usize {
        self.codes.dims()[0]
    }

    /// Code dimension `D`.
    pub fn dim(&self) -> usize {
        self.codes.dims()[1]
    }

    /// The metric the search uses.
    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// The code vectors `[K, D]`, as given.
    pub fn codes(&self) -> &Tensor<B, 2> {
        &self.codes
    }

    /// The device the codebook lives on.
    pub fn device(&self) -> B::Device {
        self.codes.device()
    }

    /// Looks up the code vectors of `tokens` `[b, n]` (code ids in `0..K`): `[b, n, D]`.
    pub fn embed(&self, tokens: Tensor<B, 2, Int>) -> Result<Tensor<B, 3>> {
        let [b, n] = tokens.dims();
        expect_non_empty("embed tokens", "[b, n]", &[b, n])?;
        ensure_ids_in(&tokens, 0..self.size() as i64, "embed tokens")?;
        let flat = tokens.reshape([b * n]);
        Ok(self.codes.clone().select(0, flat).reshape([b, n, self.dim()]))
    }

    /// The nearest code of every embedding: `embeddings` `[b, n, D]` → ids `[b, n]`.
    ///
    /// On Burn's CubeCL backends (features `wgpu`, `cuda`, also under `Autodiff`) this runs the
    /// fused kernel of `decode::cube`; elsewhere the chunked tensor-op search. Exact ties
    /// resolve to the lowest index. Non-finite input gives [`Error::NonFinite`].
    pub fn nearest(&self, embeddings: Tensor<B, 3>) -> Result<Tensor<B, 2, Int>> {
        let (q, [b, n]) = self.validated_rows(embeddings)?;
        #[cfg(feature = "cubecl")]
        let q = match kernel_dispatch(q, self) {
            Ok(ids) => return Ok(ids.reshape([b, n])),
            Err(q) => q,
        };
        Ok(super::reference::nearest_rows(self, q).reshape([b, n]))
    }

    /// [`nearest`](Self::nearest) through the tensor-op search on every backend (the
    /// reference the kernel is tested and benchmarked against).
    pub fn nearest_reference(&self, embeddings: Tensor<B, 3>) -> Result<Tensor<B, 2, Int>> {
        let (q, [b, n]) = self.validated_rows(embeddings)?;
        Ok(super::reference::nearest_rows(self, q).reshape([b, n]))
    }

    /// [`nearest`](Self::nearest) through the exact fused kernel (f32 FMAs) with an explicit
    /// tiling, for backends that have it.
    #[cfg(feature = "cubecl")]
    #[cfg_attr(docsrs, doc(cfg(any(feature = "wgpu", feature = "cuda"))))]
    pub fn nearest_kernel(
        &self,
        embeddings: Tensor<B, 3>,
        tiling: Option<super::cube::Tiling>,
    ) -> Result<Tensor<B, 2, Int>>
    where
        B: super::cube::NearestCodeBackend,
    {
        let check = tiling.as_ref().map(|t| t.validate());
        self.kernel_rows(embeddings, check, |q| {
            Ok(B::nearest_code_ids(
                q,
                self.search.clone(),
                self.kernel_bias.clone(),
                self.kernel_alpha(),
                tiling,
            ))
        })
    }

    /// [`nearest`](Self::nearest) through the matrix-unit kernel with an explicit tiling
    /// (`None`: [`super::cube::MmaTiling::default_for`]). Fails with [`Error::Config`] on a
    /// device without TF32 matrix units.
    #[cfg(feature = "cubecl")]
    #[cfg_attr(docsrs, doc(cfg(any(feature = "wgpu", feature = "cuda"))))]
    pub fn nearest_matrix_units(
        &self,
        embeddings: Tensor<B, 3>,
        tiling: Option<super::cube::MmaTiling>,
    ) -> Result<Tensor<B, 2, Int>>
    where
        B: super::cube::NearestCodeBackend,
    {
        let check = tiling.as_ref().map(|t| t.validate());
        self.kernel_rows(embeddings, check, |q| {
            B::nearest_code_ids_mma(
                q,
                self.search.clone(),
                self.kernel_bias.clone(),
                self.kernel_bounds.clone(),
                self.kernel_alpha(),
                tiling,
            )
            .ok_or_else(|| {
                Error::Config("this device has no TF32 matrix units (needs CUDA sm_80 or newer)".into())
            })
        })
    }

    /// Checks the tiling (`check`) and the embeddings `[b, n, D]`, runs `search` on the rows
    /// `[b·n, D]` and shapes its ids `[b·n]` as `[b, n]`.
    #[cfg(feature = "cubecl")]
    fn kernel_rows(
        &self,
        embeddings: Tensor<B, 3>,
        check: Option<std::result::Result<(), String>>,
        search: impl FnOnce(Tensor<B, 2>) -> Result<Tensor<B, 1, Int>>,
    ) -> Result<Tensor<B, 2, Int>> {
        check.transpose().map_err(Error::Config)?;
        let (q, [b, n]) = self.validated_rows(embeddings)?;
        Ok(search(q)?.reshape([b, n]))
    }

    #[cfg(feature = "cubecl")]
    pub(crate) fn kernel_bias(&self) -> &Tensor<B, 1> {
        &self.kernel_bias
    }

    #[cfg(feature = "cubecl")]
    pub(crate) fn kernel_bounds(&self) -> &Tensor<B, 1> {
        &self.kernel_bounds
    }

    #[cfg(feature = "cubecl")]
    pub(crate) fn kernel_alpha(&self) -> f32 {
        match self.metric {
            Metric::SquaredL2 => -2.0,
            Metric::Cosine => -1.0,
        }
    }

    /// Checks `embeddings` `[b, n, D]` and flattens it to `[b * n, D]`.
    fn validated_rows(&self, embeddings: Tensor<B, 3>) -> Result<(Tensor<B, 2>, [usize; 2])> {
        let [b, n, d] = embeddings.dims();
        expect_dims(
            "nearest_codes embeddings",
            &format!("[b, n, {}]", self.dim()),
            &[b, n, d],
            &[None, None, Some(self.dim())],
        )?;
        expect_non_empty("nearest_codes embeddings", "[b, n, D]", &[b, n, d])?;
        ensure_finite(&embeddings, "nearest_codes embeddings")?;
        Ok((embeddings.reshape([b * n, d]), [b, n]))
    }

    pub(crate) fn search(&self) -> &Tensor<B, 2> {
        &self.search
    }

    pub(crate) fn sq_norms(&self) -> &Tensor<B, 2> {
        &self.sq_norms
    }

    pub(crate) fn memory_budget(&self) -> usize {
        self.memory_budget
    }
}

#[cfg(feature = "cubecl")]
/// Runs the kernel through `B`'s [`ArBackend`] route (the matrix-unit kernel when `book` asks
/// for it and the device has it); hands the queries back when `B` has no kernel.
pub(crate) fn kernel_dispatch<B: ArBackend>(
    queries: Tensor<B, 2>,
    book: &Codebook<B>,
) -> Result<Tensor<B, 1, Int>, Tensor<B, 2>> {
    let args = crate::backend::nearest::NearestArgs {
        queries,
        search: book.search().clone(),
        bias: book.kernel_bias().clone(),
        bounds: book.kernel_bounds().clone(),
        alpha: book.kernel_alpha(),
        matrix_units: book.kernel_precision().wants_matrix_units(book.dim()),
    };
    B::nearest_code_kernel(&args).ok_or(args.queries)
}
