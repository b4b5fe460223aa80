//! 2-D position information for the token grid.

use crate::backend::ArBackend;
use burn::tensor::{Tensor, TensorData};

use crate::traits::TokenGrid;

/// Fixed 2-D sinusoidal table `[rows * cols, d_model]` in raster order: channels
/// `0..d_model/2` encode the row, `d_model/2..` the column, each half as interleaved-free
/// `[sin(p ω_0) .. sin(p ω_{h/2-1}), cos(p ω_0) .. cos(p ω_{h/2-1})]` with
/// `ω_i = 10000^(-2i/h)`, `h = d_model / 2`.
pub(crate) fn sinusoidal_2d<B: ArBackend>(
    grid: TokenGrid,
    d_model: usize,
    device: &B::Device,
) -> Tensor<B, 2> {
    let half = d_model / 2;
    let quarter = half / 2;
    let mut v = vec![0f32; grid.len() * d_model];
    for r in 0..grid.rows {
        for c in 0..grid.cols {
            let row = &mut v[(r * grid.cols + c) * d_model..][..d_model];
            for (offset, pos) in [(0, r), (half, c)] {
                for i in 0..quarter {
                    let w = 10000f64.powf(-2.0 * i as f64 / half as f64);
                    row[offset + i] = (pos as f64 * w).sin() as f32;
                    row[offset + quarter + i] = (pos as f64 * w).cos() as f32;
                }
            }
        }
    }
    Tensor::from_data(TensorData::new(v, [grid.len(), d_model]), device)
}
