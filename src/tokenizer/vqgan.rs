//! [`Vqgan`]: the built-in [`Tokenizer`], loading open-MUSE, diffusers and taming checkpoints.

use crate::backend::ArBackend;
use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::conv::Conv2d;
use burn::nn::GroupNorm;
use burn::tensor::{Int, Shape, Tensor};

use super::blocks::ConvPath;
use super::config::{PixelRange, VqganConfig};
use super::model::{Layout, PartVisitor, VqganModel};
use crate::checks::{ensure_finite, ensure_ids_in, expect_dims, read_f32};
use crate::decode::{Codebook, Metric};
use crate::error::{Error, Result};
use crate::io::{open_checkpoint, save_safetensors, write_atomic, KeyReport, StoreDtype, TensorSource};
use crate::traits::{TokenGrid, Tokenizer};

/// A VQGAN tokenizer: images `[b, 3, H, W]` in `[0, 1]` ↔ code ids `[b, (H/f)·(W/f)]`.
///
/// Load LVM's tokenizer with [`Vqgan::load`] from `pytorch_model.bin` (open-MUSE naming,
/// `Emma02/vqvae_ckpts`), `diffusion_pytorch_model.safetensors` (diffusers naming,
/// `amused/amused-256` `vqvae/`) or a taming `.ckpt`; or build a fresh one with [`Vqgan::new`]
/// and train it ([`crate::tokenizer::train_vqgan`]). Encoding and decoding run in chunks of
/// [`Vqgan::with_batch_chunk`] images, so any number of images fits in memory.
///
/// ```
/// use ar_refine::tokenizer::{Vqgan, VqganConfig};
/// use ar_refine::Tokenizer;
/// use burn::backend::NdArray;
/// use burn::tensor::Tensor;
/// let mut c = VqganConfig::lvm();
/// (c.hidden_channels, c.num_groups, c.resolution, c.num_embeddings, c.embed_dim) = (8, 4, 32, 16, 4);
/// let d = Default::default();
/// let vq = Vqgan::<NdArray>::new(c, &d).unwrap();
/// let ids = vq.encode(Tensor::zeros([1, 3, 32, 32], &d).add_scalar(0.5)).unwrap();
/// assert_eq!(ids.dims(), [1, 4]); // 32 / 16 = 2 → 2×2 tokens
/// assert_eq!(vq.decode(ids).unwrap().dims(), [1, 3, 32, 32]);
/// ```
#[derive(Debug, Clone)]
pub struct Vqgan<B: ArBackend> {
    pub(crate) model: VqganModel<B>,
    pub(crate) book: Codebook<B>,
    chunk: usize,
}

impl<B: ArBackend> Vqgan<B> {
    /// A randomly initialised tokenizer.
    pub fn new(config: VqganConfig, device: &B::Device) -> Result<Self> {
        config.validate()?;
        Self::from_model(VqganModel::new(&config, device))
    }

    pub(crate) fn from_model(model: VqganModel<B>) -> Result<Self> {
        let book = Codebook::new(model.codebook.val(), Metric::SquaredL2)?;
        Ok(Self {
            model,
            book,
            chunk: 16,
        })
    }

    /// Loads a checkpoint (`.safetensors`, `.bin`/`.pt`/`.pth`/`.ckpt`, or a directory holding
    /// one) whose key layout (open-MUSE/taming or diffusers) is detected from its names. The
    /// configuration comes from `config` (open-MUSE, diffusers or taming JSON) or, when `None`,
    /// from `config.json` next to the checkpoint. f16/bf16 weights load into the backend's float
    /// type. Missing keys, unexpected keys (other than a Lightning checkpoint's `loss.*`) and
    /// shape mismatches are listed in one [`Error::Checkpoint`].
    pub fn load(checkpoint: impl AsRef<Path>, config: Option<&Path>, device: &B::Device) -> Result<Self> {
        let checkpoint = checkpoint.as_ref();
        let config = match config {
            Some(c) => VqganConfig::from_file(c)?,
            None => {
                let dir = if checkpoint.is_dir() {
                    checkpoint
                } else {
                    checkpoint.parent().unwrap_or(Path::new("."))
                };
                let c = dir.join("config.json");
                if !c.is_file() {
                    return Err(Error::Config(format!(
                        "no config given and no config.json beside {}",
                        checkpoint.display()
                    )));
                }
                VqganConfig::from_file(c)?
            }
        };
        let source = open_checkpoint(checkpoint)?;
        Self::from_checkpoint(config, source.as_ref(), device)
    }

    /// Builds the tokenizer from `config` and the tensors of `source` (layout detected).
    pub fn from_checkpoint(
        config: VqganConfig,
        source: &dyn TensorSource,
        device: &B::Device,
    ) -> Result<Self> {
        config.validate()?;
        crate::device_watch::watch_device_panics();
        crate::io::check_param_budget(source, config.param_lower_bound(), "the VQGAN config")?;
        let layout = Layout::detect(&source.keys());
        let mut model = VqganModel::new(&config, device);
        let mut loader = Loader {
            report: KeyReport::new(source),
            device: device.clone(),
        };
        loader.report.ignore_unused("loss.");
        model.visit_parts(&mut loader, layout);
        loader.report.finish()?;
        Self::from_model(model)
    }

