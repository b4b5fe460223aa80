//! Configuration of the built-in [`super::TransformerRefiner`].

use crate::backend::ArBackend;
use burn::config::Config;
use burn::tensor::Tensor;

use super::transformer::TransformerRefiner;
use crate::decode::Codebook;
use crate::error::{Error, Result};
use crate::traits::RefinerNeeds;

/// How the refiner learns where each token sits on the image grid.
#[derive(Config, Debug, PartialEq, Eq, Copy)]
pub enum PositionEncoding {
    /// Learned row and column embeddings `[max_grid, d_model]`, added: `row[r] + col[c]`.
    Learned,
    /// Fixed 2-D sinusoids: the first half of the channels encode the row, the second the
    /// column (Vaswani et al. 2017 frequencies, base 10000).
    Sinusoidal,
}

/// What the refiner reads besides the backbone's answer.
///
/// ```
/// use ar_refine::refiner::RefinerInputs;
/// let i = RefinerInputs::new().with_prompt_images(1).with_confidence(true);
/// assert!(i.answer && i.hidden_size.is_none());
/// ```
#[derive(Config, Debug, PartialEq)]
pub struct RefinerInputs {
    /// Read the backbone's answer. `false` builds the *prompt-only control*: the same network
    /// with a learned mask token in place of every answer token, which shows how much of a
    /// refiner's result comes from the backbone's work rather than from the prompt.
    #[config(default = true)]
    pub answer: bool,
    /// The prompt's last images prepended as a prefix (`1`: the query image), with segment
    /// embeddings (answer, query, demonstration output, demonstration input) and the same 2-D
    /// positions as the answer; attention runs over prefix and answer together.
    #[config(default = 0)]
    pub prompt_images: usize,
    /// Add the backbone's per-token confidence (probability and log-probability of the chosen
    /// code, entropy; both logs divided by `ln K`) through a linear layer.
    #[config(default = false)]
    pub confidence: bool,
    /// Add the backbone's final hidden states `[b, n, H]`, layer-normalised and projected,
    /// when set to `H`.
    #[config(default = "None")]
    pub hidden_size: Option<usize>,
}

/// The kind of categorical head.
#[derive(Config, Debug, PartialEq, Eq, Copy)]
pub enum CodeHead {
    /// None: the paper's embedding regressor alone.
    None,
    /// `logits_k = s · cos(v, c_k)` with the refined embedding `v` and a learnable scale
    /// `s = 1 / τ` (ties the head to the codebook's geometry).
    Cosine,
    /// A linear layer `d_model → K` on the transformer's output.
    Linear,
}

/// The refiner's output heads. The embedding head (the paper's `e' = e + W·h`) is always there;
/// these add code logits and a critic.
#[derive(Config, Debug, PartialEq)]
pub struct RefinerHeads {
    /// Code logits `[b, n, K]` (needs the codebook: [`TransformerRefinerConfig::init_with_codebook`]).
    #[config(default = "CodeHead::None")]
    pub logits: CodeHead,
    /// Initial temperature `τ` of the cosine head (learnable).
    #[config(default = 0.1)]
    pub temperature: f64,
    /// Initial *keep* logit added to the backbone's own code (a learnable bias plus a per-token
    /// linear term that starts at zero). With it, every decision rule returns the backbone's
    /// tokens at step 0 (identity initialisation); `0` disables it. The linear head adds
    /// `ln K` to it, since its logits start flat.
    #[config(default = 5.0)]
    pub keep_logit: f64,
    /// A critic head: the logit of "the backbone's token is wrong" `[b, n]`, trained with binary
    /// cross-entropy and read by [`crate::refiner::Decision::Gate`].
    #[config(default = false)]
    pub critic: bool,
}

