//! Nearest-code search as a fused CubeCL kernel, for Burn's CubeCL backends (wgpu, CUDA) and
//! their `Autodiff` wrappers.
//!
//! [`NearestCodeBackend`] is the extension trait with explicit tilings;
//! [`crate::decode::Codebook::nearest`] reaches the kernel through the [`ArBackend`] impls of
//! `CubeBackend` and `Autodiff` (any runtime and element type), so users never call it
//! differently; other backends take the tensor-op search.

mod kernel;
mod mma;

pub use kernel::Tiling;
pub use mma::MmaTiling;

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::Autodiff;
use burn::tensor::{backend::Backend, Int, Tensor};
use burn_cubecl::element::BoolElement;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;

use crate::backend::ArBackend;

/// Backends with a fused nearest-code kernel.
///
/// `queries` `[N, D]`, `codes` `[K, D]` (the search codes: raw for squared L2, unit-normalised
/// for cosine), `bias` `[K]` in f32 (`‖c‖²`, or zeros), `alpha` (`−2` or `−1`) → ids `[N]`: for
/// each query the lowest `k` minimising `bias[k] + alpha · q·c_k`, accumulated in f32.
///
/// ```no_run
/// # #[cfg(feature = "wgpu")] {
/// use ar_refine::decode::cube::NearestCodeBackend;
/// use burn::backend::Wgpu;
/// use burn::tensor::Tensor;
/// let device = Default::default();
/// let codes = Tensor::<Wgpu, 2>::from_floats([[0.0, 0.0], [1.0, 1.0]], &device);
/// let bias = codes.clone().powi_scalar(2).sum_dim(1).reshape([2]);
/// let q = Tensor::<Wgpu, 2>::from_floats([[0.9, 0.8]], &device);
/// let ids = Wgpu::nearest_code_ids(q, codes, bias, -2.0, None); // [1]: code 1
/// # }
/// ```
pub trait NearestCodeBackend: ArBackend {
    /// Runs the exact kernel (f32 FMAs); shapes are the caller's responsibility (the
    /// [`crate::decode::Codebook`] checks them).
    fn nearest_code_ids(
        queries: Tensor<Self, 2>,
        codes: Tensor<Self, 2>,
        bias: Tensor<Self, 1>,
        alpha: f32,
        tiling: Option<Tiling>,
    ) -> Tensor<Self, 1, Int>;

    /// Whether [`nearest_code_ids_mma`](Self::nearest_code_ids_mma) runs on `device` (it needs
    /// TF32 `m16n8k8` matrix instructions: CUDA on sm_80 and newer).
    fn supports_matrix_units(device: &Self::Device) -> bool;

    /// The matrix-unit kernel: TF32 dot products, then an exact f32 decision (see
    /// `decode::cube` module docs of `mma`), so it returns the same ids as
    /// [`nearest_code_ids`](Self::nearest_code_ids). `bounds` `[2]` in f32: the largest code
    /// norm and the largest `|bias|`. `None` when the device has no TF32 matrix units.
    fn nearest_code_ids_mma(
        queries: Tensor<Self, 2>,
        codes: Tensor<Self, 2>,
        bias: Tensor<Self, 1>,
        bounds: Tensor<Self, 1>,
        alpha: f32,
        tiling: Option<MmaTiling>,
    ) -> Option<Tensor<Self, 1, Int>>;
}

/// The default tiling for code dimension `d`: 256 units as 16 × 16, each holding an 8 × 8
/// block of dot products (128 queries × 128 codes per cube and tile). Fastest of the tilings
/// measured in `BENCHMARKS.md`.
pub fn default_tiling(d: usize) -> Tiling {
    Tiling {
        tq: 16,
        tk: 16,
        rq: 8,
        rk: 8,
        dt: d.next_power_of_two().min(8),
    }
}

/// Cubes to aim for when splitting the codes over cubes: enough to fill a large GPU (an H200
/// has 132 multiprocessors) about twice.
const TARGET_CUBES: usize = 264;

/// How many code ranges each query block is split into, and the codes per range (a multiple of
/// the code tile), for cubes of `block_q` queries and code tiles of `block_k`.
pub(crate) fn splits(n: usize, k: usize, block_q: usize, block_k: usize) -> (usize, usize) {
    let blocks = n.div_ceil(block_q);
    let wanted = (TARGET_CUBES / blocks.max(1)).clamp(1, k.div_ceil(block_k));
    let per = k.div_ceil(wanted).next_multiple_of(block_k);
    (k.div_ceil(per), per)
}

/// Whether `client`'s device has the TF32 `m16n8k8` matrix instruction the `mma` kernel uses.
fn has_tf32_mma<R: CubeRuntime>(client: &cubecl::client::ComputeClient<R>) -> bool {
    client
        .features()
        .matmul
        .mma
        .contains(&cubecl::features::MmaConfig {
            a_type: tf32::cube_type(),
            b_type: tf32::cube_type(),
            cd_type: f32::cube_type(),
            m: 16,
            n: 8,
            k: 8,
        })
}

