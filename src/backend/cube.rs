//! CubeCL helpers shared by the crate's kernels.

use burn::tensor::{DType, Shape, Tensor, TensorPrimitive};
use burn_cubecl::element::BoolElement;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;

/// The sum of every unit's `value` over the cube (all units get it).
#[cube]
pub(crate) fn cube_sum(value: f32, #[comptime] units: usize) -> f32 {
    cube_reduce(value, units, false)
}

/// The maximum of every unit's `value` over the cube (all units get it).
#[cube]
pub(crate) fn cube_max(value: f32, #[comptime] units: usize) -> f32 {
    cube_reduce(value, units, true)
}

/// The sum, or with `max` the maximum, of every unit's `value` over the cube of `units` units
/// (all units get it; ends with a sync): a tree over shared memory, pairs `jump` apart added at
/// `jump = 1, 2, 4, …` (`⌈log₂ units⌉` levels instead of one unit adding all `units` values).
#[cube]
fn cube_reduce(value: f32, #[comptime] units: usize, #[comptime] max: bool) -> f32 {
    let unit = UNIT_POS_X as usize;
    let mut red = SharedMemory::<f32>::new(units);
    red[unit] = value;
    sync_cube();
    let mut jump = 1usize;
    while jump < units {
        if unit & (2 * jump - 1) == 0 && unit + jump < units {
            let other = red[unit + jump];
            if comptime!(max) {
                if other > red[unit] {
                    red[unit] = other;
                }
            } else {
                red[unit] += other;
            }
        }
        sync_cube();
        jump *= 2;
    }
    let total = red[0];
    sync_cube();
    total
}

/// Cubes of 256 units, one unit per element of `len` (the kernels index `ABSOLUTE_POS` and
/// guard `< len`), spread over more than one grid axis where one axis would exceed the device's
/// limit (65,535 cubes on wgpu): the launch geometry of the elementwise kernels on `like`'s
/// device.
pub(crate) fn per_element<R: CubeRuntime>(like: &CubeTensor<R>, len: usize) -> (CubeCount, CubeDim) {
    let dim = CubeDim::new_1d(256);
    (cube_grid(like, len.div_ceil(256)), dim)
}

/// A grid of at least `cubes` cubes on `like`'s device, over more than one axis where one would
/// exceed its limit: kernels number their cube `CUBE_POS` and skip positions `≥ cubes`.
pub(crate) fn cube_grid<R: CubeRuntime>(like: &CubeTensor<R>, cubes: usize) -> CubeCount {
    cubecl::calculate_cube_count_elemwise(&like.client, cubes, CubeDim::new_1d(1))
}

/// The primitive of a float tensor, made contiguous (what the crate's kernels read).
pub(crate) fn contiguous<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement, const D: usize>(
    t: Tensor<CubeBackend<R, F, I, BT>, D>,
) -> CubeTensor<R> {
    into_contiguous(t.into_primitive().tensor())
}

/// An uninitialised contiguous tensor of `shape` and `dtype` on `like`'s device (a kernel's
/// output buffer).
pub(crate) fn empty<R: CubeRuntime>(
    like: &CubeTensor<R>,
    shape: impl Into<Shape>,
    dtype: DType,
) -> CubeTensor<R> {
    let shape = shape.into();
    let handle = like.client.empty(shape.num_elements() * dtype.size());
    CubeTensor::new_contiguous(like.client.clone(), like.device.clone(), shape, handle, dtype)
}

/// A kernel's float output as a tensor of the backend.
pub(crate) fn float<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement, const D: usize>(
    t: CubeTensor<R>,
) -> Tensor<CubeBackend<R, F, I, BT>, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// The widest vector size (elements, at most 16 bytes of `t`'s type) the device loads well for
/// which `fits` holds; 1 when none does.
pub(crate) fn vector_size<R: CubeRuntime>(t: &CubeTensor<R>, fits: impl Fn(usize) -> bool) -> usize {
    t.client
        .io_optimized_vector_sizes(t.dtype.size())
        .filter(|&n| fits(n))
        .max()
        .unwrap_or(1)
}
