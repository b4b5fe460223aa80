//! Refiner training pairs (backbone output, ground truth) from a frozen backbone, cached on
//! disk in a versioned, checksummed format and resumable.

mod cache;
mod sharded;

use std::path::Path;

use burn::tensor::{backend::Backend, Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::backbone::Sampling;
use crate::checks::read_i64;
use crate::data::{prompt_tensor, TokenSentence};
use crate::error::{Error, Result};
use crate::traits::ArBackbone;
pub use cache::load_pairs;
use cache::Cache;
pub use sharded::generate_pairs_sharded;

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

/// Token pairs for the query outputs: `generated[i]` and `truth[i]` are code ids of length
/// `n` (the tokenizer's grid).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pairs {
    /// Backbone outputs.
    pub generated: Vec<Vec<i64>>,
    /// Ground truth.
    pub truth: Vec<Vec<i64>>,
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

    /// Rows `idx` as `(generated, truth)` tensors `[b, n]`.
    pub fn batch<B: Backend>(
        &self,
        idx: &[usize],
        device: &B::Device,
    ) -> Result<(Tensor<B, 2, Int>, Tensor<B, 2, Int>)> {
        let n = self.tokens();
        let pick = |rows: &Vec<Vec<i64>>| -> Result<Tensor<B, 2, Int>> {
            let mut flat = Vec::with_capacity(idx.len() * n);
            for &i in idx {
                let r = rows
                    .get(i)
                    .ok_or_else(|| Error::Config(format!("pair {i} out of range 0..{}", self.len())))?;
                flat.extend_from_slice(r);
            }
            Ok(Tensor::from_data(
                burn::tensor::TensorData::new(flat, [idx.len(), n]),
                device,
            ))
        };
        Ok((pick(&self.generated)?, pick(&self.truth)?))
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

/// Runs the frozen `backbone` on every sentence (`opts.batch` at a time) and returns the pairs.
///
/// Code `c` is vocabulary id `backbone.image_token_ids().start + c`. With a cache directory,
/// finished batches are written there as checksummed chunks together with the configuration; a
/// later call with the same configuration loads what is there and generates only the rest, so an
/// interrupted run resumes. `progress(done, total)` is called after every batch.
pub fn generate_pairs<B: Backend>(
    backbone: &dyn ArBackbone<B>,
    sentences: &[TokenSentence],
    opts: &PairOptions<'_>,
    device: &B::Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Pairs> {
    let n = target_len(sentences)?;
    check_ids(backbone, sentences)?;
    let (mut pairs, mut cache) = Cache::open(opts, sentences.len(), n)?;
    let total = sentences.len();
    progress(pairs.len(), total);
    while pairs.len() < total {
        let part = &sentences[pairs.len()..(pairs.len() + opts.batch.max(1)).min(total)];
        let generated = run_backbone(backbone, part, &opts.mode, device)?;
        cache.append(part, generated, &mut pairs)?;
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
fn check_ids<B: Backend>(backbone: &dyn ArBackbone<B>, sentences: &[TokenSentence]) -> Result<()> {
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

/// The backbone's codes for the query outputs of `part`.
fn run_backbone<B: Backend>(
    backbone: &dyn ArBackbone<B>,
    part: &[TokenSentence],
    mode: &PairMode,
    device: &B::Device,
) -> Result<Vec<Vec<i64>>> {
    let n = part[0].target.len();
    let offset = backbone.image_token_ids().start as i64;
    let prompt = prompt_tensor::<B>(part, offset, device)?;
    let ids = match mode {
        PairMode::FreeRunning(s) => backbone.generate(prompt, n, s)?,
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
            let logits = backbone.forward(seq, false)?.logits.narrow(1, p - 1, n);
            let allowed = backbone.image_token_ids();
            logits
                .narrow(2, allowed.start, allowed.len())
                .argmax(2)
                .squeeze_dim::<2>(2)
                .add_scalar(allowed.start as i64)
        }
    };
    let flat = read_i64(ids)?;
    let out: Vec<Vec<i64>> = flat
        .chunks(n)
        .map(|r| r.iter().map(|v| v - offset).collect())
        .collect();
    Ok(out)
}
