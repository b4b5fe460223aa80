//! The VQGAN network (encoder, codebook, decoder) and the names of its tensors in each
//! checkpoint layout.

use crate::backend::ArBackend;
use burn::module::{Module, Param};
use burn::nn::conv::Conv2d;
use burn::nn::GroupNorm;
use burn::tensor::{Distribution, Tensor};

use super::blocks::{
    apply_conv, conv, downsample, norm, norm_silu, upsample, AttnBlock, ConvPath, ResnetBlock,
};
use super::config::VqganConfig;

/// One resolution level: ResNet blocks, optional attention after each, optional resampler.
#[derive(Module, Debug)]
pub struct Level<B: ArBackend> {
    pub(crate) blocks: Vec<ResnetBlock<B>>,
    pub(crate) attns: Vec<AttnBlock<B>>,
    pub(crate) resample: Option<Conv2d<B>>,
}

/// `block_1`, optional attention, `block_2`.
#[derive(Module, Debug)]
pub struct Mid<B: ArBackend> {
    pub(crate) block_1: ResnetBlock<B>,
    pub(crate) attn_1: Option<AttnBlock<B>>,
    pub(crate) block_2: ResnetBlock<B>,
}

impl<B: ArBackend> Mid<B> {
    fn new(c: usize, cfg: &VqganConfig, device: &B::Device) -> Self {
        Self {
            block_1: ResnetBlock::new(c, c, cfg.num_groups, device),
            attn_1: cfg
                .mid_attention
                .then(|| AttnBlock::new(c, cfg.num_groups, device)),
            block_2: ResnetBlock::new(c, c, cfg.num_groups, device),
        }
    }

    fn forward(&self, path: ConvPath, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = self.block_1.forward(path, x);
        let x = match &self.attn_1 {
            Some(a) => a.forward(path, x),
            None => x,
        };
        self.block_2.forward(path, x)
    }
}

/// The whole VQGAN. Levels are indexed as in taming: `dec_levels[0]` is the highest
/// resolution (run last).
#[derive(Module, Debug)]
pub struct VqganModel<B: ArBackend> {
    pub(crate) enc_conv_in: Conv2d<B>,
    pub(crate) enc_levels: Vec<Level<B>>,
    pub(crate) enc_mid: Mid<B>,
    pub(crate) enc_norm_out: GroupNorm<B>,
    pub(crate) enc_conv_out: Conv2d<B>,
    pub(crate) quant_conv: Conv2d<B>,
    /// `[K, D]`.
    pub(crate) codebook: Param<Tensor<B, 2>>,
    pub(crate) post_quant_conv: Conv2d<B>,
    pub(crate) dec_conv_in: Conv2d<B>,
    pub(crate) dec_mid: Mid<B>,
    pub(crate) dec_levels: Vec<Level<B>>,
    pub(crate) dec_norm_out: GroupNorm<B>,
    pub(crate) dec_conv_out: Conv2d<B>,
    #[module(skip)]
    pub(crate) config: VqganConfig,
    /// How the convolutions run.
    #[module(skip)]
    pub(crate) conv_path: ConvPath,
}

impl<B: ArBackend> VqganModel<B> {
    /// Random initialisation (Burn's defaults for convolutions; codes uniform in `±1/K`, as
    /// taming initialises them). `config` must be valid.
    pub(crate) fn new(cfg: &VqganConfig, device: &B::Device) -> Self {
        let n = cfg.channel_mult.len();
        let g = cfg.num_groups;
        let attn_at = |level: usize| cfg.attn_resolutions.contains(&(cfg.resolution >> level));
        let enc_levels = (0..n)
            .map(|i| {
                let c_in = if i == 0 {
                    cfg.hidden_channels
                } else {
                    cfg.width(i - 1)
                };
                let c_out = cfg.width(i);
                Level {
                    blocks: (0..cfg.num_res_blocks)
                        .map(|j| ResnetBlock::new(if j == 0 { c_in } else { c_out }, c_out, g, device))
                        .collect(),
                    attns: if attn_at(i) {
                        (0..cfg.num_res_blocks)
                            .map(|_| AttnBlock::new(c_out, g, device))
                            .collect()
                    } else {
                        vec![]
                    },
                    resample: (i + 1 != n).then(|| conv(c_out, c_out, 3, 2, 0, device)),
                }
            })
            .collect();
        let top = cfg.width(n - 1);
        let dec_levels = (0..n)
            .map(|i| {
                let c_in = if i + 1 == n { top } else { cfg.width(i + 1) };
                let c_out = cfg.width(i);
                Level {
                    blocks: (0..=cfg.num_res_blocks)
                        .map(|j| ResnetBlock::new(if j == 0 { c_in } else { c_out }, c_out, g, device))
                        .collect(),
                    attns: if attn_at(i) {
                        (0..=cfg.num_res_blocks)
                            .map(|_| AttnBlock::new(c_out, g, device))
                            .collect()
                    } else {
                        vec![]
                    },
                    resample: (i != 0).then(|| conv(c_out, c_out, 3, 1, 1, device)),
                }
            })
            .collect();
        let k = cfg.num_embeddings as f64;
        Self {
            enc_conv_in: conv(cfg.in_channels, cfg.hidden_channels, 3, 1, 1, device),
            enc_levels,
            enc_mid: Mid::new(top, cfg, device),
            enc_norm_out: norm(top, g, device),
            enc_conv_out: conv(top, cfg.z_channels, 3, 1, 1, device),
            quant_conv: conv(cfg.z_channels, cfg.embed_dim, 1, 1, 0, device),
            codebook: Param::from_tensor(Tensor::random(
                [cfg.num_embeddings, cfg.embed_dim],
                Distribution::Uniform(-1.0 / k, 1.0 / k),
                device,
            )),
            post_quant_conv: conv(cfg.embed_dim, cfg.z_channels, 1, 1, 0, device),
            dec_conv_in: conv(cfg.z_channels, top, 3, 1, 1, device),
            dec_mid: Mid::new(top, cfg, device),
            dec_levels,
            dec_norm_out: norm(cfg.width(0), g, device),
            dec_conv_out: conv(cfg.width(0), cfg.out_channels, 3, 1, 1, device),
            config: cfg.clone(),
            conv_path: ConvPath::default(),
        }
    }

