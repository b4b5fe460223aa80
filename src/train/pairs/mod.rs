//! Refiner training pairs (backbone output, ground truth, the prompt, the backbone's per-token
//! confidence) from a frozen backbone, cached on disk in a versioned, checksummed format and
//! resumable.

mod cache;
mod sharded;

use crate::backend::ArBackend;
use std::path::Path;

use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::checks::{read_f32, read_i64};
use crate::data::{prompt_tensor, TokenSentence};
use crate::decode::Codebook;
use crate::error::{Error, Result};
use crate::traits::{score_answers, token_scores, Sampling};
use crate::traits::{ArBackbone, Confidence, PromptContext, RefineInput, RefinerNeeds, TokenGrid};
pub use cache::load_pairs;
use cache::Cache;
pub use sharded::generate_pairs_sharded;

/// How many most-likely codes per position a pair cache records (for top-5 accuracy).
pub const TOP_K: usize = 5;

/// How the backbone produces the query's output tokens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PairMode {
    /// Free-running generation with these sampling settings (the inference-time condition the
    /// refiner must fix; error accumulates along the sequence).
    FreeRunning(Sampling),
    /// One teacher-forced pass over prompt + ground truth, argmax at every target position
    /// (each token sees the true prefix: no accumulated error).
    TeacherForced,
}

/// Token pairs for the query outputs, one row per prompt: the backbone's codes, the true codes,
/// the prompt's codes and what the backbone believed about each code it chose. All ids are code
/// ids (`0..K`), not vocabulary ids.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Pairs {
    /// Backbone outputs, `n` codes each.
    pub generated: Vec<Vec<i64>>,
    /// Ground truth, `n` codes each.
    pub truth: Vec<Vec<i64>>,
    /// The prompts' codes (`images · n` each, `[x_1, y_1, …, x_q]`); empty when unknown.
    pub prompts: Vec<Vec<i64>>,
    /// `log p(generated code)` per position (temperature 1, image codes); empty when unknown.
    pub log_prob: Vec<Vec<f32>>,
    /// Entropy of the backbone's distribution per position (nats); empty when unknown.
    pub entropy: Vec<Vec<f32>>,
    /// The backbone's [`TOP_K`] most likely codes per position (`n · TOP_K`); empty when unknown.
    pub top: Vec<Vec<i64>>,
}

/// The backbone's output for one batch of prompts, with its scores.
#[derive(Clone, Debug, Default)]
pub(crate) struct Scored {
    pub generated: Vec<Vec<i64>>,
    pub log_prob: Vec<Vec<f32>>,
    pub entropy: Vec<Vec<f32>>,
    pub top: Vec<Vec<i64>>,
}

impl Pairs {
    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.truth.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.truth.is_empty()
    }

    /// Tokens per output image.
    pub fn tokens(&self) -> usize {
        self.truth.first().map_or(0, Vec::len)
    }

    /// Whether the backbone's confidence (log-probabilities, entropies, top codes) is recorded.
    pub fn has_scores(&self) -> bool {
        !self.is_empty() && self.log_prob.len() == self.len() && self.entropy.len() == self.len()
    }

    /// Images per prompt (`2K + 1`), `0` when the prompts are not recorded.
    pub fn prompt_images(&self) -> usize {
        match (self.prompts.len() == self.len(), self.tokens()) {
            (true, n) if n > 0 => self.prompts.first().map_or(0, |p| p.len() / n),
            _ => 0,
        }
    }

    /// Rows `idx` as `(generated, truth)` tensors `[b, n]`.
    pub fn batch<B: ArBackend>(
        &self,
        idx: &[usize],
        device: &B::Device,
    ) -> Result<(Tensor<B, 2, Int>, Tensor<B, 2, Int>)> {
        let n = self.tokens();
        Ok((
            rows_tensor(&self.generated, idx, n, self.len(), device)?,
            rows_tensor(&self.truth, idx, n, self.len(), device)?,
        ))
    }

    /// Rows `idx` as a [`RefineInput`] with what `needs` asks for (codes, embeddings through
    /// `codebook`, the prompt's last images, the confidence; not the hidden states, which a
    /// [`HiddenSource`] recomputes) and the true codes `[b, n]`.
    pub fn input<B: ArBackend>(
        &self,
        idx: &[usize],
        codebook: &Codebook<B>,
        grid: TokenGrid,
        needs: RefinerNeeds,
        device: &B::Device,
    ) -> Result<(RefineInput<B>, Tensor<B, 2, Int>)> {
        let n = self.tokens();
        if grid.len() != n {
            return Err(Error::Config(format!(
                "pairs of {n} tokens on a grid of {} tokens",
                grid.len()
            )));
        }
        let (gen, truth) = self.batch::<B>(idx, device)?;
        let mut input = RefineInput::new(gen.clone(), codebook.embed(gen)?, grid);
        if needs.prompt_images > 0 {
            let have = self.prompt_images();
            if have < needs.prompt_images {
                return Err(Error::Config(format!(
                    "the refiner reads the prompt's last {} images; these pairs record {have}{}",
                    needs.prompt_images,
                    if have == 0 {
                        " (no prompts: a pair cache from ar-refine 0.1?)"
                    } else {
                        ""
                    }
                )));
            }
            let m = needs.prompt_images;
            let skip = (have - m) * n;
            let rows: Vec<Vec<i64>> = idx.iter().map(|&i| self.prompts[i][skip..].to_vec()).collect();
            let codes = rows_tensor::<B>(
                &rows,
                &(0..idx.len()).collect::<Vec<_>>(),
                m * n,
                rows.len(),
                device,
            )?;
            input = input.with_prompt(PromptContext {
                embeddings: codebook.embed(codes)?,
                images: m,
            });
        }
        if needs.confidence {
            if !self.has_scores() {
                return Err(Error::Config(
                    "the refiner reads the backbone's confidence; these pairs do not record it".into(),
                ));
            }
            input = input.with_confidence(Confidence {
                log_prob: float_rows(&self.log_prob, idx, n, device)?,
                entropy: float_rows(&self.entropy, idx, n, device)?,
            });
        }
        Ok((input, truth))
    }

    /// Appends one scored batch for `part`.
    pub(crate) fn push_batch(&mut self, part: &[TokenSentence], scored: Scored) {
        self.truth.extend(part.iter().map(|s| s.target.clone()));
        self.prompts.extend(part.iter().map(|s| s.prompt.clone()));
        self.generated.extend(scored.generated);
        self.log_prob.extend(scored.log_prob);
        self.entropy.extend(scored.entropy);
        self.top.extend(scored.top);
    }
}

