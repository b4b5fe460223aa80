//! The LLaMA model: construction, HF checkpoint loading/saving and the forward pass.

use crate::backend::ArBackend;
use std::path::Path;

use burn::module::{Module, Param};
use burn::tensor::module::embedding;
use burn::tensor::{Distribution, Int, Tensor, TensorData};

use super::cache::KvCache;
use super::config::LlamaConfig;
use super::layers::{linear_t, rope_tables, DecoderLayer, Proj, RmsNorm, Step};
use crate::checks::{ensure_ids_in, expect_non_empty, read_f32};
use crate::error::{Error, Result};
use crate::io::{save_safetensors, KeyReport, SafetensorsFile, StoreDtype, TensorSource};

/// A LLaMA causal language model (HF `LlamaForCausalLM` layout), the built-in
/// [`crate::traits::ArBackbone`].
///
/// Weights: `embed_tokens [vocab, hidden]`, per layer q/k/v/o and gate/up/down projections,
/// RMSNorms, final norm and `lm_head [vocab, hidden]` (absent when tied). Every matrix is
/// stored in HF's layout (`[out, in]`), so checkpoints load and save without a transpose. RoPE uses HF's
/// rotate-half convention, so HF checkpoints load without permuting q/k.
///
/// ```
/// use ar_refine::backbone::{Llama, LlamaConfig};
/// use ar_refine::ArBackbone;
/// use burn::backend::NdArray;
/// use burn::tensor::{Int, Tensor};
/// let d = Default::default();
/// let model = Llama::<NdArray>::new(LlamaConfig::new(40, 16, 32, 2, 2).with_kv_heads(1), &d).unwrap();
/// let tokens = Tensor::<NdArray, 2, Int>::from_ints([[1, 2, 3]], &d);
/// assert_eq!(model.forward(tokens, false).unwrap().logits.dims(), [1, 3, 40]);
/// ```
#[derive(Module, Debug)]
pub struct Llama<B: ArBackend> {
    pub(crate) embed_tokens: Param<Tensor<B, 2>>,
    pub(crate) layers: Vec<DecoderLayer<B>>,
    pub(crate) norm: RmsNorm<B>,
    /// `[vocab, hidden]` (HF's layout); `None` when tied to the embeddings.
    pub(crate) lm_head: Option<Param<Tensor<B, 2>>>,
    #[module(skip)]
    pub(crate) config: LlamaConfig,
}

/// Where one HF tensor lives in the model.
#[derive(Clone, Copy)]
enum Slot {
    Embed,
    Head,
    FinalNorm,
    Norm(usize, bool),
    Proj(usize, ProjName),
}

/// The seven projections of a layer, with their HF names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProjName {
    /// `self_attn.q_proj`
    Q,
    /// `self_attn.k_proj`
    K,
    /// `self_attn.v_proj`
    V,
    /// `self_attn.o_proj`
    O,
    /// `mlp.gate_proj`
    Gate,
    /// `mlp.up_proj`
    Up,
    /// `mlp.down_proj`
    Down,
}

impl ProjName {
    /// Every projection.
    pub const ALL: [ProjName; 7] = [
        Self::Q,
        Self::K,
        Self::V,
        Self::O,
        Self::Gate,
        Self::Up,
        Self::Down,
    ];

    /// The HF module path inside a layer, e.g. `self_attn.q_proj`.
    pub fn hf_path(self) -> &'static str {
        match self {
            Self::Q => "self_attn.q_proj",
            Self::K => "self_attn.k_proj",
            Self::V => "self_attn.v_proj",
            Self::O => "self_attn.o_proj",
            Self::Gate => "mlp.gate_proj",
            Self::Up => "mlp.up_proj",
            Self::Down => "mlp.down_proj",
        }
    }

    /// The short name (`q_proj`, ..., `down_proj`), as PEFT's `target_modules` use it.
    pub fn short(self) -> &'static str {
        self.hf_path().rsplit('.').next().unwrap_or("")
    }

    /// Parses a short name.
    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.short() == s)
            .ok_or_else(|| Error::Config(format!("unknown projection {s:?}; expected one of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj")))
    }

    /// `(in, out)` sizes under `c`.
    pub fn dims(self, c: &LlamaConfig) -> (usize, usize) {
        let (h, q, kv, i) = (
            c.hidden_size,
            c.num_attention_heads * c.head_dim(),
            c.kv_heads() * c.head_dim(),
            c.intermediate_size,
        );
        match self {
            Self::Q => (h, q),
            Self::K | Self::V => (h, kv),
            Self::O => (q, h),
            Self::Gate | Self::Up => (h, i),
            Self::Down => (i, h),
        }
    }
}

