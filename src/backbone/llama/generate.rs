//! [`ArBackbone`] for [`Llama`]: teacher-forced forward and KV-cache generation.

use crate::backend::ArBackend;
use std::ops::Range;

use burn::tensor::{Int, Tensor};

use super::model::Llama;
use crate::checks::{ensure_finite, int_tensor, read_f32};
use crate::error::{Error, Result};
use crate::rng::SplitMix64;
use crate::traits::{sample_row, token_scores, validate_prompt, AnswerScores, Sampling};
use crate::traits::{ArBackbone, ForwardOutput};

/// The most tokens one [`Llama::generate_with`] call produces (4,096 LVM images of 256 tokens):
/// more is a caller's mistake, not a request, and is refused before anything is allocated.
pub const MAX_NEW_TOKENS: usize = 1 << 20;
/// A per-token callback: step index and the new id of each batch row.
pub type TokenCallback<'a> = dyn FnMut(usize, &[i64]) + 'a;

/// Extra settings for [`Llama::generate_with`].
///
/// ```
/// use ar_refine::backbone::GenerateOptions;
/// let mut seen = 0;
/// let mut count = |_step: usize, _ids: &[i64]| seen += 1;
/// let opts = GenerateOptions { want_hidden: true, context_images: Some((256, 15)), on_token: Some(&mut count), ..Default::default() };
/// # let _ = opts;
/// ```
#[derive(Default)]
pub struct GenerateOptions<'a> {
    /// Also return the final hidden state that produced each new token, `[b, n_new, hidden]`.
    pub want_hidden: bool,
    /// Also return, for each new token, the log-probability and entropy of the distribution it
    /// was chosen from (softmax over the image codes at temperature 1) and its `k` most likely
    /// codes, when set to `Some(k)`: the scores [`crate::backbone::score_answers`] recomputes,
    /// at no extra pass.
    pub want_scores: Option<usize>,
    /// LVM-style context truncation `(tokens_per_image, max_images)`: before generation the
    /// prompt keeps only its last `max_images - 1` whole images (LVM keeps 15 images of
    /// context in all, the one being generated included) when it holds more.
    pub context_images: Option<(usize, usize)>,
    /// Called after every step with the step index and the new id of each batch row
    /// (progress bars, streaming). Forces the ids to the host every step.
    pub on_token: Option<&'a mut TokenCallback<'a>>,
}

/// What [`Llama::generate_with`] returns.
#[derive(Clone, Debug)]
pub struct Generation<B: ArBackend> {
    /// New vocabulary ids `[b, n_new]`.
    pub tokens: Tensor<B, 2, Int>,
    /// The final hidden state whose logits chose each new token, `[b, n_new, hidden]`, when
    /// asked for.
    pub hidden: Option<Tensor<B, 3>>,
    /// Per-token scores (`hidden` left empty), when asked for.
    pub scores: Option<AnswerScores<B>>,
}

