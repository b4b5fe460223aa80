//! Nearest-code search as a fused CubeCL kernel, for Burn's CubeCL backends (wgpu, CUDA) and
//! their `Autodiff` wrappers.
//!
//! [`NearestCodeBackend`] is the extension trait; [`super::Codebook::nearest`] routes to it
//! automatically for the backend types listed in `dispatch`, so users never call it
//! differently.

mod kernel;

pub use kernel::Tiling;

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::Autodiff;
use burn::tensor::{backend::Backend, Int, Shape, Tensor};
use burn_cubecl::element::BoolElement;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;

/// Backends with a fused nearest-code kernel.
///
/// `queries` `[N, D]`, `codes` `[K, D]` (the search codes: raw for squared L2, unit-normalised
/// for cosine), `bias` `[K]` in f32 (`‖c‖²`, or zeros), `alpha` (`−2` or `−1`) → ids `[N]`: for
/// each query the lowest `k` minimising `bias[k] + alpha · q·c_k`, accumulated in f32.
pub trait NearestCodeBackend: Backend {
    /// Runs the kernel; shapes are the caller's responsibility (the [`super::Codebook`] checks
    /// them).
    fn nearest_code_ids(
        queries: Tensor<Self, 2>,
        codes: Tensor<Self, 2>,
        bias: Tensor<Self, 1>,
        alpha: f32,
        tiling: Option<Tiling>,
    ) -> Tensor<Self, 1, Int>;
}

/// The default tiling for code dimension `d`: 256 units as 16 × 16, each holding an 8 × 8
/// block of dot products (128 queries × 128 codes per cube and tile). Fastest of the tilings
/// measured on the H200 (`BENCHMARKS.md`).
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
/// the code tile).
pub(crate) fn splits(n: usize, k: usize, t: &Tiling) -> (usize, usize) {
    let blocks = n.div_ceil(t.block_q());
    let wanted = (TARGET_CUBES / blocks.max(1)).clamp(1, k.div_ceil(t.block_k()));
    let per = k.div_ceil(wanted).next_multiple_of(t.block_k());
    (k.div_ceil(per), per)
}

fn float<B: Backend, const D: usize>(t: Tensor<B, D>) -> B::FloatTensorPrimitive {
    t.into_primitive().tensor()
}

fn empty_like<R: CubeRuntime>(like: &CubeTensor<R>, len: usize, dtype: burn::tensor::DType) -> CubeTensor<R> {
    let handle = like.client.empty(len * dtype.size());
    CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        Shape::new([len]),
        handle,
        dtype,
    )
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
        let queries: CubeTensor<R> = into_contiguous(float(queries));
        let codes: CubeTensor<R> = into_contiguous(float(codes));
        let bias: CubeTensor<R> = into_contiguous(float(bias));
        let [n, d] = [queries.meta.shape()[0], queries.meta.shape()[1]];
        let k = codes.meta.shape()[0];
        let t = tiling.unwrap_or_else(|| default_tiling(d));
        let (n_splits, k_per_split) = splits(n, k, &t);
        let id_dtype = I::dtype();
        let scores = empty_like(&queries, n_splits * n, burn::tensor::DType::F32);
        let ids = empty_like(&queries, n_splits * n, id_dtype);
        let client = queries.client.clone();
        let float_dtype = queries.dtype;
        // SAFETY: the kernel guards every global read and write with explicit bounds tests
        // against the tensors' shapes; shared and local arrays are indexed below their comptime
        // sizes (see the kernel's documentation).
        unsafe {
            kernel::nearest_partial_kernel::launch_unchecked::<R>(
                &client,
                CubeCount::Static(n.div_ceil(t.block_q()) as u32, n_splits as u32, 1),
                CubeDim::new_1d(t.units() as u32),
                queries.into_tensor_arg(),
                codes.into_tensor_arg(),
                bias.into_tensor_arg(),
                scores.clone().into_tensor_arg(),
                ids.clone().into_tensor_arg(),
                alpha,
                k_per_split,
                t.tq,
                t.tk,
                t.rq,
                t.rk,
                t.dt,
                [float_dtype.into(), id_dtype.into()],
            );
        }
        if n_splits == 1 {
            return Tensor::from_primitive(ids);
        }
        let out = empty_like(&ids, n, id_dtype);
        let units = 256;
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
        Tensor::from_primitive(out)
    }
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
}

/// Calls the kernel when `B` is one of the CubeCL backend types this crate was built with;
/// otherwise hands the queries back.
pub(crate) fn dispatch<B: Backend>(
    queries: Tensor<B, 2>,
    codes: &Tensor<B, 2>,
    bias: &Tensor<B, 1>,
    alpha: f32,
) -> Result<Tensor<B, 1, Int>, Tensor<B, 2>> {
    macro_rules! route {
        ($($backend:ty),* $(,)?) => {
            $(
                if let Some(ids) = run_as::<B, $backend>(&queries, codes, bias, alpha) {
                    return Ok(ids);
                }
            )*
        };
    }
    #[cfg(feature = "wgpu")]
    route!(
        CubeBackend<cubecl::wgpu::WgpuRuntime, f32, i32, u32>,
        CubeBackend<cubecl::wgpu::WgpuRuntime, half::f16, i32, u32>,
        Autodiff<CubeBackend<cubecl::wgpu::WgpuRuntime, f32, i32, u32>>,
    );
    #[cfg(feature = "cuda")]
    route!(
        CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>,
        CubeBackend<cubecl::cuda::CudaRuntime, half::f16, i32, u8>,
        CubeBackend<cubecl::cuda::CudaRuntime, half::bf16, i32, u8>,
        Autodiff<CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>>,
    );
    let _ = (codes, bias, alpha);
    Err(queries)
}

/// Runs the kernel if `B` is `C` (checked through `Any`, no unsafe code).
fn run_as<B: Backend, C: NearestCodeBackend>(
    queries: &Tensor<B, 2>,
    codes: &Tensor<B, 2>,
    bias: &Tensor<B, 1>,
    alpha: f32,
) -> Option<Tensor<B, 1, Int>> {
    use std::any::Any;
    let q = (queries as &dyn Any).downcast_ref::<Tensor<C, 2>>()?;
    let c = (codes as &dyn Any).downcast_ref::<Tensor<C, 2>>()?;
    let b = (bias as &dyn Any).downcast_ref::<Tensor<C, 1>>()?;
    let ids = C::nearest_code_ids(q.clone(), c.clone(), b.clone(), alpha, None);
    (Box::new(ids) as Box<dyn Any>)
        .downcast::<Tensor<B, 1, Int>>()
        .ok()
        .map(|b| *b)
}