    /// The codebook `[num_embeddings, embed_dim]` (a parameter: gradients flow into it).
    pub fn codebook(&self) -> Tensor<B, 2> {
        self.codebook.val()
    }

    /// Images `[b, C, H, W]` in the model's pixel range → pre-quantisation latents
    /// `[b, embed_dim, H/f, W/f]` (`quant_conv` output).
    pub fn encode_latent(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let p = self.conv_path;
        let mut h = apply_conv(p, &self.enc_conv_in, x);
        let n = self.enc_levels.len();
        for (i, level) in self.enc_levels.iter().enumerate() {
            h = run_blocks(p, level, h);
            if let Some(c) = &level.resample {
                debug_assert!(i + 1 < n);
                h = downsample(p, c, h);
            }
        }
        let h = self.enc_mid.forward(p, h);
        let h = apply_conv(p, &self.enc_conv_out, norm_silu(&self.enc_norm_out, h));
        apply_conv(p, &self.quant_conv, h)
    }

    /// Quantised latents `[b, embed_dim, h, w]` → images `[b, C, H, W]` in the model's range.
    pub fn decode_latent(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        let p = self.conv_path;
        let h = apply_conv(p, &self.dec_conv_in, apply_conv(p, &self.post_quant_conv, z));
        let mut h = self.dec_mid.forward(p, h);
        for level in self.dec_levels.iter().rev() {
            h = run_blocks(p, level, h);
            if let Some(c) = &level.resample {
                h = upsample(p, c, h);
            }
        }
        apply_conv(p, &self.dec_conv_out, norm_silu(&self.dec_norm_out, h))
    }
}

fn run_blocks<B: ArBackend>(p: ConvPath, level: &Level<B>, mut h: Tensor<B, 4>) -> Tensor<B, 4> {
    for (j, block) in level.blocks.iter().enumerate() {
        h = block.forward(p, h);
        if let Some(a) = level.attns.get(j) {
            h = a.forward(p, h);
        }
    }
    h
}

/// Checkpoint naming schemes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// taming-transformers and open-MUSE (LVM's `pytorch_model.bin`): `encoder.down.{i}.block.{j}`,
    /// `nin_shortcut`, `mid.block_1`, `decoder.up.{i}` with `i = 0` the highest resolution.
    Taming,
    /// diffusers `VQModel` (amused): `encoder.down_blocks.{i}.resnets.{j}`, `conv_shortcut`,
    /// `mid_block.resnets.0`, `decoder.up_blocks.{n-1-i}`, attention as linear layers.
    Diffusers,
}

impl Layout {
    /// Guesses the layout from a checkpoint's key names.
    pub fn detect(keys: &[String]) -> Self {
        if keys
            .iter()
            .any(|k| k.starts_with("encoder.down_blocks.") || k.starts_with("decoder.up_blocks."))
        {
            Self::Diffusers
        } else {
            Self::Taming
        }
    }
}

/// Receives every tensor-holding part of the model with its checkpoint name (without the
/// `.weight` / `.bias` suffix).
pub(crate) trait PartVisitor<B: ArBackend> {
    /// A convolution; `linear` when the checkpoint stores it as a linear layer `[out, in]`
    /// (diffusers attention projections of our 1×1 convolutions).
    fn conv(&mut self, name: &str, conv: &mut Conv2d<B>, linear: bool);
    /// A GroupNorm (`weight`, `bias`).
    fn norm(&mut self, name: &str, norm: &mut GroupNorm<B>);
    /// The codebook `[K, D]` (full key, `quantize.embedding.weight`).
    fn codebook(&mut self, name: &str, codes: &mut Param<Tensor<B, 2>>);
}

