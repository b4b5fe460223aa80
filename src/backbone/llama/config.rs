//! [`LlamaConfig`]: the fields of a Hugging Face LLaMA `config.json` that the model uses.

use std::ops::Range;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10_000.0
}
fn default_ctx() -> usize {
    2048
}
fn default_init() -> f64 {
    0.02
}
fn default_act() -> String {
    "silu".into()
}

/// A LLaMA configuration in Hugging Face `config.json` naming.
///
/// `image_token_start..image_token_end` (our extension; absent from HF files) are the
/// vocabulary ids that are image codes: LVM's are `0..8192` of a vocabulary of 8292. When
/// absent, the whole vocabulary counts as image codes.
///
/// ```
/// use ar_refine::backbone::LlamaConfig;
/// let c = LlamaConfig::lvm_7b();
/// assert_eq!((c.hidden_size, c.num_hidden_layers, c.head_dim()), (4096, 32, 128));
/// assert_eq!(c.image_tokens(), 0..8192);
/// let small = LlamaConfig::new(512, 64, 128, 2, 4).with_kv_heads(2);
/// small.validate().unwrap();
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Vocabulary size (logit width).
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// SwiGLU inner width.
    pub intermediate_size: usize,
    /// Transformer layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); defaults to `num_attention_heads`.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width; defaults to `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base θ.
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// Context length.
    #[serde(default = "default_ctx")]
    pub max_position_embeddings: usize,
    /// Whether `lm_head` shares the embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Standard deviation of the normal initialisation (HF `initializer_range`).
    #[serde(default = "default_init")]
    pub initializer_range: f64,
    /// Activation; only `"silu"` is supported.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Unsupported when set (a non-null value is rejected rather than ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<serde_json::Value>,
    /// transformers ≥ 5 writes RoPE settings here (`{"rope_theta": .., "rope_type": "default"}`);
    /// its `rope_theta` wins over the top-level one; rope types other than `default` are rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<serde_json::Value>,
    /// Unsupported when `true`.
    #[serde(default)]
    pub attention_bias: bool,
    /// Unsupported when `true`.
    #[serde(default)]
    pub mlp_bias: bool,
    /// First image-code id (ours; default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_token_start: Option<usize>,
    /// One past the last image-code id (ours; default `vocab_size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_token_end: Option<usize>,
}

impl LlamaConfig {
    /// A config with the given sizes and HF defaults elsewhere (ε 1e-6, θ 10 000, context
    /// 2048, untied head, no GQA).
    pub fn new(vocab: usize, hidden: usize, intermediate: usize, layers: usize, heads: usize) -> Self {
        Self {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: intermediate,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: None,
            head_dim: None,
            rms_norm_eps: default_eps(),
            rope_theta: default_theta(),
            max_position_embeddings: default_ctx(),
            tie_word_embeddings: false,
            initializer_range: default_init(),
            hidden_act: default_act(),
            rope_scaling: None,
            rope_parameters: None,
            attention_bias: false,
            mlp_bias: false,
            image_token_start: None,
            image_token_end: None,
        }
    }

    /// LVM-7B (`Emma02/LVM_ckpts`): hidden 4096, intermediate 11008, 32 layers, 32 heads,
    /// vocabulary 8292 of which `0..8192` are image codes, context 4096.
    pub fn lvm_7b() -> Self {
        Self::new(8292, 4096, 11008, 32, 32)
            .with_context(4096)
            .with_image_tokens(0..8192)
    }

    /// LVM's 100M shape: hidden 640, intermediate 1664, 22 layers, 10 heads.
    pub fn lvm_100m() -> Self {
        Self::new(8292, 640, 1664, 22, 10)
            .with_context(4096)
            .with_image_tokens(0..8192)
    }

    /// Sets the key/value head count (GQA).
    pub fn with_kv_heads(mut self, n: usize) -> Self {
        self.num_key_value_heads = Some(n);
        self
    }

