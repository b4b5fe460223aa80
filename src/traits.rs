//! The three plug-in traits: [`Tokenizer`], [`ArBackbone`] and [`Refiner`].
//!
//! They are object safe, so a pipeline can hold `&dyn Tokenizer<B>` chosen at run time (for
//! example from a serde config) without generics spreading through user code.

use std::ops::Range;

use burn::tensor::{backend::Backend, Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::backbone::{generate_by_forward, Sampling};
use crate::decode::{Codebook, Metric};
use crate::error::Result;

/// The token grid of one image: `rows × cols` tokens in raster order.
///
/// LVM's VQGAN maps 256×256 pixels to a 16×16 grid (256 tokens).
///
/// ```
/// let g = ar_refine::TokenGrid::new(16, 16);
/// assert_eq!(g.len(), 256);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TokenGrid {
    /// Token rows.
    pub rows: usize,
    /// Token columns.
    pub cols: usize,
}

impl TokenGrid {
    /// A grid of `rows × cols` tokens.
    pub fn new(rows: usize, cols: usize) -> Self {
        Self { rows, cols }
    }

    /// Tokens per image, `rows * cols`.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }
}

/// A discrete image tokenizer (a VQ-VAE / VQGAN): images ↔ code ids.
///
/// Ids are codebook indices `0..K`; the backbone's vocabulary maps them through
/// [`ArBackbone::image_token_ids`]. Implementors provide `image_size`, `grid`, `codebook`,
/// `encode` and `decode`; the rest has defaults.
///
/// ```
/// use ar_refine::{Codebook, Metric, Result, TokenGrid, Tokenizer};
/// use burn::tensor::{backend::Backend, Int, Tensor};
///
/// /// One token per 1×1 "image": the code nearest to its RGB value.
/// struct PixelTokenizer<B: Backend> { book: Codebook<B> }
///
/// impl<B: Backend> Tokenizer<B> for PixelTokenizer<B> {
///     fn image_size(&self) -> (usize, usize) { (1, 1) }
///     fn grid(&self) -> TokenGrid { TokenGrid::new(1, 1) }
///     fn codebook(&self) -> &Codebook<B> { &self.book }
///     fn encode(&self, images: Tensor<B, 4>) -> Result<Tensor<B, 2, Int>> {
///         let [b, c, _, _] = images.dims();
///         self.book.nearest(images.reshape([b, 1, c]))
///     }
///     fn decode(&self, tokens: Tensor<B, 2, Int>) -> Result<Tensor<B, 4>> {
///         let [b, _] = tokens.dims();
///         Ok(self.embed(tokens)?.reshape([b, 3, 1, 1]))
///     }
/// }
/// # use burn::backend::NdArray;
/// # let d = Default::default();
/// # let book = Codebook::new(Tensor::<NdArray, 2>::from_floats([[0.,0.,0.],[1.,1.,1.]], &d), Metric::SquaredL2).unwrap();
/// # let t = PixelTokenizer { book };
/// # let ids = t.encode(Tensor::from_floats([[[[0.9]],[[0.8]],[[1.0]]]], &d)).unwrap();
/// # assert_eq!(ids.into_data().iter::<i64>().next(), Some(1));
/// ```
pub trait Tokenizer<B: Backend> {
    /// Image size `(height, width)` in pixels that `encode` takes and `decode` returns.
    fn image_size(&self) -> (usize, usize);

    /// The token grid of one image.
    fn grid(&self) -> TokenGrid;

    /// The codebook `[K, D]` with its metric.
    fn codebook(&self) -> &Codebook<B>;

    /// Images `[b, 3, H, W]` with values in `[0, 1]` → code ids `[b, rows * cols]`.
    fn encode(&self, images: Tensor<B, 4>) -> Result<Tensor<B, 2, Int>>;

    /// Code ids `[b, rows * cols]` → images `[b, 3, H, W]` in `[0, 1]`.
    fn decode(&self, tokens: Tensor<B, 2, Int>) -> Result<Tensor<B, 4>>;

