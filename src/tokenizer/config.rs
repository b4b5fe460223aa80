//! [`VqganConfig`]: one description of a taming-style VQGAN, read from open-MUSE, diffusers or
//! taming configuration files.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// The pixel range a VQGAN was trained on. [`crate::traits::Tokenizer`] always takes and returns
/// `[0, 1]`; the tokenizer converts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PixelRange {
    /// `[0, 1]` (open-MUSE / LVM, amused).
    ZeroOne,
    /// `[-1, 1]` (taming-transformers).
    MinusOneOne,
}

/// A VQGAN (Esser et al.; open-MUSE's `VQGANModel`; diffusers' `VQModel`) configuration.
///
/// Encoder: `conv_in`, per level `num_res_blocks` ResNet blocks (+ attention where the level's
/// resolution is in `attn_resolutions`) and a stride-2 downsample except at the last level, mid
/// blocks (+ mid attention), GroupNorm, SiLU, `conv_out` to `z_channels`, `quant_conv` to
/// `embed_dim`. Decoder mirrors it with `num_res_blocks + 1` blocks per level. Codes are
/// `num_embeddings × embed_dim`, matched by squared L2.
///
/// ```
/// use ar_refine::tokenizer::VqganConfig;
/// let c = VqganConfig::lvm();
/// assert_eq!((c.downsampling(), c.grid_size(), c.num_embeddings, c.embed_dim), (16, 16, 8192, 64));
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VqganConfig {
    /// Image channels in.
    pub in_channels: usize,
    /// Image channels out.
    pub out_channels: usize,
    /// Width of the first level (`ch` / `hidden_channels` / `block_out_channels[0]`).
    pub hidden_channels: usize,
    /// Width multiplier per level.
    pub channel_mult: Vec<usize>,
    /// ResNet blocks per encoder level (the decoder has one more).
    pub num_res_blocks: usize,
    /// Resolutions (feature-map sides) whose levels have attention blocks.
    pub attn_resolutions: Vec<usize>,
    /// Whether the mid blocks have attention.
    pub mid_attention: bool,
    /// Encoder output channels.
    pub z_channels: usize,
    /// Code dimension (`quant_conv` output).
    pub embed_dim: usize,
    /// Codebook size.
    pub num_embeddings: usize,
    /// Image side in pixels.
    pub resolution: usize,
    /// GroupNorm groups (32 in every released model).
    pub num_groups: usize,
    /// Commitment weight β of the VQ loss.
    pub commitment_cost: f64,
    /// Pixel range of the model.
    pub pixel_range: PixelRange,
}

