//! The three plug-in traits: [`Tokenizer`], [`ArBackbone`] and [`Refiner`].
//!
//! They are object safe, so a pipeline can hold `&dyn Tokenizer<B>` chosen at run time (for
//! example from a serde config) without generics spreading through user code.

mod generate;
mod sampling;
mod score;

pub use generate::generate_by_forward;
pub(crate) use generate::validate_prompt;
pub(crate) use sampling::sample_row;
pub use sampling::Sampling;
pub(crate) use score::token_scores;
pub use score::{score_answers, AnswerScores};

use crate::backend::ArBackend;
use std::ops::Range;

use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::checks::expect_dims;
use crate::decode::{Codebook, Metric};
use crate::error::{Error, Result};

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
/// use ar_refine::{ArBackend, Codebook, Metric, Result, TokenGrid, Tokenizer};
/// use burn::tensor::{Int, Tensor};
///
/// /// One token per 1×1 "image": the code nearest to its RGB value.
/// struct PixelTokenizer<B: ArBackend> { book: Codebook<B> }
///
/// impl<B: ArBackend> Tokenizer<B> for PixelTokenizer<B> {
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
pub trait Tokenizer<B: ArBackend> {
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
pub struct ForwardOutput<B: ArBackend> {
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
pub trait ArBackbone<B: ArBackend> {
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

    /// [`generate`](Self::generate), plus the backbone's scores of every new token (log-probability
    /// and entropy of the distribution it was chosen from, its `top_k` codes; see
    /// [`score_answers`]). The default scores the generated answer with teacher-forced passes
    /// over prompt + answer (16 prompts per pass); models that see the distributions while
    /// generating (the KV-cache LLaMA) return them without the extra pass.
    fn generate_scored(
        &self,
        prompt: Tensor<B, 2, Int>,
        n_new: usize,
        sampling: &Sampling,
        top_k: usize,
    ) -> Result<(Tensor<B, 2, Int>, AnswerScores<B>)> {
        let ids = self.generate(prompt.clone(), n_new, sampling)?;
        let b = ids.dims()[0];
        let mut parts = Vec::new();
        for start in (0..b).step_by(16) {
            let m = 16.min(b - start);
            let scores = score_answers(
                self,
                prompt.clone().narrow(0, start, m),
                ids.clone().narrow(0, start, m),
                top_k,
                false,
            )?;
            parts.push(scores);
        }
        let cat2 =
            |f: &dyn Fn(&AnswerScores<B>) -> Tensor<B, 2>| Tensor::cat(parts.iter().map(f).collect(), 0);
        let scores = AnswerScores {
            log_prob: cat2(&|s| s.log_prob.clone()),
            entropy: cat2(&|s| s.entropy.clone()),
            top: Tensor::cat(parts.iter().map(|s| s.top.clone()).collect(), 0),
            hidden: None,
        };
        Ok((ids, scores))
    }
}

/// What the backbone believed about each token it chose, from one teacher-forced pass over the
/// prompt and its own answer (see [`crate::backbone::score_answers`]).
#[derive(Clone, Debug)]
pub struct Confidence<B: ArBackend> {
    /// `log p(chosen code)` under the backbone's softmax over the image codes at temperature 1,
    /// `[b, n]` (values `<= 0`).
    pub log_prob: Tensor<B, 2>,
    /// Entropy of that distribution in nats, `[b, n]` (values in `0..=ln K`).
    pub entropy: Tensor<B, 2>,
}

/// The prompt an answer was generated from, as code embeddings: the last `images` images of the
/// visual sentence (the query image last), each laid out on the answer's grid.
#[derive(Clone, Debug)]
pub struct PromptContext<B: ArBackend> {
    /// `[b, images · n, D]`, images in sentence order (`…, y_K, x_q`).
    pub embeddings: Tensor<B, 3>,
    /// How many images `embeddings` holds.
    pub images: usize,
}

/// Everything a [`Refiner`] may read about one batch of generated answers.
///
/// Only the answer's codes and embeddings are always there; the rest is filled in when the
/// refiner asks for it through [`Refiner::needs`] (the pipeline, the training loop and the
/// evaluation do so).
///
/// ```
/// use ar_refine::{RefineInput, TokenGrid};
/// use burn::backend::NdArray;
/// use burn::tensor::{Int, Tensor};
/// let d = Default::default();
/// let codes = Tensor::<NdArray, 2, Int>::zeros([2, 4], &d);
/// let input = RefineInput::new(codes, Tensor::zeros([2, 4, 8], &d), TokenGrid::new(2, 2));
/// assert!(input.check(8).is_ok());
/// assert!(input.check(16).is_err()); // D mismatch
/// ```
#[derive(Clone, Debug)]
pub struct RefineInput<B: ArBackend> {
    /// The backbone's code ids `[b, n]` (`0..K`).
    pub codes: Tensor<B, 2, Int>,
    /// Their code embeddings `[b, n, D]`.
    pub embeddings: Tensor<B, 3>,
    /// The token grid of the answer (`n == grid.len()`).
    pub grid: TokenGrid,
    /// The prompt's last images as code embeddings, when asked for.
    pub prompt: Option<PromptContext<B>>,
    /// The backbone's per-token log-probability and entropy, when asked for.
    pub confidence: Option<Confidence<B>>,
    /// The backbone's final hidden states `[b, n, H]` at the positions whose logits chose each
    /// answer token (teacher-forced over prompt + answer), when asked for.
    pub hidden: Option<Tensor<B, 3>>,
}

impl<B: ArBackend> RefineInput<B> {
    /// The answer alone: codes `[b, n]`, their embeddings `[b, n, D]`, and the grid.
    pub fn new(codes: Tensor<B, 2, Int>, embeddings: Tensor<B, 3>, grid: TokenGrid) -> Self {
        Self {
            codes,
            embeddings,
            grid,
            prompt: None,
            confidence: None,
            hidden: None,
        }
    }