fn out_of_range(i: usize, len: usize) -> Error {
    Error::Config(format!("pair {i} out of range 0..{len}"))
}

/// Rows `idx` of `rows` (each `width` long) as `[idx.len(), width]`.
fn rows_tensor<B: ArBackend>(
    rows: &[Vec<i64>],
    idx: &[usize],
    width: usize,
    len: usize,
    device: &B::Device,
) -> Result<Tensor<B, 2, Int>> {
    let mut flat = Vec::with_capacity(idx.len() * width);
    for &i in idx {
        let r = rows.get(i).ok_or_else(|| out_of_range(i, len))?;
        if r.len() != width {
            return Err(Error::Config(format!(
                "pair {i} has {} codes, expected {width}",
                r.len()
            )));
        }
        flat.extend_from_slice(r);
    }
    Ok(Tensor::from_data(
        TensorData::new(flat, [idx.len(), width]),
        device,
    ))
}

fn float_rows<B: ArBackend>(
    rows: &[Vec<f32>],
    idx: &[usize],
    n: usize,
    device: &B::Device,
) -> Result<Tensor<B, 2>> {
    let mut flat = Vec::with_capacity(idx.len() * n);
    for &i in idx {
        let r = rows.get(i).ok_or_else(|| out_of_range(i, rows.len()))?;
        flat.extend_from_slice(r);
    }
    if flat.len() != idx.len() * n {
        return Err(Error::Config(format!("score rows must have {n} values each")));
    }
    Ok(Tensor::from_data(TensorData::new(flat, [idx.len(), n]), device))
}

/// Recomputes the backbone's final hidden states for pairs (one teacher-forced pass over
/// prompt + answer per batch), for refiners that read them: they are `H` wide per token
/// (4,096 at 7B), too large to store with the pairs.
pub trait HiddenSource<B: ArBackend> {
    /// Hidden states `[idx.len(), n, H]` of pairs `idx`, on `device`.
    fn hidden(&self, pairs: &Pairs, idx: &[usize], device: &B::Device) -> Result<Tensor<B, 3>>;
}

/// A [`HiddenSource`] over a frozen backbone (see [`score_answers`]).
pub struct BackboneHidden<'a, B: ArBackend> {
    backbone: &'a dyn ArBackbone<B>,
}

impl<'a, B: ArBackend> BackboneHidden<'a, B> {
    /// Hidden states from `backbone`.
    pub fn new(backbone: &'a dyn ArBackbone<B>) -> Self {
        Self { backbone }
    }
}

impl<B: ArBackend> HiddenSource<B> for BackboneHidden<'_, B> {
    fn hidden(&self, pairs: &Pairs, idx: &[usize], device: &B::Device) -> Result<Tensor<B, 3>> {
        let n = pairs.tokens();
        let p = pairs.prompt_images() * n;
        if p == 0 {
            return Err(Error::Config(
                "hidden states need the prompts, which these pairs do not record".into(),
            ));
        }
        let offset = self.backbone.image_token_ids().start as i64;
        let prompt = rows_tensor::<B>(&pairs.prompts, idx, p, pairs.len(), device)?.add_scalar(offset);
        let answer = rows_tensor::<B>(&pairs.generated, idx, n, pairs.len(), device)?.add_scalar(offset);
        score_answers(self.backbone, prompt, answer, 1, true)?
            .hidden
            .ok_or_else(|| Error::Config("the backbone's forward returns no hidden states".into()))
    }
}