impl VqganConfig {
    /// LVM's tokenizer (`openMUSE/vqgan-f16-8192-laion`, `amused/amused-256` `vqvae/`):
    /// 256×256 → 16×16 tokens, 8192 × 64 codes, no attention.
    pub fn lvm() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            hidden_channels: 128,
            channel_mult: vec![1, 2, 2, 4, 6],
            num_res_blocks: 2,
            attn_resolutions: vec![],
            mid_attention: false,
            z_channels: 64,
            embed_dim: 64,
            num_embeddings: 8192,
            resolution: 256,
            num_groups: 32,
            commitment_cost: 0.25,
            pixel_range: PixelRange::ZeroOne,
        }
    }

    /// Spatial reduction factor, `2^(levels − 1)`.
    pub fn downsampling(&self) -> usize {
        1 << self.channel_mult.len().saturating_sub(1)
    }

    /// Token grid side, `resolution / downsampling`.
    pub fn grid_size(&self) -> usize {
        self.resolution / self.downsampling()
    }

    /// A lower bound on the model's parameter count, computed without building it: the 3×3
    /// convolutions between equal widths that every layout has (the second convolution of each
    /// encoder and decoder residual block per level, both of the four mid-block residual
    /// blocks) plus the codebook; `None` if it overflows.
    pub fn param_lower_bound(&self) -> Option<u128> {
        let mut total = (self.num_embeddings as u128).checked_mul(self.embed_dim as u128)?;
        let blocks = 2 * self.num_res_blocks as u128 + 1;
        for level in 0..self.channel_mult.len() {
            let w = (self.hidden_channels as u128).checked_mul(self.channel_mult[level] as u128)?;
            total = total.checked_add(w.checked_mul(w)?.checked_mul(9)?.checked_mul(blocks)?)?;
        }
        let last = self
            .channel_mult
            .last()
            .map_or(Some(self.hidden_channels as u128), |m| {
                (self.hidden_channels as u128).checked_mul(*m as u128)
            })?;
        total.checked_add(last.checked_mul(last)?.checked_mul(9 * 8)?)
    }

    /// Width of level `i`.
    pub fn width(&self, level: usize) -> usize {
        self.hidden_channels * self.channel_mult[level]
    }

    /// Checks sizes: positive, widths divisible by the groups, resolution divisible by the
    /// downsampling.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(format!("VQGAN config: {m}")));
        if self.channel_mult.is_empty() || self.channel_mult.contains(&0) {
            return bad("channel_mult must be non-empty and positive".into());
        }
        let sizes = [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("hidden_channels", self.hidden_channels),
            ("num_res_blocks", self.num_res_blocks),
            ("z_channels", self.z_channels),
            ("embed_dim", self.embed_dim),
            ("num_embeddings", self.num_embeddings),
            ("num_groups", self.num_groups),
        ];
        if let Some((n, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return bad(format!("{n} must be >= 1"));
        }
        for l in 0..self.channel_mult.len() {
            if !self.width(l).is_multiple_of(self.num_groups) {
                return bad(format!(
                    "level {l} width {} is not divisible by num_groups {}",
                    self.width(l),
                    self.num_groups
                ));
            }
        }
        if self.resolution == 0 || !self.resolution.is_multiple_of(self.downsampling()) {
            return bad(format!(
                "resolution {} must be a positive multiple of the downsampling {}",
                self.resolution,
                self.downsampling()
            ));
        }
        Ok(())
    }

    /// Reads a configuration file in any of the three styles (detected from its keys):
    /// open-MUSE `VQGANModel` (`hidden_channels`, ...), diffusers `VQModel`
    /// (`block_out_channels`, ...) or taming (`ddconfig` with `embed_dim`/`n_embed`, possibly
    /// under `model.params`, i.e. the YAML's content as JSON) or this crate's own format (the
    /// serialised struct, as [`crate::tokenizer::Vqgan::save`] writes it). A directory means its
    /// `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let mut path = path.as_ref().to_path_buf();
        if path.is_dir() {
            path = path.join("config.json");
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| Error::json(path.display().to_string(), e))?;
        Self::from_json(&v).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// [`VqganConfig::from_file`] on parsed JSON.
    pub fn from_json(v: &Value) -> Result<Self> {
        let c = if v.get("pixel_range").is_some() {
            serde_json::from_value::<Self>(v.clone())
                .map_err(|e| Error::json("an ar-refine VQGAN config", e))?
        } else if let Some(p) = v.pointer("/model/params").or_else(|| v.get("params")) {
            Self::from_taming(p)?
        } else if v.get("ddconfig").is_some() {
            Self::from_taming(v)?
        } else if v.get("block_out_channels").is_some() {
            Self::from_diffusers(v)?
        } else if v.get("hidden_channels").is_some() {
            Self::from_open_muse(v)?
        } else {
            return Err(Error::Config(
                "not a VQGAN config (expected open-MUSE, diffusers VQModel, taming or ar-refine keys)".into(),
            ));
        };
        c.validate()?;
        Ok(c)
    }

    fn from_open_muse(v: &Value) -> Result<Self> {
        if v.get("resample_with_conv").and_then(Value::as_bool) == Some(false) {
            return Err(Error::Config(
                "resample_with_conv = false (pooling resamplers) is not supported".into(),
            ));
        }
        Ok(Self {
            in_channels: usize_or(v, "num_channels", 3)?,
            out_channels: usize_or(v, "num_channels", 3)?,
            hidden_channels: usize_req(v, "hidden_channels")?,
            channel_mult: usize_list(v, "channel_mult")?,
            num_res_blocks: usize_req(v, "num_res_blocks")?,
            attn_resolutions: usize_list_or_empty(v, "attn_resolutions")?,
            mid_attention: !v
                .get("no_attn_mid_block")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            z_channels: usize_req(v, "z_channels")?,
            embed_dim: usize_req(v, "quantized_embed_dim")?,
            num_embeddings: usize_req(v, "num_embeddings")?,
            resolution: usize_or(v, "resolution", 256)?,
            num_groups: usize_or(v, "num_groups", 32)?,
            commitment_cost: v.get("commitment_cost").and_then(Value::as_f64).unwrap_or(0.25),
            pixel_range: PixelRange::ZeroOne,
        })
    }

    fn from_diffusers(v: &Value) -> Result<Self> {
        let widths = usize_list(v, "block_out_channels")?;
        // Found by the `vqgan_config` fuzz target: `[0, …]` divided by zero, `[]` indexed out.
        let first = match widths.first() {
            Some(&w) if w > 0 => w,
            _ => {
                return Err(Error::Config(format!(
                    "block_out_channels {widths:?} must be non-empty and start with a width >= 1"
                )))
            }
        };
        if widths.iter().any(|w| w % first != 0) {
            return Err(Error::Config(format!(
                "block_out_channels {widths:?} are not multiples of the first"
            )));
        }
        if let Some(t) = v.get("norm_type").and_then(Value::as_str) {
            if t != "group" {
                return Err(Error::Config(format!(
                    "norm_type {t:?} is not supported (only \"group\")"
                )));
            }
        }
        let resolution = usize_or(v, "sample_size", 256)?;
        let down: Vec<String> = v
            .get("down_block_types")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
            .unwrap_or_default();
        let attn_resolutions = down
            .iter()
            .enumerate()
            .filter(|(_, t)| t.starts_with("Attn"))
            .map(|(i, _)| resolution >> i)
            .collect();
        let latent = usize_req(v, "latent_channels")?;
        Ok(Self {
            in_channels: usize_or(v, "in_channels", 3)?,
            out_channels: usize_or(v, "out_channels", 3)?,
            hidden_channels: first,
            channel_mult: widths.iter().map(|w| w / first).collect(),
            num_res_blocks: usize_or(v, "layers_per_block", 1)?,
            attn_resolutions,
            mid_attention: v
                .get("mid_block_add_attention")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            z_channels: latent,
            embed_dim: v
                .get("vq_embed_dim")
                .and_then(Value::as_u64)
                .map_or(latent, |x| x as usize),
            num_embeddings: usize_req(v, "num_vq_embeddings")?,
            resolution,
            num_groups: usize_or(v, "norm_num_groups", 32)?,
            commitment_cost: 0.25,
            pixel_range: PixelRange::ZeroOne,
        })
    }

    fn from_taming(p: &Value) -> Result<Self> {
        let dd = p
            .get("ddconfig")
            .ok_or_else(|| Error::Config("taming config has no ddconfig".into()))?;
        if dd.get("double_z").and_then(Value::as_bool) == Some(true) {
            return Err(Error::Config(
                "double_z = true is a KL autoencoder, not a VQGAN".into(),
            ));
        }
        Ok(Self {
            in_channels: usize_or(dd, "in_channels", 3)?,
            out_channels: usize_or(dd, "out_ch", 3)?,
            hidden_channels: usize_req(dd, "ch")?,
            channel_mult: usize_list(dd, "ch_mult")?,
            num_res_blocks: usize_req(dd, "num_res_blocks")?,
            attn_resolutions: usize_list_or_empty(dd, "attn_resolutions")?,
            mid_attention: true,
            z_channels: usize_req(dd, "z_channels")?,
            embed_dim: usize_req(p, "embed_dim")?,
            num_embeddings: usize_req(p, "n_embed")?,
            resolution: usize_or(dd, "resolution", 256)?,
            num_groups: 32,
            commitment_cost: 0.25,
            pixel_range: PixelRange::MinusOneOne,
        })
    }
}

fn usize_req(v: &Value, key: &str) -> Result<usize> {
    v.get(key)
        .and_then(Value::as_u64)
        .map(|x| x as usize)
        .ok_or_else(|| Error::Config(format!("missing or non-integer {key:?}")))
}

fn usize_or(v: &Value, key: &str, default: usize) -> Result<usize> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(_) => usize_req(v, key),
    }
}

fn usize_list(v: &Value, key: &str) -> Result<Vec<usize>> {
    let a = v
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| Error::Config(format!("missing list {key:?}")))?;
    let out: Option<Vec<usize>> = a.iter().map(|x| x.as_u64().map(|x| x as usize)).collect();
    match out {
        Some(o) if !o.is_empty() => Ok(o),
        _ => Err(Error::Config(format!(
            "{key:?} must be a non-empty list of integers"
        ))),
    }
}

fn usize_list_or_empty(v: &Value, key: &str) -> Result<Vec<usize>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(a)) if a.is_empty() => Ok(vec![]),
        Some(_) => usize_list(v, key),
    }
}