    /// Sets the context length.
    pub fn with_context(mut self, n: usize) -> Self {
        self.max_position_embeddings = n;
        self
    }

    /// Sets the image-code ids.
    pub fn with_image_tokens(mut self, ids: Range<usize>) -> Self {
        self.image_token_start = Some(ids.start);
        self.image_token_end = Some(ids.end);
        self
    }

    /// Ties `lm_head` to the embeddings.
    pub fn with_tied_embeddings(mut self, tied: bool) -> Self {
        self.tie_word_embeddings = tied;
        self
    }

    /// Key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The image-code vocabulary ids.
    pub fn image_tokens(&self) -> Range<usize> {
        self.image_token_start.unwrap_or(0)..self.image_token_end.unwrap_or(self.vocab_size)
    }

    /// Reads `config.json` (a file, or a directory containing one).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let mut path = path.as_ref().to_path_buf();
        if path.is_dir() {
            path = path.join("config.json");
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let mut c: Self = serde_json::from_str(&text)
            .map_err(|e| Error::json(format!("{} (a LLaMA config.json)", path.display()), e))?;
        if let Some(theta) = c
            .rope_parameters
            .as_ref()
            .and_then(|r| r.get("rope_theta"))
            .and_then(|t| t.as_f64())
        {
            c.rope_theta = theta;
        }
        c.validate()?;
        Ok(c)
    }

    /// Writes this config as pretty JSON (atomically).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::json("the LLaMA config", e))?;
        crate::io::write_atomic(path, text.as_bytes())
    }

    /// Checks sizes and rejects features this implementation does not have.
    /// The number of parameters of the model this config describes (embedding, layers, final
    /// norm and an untied LM head), computed without building it; `None` if it overflows.
    pub fn param_count(&self) -> Option<u128> {
        let (v, h, i) = (
            self.vocab_size as u128,
            self.hidden_size as u128,
            self.intermediate_size as u128,
        );
        let (heads, kv, hd) = (
            self.num_attention_heads as u128,
            self.kv_heads() as u128,
            self.head_dim() as u128,
        );
        let attn = h.checked_mul(hd)?.checked_mul(2 * heads + 2 * kv)?;
        let mlp = h.checked_mul(i)?.checked_mul(3)?;
        let layer = attn.checked_add(mlp)?.checked_add(2 * h)?;
        let head = if self.tie_word_embeddings { 1 } else { 2 };
        layer
            .checked_mul(self.num_hidden_layers as u128)?
            .checked_add(v.checked_mul(h)?.checked_mul(head)?)?
            .checked_add(h)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(format!("LLaMA config: {m}")));
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.kv_heads()),
            ("head_dim", self.head_dim()),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return bad(format!("{name} must be >= 1"));
        }
        if !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.kv_heads()
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return bad(format!("head_dim {} must be even for RoPE", self.head_dim()));
        }
        if self.hidden_act != "silu" {
            return bad(format!(
                "hidden_act {:?} is not supported (only \"silu\")",
                self.hidden_act
            ));
        }
        if self.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return bad("rope_scaling is not supported".into());
        }
        let rope_type = self
            .rope_parameters
            .as_ref()
            .and_then(|r| r.get("rope_type"))
            .and_then(|t| t.as_str())
            .unwrap_or("default");
        if rope_type != "default" {
            return bad(format!(
                "rope_type {rope_type:?} is not supported (only \"default\")"
            ));
        }
        if self.attention_bias || self.mlp_bias {
            return bad("attention_bias / mlp_bias are not supported".into());
        }
        if !(self.rms_norm_eps > 0.0 && self.rope_theta > 0.0) {
            return bad("rms_norm_eps and rope_theta must be > 0".into());
        }
        let img = self.image_tokens();
        if img.is_empty() || img.end > self.vocab_size {
            return bad(format!(
                "image tokens {img:?} must be non-empty and inside 0..{}",
                self.vocab_size
            ));
        }
        Ok(())
    }
}
