//! Configuration of the built-in [`super::TransformerRefiner`].

use burn::config::Config;
use burn::tensor::backend::Backend;

use super::transformer::TransformerRefiner;
use crate::error::{Error, Result};

/// How the refiner learns where each token sits on the image grid.
#[derive(Config, Debug, PartialEq, Eq, Copy)]
pub enum PositionEncoding {
    /// Learned row and column embeddings `[max_grid, d_model]`, added: `row[r] + col[c]`.
    Learned,
    /// Fixed 2-D sinusoids: the first half of the channels encode the row, the second the
    /// column (Vaswani et al. 2017 frequencies, base 10000).
    Sinusoidal,
}

/// Hyper-parameters of [`TransformerRefiner`]: the lightweight bidirectional transformer
/// `g_φ` of Wang et al. (2025).
///
/// ```
/// use ar_refine::{TransformerRefinerConfig, PositionEncoding};
/// let cfg = TransformerRefinerConfig::new(64)
///     .with_d_model(128)
///     .with_n_layers(2)
///     .with_position(PositionEncoding::Sinusoidal);
/// assert!(cfg.validate().is_ok());
/// let json = serde_json::to_string(&cfg).unwrap();
/// assert!(json.contains("Sinusoidal"));
/// ```
#[derive(Config, Debug)]
pub struct TransformerRefinerConfig {
    /// Code dimension `D` of the tokenizer (input and output width).
    pub code_dim: usize,
    /// Transformer width.
    #[config(default = 256)]
    pub d_model: usize,
    /// Number of bidirectional pre-norm blocks.
    #[config(default = 4)]
    pub n_layers: usize,
    /// Attention heads (must divide `d_model`).
    #[config(default = 8)]
    pub n_heads: usize,
    /// MLP hidden width as a multiple of `d_model`.
    #[config(default = 4.0)]
    pub mlp_ratio: f64,
    /// Dropout probability in attention and MLP residual branches (training only).
    #[config(default = 0.0)]
    pub dropout: f64,
    /// Position information for the token grid.
    #[config(default = "PositionEncoding::Learned")]
    pub position: PositionEncoding,
    /// Largest grid side (rows or columns) the learned position tables cover.
    #[config(default = 32)]
    pub max_grid: usize,
}

impl TransformerRefinerConfig {
    /// Checks that the sizes are usable.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(format!("TransformerRefinerConfig: {m}")));
        if self.code_dim == 0 || self.d_model == 0 || self.n_heads == 0 || self.max_grid == 0 {
            return bad("code_dim, d_model, n_heads and max_grid must be >= 1".into());
        }
        if !self.d_model.is_multiple_of(self.n_heads) {
            return bad(format!(
                "n_heads {} must divide d_model {}",
                self.n_heads, self.d_model
            ));
        }
        if self.position == PositionEncoding::Sinusoidal && !self.d_model.is_multiple_of(4) {
            return bad(format!(
                "sinusoidal 2-D positions need d_model % 4 == 0, got {}",
                self.d_model
            ));
        }
        if !(self.mlp_ratio > 0.0 && self.mlp_ratio.is_finite()) {
            return bad(format!("mlp_ratio must be > 0, got {}", self.mlp_ratio));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        Ok(())
    }

    /// MLP hidden width, `round(d_model * mlp_ratio)`, at least 1.
    pub fn mlp_width(&self) -> usize {
        ((self.d_model as f64 * self.mlp_ratio).round() as usize).max(1)
    }

    /// Builds the refiner on `device`; the output projection starts at zero, so the refiner is
    /// the identity until trained.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<TransformerRefiner<B>> {
        self.validate()?;
        Ok(TransformerRefiner::new(self, device))
    }
}