fn visit_resnet<B: ArBackend>(v: &mut dyn PartVisitor<B>, p: &str, r: &mut ResnetBlock<B>, layout: Layout) {
    v.norm(&format!("{p}.norm1"), &mut r.norm1);
    v.conv(&format!("{p}.conv1"), &mut r.conv1, false);
    v.norm(&format!("{p}.norm2"), &mut r.norm2);
    v.conv(&format!("{p}.conv2"), &mut r.conv2, false);
    if let Some(s) = r.shortcut.as_mut() {
        let name = match layout {
            Layout::Taming => "nin_shortcut",
            Layout::Diffusers => "conv_shortcut",
        };
        v.conv(&format!("{p}.{name}"), s, false);
    }
}

fn visit_attn<B: ArBackend>(v: &mut dyn PartVisitor<B>, p: &str, a: &mut AttnBlock<B>, layout: Layout) {
    let (names, linear) = match layout {
        Layout::Taming => (["norm", "q", "k", "v", "proj_out"], false),
        Layout::Diffusers => (["group_norm", "to_q", "to_k", "to_v", "to_out.0"], true),
    };
    v.norm(&format!("{p}.{}", names[0]), &mut a.norm);
    v.conv(&format!("{p}.{}", names[1]), &mut a.q, linear);
    v.conv(&format!("{p}.{}", names[2]), &mut a.k, linear);
    v.conv(&format!("{p}.{}", names[3]), &mut a.v, linear);
    v.conv(&format!("{p}.{}", names[4]), &mut a.proj_out, linear);
}

fn visit_mid<B: ArBackend>(v: &mut dyn PartVisitor<B>, side: &str, m: &mut Mid<B>, layout: Layout) {
    let (b1, at, b2) = match layout {
        Layout::Taming => ("mid.block_1", "mid.attn_1", "mid.block_2"),
        Layout::Diffusers => (
            "mid_block.resnets.0",
            "mid_block.attentions.0",
            "mid_block.resnets.1",
        ),
    };
    visit_resnet(v, &format!("{side}.{b1}"), &mut m.block_1, layout);
    if let Some(a) = m.attn_1.as_mut() {
        visit_attn(v, &format!("{side}.{at}"), a, layout);
    }
    visit_resnet(v, &format!("{side}.{b2}"), &mut m.block_2, layout);
}

impl<B: ArBackend> VqganModel<B> {
    /// Walks every part with its name under `layout`.
    pub(crate) fn visit_parts(&mut self, v: &mut dyn PartVisitor<B>, layout: Layout) {
        let n = self.enc_levels.len();
        let (norm_out, level_names) = match layout {
            Layout::Taming => (
                "norm_out",
                ["down", "block", "attn", "downsample.conv", "up", "upsample.conv"],
            ),
            Layout::Diffusers => (
                "conv_norm_out",
                [
                    "down_blocks",
                    "resnets",
                    "attentions",
                    "downsamplers.0.conv",
                    "up_blocks",
                    "upsamplers.0.conv",
                ],
            ),
        };
        let [down, block, attn, down_conv, up, up_conv] = level_names;
        v.conv("encoder.conv_in", &mut self.enc_conv_in, false);
        for (i, level) in self.enc_levels.iter_mut().enumerate() {
            let p = format!("encoder.{down}.{i}");
            visit_level(v, &p, level, [block, attn, down_conv], layout);
        }
        visit_mid(v, "encoder", &mut self.enc_mid, layout);
        v.norm(&format!("encoder.{norm_out}"), &mut self.enc_norm_out);
        v.conv("encoder.conv_out", &mut self.enc_conv_out, false);
        v.conv("quant_conv", &mut self.quant_conv, false);
        v.codebook("quantize.embedding.weight", &mut self.codebook);
        v.conv("post_quant_conv", &mut self.post_quant_conv, false);
        v.conv("decoder.conv_in", &mut self.dec_conv_in, false);
        visit_mid(v, "decoder", &mut self.dec_mid, layout);
        for (i, level) in self.dec_levels.iter_mut().enumerate() {
            let idx = match layout {
                Layout::Taming => i,
                Layout::Diffusers => n - 1 - i,
            };
            let p = format!("decoder.{up}.{idx}");
            visit_level(v, &p, level, [block, attn, up_conv], layout);
        }
        v.norm(&format!("decoder.{norm_out}"), &mut self.dec_norm_out);
        v.conv("decoder.conv_out", &mut self.dec_conv_out, false);
    }
}

fn visit_level<B: ArBackend>(
    v: &mut dyn PartVisitor<B>,
    p: &str,
    level: &mut Level<B>,
    names: [&str; 3],
    layout: Layout,
) {
    let [block, attn, resample] = names;
    for (j, b) in level.blocks.iter_mut().enumerate() {
        visit_resnet(v, &format!("{p}.{block}.{j}"), b, layout);
    }
    for (j, a) in level.attns.iter_mut().enumerate() {
        visit_attn(v, &format!("{p}.{attn}.{j}"), a, layout);
    }
    if let Some(c) = level.resample.as_mut() {
        v.conv(&format!("{p}.{resample}"), c, false);
    }
}
