//! CubeCL helpers shared by the crate's kernels.

use cubecl::prelude::*;

/// The sum of every unit's `value` over the cube (all units get it).
#[cube]
pub(crate) fn cube_sum(value: f32, #[comptime] units: usize) -> f32 {
    let unit = UNIT_POS_X as usize;
    let mut red = SharedMemory::<f32>::new(units);
    red[unit] = value;
    sync_cube();
    if unit == 0 {
        let mut total = 0.0f32;
        for j in 0..units {
            total += red[j];
        }
        red[0] = total;
    }
    sync_cube();
    let total = red[0];
    sync_cube();
    total
}
