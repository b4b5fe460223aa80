//! What a backbone believed about an answer: one teacher-forced pass over prompt + answer gives,
//! at every answer position, the distribution the backbone chose from.

use crate::backend::ArBackend;
use burn::tensor::{activation, Int, Tensor};

use super::ArBackbone;
use crate::checks::{ensure_ids_in, expect_non_empty};
use crate::error::{Error, Result};

/// Per-token scores of an answer under the backbone (see [`score_answers`]).
#[derive(Clone, Debug)]
pub struct AnswerScores<B: ArBackend> {
    /// `log p(answer token)` under the softmax over the image codes at temperature 1 `[b, n]`.
    pub log_prob: Tensor<B, 2>,
    /// Entropy of that distribution in nats `[b, n]`.
    pub entropy: Tensor<B, 2>,
    /// The `top_k` most likely codes (code ids `0..K`, most likely first) `[b, n, top_k]`.
    pub top: Tensor<B, 3, Int>,
    /// Final hidden states at the positions whose logits score each answer token `[b, n, H]`,
    /// when asked for and the backbone returns them.
    pub hidden: Option<Tensor<B, 3>>,
}

/// Scores `answer` `[b, n]` after `prompt` `[b, p]` (both vocabulary ids; the answer's ids are
/// image tokens) with one teacher-forced pass over `prompt + answer[..n-1]`: position `p − 1 + i`
/// predicts answer token `i`. For an answer the backbone generated greedily this reproduces the
/// distributions generation chose from (exactly, when prompt and answer fit the context; a
/// longer sequence keeps its last `context_len` tokens, which generation with a sliding window
/// does not see all at once). Scores are over the image codes only, at temperature 1, whatever
/// the sampling settings were.
pub fn score_answers<B: ArBackend, M: ArBackbone<B> + ?Sized>(
    backbone: &M,
    prompt: Tensor<B, 2, Int>,
    answer: Tensor<B, 2, Int>,
    top_k: usize,
    want_hidden: bool,
) -> Result<AnswerScores<B>> {
    let [b, p] = prompt.dims();
    let [b2, n] = answer.dims();
    expect_non_empty("score_answers prompt", "[b, p]", &[b, p])?;
    expect_non_empty("score_answers answer", "[b, n]", &[b2, n])?;
    if b2 != b {
        return Err(Error::shape(
            "score_answers answer",
            format!("[{b}, n]"),
            &[b2, n],
        ));
    }
    let ids = backbone.image_token_ids();
    if ids.is_empty() || ids.end > backbone.vocab_size() {
        return Err(Error::Config(format!(
            "backbone image-token ids {ids:?} must be non-empty and inside the vocabulary 0..{}",
            backbone.vocab_size()
        )));
    }
    if top_k == 0 || top_k > ids.len() {
        return Err(Error::Config(format!(
            "top_k must be in 1..={} (the image codes), got {top_k}",
            ids.len()
        )));
    }
    let ctx = backbone.context_len();
    if n > ctx {
        return Err(Error::Config(format!(
            "an answer of {n} tokens does not fit the backbone's context of {ctx}"
        )));
    }
    ensure_ids_in(&prompt, 0..backbone.vocab_size() as i64, "score_answers prompt")?;
    ensure_ids_in(
        &answer,
        ids.start as i64..ids.end as i64,
        "score_answers answer (image-token ids)",
    )?;
    let mut seq = Tensor::cat(vec![prompt, answer.clone().narrow(1, 0, n - 1)], 1);
    let len = p + n - 1;
    if len > ctx {
        seq = seq.narrow(1, len - ctx, ctx);
    }
    let w = len.min(ctx);
    let out = backbone.forward(seq, want_hidden)?;
    let dims = out.logits.dims();
    if dims[..2] != [b, w] || dims[2] != backbone.vocab_size() {
        return Err(Error::shape(
            "backbone forward logits",
            format!("[{b}, {w}, {}]", backbone.vocab_size()),
            &dims,
        ));
    }
    let logits = out.logits.narrow(1, w - n, n).narrow(2, ids.start, ids.len());
    let (log_prob, entropy, top) = token_scores(logits, answer.sub_scalar(ids.start as i64), top_k);
    let hidden = match (want_hidden, out.hidden) {
        (true, Some(h)) => Some(h.narrow(1, w - n, n)),
        _ => None,
    };
    Ok(AnswerScores {
        log_prob,
        entropy,
        top,
        hidden,
    })
}

/// From image-code logits `[b, n, K]` and the chosen codes `[b, n]`: the log-probability of each
/// chosen code `[b, n]`, the entropy `[b, n]` and the `top_k` codes `[b, n, top_k]`.
pub(crate) fn token_scores<B: ArBackend>(
    logits: Tensor<B, 3>,
    codes: Tensor<B, 2, Int>,
    top_k: usize,
) -> (Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 3, Int>) {
    let [b, n, _] = logits.dims();
    let logp = activation::log_softmax(logits, 2);
    let log_prob = logp
        .clone()
        .gather(2, codes.unsqueeze_dim::<3>(2))
        .reshape([b, n]);
    let entropy = (logp.clone().exp() * logp.clone())
        .sum_dim(2)
        .neg()
        .reshape([b, n]);
    let (_, top) = logp.topk_with_indices(top_k, 2);
    (log_prob, entropy, top)
}