    /// Saves `config.json` (this crate's format, which [`VqganConfig::from_file`] reads) and
    /// `model.safetensors` in `layout` naming into `dir`, atomically.
    pub fn save(&self, dir: impl AsRef<Path>, layout: Layout, dtype: StoreDtype) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut saver = Saver {
            tensors: Vec::new(),
            error: None,
        };
        self.model.clone().visit_parts(&mut saver, layout);
        if let Some(e) = saver.error {
            return Err(e);
        }
        save_safetensors(dir.join("model.safetensors"), &saver.tensors, dtype)?;
        let text = serde_json::to_string_pretty(&self.model.config)
            .map_err(|e| Error::json("the VQGAN config", e))?;
        write_atomic(dir.join("config.json"), text.as_bytes())
    }

    /// Encodes and decodes at most `n` images per pass (default 16).
    pub fn with_batch_chunk(mut self, n: usize) -> Self {
        self.chunk = n.max(1);
        self
    }

    /// The configuration.
    pub fn config(&self) -> &VqganConfig {
        &self.model.config
    }

    /// Runs this tokenizer's convolutions on `path` (default [`ConvPath::Gemm`]; both compute
    /// the same function, for speed comparisons). Kept by training and by
    /// [`valid`](super::valid).
    pub fn with_conv_path(mut self, path: ConvPath) -> Self {
        self.model.conv_path = path;
        self
    }

    /// How this tokenizer runs its convolutions.
    pub fn conv_path(&self) -> ConvPath {
        self.model.conv_path
    }

    fn to_model_range(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self.model.config.pixel_range {
            PixelRange::ZeroOne => x,
            PixelRange::MinusOneOne => x.mul_scalar(2.0).sub_scalar(1.0),
        }
    }

    fn to_unit_range(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self.model.config.pixel_range {
            PixelRange::ZeroOne => x,
            PixelRange::MinusOneOne => x.add_scalar(1.0).mul_scalar(0.5),
        }
    }

    fn check_images(&self, images: &Tensor<B, 4>) -> Result<()> {
        let c = &self.model.config;
        let r = c.resolution;
        expect_dims(
            "VQGAN images",
            &format!("[b, {}, {r}, {r}]", c.in_channels),
            &images.dims(),
            &[None, Some(c.in_channels), Some(r), Some(r)],
        )?;
        if images.dims()[0] == 0 {
            return Err(Error::shape("VQGAN images", "[b >= 1, ..]", &images.dims()));
        }
        ensure_finite(images, "VQGAN images")
    }

    /// Pre-quantisation latents `[b, D, h, w]` of images `[b, 3, H, W]` in `[0, 1]`.
    pub fn encode_latents(&self, images: Tensor<B, 4>) -> Result<Tensor<B, 4>> {
        self.check_images(&images)?;
        Ok(self.chunked(images, |x| self.model.encode_latent(self.to_model_range(x))))
    }

    /// Images `[b, 3, H, W]` in the model's own pixel range (no conversion, no clamping) of
    /// quantised latents `[b, D, h, w]`.
    pub fn decode_latents(&self, latents: Tensor<B, 4>) -> Result<Tensor<B, 4>> {
        let c = &self.model.config;
        let g = c.grid_size();
        expect_dims(
            "VQGAN latents",
            &format!("[b, {}, {g}, {g}]", c.embed_dim),
            &latents.dims(),
            &[None, Some(c.embed_dim), Some(g), Some(g)],
        )?;
        Ok(self.chunked(latents, |z| self.model.decode_latent(z)))
    }

    fn chunked(&self, x: Tensor<B, 4>, f: impl Fn(Tensor<B, 4>) -> Tensor<B, 4>) -> Tensor<B, 4> {
        let b = x.dims()[0];
        if b <= self.chunk {
            return f(x);
        }
        let parts = (0..b)
            .step_by(self.chunk)
            .map(|s| f(x.clone().narrow(0, s, self.chunk.min(b - s))))
            .collect();
        Tensor::cat(parts, 0)
    }

    /// Latents `[b, D, h, w]` → `[b, h·w, D]` (raster order).
    pub(crate) fn flatten(z: Tensor<B, 4>) -> Tensor<B, 3> {
        let [b, d, h, w] = z.dims();
        z.reshape([b, d, h * w]).swap_dims(1, 2)
    }

    /// `[b, h·w, D]` → `[b, D, h, w]`.
    pub(crate) fn unflatten(e: Tensor<B, 3>, g: usize) -> Tensor<B, 4> {
        let [b, _, d] = e.dims();
        e.swap_dims(1, 2).reshape([b, d, g, g])
    }
}

impl<B: ArBackend> Tokenizer<B> for Vqgan<B> {
    fn image_size(&self) -> (usize, usize) {
        let r = self.model.config.resolution;
        (r, r)
    }

