//! The self-refinement pipeline: prompt → backbone → embeddings → refiner → nearest codes →
//! images.

use crate::backend::ArBackend;
use burn::tensor::{Int, Tensor};

use crate::checks::{ensure_finite, ensure_ids_in, expect_dims};
use crate::decode::{Codebook, Metric};
use crate::error::{Error, Result};
use crate::refiner::Decision;
use crate::traits::{score_answers, Sampling};
use crate::traits::{ArBackbone, Confidence, PromptContext, RefineInput, RefineOutput, Refiner, Tokenizer};

/// What one pipeline run returns: the backbone's output and the refined output side by side.
#[derive(Clone, Debug)]
pub struct RefinementOutput<B: ArBackend> {
    /// Code ids the backbone generated `[b, n]` (codebook ids, `0..K`).
    pub generated_tokens: Tensor<B, 2, Int>,
    /// Code ids after refinement and the decision rule `[b, n]`.
    pub refined_tokens: Tensor<B, 2, Int>,
    /// What the refiner returned: embeddings `[b, n, D]`, code logits `[b, n, K]` and a critic
    /// `[b, n]` when it has them.
    pub refined: RefineOutput<B>,
    /// `generated_tokens` decoded `[b, 3, H, W]`.
    pub generated_images: Tensor<B, 4>,
    /// `refined_tokens` decoded `[b, 3, H, W]`.
    pub refined_images: Tensor<B, 4>,
}

/// Visual self-refinement around a frozen backbone (Wang et al., 2025, Fig. 1).
///
/// The backbone generates one image's tokens after the prompt; their code embeddings (with
/// whatever else the refiner [reads](Refiner::needs): the prompt's last images, the backbone's
/// confidence and hidden states from one teacher-forced pass) go through the refiner; a
/// [`Decision`] turns its output into codes (default: argmax for a refiner with code logits,
/// else the paper's nearest-code snap); the tokenizer decodes both token sets. Components are
/// borrowed as trait objects, so they can be chosen at run time.
///
/// ```ignore
/// let pipeline = SelfRefinement::new(&backbone, &tokenizer, &refiner)?
///     .with_sampling(Sampling::greedy());
/// // [x1, y1, x2, y2, query], each [b, 3, H, W]:
/// let out = pipeline.run_images(&[x1, y1, x2, y2, query])?;
/// save_image(out.refined_images.slice([0..1]).squeeze(0), "refined.png")?;
/// ```
/// (A complete, runnable program: `examples/custom_backbone/main.rs`.)
pub struct SelfRefinement<'m, B: ArBackend> {
    backbone: &'m dyn ArBackbone<B>,
    tokenizer: &'m dyn Tokenizer<B>,
    refiner: &'m dyn Refiner<B>,
    sampling: Sampling,
    decision: Option<Decision>,
    /// The tokenizer's codes searched by cosine similarity: refined embeddings snap here.
    snap: Codebook<B>,
}

impl<'m, B: ArBackend> SelfRefinement<'m, B> {
    /// Assembles the pipeline. Fails when the backbone's image-token range does not have
    /// exactly one id per code of the tokenizer's codebook.
    pub fn new(
        backbone: &'m dyn ArBackbone<B>,
        tokenizer: &'m dyn Tokenizer<B>,
        refiner: &'m dyn Refiner<B>,
    ) -> Result<Self> {
        let ids = backbone.image_token_ids();
        if ids.len() != tokenizer.codebook_size() || ids.end > backbone.vocab_size() {
            return Err(Error::Config(format!(
                "backbone image-token ids {ids:?} (vocabulary {}) do not match the tokenizer's {} codes",
                backbone.vocab_size(),
                tokenizer.codebook_size()
            )));
        }
        Ok(Self {
            backbone,
            tokenizer,
            refiner,
            sampling: Sampling::greedy(),
            decision: None,
            snap: tokenizer.codebook().with_metric(Metric::Cosine)?,
        })
    }

    /// Sets how the backbone samples (default: greedy).
    pub fn with_sampling(mut self, sampling: Sampling) -> Self {
        self.sampling = sampling;
        self
    }

    /// Sets the decision rule (e.g. the calibrated gate saved with a refiner,
    /// [`crate::refiner::LoadedRefiner::decision`]).
    pub fn with_decision(mut self, decision: Decision) -> Result<Self> {
        decision.validate()?;
        self.decision = Some(decision);
        Ok(self)
    }

    /// Tokenizes images and concatenates them into one visual sentence of vocabulary ids
    /// `[b, len(images) * n]`: the LVM prompt format (256-token blocks, no separators).
    ///
    /// Each image is `[b, 3, H, W]` at the tokenizer's size, values in `[0, 1]`.
    pub fn visual_sentence(&self, images: &[Tensor<B, 4>]) -> Result<Tensor<B, 2, Int>> {
        let (h, w) = self.tokenizer.image_size();
        let first = images
            .first()
            .ok_or_else(|| Error::Config("a visual sentence needs at least one image".into()))?;
        let b = first.dims()[0];
        let offset = self.backbone.image_token_ids().start as i64;
        let mut blocks = Vec::with_capacity(images.len());
        for (i, img) in images.iter().enumerate() {
            let what = format!("visual sentence image {i}");
            expect_dims(
                &what,
                &format!("[{b}, 3, {h}, {w}]"),
                &img.dims(),
                &[Some(b), Some(3), Some(h), Some(w)],
            )?;
            ensure_finite(img, &what)?;
            let codes = self.tokenizer.encode(img.clone())?;
            let n = self.tokenizer.grid().len();
            expect_dims(
                "tokenizer encode output",
                &format!("[{b}, {n}]"),
                &codes.dims(),
                &[Some(b), Some(n)],
            )?;
            blocks.push(codes.add_scalar(offset));
        }
        Ok(Tensor::cat(blocks, 1))
    }