/// Hyper-parameters of [`TransformerRefiner`]: the lightweight bidirectional transformer
/// `g_φ` of Wang et al. (2025), with optional prompt, confidence and hidden-state inputs and
/// categorical and critic heads.
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
    /// What the refiner reads (default: the answer alone, as in the paper).
    #[config(default = "RefinerInputs::new()")]
    pub inputs: RefinerInputs,
    /// Output heads (default: the embedding head alone, as in the paper).
    #[config(default = "RefinerHeads::new()")]
    pub heads: RefinerHeads,
    /// Codebook size `K` (set by [`init_with_codebook`](Self::init_with_codebook); `0` when the
    /// refiner has no categorical head).
    #[config(default = 0)]
    pub codebook_size: usize,
}

impl TransformerRefinerConfig {
    /// Checks that the sizes and options are usable.
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
        let (i, h) = (&self.inputs, &self.heads);
        if !i.answer && (i.confidence || i.hidden_size.is_some()) {
            return bad("the prompt-only control (answer = false) cannot read the backbone's confidence or hidden states".into());
        }
        if !i.answer && i.prompt_images == 0 {
            return bad("a refiner that reads neither the answer nor the prompt has no input".into());
        }
        if i.hidden_size == Some(0) {
            return bad("hidden_size must be >= 1".into());
        }
        if h.logits == CodeHead::None && h.critic && !i.answer {
            return bad("a critic judges the backbone's tokens: it needs answer = true".into());
        }
        if h.logits == CodeHead::Cosine && !(h.temperature > 0.0 && h.temperature.is_finite()) {
            return bad(format!(
                "cosine-head temperature must be > 0, got {}",
                h.temperature
            ));
        }
        if !(h.keep_logit >= 0.0 && h.keep_logit.is_finite()) {
            return bad(format!("keep_logit must be >= 0, got {}", h.keep_logit));
        }
        if h.logits != CodeHead::None && self.codebook_size < 2 {
            return bad(format!(
                "a code-logit head needs the codebook (codebook_size {}): build it with init_with_codebook",
                self.codebook_size
            ));
        }
        Ok(())
    }

    /// MLP hidden width, `round(d_model * mlp_ratio)`, at least 1.
    pub fn mlp_width(&self) -> usize {
        ((self.d_model as f64 * self.mlp_ratio).round() as usize).max(1)
    }

    /// The optional inputs the refiner reads.
    pub fn needs(&self) -> RefinerNeeds {
        RefinerNeeds {
            prompt_images: self.inputs.prompt_images,
            confidence: self.inputs.confidence,
            hidden: self.inputs.hidden_size.is_some(),
        }
    }

    /// Builds a refiner without a categorical head on `device`; the output projection starts at
    /// zero, so the refiner is the identity until trained. A config with code logits is an
    /// [`Error::Config`] here: use [`init_with_codebook`](Self::init_with_codebook).
    pub fn init<B: ArBackend>(&self, device: &B::Device) -> Result<TransformerRefiner<B>> {
        self.validate()?;
        Ok(TransformerRefiner::new(self, None, device))
    }

    /// Builds a refiner for `codebook` `[K, D]` (kept inside the refiner, frozen, for the
    /// categorical heads); sets `codebook_size` to `K`. Every decision rule returns the
    /// backbone's tokens until the refiner is trained.
    pub fn init_with_codebook<B: ArBackend>(
        &self,
        codebook: &Codebook<B>,
        device: &B::Device,
    ) -> Result<TransformerRefiner<B>> {
        if codebook.dim() != self.code_dim {
            return Err(Error::Config(format!(
                "the codebook's code dimension {} differs from the refiner's code_dim {}",
                codebook.dim(),
                self.code_dim
            )));
        }
        let cfg = self.clone().with_codebook_size(codebook.size());
        cfg.validate()?;
        let codes: Tensor<B, 2> = Tensor::from_data(codebook.codes().to_data(), device);
        Ok(TransformerRefiner::new(&cfg, Some(codes), device))
    }

    /// The configuration a refiner built by [`init_with_codebook`](Self::init_with_codebook)
    /// for `codebook_size` codes carries (what to save beside its weights).
    pub fn for_codebook(&self, codebook_size: usize) -> Self {
        self.clone().with_codebook_size(codebook_size)
    }
}