impl<B: ArBackend> Llama<B> {
    /// Generates `n_new` tokens after `prompt` `[b, p]` with a KV cache: one prefill pass over
    /// the prompt, then one single-token pass per new token. Sampling is restricted to
    /// [`ArBackbone::image_token_ids`]. Greedy decoding without a callback stays on the device
    /// (no host round trip per token); other settings sample on the host with the seeded
    /// generator shared with [`crate::traits::generate_by_forward`], so both give the same tokens.
    ///
    /// When prompt plus output outgrow the context, the window keeps the last
    /// `context_len` tokens (each step past that point re-runs a prefill over the window);
    /// [`GenerateOptions::context_images`] truncates the prompt by whole images instead, as LVM does.
    pub fn generate_with(
        &self,
        prompt: Tensor<B, 2, Int>,
        n_new: usize,
        sampling: &Sampling,
        mut opts: GenerateOptions<'_>,
    ) -> Result<Generation<B>> {
        crate::device_watch::watch_device_panics();
        validate_prompt(self, &prompt, sampling)?;
        if n_new == 0 {
            return Err(Error::Config("generate needs n_new >= 1".into()));
        }
        if n_new > MAX_NEW_TOKENS {
            return Err(Error::Config(format!(
                "generate: n_new {n_new} is more than {MAX_NEW_TOKENS} tokens (an LVM image is 256); \
                 generate in pieces if you mean it"
            )));
        }
        let prompt = match opts.context_images {
            Some((per, max)) => truncate_images(prompt, per, max)?,
            None => prompt,
        };
        let [b, p] = prompt.dims();
        let device = prompt.device();
        let ctx = self.context_len();
        let allowed = self.image_token_ids();
        let on_device = sampling.temperature == 0.0 && opts.on_token.is_none();
        let mut rng = SplitMix64::new(sampling.seed);

        // Tokens so far (device), for re-prefilling a sliding window.
        let mut seq: Vec<Tensor<B, 2, Int>> = vec![prompt.clone()];
        let mut produced: Vec<Tensor<B, 2, Int>> = Vec::with_capacity(n_new);
        let mut hiddens: Vec<Tensor<B, 3>> = Vec::new();
        if let Some(k) = opts.want_scores {
            if k == 0 || k > allowed.len() {
                return Err(Error::Config(format!(
                    "want_scores: top-k must be in 1..={} (the image codes), got {k}",
                    allowed.len()
                )));
            }
        }
        let (mut log_probs, mut entropies, mut tops) = (Vec::new(), Vec::new(), Vec::new());
        let capacity = (p + n_new).min(ctx);
        let mut cache = self.new_cache(b, capacity, &device)?;
        let window = p.min(ctx);
        let mut last_hidden = self.hidden_unchecked(prompt.narrow(1, p - window, window), Some(&mut cache));
        for step in 0..n_new {
            let h = last_hidden.clone().narrow(1, last_hidden.dims()[1] - 1, 1);
            if opts.want_hidden {
                hiddens.push(h.clone());
            }
            let logits = self.logits(h).reshape([b, self.config.vocab_size]);
            let logits_img = logits.clone().narrow(1, allowed.start, allowed.len());
            let next = if on_device {
                logits_img.clone().argmax(1).add_scalar(allowed.start as i64)
            } else {
                let host = read_f32(logits)?;
                let ids: Vec<i64> = host
                    .chunks(self.config.vocab_size)
                    .map(|row| sample_row(row, allowed.clone(), sampling, &mut rng).map(|i| i as i64))
                    .collect::<Result<_>>()?;
                if let Some(cb) = opts.on_token.as_mut() {
                    cb(step, &ids);
                }
                int_tensor(ids, b, 1, &device)
            };
            if let Some(k) = opts.want_scores {
                let image = logits_img.reshape([b, 1, allowed.len()]);
                let (lp, ent, top) = token_scores(image, next.clone().sub_scalar(allowed.start as i64), k);
                log_probs.push(lp);
                entropies.push(ent);
                tops.push(top);
            }
            produced.push(next.clone());
            seq.push(next.clone());
            if step + 1 == n_new {
                break;
            }
            if cache.len < cache.capacity {
                last_hidden = self.hidden_unchecked(next, Some(&mut cache));
            } else {
                // Window full: re-prefill the last ctx - 1 tokens, then feed the new one.
                let all = Tensor::cat(std::mem::take(&mut seq), 1);
                let total = all.dims()[1];
                seq.push(all.clone());
                cache.clear();
                let before = all.narrow(1, total - ctx, ctx - 1);
                last_hidden = self.hidden_unchecked(before, Some(&mut cache));
                last_hidden = Tensor::cat(
                    vec![last_hidden, self.hidden_unchecked(next, Some(&mut cache))],
                    1,
                );
            }
        }
        let tokens = Tensor::cat(produced, 1);
        // NaN logits make the device argmax meaningless (the host path checks every row): a
        // NaN anywhere propagates to the last hidden state, so one check at the end suffices.
        if on_device {
            ensure_finite(&last_hidden, "backbone hidden states")?;
        }
        // A GPU runtime failure while generating leaves zeros behind, not an error.
        crate::device_watch::check_device()?;
        let scores = opts.want_scores.map(|_| AnswerScores {
            log_prob: Tensor::cat(log_probs, 1),
            entropy: Tensor::cat(entropies, 1),
            top: Tensor::cat(tops, 1),
            hidden: None,
        });
        Ok(Generation {
            tokens,
            hidden: opts.want_hidden.then(|| Tensor::cat(hiddens, 1)),
            scores,
        })
    }
}

/// Keeps the last `max_images - 1` whole images of a prompt `[b, p]` made of
/// `per`-token images (LVM: 256 tokens, 15 images in context).
fn truncate_images<B: ArBackend>(
    prompt: Tensor<B, 2, Int>,
    per: usize,
    max: usize,
) -> Result<Tensor<B, 2, Int>> {
    let [_, p] = prompt.dims();
    if per == 0 || max < 2 {
        return Err(Error::Config(format!(
            "context_images needs tokens_per_image >= 1 and max_images >= 2, got ({per}, {max})"
        )));
    }
    let keep = per * (max - 1);
    Ok(if p > keep {
        prompt.narrow(1, p - keep, keep)
    } else {
        prompt
    })
}

impl<B: ArBackend> ArBackbone<B> for Llama<B> {
    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn image_token_ids(&self) -> Range<usize> {
        self.config.image_tokens()
    }

    fn context_len(&self) -> usize {
        self.config.max_position_embeddings
    }

    fn forward(&self, tokens: Tensor<B, 2, Int>, want_hidden: bool) -> Result<ForwardOutput<B>> {
        let hidden = self.forward_hidden(tokens, None)?;
        Ok(ForwardOutput {
            logits: self.logits(hidden.clone()),
            hidden: want_hidden.then_some(hidden),
        })
    }

    fn generate(
        &self,
        prompt: Tensor<B, 2, Int>,
        n_new: usize,
        sampling: &Sampling,
    ) -> Result<Tensor<B, 2, Int>> {
        Ok(self
            .generate_with(prompt, n_new, sampling, GenerateOptions::default())?
            .tokens)
    }

    fn generate_scored(
        &self,
        prompt: Tensor<B, 2, Int>,
        n_new: usize,
        sampling: &Sampling,
        top_k: usize,
    ) -> Result<(Tensor<B, 2, Int>, AnswerScores<B>)> {
        let opts = GenerateOptions {
            want_scores: Some(top_k),
            ..Default::default()
        };
        let out = self.generate_with(prompt, n_new, sampling, opts)?;
        let scores = out
            .scores
            .ok_or_else(|| Error::Config("generation returned no scores".into()))?;
        Ok((out.tokens, scores))
    }
}
