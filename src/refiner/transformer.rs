//! The built-in refiner `g_φ`: a small bidirectional transformer over the generated
//! sequence's code embeddings.

use burn::module::{Module, Param};
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{backend::Backend, Int, Tensor};

use super::block::Block;
use super::config::{PositionEncoding, TransformerRefinerConfig};
use super::position::sinusoidal_2d;
use crate::checks::expect_dims;
use crate::error::{Error, Result};
use crate::traits::{Refiner, TokenGrid};

/// `e' = e + W_out · LN(blocks(W_in · e + pos))`, with `W_out` zero at initialisation.
///
/// Input and output `[b, n, D]` with `n = rows * cols` of the token grid. Attention is
/// bidirectional: every token sees the whole generated image, which is what lets the refiner
/// correct early mistakes of left-to-right generation (Wang et al., 2025, §3).
///
/// ```
/// use ar_refine::{Refiner, TokenGrid, TransformerRefinerConfig};
/// use burn::backend::NdArray;
/// use burn::tensor::{Distribution, Tensor};
/// let device = Default::default();
/// let refiner = TransformerRefinerConfig::new(8).with_d_model(32).with_n_heads(4)
///     .init::<NdArray>(&device).unwrap();
/// let e = Tensor::<NdArray, 3>::random([2, 16, 8], Distribution::Default, &device);
/// let out = refiner.refine(e.clone(), TokenGrid::new(4, 4)).unwrap();
/// assert_eq!(out.dims(), [2, 16, 8]);
/// out.into_data().assert_approx_eq::<f32>(&e.into_data(), Default::default()); // identity at init
/// ```
#[derive(Module, Debug)]
pub struct TransformerRefiner<B: Backend> {
    input: Linear<B>,
    row_pos: Option<Param<Tensor<B, 2>>>,
    col_pos: Option<Param<Tensor<B, 2>>>,
    blocks: Vec<Block<B>>,
    norm: LayerNorm<B>,
    output: Linear<B>,
    code_dim: usize,
    d_model: usize,
    max_grid: usize,
}

impl<B: Backend> TransformerRefiner<B> {
    pub(crate) fn new(cfg: &TransformerRefinerConfig, device: &B::Device) -> Self {
        let learned = cfg.position == PositionEncoding::Learned;
        let table = || Initializer::Normal { mean: 0.0, std: 0.02 }.init([cfg.max_grid, cfg.d_model], device);
        Self {
            input: LinearConfig::new(cfg.code_dim, cfg.d_model).init(device),
            row_pos: learned.then(table),
            col_pos: learned.then(table),
            blocks: (0..cfg.n_layers)
                .map(|_| Block::new(cfg.d_model, cfg.n_heads, cfg.mlp_width(), cfg.dropout, device))
                .collect(),
            norm: LayerNormConfig::new(cfg.d_model).init(device),
            output: LinearConfig::new(cfg.d_model, cfg.code_dim)
                .with_initializer(Initializer::Zeros)
                .init(device),
            code_dim: cfg.code_dim,
            d_model: cfg.d_model,
            max_grid: cfg.max_grid,
        }
    }

    /// Position table `[rows * cols, d_model]` for `grid`.
    fn positions(&self, grid: TokenGrid, device: &B::Device) -> Result<Tensor<B, 2>> {
        match (&self.row_pos, &self.col_pos) {
            (Some(rows), Some(cols)) => {
                if grid.rows > self.max_grid || grid.cols > self.max_grid {
                    return Err(Error::Config(format!(
                        "token grid {}x{} exceeds the refiner's learned position tables (max_grid {})",
                        grid.rows, grid.cols, self.max_grid
                    )));
                }
                let r = Tensor::<B, 1, Int>::arange(0..grid.rows as i64, device);
                let c = Tensor::<B, 1, Int>::arange(0..grid.cols as i64, device);
                let r = rows.val().select(0, r).unsqueeze_dim::<3>(1); // [rows, 1, d]
                let c = cols.val().select(0, c).unsqueeze_dim::<3>(0); // [1, cols, d]
                Ok((r + c).reshape([grid.len(), self.d_model]))
            }
            _ => Ok(sinusoidal_2d(grid, self.d_model, device)),
        }
    }

    /// Number of trainable scalars.
    pub fn param_count(&self) -> usize {
        self.num_params()
    }
}

impl<B: Backend> Refiner<B> for TransformerRefiner<B> {
    fn refine(&self, embeddings: Tensor<B, 3>, grid: TokenGrid) -> Result<Tensor<B, 3>> {
        let dims = embeddings.dims();
        expect_dims(
            "refiner embeddings",
            &format!("[b, {}, {}]", grid.len(), self.code_dim),
            &dims,
            &[None, Some(grid.len()), Some(self.code_dim)],
        )?;
        if dims[0] == 0 || grid.len() == 0 {
            return Err(Error::shape("refiner embeddings", "non-empty [b, n, D]", &dims));
        }
        let pos = self.positions(grid, &embeddings.device())?.unsqueeze_dim::<3>(0);
        let mut x = self.input.forward(embeddings.clone()) + pos;
        for block in &self.blocks {
            x = block.forward(x);
        }
        Ok(embeddings + self.output.forward(self.norm.forward(x)))
    }
}