fn float<B: Backend, const D: usize>(t: Tensor<B, D>) -> B::FloatTensorPrimitive {
    t.into_primitive().tensor()
}

/// What both kernels' launches share: contiguous inputs, sizes, the split of the codes over
/// cubes and the per-split outputs (`[n_splits · N]` scores and ids).
struct Launch<R: CubeRuntime> {
    queries: CubeTensor<R>,
    codes: CubeTensor<R>,
    bias: CubeTensor<R>,
    n: usize,
    d: usize,
    n_splits: usize,
    k_per_split: usize,
    scores: CubeTensor<R>,
    ids: CubeTensor<R>,
    id_dtype: burn::tensor::DType,
}

impl<R: CubeRuntime> Launch<R> {
    /// `block_q` queries per cube, `block_k` codes per tile.
    fn new(
        queries: CubeTensor<R>,
        codes: CubeTensor<R>,
        bias: CubeTensor<R>,
        id_dtype: burn::tensor::DType,
        (block_q, block_k): (usize, usize),
    ) -> Self {
        let queries = into_contiguous(queries);
        let codes = into_contiguous(codes);
        let bias = into_contiguous(bias);
        let [n, d] = [queries.meta.shape()[0], queries.meta.shape()[1]];
        let (n_splits, k_per_split) = splits(n, codes.meta.shape()[0], block_q, block_k);
        let scores = crate::backend::cube::empty(&queries, [n_splits * n], burn::tensor::DType::F32);
        let ids = crate::backend::cube::empty(&queries, [n_splits * n], id_dtype);
        Launch {
            queries,
            codes,
            bias,
            n,
            d,
            n_splits,
            k_per_split,
            scores,
            ids,
            id_dtype,
        }
    }

    fn cube_count(&self, block_q: usize) -> CubeCount {
        CubeCount::Static(self.n.div_ceil(block_q) as u32, self.n_splits as u32, 1)
    }

    /// The per-query winner over the splits.
    fn finish(self) -> CubeTensor<R> {
        reduce_splits(self.scores, self.ids, self.n, self.n_splits, self.id_dtype)
    }
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> NearestCodeBackend
    for CubeBackend<R, F, I, BT>
{
    fn nearest_code_ids(
        queries: Tensor<Self, 2>,
        codes: Tensor<Self, 2>,
        bias: Tensor<Self, 1>,
        alpha: f32,
        tiling: Option<Tiling>,
    ) -> Tensor<Self, 1, Int> {
        let d = queries.dims()[1];
        let t = tiling.unwrap_or_else(|| default_tiling(d));
        let l = Launch::<R>::new(
            float(queries),
            float(codes),
            float(bias),
            I::dtype(),
            (t.block_q(), t.block_k()),
        );
        let client = l.queries.client.clone();
        let dtypes = [l.queries.dtype.into(), l.id_dtype.into()];
        // SAFETY: the kernel guards every global read and write with explicit bounds tests
        // against the tensors' shapes; shared and local arrays are indexed below their comptime
        // sizes (see the kernel's documentation).
        unsafe {
            kernel::nearest_partial_kernel::launch_unchecked::<R>(
                &client,
                l.cube_count(t.block_q()),
                CubeDim::new_1d(t.units() as u32),
                l.queries.clone().into_tensor_arg(),
                l.codes.clone().into_tensor_arg(),
                l.bias.clone().into_tensor_arg(),
                l.scores.clone().into_tensor_arg(),
                l.ids.clone().into_tensor_arg(),
                alpha,
                l.k_per_split,
                t.tq,
                t.tk,
                t.rq,
                t.rk,
                t.dt,
                dtypes,
            );
        }
        Tensor::from_primitive(l.finish())
    }

    fn supports_matrix_units(device: &Self::Device) -> bool {
        has_tf32_mma(&R::client(device))
    }

    fn nearest_code_ids_mma(
        queries: Tensor<Self, 2>,
        codes: Tensor<Self, 2>,
        bias: Tensor<Self, 1>,
        bounds: Tensor<Self, 1>,
        alpha: f32,
        tiling: Option<MmaTiling>,
    ) -> Option<Tensor<Self, 1, Int>> {
        if !Self::supports_matrix_units(&queries.device()) {
            return None;
        }
        let d = queries.dims()[1];
        let t = tiling.unwrap_or_else(|| MmaTiling::default_for(d));
        let l = Launch::<R>::new(
            float(queries),
            float(codes),
            float(bias),
            I::dtype(),
            (t.block_q(), t.block_k()),
        );
        let bounds: CubeTensor<R> = into_contiguous(float(bounds));
        let client = l.queries.client.clone();
        let dtypes = [l.queries.dtype.into(), l.id_dtype.into()];
        // SAFETY: as for the exact kernel: global accesses are bounds-tested against the
        // tensors' shapes, shared and local arrays are indexed below their comptime sizes.
        unsafe {
            mma::nearest_mma_kernel::launch_unchecked::<R>(
                &client,
                l.cube_count(t.block_q()),
                CubeDim::new_1d(t.units() as u32),
                l.queries.clone().into_tensor_arg(),
                l.codes.clone().into_tensor_arg(),
                l.bias.clone().into_tensor_arg(),
                bounds.into_tensor_arg(),
                l.scores.clone().into_tensor_arg(),
                l.ids.clone().into_tensor_arg(),
                alpha,
                l.k_per_split,
                t.wq,
                t.wk,
                t.mq,
                t.nk,
                t.h,
                if l.d <= 8 { 1 } else { 2 },
                dtypes,
            );
        }
        Some(Tensor::from_primitive(l.finish()))
    }
}

/// The per-query winner over `n_splits` partial results (`[n_splits · n]` scores and ids).
fn reduce_splits<R: CubeRuntime>(
    scores: CubeTensor<R>,
    ids: CubeTensor<R>,
    n: usize,
    n_splits: usize,
    id_dtype: burn::tensor::DType,
) -> CubeTensor<R> {
    if n_splits == 1 {
        return ids;
    }
    let out = crate::backend::cube::empty(&ids, [n], id_dtype);
    let units = 256;
    let client = ids.client.clone();
    kernel::nearest_reduce_kernel::launch::<R>(
        &client,
        CubeCount::Static(n.div_ceil(units) as u32, 1, 1),
        CubeDim::new_1d(units as u32),
        scores.into_tensor_arg(),
        ids.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        n_splits,
        id_dtype.into(),
    );
    out
}

impl<B: NearestCodeBackend, C: CheckpointStrategy> NearestCodeBackend for Autodiff<B, C> {
    fn nearest_code_ids(
        queries: Tensor<Self, 2>,
        codes: Tensor<Self, 2>,
        bias: Tensor<Self, 1>,
        alpha: f32,
        tiling: Option<Tiling>,
    ) -> Tensor<Self, 1, Int> {
        // Ids carry no gradient: run on the inner backend.
        let ids = B::nearest_code_ids(queries.inner(), codes.inner(), bias.inner(), alpha, tiling);
        Tensor::<Self, 1, Int>::from_inner(ids)
    }

