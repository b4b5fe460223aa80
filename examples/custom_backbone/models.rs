//! A user's own tiny tokenizer and autoregressive model, plugged into ar-refine through its
//! traits. Shared by `examples/custom_backbone` and the integration tests.

use ar_refine::ArBackend;
use ar_refine::{ArBackbone, Codebook, ForwardOutput, Metric, Result, TokenGrid, Tokenizer};
use burn::nn::attention::generate_autoregressive_mask;
use burn::nn::transformer::{TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput};
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::prelude::*;

/// Splits a square image into `patch × patch` RGB patches and quantizes each to the nearest of
/// `K` patch vectors (codes of dimension `3 * patch²`). Decoding pastes the code patches back.
pub struct PatchTokenizer<B: ArBackend> {
    pub book: Codebook<B>,
    pub size: usize,
    pub patch: usize,
}

impl<B: ArBackend> PatchTokenizer<B> {
    /// Builds the codebook with a few rounds of k-means over the patches of `images`
    /// `[b, 3, size, size]`, starting from evenly spaced patches.
    pub fn fit(images: Tensor<B, 4>, patch: usize, codes: usize, rounds: usize) -> Result<Self> {
        let size = images.dims()[2];
        let patches = to_patches(images, patch); // [b, n, D]
        let [b, n, d] = patches.dims();
        let flat = patches.reshape([b * n, d]);
        let stride = (b * n / codes).max(1);
        let pick = Tensor::<B, 1, Int>::arange_step(0..(codes * stride) as i64, stride, &flat.device());
        let mut centres = flat.clone().select(0, pick);
        for _ in 0..rounds {
            let book = Codebook::new(centres.clone(), Metric::SquaredL2)?;
            let ids = book.nearest(flat.clone().unsqueeze_dim(0))?.reshape([b * n]);
            // Mean of each cluster through a one-hot matmul; empty clusters keep their centre.
            let onehot = ids.one_hot::<2>(codes).float(); // [N, K]
            let counts = onehot.clone().sum_dim(0).transpose(); // [K, 1]
            let sums = onehot.transpose().matmul(flat.clone()); // [K, D]
            let empty = counts.clone().equal_elem(0.0).expand([codes, d]);
            centres = (sums / counts.clamp_min(1.0)).mask_where(empty, centres);
        }
        Ok(Self {
            book: Codebook::new(centres, Metric::SquaredL2)?,
            size,
            patch,
        })
    }
}

/// `[b, 3, S, S]` in `[0, 1]` → `[b, (S/p)², 3p²]` centred on 0 (pixel − 0.5), patches in
/// raster order. Centring keeps the codes spread in direction, which a cosine-trained refiner
/// needs (all-positive patch vectors would all be nearly parallel).
pub fn to_patches<B: ArBackend>(images: Tensor<B, 4>, p: usize) -> Tensor<B, 3> {
    let [b, c, h, w] = images.dims();
    let (gh, gw) = (h / p, w / p);
    images
        .sub_scalar(0.5)
        .reshape([b, c, gh, p, gw, p])
        .permute([0, 2, 4, 1, 3, 5])
        .reshape([b, gh * gw, c * p * p])
}

impl<B: ArBackend> Tokenizer<B> for PatchTokenizer<B> {
    fn image_size(&self) -> (usize, usize) {
        (self.size, self.size)
    }
    fn grid(&self) -> TokenGrid {
        TokenGrid::new(self.size / self.patch, self.size / self.patch)
    }
    fn codebook(&self) -> &Codebook<B> {
        &self.book
    }
    fn encode(&self, images: Tensor<B, 4>) -> Result<Tensor<B, 2, Int>> {
        self.book.nearest(to_patches(images, self.patch))
    }
    fn decode(&self, tokens: Tensor<B, 2, Int>) -> Result<Tensor<B, 4>> {
        let [b, _] = tokens.dims();
        let (g, p) = (self.size / self.patch, self.patch);
        Ok(self
            .embed(tokens)?
            .reshape([b, g, g, 3, p, p])
            .permute([0, 3, 1, 4, 2, 5])
            .reshape([b, 3, self.size, self.size])
            .add_scalar(0.5))
    }
}

/// Ids `0..SPECIALS` are special tokens (unused here); image code `c` is id `SPECIALS + c`.
pub const SPECIALS: usize = 4;

/// A small causal transformer language model over image tokens.
#[derive(Module, Debug)]
pub struct TinyCausalLm<B: ArBackend> {
    tokens: Embedding<B>,
    positions: Embedding<B>,
    encoder: TransformerEncoder<B>,
    head: Linear<B>,
    vocab: usize,
    context: usize,
}

impl<B: ArBackend> TinyCausalLm<B> {
    pub fn new(codes: usize, context: usize, d_model: usize, layers: usize, device: &B::Device) -> Self {
        let vocab = codes + SPECIALS;
        let small = burn::nn::Initializer::Normal { mean: 0.0, std: 0.02 };
        Self {
            tokens: EmbeddingConfig::new(vocab, d_model)
                .with_initializer(small.clone())
                .init(device),
            positions: EmbeddingConfig::new(context, d_model)
                .with_initializer(small)
                .init(device),
            encoder: TransformerEncoderConfig::new(d_model, 4 * d_model, 4, layers)
                .with_norm_first(true)
                .init(device),
            head: LinearConfig::new(d_model, vocab).init(device),
            vocab,
            context,
        }
    }

    /// Logits `[b, n, vocab]` for tokens `[b, n]` (`n <= context`).
    pub fn logits(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [b, n] = tokens.dims();
        let device = tokens.device();
        let pos = Tensor::<B, 1, Int>::arange(0..n as i64, &device).unsqueeze_dim::<2>(0);
        let x = self.tokens.forward(tokens) + self.positions.forward(pos);
        let mask = generate_autoregressive_mask::<B>(b, n, &device);
        let h = self
            .encoder
            .forward(TransformerEncoderInput::new(x).mask_attn(mask));
        self.head.forward(h)
    }
}

impl<B: ArBackend> ArBackbone<B> for TinyCausalLm<B> {
    fn vocab_size(&self) -> usize {
        self.vocab
    }
    fn image_token_ids(&self) -> std::ops::Range<usize> {
        SPECIALS..self.vocab
    }
    fn context_len(&self) -> usize {
        self.context
    }
    fn forward(&self, tokens: Tensor<B, 2, Int>, _want_hidden: bool) -> Result<ForwardOutput<B>> {
        let n = tokens.dims()[1];
        if n > self.context {
            return Err(ar_refine::Error::shape(
                "TinyCausalLm tokens",
                format!("[b, <= {}]", self.context),
                &tokens.dims(),
            ));
        }
        Ok(ForwardOutput {
            logits: self.logits(tokens),
            hidden: None,
        })
    }
}