/// Settings of [`generate_pairs`].
#[derive(Clone, Debug)]
pub struct PairOptions<'a> {
    /// Free-running or teacher-forced.
    pub mode: PairMode,
    /// Sentences per backbone call.
    pub batch: usize,
    /// Cache directory (resumable), or `None`.
    pub cache: Option<&'a Path>,
    /// Anything that identifies how the pairs are made (task, K, model paths, data, seed); a
    /// cache is reused only when it matches.
    pub config: serde_json::Value,
}

/// Runs the frozen `backbone` on every sentence (`opts.batch` at a time) and returns the pairs,
/// with the backbone's per-token log-probability, entropy and top codes (one teacher-forced
/// pass over prompt + answer after generation; see [`score_answers`]).
///
/// Code `c` is vocabulary id `backbone.image_token_ids().start + c`. With a cache directory,
/// finished batches are written there as checksummed chunks together with the configuration; a
/// later call with the same configuration loads what is there and generates only the rest, so an
/// interrupted run resumes. `progress(done, total)` is called after every batch.
pub fn generate_pairs<B: ArBackend>(
    backbone: &dyn ArBackbone<B>,
    sentences: &[TokenSentence],
    opts: &PairOptions<'_>,
    device: &B::Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Pairs> {
    let n = target_len(sentences)?;
    check_ids(backbone, sentences)?;
    let (mut pairs, mut cache) = Cache::open(opts, sentences, n)?;
    let total = sentences.len();
    progress(pairs.len(), total);
    while pairs.len() < total {
        let part = &sentences[pairs.len()..(pairs.len() + opts.batch.max(1)).min(total)];
        let scored = run_backbone(backbone, part, &opts.mode, device)?;
        cache.append(part, scored, &mut pairs)?;
        progress(pairs.len(), total);
    }
    Ok(pairs)
}

/// The common length of the sentences' targets (non-empty, equal).
fn target_len(sentences: &[TokenSentence]) -> Result<usize> {
    let n = sentences.first().map_or(0, |s| s.target.len());
    if n == 0 || sentences.iter().any(|s| s.target.len() != n) {
        return Err(Error::Config(
            "pair generation needs sentences with equal, non-empty targets".into(),
        ));
    }
    Ok(n)
}

/// Every code of every sentence is one of the backbone's image ids.
fn check_ids<B: ArBackend>(backbone: &dyn ArBackbone<B>, sentences: &[TokenSentence]) -> Result<()> {
    let codes = backbone.image_token_ids().len() as i64;
    for (i, s) in sentences.iter().enumerate() {
        if let Some(c) = s
            .prompt
            .iter()
            .chain(&s.target)
            .find(|c| !(0..codes).contains(*c))
        {
            return Err(Error::TokenOutOfRange {
                what: format!(
                    "sentence {i} (the tokenizer's codebook is larger than the backbone's {codes} image ids?)"
                ),
                id: *c,
                valid: format!("0..{codes}"),
            });
        }
    }
    Ok(())
}

/// The backbone's codes for the query outputs of `part`, with their scores.
fn run_backbone<B: ArBackend>(
    backbone: &dyn ArBackbone<B>,
    part: &[TokenSentence],
    mode: &PairMode,
    device: &B::Device,
) -> Result<Scored> {
    let n = part[0].target.len();
    let offset = backbone.image_token_ids().start as i64;
    let prompt = prompt_tensor::<B>(part, offset, device)?;
    let top_k = TOP_K.min(backbone.image_token_ids().len());
    let (codes, (log_prob, entropy, top)) = match mode {
        PairMode::FreeRunning(s) => {
            let (ids, sc) = backbone.generate_scored(prompt, n, s, top_k)?;
            (ids.sub_scalar(offset), (sc.log_prob, sc.entropy, sc.top))
        }
        PairMode::TeacherForced => {
            let p = prompt.dims()[1];
            let truth: Vec<TokenSentence> = part
                .iter()
                .map(|s| TokenSentence {
                    prompt: s.target[..n - 1].to_vec(),
                    target: vec![],
                })
                .collect();
            let seq = Tensor::cat(vec![prompt, prompt_tensor::<B>(&truth, offset, device)?], 1);
            if p + n - 1 > backbone.context_len() {
                return Err(Error::Config(format!(
                    "teacher forcing needs {} positions; the backbone's context is {}",
                    p + n - 1,
                    backbone.context_len()
                )));
            }
            let allowed = backbone.image_token_ids();
            let logits = backbone.forward(seq, false)?.logits.narrow(1, p - 1, n).narrow(
                2,
                allowed.start,
                allowed.len(),
            );
            let codes = logits.clone().argmax(2).squeeze_dim::<2>(2);
            (codes.clone(), token_scores(logits, codes, top_k))
        }
    };
    let rows_i = |flat: Vec<i64>, w: usize| flat.chunks(w).map(<[i64]>::to_vec).collect::<Vec<_>>();
    let rows_f = |flat: Vec<f32>| flat.chunks(n).map(<[f32]>::to_vec).collect::<Vec<_>>();
    Ok(Scored {
        generated: rows_i(read_i64(codes)?, n),
        log_prob: rows_f(read_f32(log_prob)?),
        entropy: rows_f(read_f32(entropy)?),
        top: rows_i(read_i64(top.flatten::<2>(1, 2))?, n * top_k),
    })
}