    fn supports_matrix_units(device: &Self::Device) -> bool {
        B::supports_matrix_units(device)
    }

    fn nearest_code_ids_mma(
        queries: Tensor<Self, 2>,
        codes: Tensor<Self, 2>,
        bias: Tensor<Self, 1>,
        bounds: Tensor<Self, 1>,
        alpha: f32,
        tiling: Option<MmaTiling>,
    ) -> Option<Tensor<Self, 1, Int>> {
        let ids = B::nearest_code_ids_mma(
            queries.inner(),
            codes.inner(),
            bias.inner(),
            bounds.inner(),
            alpha,
            tiling,
        )?;
        Some(Tensor::<Self, 1, Int>::from_inner(ids))
    }
}

/// The inputs of one nearest-code search by a kernel: queries `[N, D]`, the codebook's search
/// codes `[K, D]`, kernel bias `[K]` and bounds `[2]` (see [`NearestCodeBackend`]), the score's
/// `alpha`, and whether to try the matrix-unit kernel first.
#[doc(hidden)]
pub struct NearestArgs<B: Backend> {
    pub(crate) queries: Tensor<B, 2>,
    pub(crate) search: Tensor<B, 2>,
    pub(crate) bias: Tensor<B, 1>,
    pub(crate) bounds: Tensor<B, 1>,
    pub(crate) alpha: f32,
    pub(crate) matrix_units: bool,
}

impl<B: Backend, C: CheckpointStrategy> NearestArgs<Autodiff<B, C>> {
    /// The same search on the inner backend.
    pub(crate) fn inner(&self) -> NearestArgs<B> {
        NearestArgs {
            queries: self.queries.clone().inner(),
            search: self.search.clone().inner(),
            bias: self.bias.clone().inner(),
            bounds: self.bounds.clone().inner(),
            alpha: self.alpha,
            matrix_units: self.matrix_units,
        }
    }
}

/// The kernel search of `args` on a CubeCL backend: the matrix-unit kernel when asked for and
/// available, else the exact one.
pub(crate) fn run_kernel<C: NearestCodeBackend>(a: &NearestArgs<C>) -> Tensor<C, 1, Int> {
    let mma = if a.matrix_units {
        C::nearest_code_ids_mma(
            a.queries.clone(),
            a.search.clone(),
            a.bias.clone(),
            a.bounds.clone(),
            a.alpha,
            None,
        )
    } else {
        None
    };
    mma.unwrap_or_else(|| {
        C::nearest_code_ids(a.queries.clone(), a.search.clone(), a.bias.clone(), a.alpha, None)
    })
}
