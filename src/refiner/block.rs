//! One bidirectional pre-norm transformer block.

use crate::backend::ArBackend;
use burn::module::Module;
use burn::nn::attention::{MhaInput, MultiHeadAttention, MultiHeadAttentionConfig};
use burn::nn::{Dropout, DropoutConfig, Gelu, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::Tensor;

/// `x + drop(attn(ln(x)))`, then `x + drop(mlp(ln(x)))`; no causal mask.
#[derive(Module, Debug)]
pub struct Block<B: ArBackend> {
    norm_attn: LayerNorm<B>,
    attn: MultiHeadAttention<B>,
    norm_mlp: LayerNorm<B>,
    fc_in: Linear<B>,
    fc_out: Linear<B>,
    act: Gelu,
    dropout: Dropout,
}

impl<B: ArBackend> Block<B> {
    pub(crate) fn new(d_model: usize, n_heads: usize, mlp: usize, dropout: f64, device: &B::Device) -> Self {
        Self {
            norm_attn: LayerNormConfig::new(d_model).init(device),
            attn: MultiHeadAttentionConfig::new(d_model, n_heads)
                .with_dropout(dropout)
                .init(device),
            norm_mlp: LayerNormConfig::new(d_model).init(device),
            fc_in: LinearConfig::new(d_model, mlp).init(device),
            fc_out: LinearConfig::new(mlp, d_model).init(device),
            act: Gelu::new(),
            dropout: DropoutConfig::new(dropout).init(),
        }
    }

    /// `[b, n, d_model]` → `[b, n, d_model]`.
    pub(crate) fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let h = self
            .attn
            .forward(MhaInput::self_attn(self.norm_attn.forward(x.clone())))
            .context;
        let x = x + self.dropout.forward(h);
        let h = self.fc_out.forward(
            self.act
                .forward(self.fc_in.forward(self.norm_mlp.forward(x.clone()))),
        );
        x + self.dropout.forward(h)
    }
}
