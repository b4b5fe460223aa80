//! Generation for any [`ArBackbone`] through repeated teacher-forced passes.

use crate::backend::ArBackend;
use burn::tensor::{Int, Tensor};

use super::sampling::{sample_row, Sampling};
use super::ArBackbone;
use crate::checks::{ensure_ids_in, expect_non_empty, int_tensor, read_f32, read_i64};
use crate::error::{Error, Result};
use crate::rng::SplitMix64;

/// Checks a prompt and the model's vocabulary facts before generation.
pub(crate) fn validate_prompt<B: ArBackend, M: ArBackbone<B> + ?Sized>(
    model: &M,
    prompt: &Tensor<B, 2, Int>,
    sampling: &Sampling,
) -> Result<()> {
    sampling.validate()?;
    expect_non_empty("generate prompt", "[b, p]", &prompt.dims())?;
    let image = model.image_token_ids();
    if image.is_empty() || image.end > model.vocab_size() {
        return Err(Error::Config(format!(
            "backbone image-token ids {image:?} must be non-empty and inside the vocabulary 0..{}",
            model.vocab_size()
        )));
    }
    if model.context_len() < 2 {
        return Err(Error::Config("backbone context length must be >= 2".into()));
    }
    ensure_ids_in(prompt, 0..model.vocab_size() as i64, "generate prompt")
}

/// The default [`ArBackbone::generate`]: runs `forward` on the (windowed) sequence for every new
/// token and samples from the last position's logits on the host.
///
/// Prompt `[b, p]` → new ids `[b, n_new]`. The window keeps the last `context_len` tokens.
pub fn generate_by_forward<B: ArBackend, M: ArBackbone<B> + ?Sized>(
    model: &M,
    prompt: Tensor<B, 2, Int>,
    n_new: usize,
    sampling: &Sampling,
) -> Result<Tensor<B, 2, Int>> {
    validate_prompt(model, &prompt, sampling)?;
    if n_new == 0 {
        return Err(Error::Config("generate needs n_new >= 1".into()));
    }
    let [b, p] = prompt.dims();
    let device = prompt.device();
    let vocab = model.vocab_size();
    let allowed = model.image_token_ids();
    // One growing sequence per batch row.
    let mut rows: Vec<Vec<i64>> = read_i64(prompt)?.chunks(p).map(<[i64]>::to_vec).collect();
    let mut rng = SplitMix64::new(sampling.seed);
    for step in 0..n_new {
        let len = p + step;
        let w = len.min(model.context_len());
        let window: Vec<i64> = rows
            .iter()
            .flat_map(|row| row[len - w..].iter().copied())
            .collect();
        let out = model.forward(int_tensor(window, b, w, &device), false)?;
        let dims = out.logits.dims();
        if dims != [b, w, vocab] {
            return Err(Error::shape(
                "backbone forward logits",
                format!("[{b}, {w}, {vocab}]"),
                &dims,
            ));
        }
        let last = read_f32(out.logits.narrow(1, w - 1, 1))?;
        for (row, logits) in rows.iter_mut().zip(last.chunks(vocab)) {
            let id = sample_row(logits, allowed.clone(), sampling, &mut rng)?;
            row.push(id as i64);
        }
    }
    let new_ids = rows.iter().flat_map(|row| row[p..].iter().copied()).collect();
    Ok(int_tensor(new_ids, b, n_new, &device))
}