    /// Refines the backbone's code ids `[b, n]` (`n` = the tokenizer's grid) generated after
    /// `prompt` (vocabulary ids `[b, p]`): builds the refiner's input (the prompt's last images,
    /// the backbone's confidence and hidden states when it reads them), runs it and applies the
    /// decision rule. Returns the refined ids `[b, n]` and the refiner's output. Refined
    /// embeddings snap to the code of highest cosine similarity, whatever the tokenizer's own
    /// metric: the paper's cosine loss leaves the norm of its outputs free, so a Euclidean search
    /// would depend on a quantity nobody trained (`docs/tiny-lvm/RESULTS.md`).
    pub fn refine_answer(
        &self,
        prompt: Tensor<B, 2, Int>,
        codes: Tensor<B, 2, Int>,
    ) -> Result<(Tensor<B, 2, Int>, RefineOutput<B>)> {
        let grid = self.tokenizer.grid();
        let n = grid.len();
        let [b, p] = prompt.dims();
        expect_dims(
            "codes to refine",
            &format!("[{b}, {n}]"),
            &codes.dims(),
            &[Some(b), Some(n)],
        )?;
        let needs = self.refiner.needs();
        let offset = self.backbone.image_token_ids().start as i64;
        let mut input = RefineInput::new(codes.clone(), self.tokenizer.embed(codes.clone())?, grid);
        if needs.prompt_images > 0 {
            let m = needs.prompt_images;
            if p < m * n {
                return Err(Error::Config(format!(
                    "the refiner reads the prompt's last {m} images ({} tokens); the prompt has {p}",
                    m * n
                )));
            }
            let last = prompt.clone().narrow(1, p - m * n, m * n);
            ensure_ids_in(
                &last,
                offset..offset + self.tokenizer.codebook_size() as i64,
                "prompt images",
            )?;
            input = input.with_prompt(PromptContext {
                embeddings: self.tokenizer.embed(last.sub_scalar(offset))?,
                images: m,
            });
        }
        if needs.confidence || needs.hidden {
            let scores = score_answers(
                self.backbone,
                prompt,
                codes.clone().add_scalar(offset),
                1,
                needs.hidden,
            )?;
            if needs.confidence {
                input = input.with_confidence(Confidence {
                    log_prob: scores.log_prob,
                    entropy: scores.entropy,
                });
            }
            if let Some(h) = scores.hidden {
                input = input.with_hidden(h);
            }
        }
        let out = self.refiner.refine(input)?;
        let rule = self.decision.unwrap_or_else(|| Decision::natural(&out));
        let ids = rule.decide(&out, &codes, &self.snap)?;
        Ok((ids, out))
    }

    /// Refines code ids `[b, n]` with a refiner that reads the answer alone (see
    /// [`refine_answer`](Self::refine_answer) for the others).
    pub fn refine_codes(&self, codes: Tensor<B, 2, Int>) -> Result<(Tensor<B, 2, Int>, RefineOutput<B>)> {
        let grid = self.tokenizer.grid();
        expect_dims(
            "codes to refine",
            &format!("[b, {}]", grid.len()),
            &codes.dims(),
            &[None, Some(grid.len())],
        )?;
        let needs = self.refiner.needs();
        if needs != Default::default() {
            return Err(Error::Config(format!(
                "the refiner reads more than the answer ({needs:?}): use refine_answer with the prompt"
            )));
        }
        let input = RefineInput::new(codes.clone(), self.tokenizer.embed(codes.clone())?, grid);
        let out = self.refiner.refine(input)?;
        let rule = self.decision.unwrap_or_else(|| Decision::natural(&out));
        Ok((rule.decide(&out, &codes, &self.snap)?, out))
    }

    /// Runs the whole pipeline on a prompt of vocabulary ids `[b, p]`.
    pub fn run_tokens(&self, prompt: Tensor<B, 2, Int>) -> Result<RefinementOutput<B>> {
        let n = self.tokenizer.grid().len();
        let ids = self.backbone.image_token_ids();
        let generated = self.backbone.generate(prompt.clone(), n, &self.sampling)?;
        let b = generated.dims()[0];
        expect_dims(
            "backbone generate output",
            &format!("[{b}, {n}]"),
            &generated.dims(),
            &[None, Some(n)],
        )?;
        ensure_ids_in(
            &generated,
            ids.start as i64..ids.end as i64,
            "generated tokens (image-token ids)",
        )?;
        let generated_tokens = generated.sub_scalar(ids.start as i64);
        let (refined_tokens, refined) = self.refine_answer(prompt, generated_tokens.clone())?;
        Ok(RefinementOutput {
            generated_images: self.tokenizer.decode(generated_tokens.clone())?,
            refined_images: self.tokenizer.decode(refined_tokens.clone())?,
            generated_tokens,
            refined_tokens,
            refined,
        })
    }

    /// Runs the whole pipeline on images `[x_1, y_1, …, x_K, y_K, query]` (each
    /// `[b, 3, H, W]`): the K demonstration pairs and the query of analogy prompting.
    pub fn run_images(&self, images: &[Tensor<B, 4>]) -> Result<RefinementOutput<B>> {
        let prompt = self.visual_sentence(images)?;
        self.run_tokens(prompt)
    }
}