    /// Adds the prompt context.
    pub fn with_prompt(mut self, prompt: PromptContext<B>) -> Self {
        self.prompt = Some(prompt);
        self
    }

    /// Adds the backbone's confidence.
    pub fn with_confidence(mut self, confidence: Confidence<B>) -> Self {
        self.confidence = Some(confidence);
        self
    }

    /// Adds the backbone's hidden states `[b, n, H]`.
    pub fn with_hidden(mut self, hidden: Tensor<B, 3>) -> Self {
        self.hidden = Some(hidden);
        self
    }

    /// Batch size `b`.
    pub fn batch(&self) -> usize {
        self.embeddings.dims()[0]
    }

    /// Checks every shape against the answer's `[b, n, code_dim]` (`n = grid.len()`): codes
    /// `[b, n]`, prompt `[b, m·n, D]`, confidence `[b, n]`, hidden `[b, n, H]`.
    pub fn check(&self, code_dim: usize) -> Result<()> {
        let n = self.grid.len();
        let dims = self.embeddings.dims();
        expect_dims(
            "refiner embeddings",
            &format!("[b, {n}, {code_dim}]"),
            &dims,
            &[None, Some(n), Some(code_dim)],
        )?;
        let b = dims[0];
        if b == 0 || n == 0 {
            return Err(Error::shape("refiner embeddings", "non-empty [b, n, D]", &dims));
        }
        expect_dims(
            "refiner codes",
            &format!("[{b}, {n}]"),
            &self.codes.dims(),
            &[Some(b), Some(n)],
        )?;
        if let Some(p) = &self.prompt {
            let m = p.images * n;
            expect_dims(
                "refiner prompt context",
                &format!("[{b}, {} images x {n}, {code_dim}]", p.images),
                &p.embeddings.dims(),
                &[Some(b), Some(m), Some(code_dim)],
            )?;
            if p.images == 0 {
                return Err(Error::Config("a prompt context needs at least one image".into()));
            }
        }
        if let Some(c) = &self.confidence {
            for (what, t) in [
                ("refiner log-probabilities", &c.log_prob),
                ("refiner entropies", &c.entropy),
            ] {
                expect_dims(what, &format!("[{b}, {n}]"), &t.dims(), &[Some(b), Some(n)])?;
            }
        }
        if let Some(h) = &self.hidden {
            expect_dims(
                "refiner hidden states",
                &format!("[{b}, {n}, H]"),
                &h.dims(),
                &[Some(b), Some(n), None],
            )?;
        }
        Ok(())
    }
}

/// What a [`Refiner`] returns.
#[derive(Clone, Debug)]
pub struct RefineOutput<B: ArBackend> {
    /// Refined embeddings `[b, n, D]` (the paper's output; snapped to the nearest code).
    pub embeddings: Tensor<B, 3>,
    /// Scores over the codebook `[b, n, K]`, when the refiner has a categorical head.
    pub logits: Option<Tensor<B, 3>>,
    /// A critic's logit of "the backbone's token is wrong" `[b, n]`, when it has one.
    pub wrong_logit: Option<Tensor<B, 2>>,
}

impl<B: ArBackend> RefineOutput<B> {
    /// Embeddings only, as an embedding regressor (the paper's refiner) returns.
    pub fn embeddings(embeddings: Tensor<B, 3>) -> Self {
        Self {
            embeddings,
            logits: None,
            wrong_logit: None,
        }
    }
}

/// Which optional parts of a [`RefineInput`] a refiner reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefinerNeeds {
    /// How many of the prompt's last images (`0`: none; `1`: the query image).
    pub prompt_images: usize,
    /// The backbone's per-token log-probability and entropy.
    pub confidence: bool,
    /// The backbone's final hidden states.
    pub hidden: bool,
}

/// A post-hoc refiner of a frozen backbone's answer.
///
/// Implement [`refine`](Self::refine) (and [`needs`](Self::needs) when it reads more than the
/// answer), or, for a plain embedding-to-embedding refiner as in Wang et al. (2025),
/// [`refine_embeddings`](Self::refine_embeddings) alone. The trait is object safe. The built-in
/// is [`crate::refiner::TransformerRefiner`]; how the output becomes codes is a
/// [`crate::refiner::Decision`].
///
/// ```
/// use ar_refine::{ArBackend, Refiner, Result, TokenGrid};
/// use burn::prelude::*;
///
/// /// Averages every embedding with the sequence mean: a (poor) global-context refiner.
/// #[derive(Module, Clone, Debug)]
/// struct MeanMix { weight: f64 }
///
/// impl<B: ArBackend> Refiner<B> for MeanMix {
///     fn refine_embeddings(&self, e: Tensor<B, 3>, _grid: TokenGrid) -> Result<Tensor<B, 3>> {
///         let mean = e.clone().mean_dim(1);
///         Ok(e.mul_scalar(1.0 - self.weight) + mean.mul_scalar(self.weight))
///     }
/// }
/// ```
pub trait Refiner<B: ArBackend> {
    /// Refines one batch of answers. The default calls
    /// [`refine_embeddings`](Self::refine_embeddings) on the answer's embeddings.
    fn refine(&self, input: RefineInput<B>) -> Result<RefineOutput<B>> {
        Ok(RefineOutput::embeddings(
            self.refine_embeddings(input.embeddings, input.grid)?,
        ))
    }

    /// The answer-only form: `embeddings` `[b, n, D]` of the tokens laid out on `grid`
    /// (`n == grid.len()`) → refined embeddings `[b, n, D]`. This was `refine` before 0.2.
    /// The default is an error: implement this or [`refine`](Self::refine).
    fn refine_embeddings(&self, embeddings: Tensor<B, 3>, grid: TokenGrid) -> Result<Tensor<B, 3>> {
        let _ = (embeddings, grid);
        Err(Error::Config(
            "this refiner implements neither Refiner::refine nor Refiner::refine_embeddings".into(),
        ))
    }

    /// The optional inputs this refiner reads (default: none).
    fn needs(&self) -> RefinerNeeds {
        RefinerNeeds::default()
    }
}