    fn grid(&self) -> TokenGrid {
        let g = self.model.config.grid_size();
        TokenGrid::new(g, g)
    }

    fn codebook(&self) -> &Codebook<B> {
        &self.book
    }

    fn encode(&self, images: Tensor<B, 4>) -> Result<Tensor<B, 2, Int>> {
        let z = self.encode_latents(images)?;
        self.book.nearest(Self::flatten(z))
    }

    fn decode(&self, tokens: Tensor<B, 2, Int>) -> Result<Tensor<B, 4>> {
        let g = self.model.config.grid_size();
        expect_dims(
            "VQGAN tokens",
            &format!("[b, {}]", g * g),
            &tokens.dims(),
            &[None, Some(g * g)],
        )?;
        ensure_ids_in(&tokens, 0..self.book.size() as i64, "VQGAN tokens")?;
        let z = Self::unflatten(self.book.embed(tokens)?, g);
        let x = self.decode_latents(z)?;
        Ok(self.to_unit_range(x).clamp(0.0, 1.0))
    }
}

struct Loader<'a, B: ArBackend> {
    report: KeyReport<'a>,
    device: B::Device,
}

impl<B: ArBackend> Loader<'_, B> {
    fn take<const D: usize>(
        &mut self,
        key: &str,
        file_shape: &[usize],
        model_shape: [usize; D],
    ) -> Option<Param<Tensor<B, D>>> {
        // in the stored float type (an f16 checkpoint reaches an f16 backend without an f32
        // copy); a 1×1 convolution stored as `[out, in]` takes the model's `[out, in, 1, 1]`
        self.report.take_data(key, file_shape).map(|mut data| {
            data.shape = Shape::new(model_shape);
            Param::from_tensor(Tensor::from_data(data, &self.device))
        })
    }
}

impl<B: ArBackend> PartVisitor<B> for Loader<'_, B> {
    fn conv(&mut self, name: &str, conv: &mut Conv2d<B>, linear: bool) {
        let dims = conv.weight.val().dims();
        let file: Vec<usize> = if linear { dims[..2].to_vec() } else { dims.to_vec() };
        if let Some(w) = self.take(&format!("{name}.weight"), &file, dims) {
            conv.weight = w;
        }
        if let Some(b) = self.take(&format!("{name}.bias"), &[dims[0]], [dims[0]]) {
            conv.bias = Some(b);
        }
    }

    fn norm(&mut self, name: &str, norm: &mut GroupNorm<B>) {
        let c = norm.num_channels;
        if let Some(w) = self.take(&format!("{name}.weight"), &[c], [c]) {
            norm.gamma = Some(w);
        }
        if let Some(b) = self.take(&format!("{name}.bias"), &[c], [c]) {
            norm.beta = Some(b);
        }
    }

    fn codebook(&mut self, name: &str, codes: &mut Param<Tensor<B, 2>>) {
        let dims = codes.val().dims();
        if let Some(c) = self.take(name, &dims, dims) {
            *codes = c;
        }
    }
}

struct Saver {
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    error: Option<Error>,
}

impl Saver {
    fn push<B: ArBackend, const D: usize>(&mut self, name: String, shape: Vec<usize>, t: Tensor<B, D>) {
        match read_f32(t) {
            Ok(v) => self.tensors.push((name, shape, v)),
            Err(e) => self.error = Some(e),
        }
    }
}

impl<B: ArBackend> PartVisitor<B> for Saver {
    fn conv(&mut self, name: &str, conv: &mut Conv2d<B>, linear: bool) {
        let w = conv.weight.val();
        let dims = w.dims();
        let shape = if linear { dims[..2].to_vec() } else { dims.to_vec() };
        self.push(format!("{name}.weight"), shape, w);
        if let Some(b) = &conv.bias {
            self.push(format!("{name}.bias"), vec![dims[0]], b.val());
        }
    }

    fn norm(&mut self, name: &str, norm: &mut GroupNorm<B>) {
        let c = norm.num_channels;
        if let Some(g) = &norm.gamma {
            self.push(format!("{name}.weight"), vec![c], g.val());
        }
        if let Some(b) = &norm.beta {
            self.push(format!("{name}.bias"), vec![c], b.val());
        }
    }

    fn codebook(&mut self, name: &str, codes: &mut Param<Tensor<B, 2>>) {
        let v = codes.val();
        let shape = v.dims().to_vec();
        self.push(name.to_string(), shape, v);
    }
}

/// Lets `Vqgan` take part in Burn's module plumbing (devices, autodiff) through its network.
impl<B: ArBackend> Vqgan<B> {
    /// The network as a Burn module (for training or moving between devices).
    pub fn into_model(self) -> VqganModel<B> {
        self.model
    }

    /// Wraps a trained network (rebuilding the codebook cache).
    pub fn from_trained(model: VqganModel<B>) -> Result<Self> {
        Self::from_model(model)
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        self.model.num_params()
    }
}
