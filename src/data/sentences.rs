//! Visual sentences for analogy prompting: `K` demonstration pairs and a query,
//! `[x_1, y_1, …, x_K, y_K, x_q]`, with the query's output `y_q` as the target.

use crate::backend::ArBackend;
use burn::tensor::{Int, Tensor};
use image::RgbImage;

use super::images::ImageSet;
use crate::checks::read_i64;
use crate::error::{Error, Result};
use crate::io::rgb_to_tensor;
use crate::rng::SplitMix64;
use crate::tasks::Task;
use crate::traits::Tokenizer;

/// One prompt: `images = [x_1, y_1, …, x_K, y_K, x_q]` and the target `y_q`.
#[derive(Clone, Debug)]
pub struct Sentence {
    /// The `2K + 1` prompt images.
    pub images: Vec<RgbImage>,
    /// The query's ground-truth output.
    pub target: RgbImage,
    /// Index of the query image in its [`ImageSet`].
    pub query: usize,
}

/// Builds `count` sentences from `set`: query `i` is image `i mod n` (so every image is a query
/// before any repeats), its `k` demonstrations are other images of the same set drawn without
/// replacement; task randomness (inpainting masks) comes from the same generator, so `seed`
/// fixes everything. Build training and validation sentences from disjoint sets
/// ([`ImageSet::split`]) so that no image appears in both.
///
/// ```
/// use ar_refine::data::{build_sentences, ImageSet};
/// use ar_refine::tasks::Colorization;
/// let set = ImageSet::synthetic(5, 8, 0);
/// let s = build_sentences(&set, &Colorization, 2, 7, 1).unwrap();
/// assert_eq!((s.len(), s[0].images.len(), s[6].query), (7, 5, 1));
/// ```
pub fn build_sentences(
    set: &ImageSet,
    task: &dyn Task,
    k: usize,
    count: usize,
    seed: u64,
) -> Result<Vec<Sentence>> {
    let n = set.len();
    if n < k + 1 {
        return Err(Error::Config(format!(
            "{k} demonstrations plus a query need {} distinct images; the set has {n}",
            k + 1
        )));
    }
    let mut rng = SplitMix64::new(seed);
    let rgb = |i: usize| -> Result<RgbImage> {
        let px = set
            .pixels(i)
            .ok_or_else(|| Error::Config(format!("image {i} missing")))?;
        RgbImage::from_raw(set.size() as u32, set.size() as u32, px.to_vec())
            .ok_or_else(|| Error::Config("image buffer size mismatch".into()))
    };
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let q = i % n;
        let mut demos = Vec::with_capacity(k);
        while demos.len() < k {
            let d = rng.below(n);
            if d != q && !demos.contains(&d) {
                demos.push(d);
            }
        }
        let mut images = Vec::with_capacity(2 * k + 1);
        for d in demos {
            let (x, y) = task.pair(&rgb(d)?, &mut rng)?;
            images.push(x);
            images.push(y);
        }
        let (xq, yq) = task.pair(&rgb(q)?, &mut rng)?;
        images.push(xq);
        out.push(Sentence {
            images,
            target: yq,
            query: q,
        });
    }
    Ok(out)
}

/// A sentence as code ids: `prompt` `(2K + 1)·n` codes and `target` `n` codes (tokenizer ids,
/// not backbone vocabulary ids).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenSentence {
    /// Codes of `[x_1, y_1, …, x_q]`, concatenated.
    pub prompt: Vec<i64>,
    /// Codes of `y_q`.
    pub target: Vec<i64>,
}

/// Encodes every image of `sentences` with `tokenizer`, `batch` images per pass. Images are
/// resized to the tokenizer's size when they differ.
pub fn tokenize_sentences<B: ArBackend>(
    tokenizer: &dyn Tokenizer<B>,
    sentences: &[Sentence],
    batch: usize,
    device: &B::Device,
) -> Result<Vec<TokenSentence>> {
    let (h, w) = tokenizer.image_size();
    let all: Vec<&RgbImage> = sentences
        .iter()
        .flat_map(|s| s.images.iter().chain(std::iter::once(&s.target)))
        .collect();
    let mut codes: Vec<i64> = Vec::new();
    for chunk in all.chunks(batch.max(1)) {
        let t: Vec<Tensor<B, 3>> = chunk
            .iter()
            .map(|img| {
                let img = if img.dimensions() == (w as u32, h as u32) {
                    (*img).clone()
                } else {
                    image::imageops::resize(*img, w as u32, h as u32, image::imageops::FilterType::Triangle)
                };
                rgb_to_tensor::<B>(&img, device)
            })
            .collect();
        codes.extend(read_i64(tokenizer.encode(Tensor::stack(t, 0))?)?);
    }
    let n = tokenizer.grid().len();
    let mut out = Vec::with_capacity(sentences.len());
    let mut at = 0;
    for s in sentences {
        let m = s.images.len() * n;
        out.push(TokenSentence {
            prompt: codes[at..at + m].to_vec(),
            target: codes[at + m..at + m + n].to_vec(),
        });
        at += m + n;
    }
    Ok(out)
}

/// The prompts of `sentences` as backbone vocabulary ids `[b, (2K + 1)·n]` (code + `offset`).
pub(crate) fn prompt_tensor<B: ArBackend>(
    sentences: &[TokenSentence],
    offset: i64,
    device: &B::Device,
) -> Result<Tensor<B, 2, Int>> {
    let p = sentences.first().map(|s| s.prompt.len()).unwrap_or(0);
    if p == 0 || sentences.iter().any(|s| s.prompt.len() != p) {
        return Err(Error::Config(
            "prompts must be non-empty and of equal length".into(),
        ));
    }
    let flat: Vec<i64> = sentences
        .iter()
        .flat_map(|s| s.prompt.iter().map(|c| c + offset))
        .collect();
    Ok(Tensor::from_data(
        burn::tensor::TensorData::new(flat, [sentences.len(), p]),
        device,
    ))
}