impl<B: ArBackend> Llama<B> {
    /// A randomly initialised model (normal, std `initializer_range`; norms 1).
    pub fn new(config: LlamaConfig, device: &B::Device) -> Result<Self> {
        config.validate()?;
        let std = config.initializer_range;
        let (v, h) = (config.vocab_size, config.hidden_size);
        Ok(Self {
            embed_tokens: Param::from_tensor(Tensor::random([v, h], Distribution::Normal(0.0, std), device)),
            layers: (0..config.num_hidden_layers)
                .map(|_| DecoderLayer::init(&config, device))
                .collect(),
            norm: RmsNorm::init(h, config.rms_norm_eps, device),
            lm_head: (!config.tie_word_embeddings)
                .then(|| Param::from_tensor(Tensor::random([v, h], Distribution::Normal(0.0, std), device))),
            config,
        })
    }

    /// Loads an HF model directory: `config.json` plus `model.safetensors` or a sharded
    /// `model.safetensors.index.json`. Weights in f16/bf16/f32 load into the backend's float type.
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let dir = dir.as_ref();
        let config = LlamaConfig::from_file(dir)?;
        let file = SafetensorsFile::open(dir)?;
        Self::from_checkpoint(config, &file, device)
    }

    /// Builds the model from `config` and the HF-named tensors of `file` (safetensors, or a
    /// PyTorch `.bin` through [`crate::io::open_checkpoint`]). Every missing key, unexpected key
    /// and shape mismatch is listed in one [`Error::Checkpoint`].
    pub fn from_checkpoint(config: LlamaConfig, file: &dyn TensorSource, device: &B::Device) -> Result<Self> {
        config.validate()?;
        crate::device_watch::watch_device_panics();
        crate::io::check_param_budget(file, config.param_count(), "the LLaMA config")?;
        let mut report = KeyReport::new(file);
        report.ignore_unused("rotary_emb.inv_freq");
        if config.tie_word_embeddings {
            report.ignore_unused("lm_head.weight");
        }
        // every key and shape checked before anything is read or allocated; then one tensor at a
        // time from the (mapped) file in its stored type, straight to the device
        let slots = slots(&config);
        for (key, _, shape) in &slots {
            report.expect(key, shape);
        }
        report.finish()?;
        let mut model = Self::new_uninit(config, device);
        for (key, slot, _) in slots {
            model.set_slot(slot, file.read_data(&key)?, device);
        }
        Ok(model)
    }

    /// Same structure as [`Llama::new`], with zero weights (cheap; every weight is then set).
    fn new_uninit(config: LlamaConfig, device: &B::Device) -> Self {
        let zeros1 = |n: usize| Param::from_tensor(Tensor::<B, 1>::zeros([n], device));
        let zeros2 = |a: usize, b: usize| Param::from_tensor(Tensor::<B, 2>::zeros([a, b], device));
        let (v, h) = (config.vocab_size, config.hidden_size);
        let layer = |_| {
            let proj = |p: ProjName| {
                let (i, o) = p.dims(&config);
                Proj::from_tensor(Tensor::zeros([o, i], device))
            };
            let norm = || RmsNorm {
                weight: zeros1(h),
                eps: config.rms_norm_eps,
            };
            DecoderLayer {
                input_layernorm: norm(),
                self_attn: super::layers::Attention {
                    q_proj: proj(ProjName::Q),
                    k_proj: proj(ProjName::K),
                    v_proj: proj(ProjName::V),
                    o_proj: proj(ProjName::O),
                    heads: config.num_attention_heads,
                    kv_heads: config.kv_heads(),
                    head_dim: config.head_dim(),
                },
                post_attention_layernorm: norm(),
                mlp: super::layers::Mlp {
                    gate_proj: proj(ProjName::Gate),
                    up_proj: proj(ProjName::Up),
                    down_proj: proj(ProjName::Down),
                },
            }
        };
        Self {
            embed_tokens: zeros2(v, h),
            layers: (0..config.num_hidden_layers).map(layer).collect(),
            norm: RmsNorm {
                weight: zeros1(h),
                eps: config.rms_norm_eps,
            },
            lm_head: (!config.tie_word_embeddings).then(|| zeros2(v, h)),
            config,
        }
    }

    /// Puts `v` (its shape checked by the caller with a [`KeyReport`]) into `slot`.
    fn set_slot(&mut self, slot: Slot, v: TensorData, device: &B::Device) {
        let t2 = |v: TensorData| Tensor::<B, 2>::from_data(v, device);
        let t1 = |v: TensorData| Tensor::<B, 1>::from_data(v, device);
        match slot {
            Slot::Embed => self.embed_tokens = Param::from_tensor(t2(v)),
            Slot::Head => self.lm_head = Some(Param::from_tensor(t2(v))),
            Slot::FinalNorm => self.norm.weight = Param::from_tensor(t1(v)),
            Slot::Norm(l, post) => {
                let layer = &mut self.layers[l];
                let n = if post {
                    &mut layer.post_attention_layernorm
                } else {
                    &mut layer.input_layernorm
                };
                n.weight = Param::from_tensor(t1(v));
            }
            Slot::Proj(l, p) => self.proj_mut(l, p).weight = Param::from_tensor(t2(v)),
        }
    }

    pub(crate) fn proj_mut(&mut self, layer: usize, p: ProjName) -> &mut Proj<B> {
        let l = &mut self.layers[layer];
        match p {
            ProjName::Q => &mut l.self_attn.q_proj,
            ProjName::K => &mut l.self_attn.k_proj,
            ProjName::V => &mut l.self_attn.v_proj,
            ProjName::O => &mut l.self_attn.o_proj,
            ProjName::Gate => &mut l.mlp.gate_proj,
            ProjName::Up => &mut l.mlp.up_proj,
            ProjName::Down => &mut l.mlp.down_proj,
        }
    }

    pub(crate) fn proj(&self, layer: usize, p: ProjName) -> &Proj<B> {
        let l = &self.layers[layer];
        match p {
            ProjName::Q => &l.self_attn.q_proj,
            ProjName::K => &l.self_attn.k_proj,
            ProjName::V => &l.self_attn.v_proj,
            ProjName::O => &l.self_attn.o_proj,
            ProjName::Gate => &l.mlp.gate_proj,
            ProjName::Up => &l.mlp.up_proj,
            ProjName::Down => &l.mlp.down_proj,
        }
    }

    /// Saves an HF model directory (`config.json` + `model.safetensors`, HF key names and
    /// layouts) that [`Llama::from_pretrained`] and `transformers` both read. LoRA adapters are
    /// not included (see [`crate::backbone::save_lora`]). Files are written atomically.
    pub fn save_pretrained(&self, dir: impl AsRef<Path>, dtype: StoreDtype) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut tensors = Vec::new();
        for (key, slot, shape) in slots(&self.config) {
            let v = match slot {
                Slot::Embed => read_f32(self.embed_tokens.val())?,
                Slot::Head => match &self.lm_head {
                    Some(h) => read_f32(h.val())?,
                    None => continue,
                },
                Slot::FinalNorm => read_f32(self.norm.weight.val())?,
                Slot::Norm(l, post) => {
                    let layer = &self.layers[l];
                    let n = if post {
                        &layer.post_attention_layernorm
                    } else {
                        &layer.input_layernorm
                    };
                    read_f32(n.weight.val())?
                }
                Slot::Proj(l, p) => read_f32(self.proj(l, p).weight.val())?,
            };
            tensors.push((key, shape, v));
        }
        save_safetensors(dir.join("model.safetensors"), &tensors, dtype)?;
        self.config.save(dir.join("config.json"))
    }

    /// The configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// An empty KV cache for `batch` sequences of up to `capacity` tokens (at most the context).
    pub fn new_cache(&self, batch: usize, capacity: usize, device: &B::Device) -> Result<KvCache<B>> {
        if batch == 0 || capacity == 0 || capacity > self.config.max_position_embeddings {
            return Err(Error::Config(format!(
                "KV cache needs batch >= 1 and 1 <= capacity <= context {}, got batch {batch}, capacity {capacity}",
                self.config.max_position_embeddings
            )));
        }
        Ok(KvCache::new(&self.config, batch, capacity, device))
    }

    /// Final hidden states `[b, n, hidden]` of `tokens` `[b, n]` (vocabulary ids), placed after
    /// the tokens already in `cache` (or at position 0 without a cache). Checks shapes, ids and
    /// the cache's room.
    pub fn forward_hidden(
        &self,
        tokens: Tensor<B, 2, Int>,
        cache: Option<&mut KvCache<B>>,
    ) -> Result<Tensor<B, 3>> {
        let [b, n] = tokens.dims();
        expect_non_empty("llama tokens", "[b, n]", &[b, n])?;
        ensure_ids_in(&tokens, 0..self.config.vocab_size as i64, "llama tokens")?;
        let start = cache.as_ref().map_or(0, |c| c.len);
        let limit = cache
            .as_ref()
            .map_or(self.config.max_position_embeddings, |c| c.capacity);
        if start + n > limit {
            return Err(Error::Config(format!(
                "{} tokens after {start} cached ones exceed the {} available positions",
                n, limit
            )));
        }
        if let Some(c) = cache.as_ref() {
            if c.batch != b {
                return Err(Error::shape(
                    "llama tokens with cache",
                    format!("[{}, n]", c.batch),
                    &[b, n],
                ));
            }
        }
        Ok(self.hidden_unchecked(tokens, cache))
    }

    pub(crate) fn hidden_unchecked(
        &self,
        tokens: Tensor<B, 2, Int>,
        mut cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let [_, n] = tokens.dims();
        let device = tokens.device();
        let start = cache.as_ref().map_or(0, |c| c.len);
        let (cos, sin) = rope_tables::<B>(start, n, self.config.head_dim(), self.config.rope_theta, &device);
        let step = Step {
            start,
            cos: cos.unsqueeze::<4>(),
            sin: sin.unsqueeze::<4>(),
        };
        let mut x = embedding(self.embed_tokens.val(), tokens);
        // Each layer's last residual add happens in the next norm (see `DecoderLayer::forward`).
        let mut pending = None;
        for (i, layer) in self.layers.iter().enumerate() {
            let lc = cache.as_mut().map(|c| &mut c.layers[i]);
            let (next, delta) = layer.forward(x, pending, &step, lc);
            x = next;
            pending = Some(delta);
        }
        if let Some(c) = cache {
            c.len = start + n;
        }
        self.norm.forward_add(x, pending).1
    }

    /// Logits `[b, n, vocab]` of final hidden states `[b, n, hidden]`.
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        match &self.lm_head {
            Some(w) => linear_t(hidden, w.val()),
            None => linear_t(hidden, self.embed_tokens.val()),
        }
    }
}

/// Every HF tensor of a LLaMA: `(key, HF shape, slot)`.
fn slots(c: &LlamaConfig) -> Vec<(String, Slot, Vec<usize>)> {
    let (v, h) = (c.vocab_size, c.hidden_size);
    let mut out = vec![("model.embed_tokens.weight".to_string(), Slot::Embed, vec![v, h])];
    for l in 0..c.num_hidden_layers {
        for p in ProjName::ALL {
            let (i, o) = p.dims(c);
            out.push((
                format!("model.layers.{l}.{}.weight", p.hf_path()),
                Slot::Proj(l, p),
                vec![o, i],
            ));
        }
        out.push((
            format!("model.layers.{l}.input_layernorm.weight"),
            Slot::Norm(l, false),
            vec![h],
        ));
        out.push((
            format!("model.layers.{l}.post_attention_layernorm.weight"),
            Slot::Norm(l, true),
            vec![h],
        ));
    }
    out.push(("model.norm.weight".into(), Slot::FinalNorm, vec![h]));
    if !c.tie_word_embeddings {
        out.push(("lm_head.weight".into(), Slot::Head, vec![v, h]));
    }
    out
}

/// Row-major `[rows, cols]` → `[cols, rows]`.
pub(crate) fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}