    /// Code ids `[b, n]` → code vectors `[b, n, D]`. Default: codebook lookup.
    fn embed(&self, tokens: Tensor<B, 2, Int>) -> Result<Tensor<B, 3>> {
        self.codebook().embed(tokens)
    }

    /// Codebook size `K`.
    fn codebook_size(&self) -> usize {
        self.codebook().size()
    }

    /// Code dimension `D`.
    fn code_dim(&self) -> usize {
        self.codebook().dim()
    }

    /// The distance the quantizer uses.
    fn metric(&self) -> Metric {
        self.codebook().metric()
    }
}

/// What a teacher-forced pass returns.
#[derive(Clone, Debug)]
pub struct ForwardOutput<B: Backend> {
    /// Next-token logits `[b, n, vocab]`: position `i` predicts token `i + 1`.
    pub logits: Tensor<B, 3>,
    /// Final hidden states `[b, n, hidden]`, when asked for and available.
    pub hidden: Option<Tensor<B, 3>>,
}

/// An autoregressive model over a vocabulary that contains the image codes.
///
/// Implementors provide the vocabulary facts and a teacher-forced [`forward`](Self::forward);
/// [`generate`](Self::generate) has a default that re-runs `forward` on the growing sequence
/// (correct for any causal model, quadratic in length). Models with a KV cache override it.
///
/// Image code `c` is vocabulary id `image_token_ids().start + c`.
pub trait ArBackbone<B: Backend> {
    /// Vocabulary size (logit width).
    fn vocab_size(&self) -> usize;

    /// The vocabulary ids that are image codes, e.g. `0..8192` for LVM (whose ids
    /// `8192..8292` are specials that are never sampled).
    fn image_token_ids(&self) -> Range<usize>;

    /// The longest sequence `forward` accepts.
    fn context_len(&self) -> usize;

    /// Teacher-forced pass: `tokens` `[b, n]` (vocabulary ids) → logits `[b, n, vocab]`, and the
    /// final hidden states when `want_hidden` is set and the model has them.
    fn forward(&self, tokens: Tensor<B, 2, Int>, want_hidden: bool) -> Result<ForwardOutput<B>>;

    /// Samples `n_new` tokens after `prompt` `[b, p]`, restricted to image-token ids:
    /// returns the new vocabulary ids `[b, n_new]`. When prompt plus output outgrow
    /// [`context_len`](Self::context_len), the oldest tokens are dropped from the window.
    fn generate(
        &self,
        prompt: Tensor<B, 2, Int>,
        n_new: usize,
        sampling: &Sampling,
    ) -> Result<Tensor<B, 2, Int>> {
        generate_by_forward(self, prompt, n_new, sampling)
    }
}

/// Refines the embeddings of a generated token sequence: `[b, n, D]` → `[b, n, D]`.
///
/// Implement it for any `burn` module; the training loop only needs
/// `M: Refiner<B> + AutodiffModule<B>`. The built-in is [`crate::TransformerRefiner`].
///
/// ```
/// use ar_refine::{Refiner, Result, TokenGrid};
/// use burn::prelude::*;
///
/// /// Averages every embedding with the sequence mean: a (poor) global-context refiner.
/// #[derive(Module, Clone, Debug)]
/// struct MeanMix { weight: f64 }
///
/// impl<B: Backend> Refiner<B> for MeanMix {
///     fn refine(&self, e: Tensor<B, 3>, _grid: TokenGrid) -> Result<Tensor<B, 3>> {
///         let mean = e.clone().mean_dim(1);
///         Ok(e.mul_scalar(1.0 - self.weight) + mean.mul_scalar(self.weight))
///     }
/// }
/// ```
pub trait Refiner<B: Backend> {
    /// `embeddings` `[b, n, D]` of the tokens laid out on `grid` (`n == grid.len()`) →
    /// refined embeddings `[b, n, D]`.
    fn refine(&self, embeddings: Tensor<B, 3>, grid: TokenGrid) -> Result<Tensor<B, 3>>;
}
