//! Evaluation of the frozen backbone alone and with the refiner on held-out pairs.

use std::time::Instant;

use burn::tensor::{backend::Backend, Tensor};
use image::RgbImage;
use serde::{Deserialize, Serialize};

use super::metrics::psnr;
use super::ssim::ssim;
use crate::checks::{read_f32, read_i64};
use crate::decode::Metric;
use crate::error::{Error, Result};
use crate::io::rgb_to_tensor;
use crate::train::Pairs;
use crate::traits::{Refiner, Tokenizer};

/// Metrics of one set of predicted codes against the ground truth.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Fraction of codes equal to the ground truth.
    pub token_accuracy: f64,
    /// Mean PSNR (dB) of the decoded images against the reference images.
    pub psnr: f64,
    /// Mean SSIM of the decoded images against the reference images.
    pub ssim: f64,
    /// Area under the per-position cosine-distance curve: the sum over positions of the mean
    /// (over samples) of `1 − cos(e(pred), e(truth))`.
    pub cos_area: f64,
    /// The same sum over the last third of the positions (`⌊2n/3⌋..n`, positions 171–256 of
    /// 256), where accumulated errors show (the paper's Figure 2).
    pub cos_area_last_third: f64,
}

/// What [`evaluate`] measures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Pairs evaluated.
    pub samples: usize,
    /// Tokens per image.
    pub tokens: usize,
    /// The frozen backbone's outputs.
    pub backbone: Metrics,
    /// After refinement (refine → nearest code).
    pub refined: Metrics,
    /// Mean cosine distance per position, backbone.
    pub curve_backbone: Vec<f64>,
    /// Mean cosine distance per position, refined.
    pub curve_refined: Vec<f64>,
    /// Reference images: `"targets"` (the task outputs, e.g. real photos) or `"decoded truth"`
    /// (the tokenizer's decoding of the ground-truth codes).
    pub reference: String,
    /// Wall time of refinement (embed + refiner + nearest code) per sample, ms.
    pub refine_ms_per_sample: f64,
    /// How the refiner changed the backbone's codes.
    #[serde(default)]
    pub changes: Changes,
}

/// How refinement changed the backbone's codes, over all evaluated tokens: where token
/// accuracy and cosine distance disagree, this says whether the refiner rewrote many codes and
/// whether it rewrote them towards the truth.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Changes {
    /// Fraction of tokens whose code the refiner changed.
    pub changed: f64,
    /// Fraction of tokens wrong before refinement and right after.
    pub fixed: f64,
    /// Fraction of tokens right before refinement and wrong after.
    pub broken: f64,
    /// Distinct codes in the backbone's outputs (all samples together).
    pub distinct_backbone: usize,
    /// Distinct codes after refinement.
    pub distinct_refined: usize,
    /// Distinct codes in the ground truth.
    pub distinct_truth: usize,
}

/// Decoded images of the first samples, for a comparison grid: `[m, 3, H, W]` each.
#[derive(Clone, Debug)]
pub struct EvalImages<B: Backend> {
    /// Backbone outputs.
    pub backbone: Tensor<B, 4>,
    /// Refined outputs.
    pub refined: Tensor<B, 4>,
    /// Reference images.
    pub truth: Tensor<B, 4>,
}

/// Evaluates `pairs` (backbone codes and ground truth) with and without `refiner`.
///
/// Decoded images are compared with `targets` (one per pair, resized to the tokenizer's size)
/// when given, else with the decoding of the ground-truth codes. `batch` pairs are processed at
/// a time; the first `keep` samples' decoded images are returned for a grid.
pub fn evaluate<B: Backend>(
    tokenizer: &dyn Tokenizer<B>,
    refiner: &dyn Refiner<B>,
    pairs: &Pairs,
    targets: Option<&[RgbImage]>,
    batch: usize,
    keep: usize,
    device: &B::Device,
) -> Result<(Evaluation, EvalImages<B>)> {
    let n = tokenizer.grid().len();
    if pairs.is_empty() || pairs.tokens() != n {
        return Err(Error::Config(format!(
            "evaluation needs pairs of {n} tokens (the tokenizer's grid), got {} of {}",
            pairs.len(),
            pairs.tokens()
        )));
    }
    if let Some(t) = targets {
        if t.len() != pairs.len() {
            return Err(Error::Config(format!(
                "{} targets for {} pairs",
                t.len(),
                pairs.len()
            )));
        }
    }
    let (h, w) = tokenizer.image_size();
    let grid = tokenizer.grid();
    let mut sums = [[0.0f64; 3]; 2]; // [backbone, refined] × [correct, psnr, ssim]
    let mut curves = [vec![0.0f64; n], vec![0.0f64; n]];
    let mut refine_time = 0.0;
    let mut moves = [0.0f64; 3]; // changed, fixed, broken
    let mut distinct: [std::collections::HashSet<u32>; 3] = Default::default();
    // refined embeddings snap by cosine, as in `SelfRefinement::refine_codes`
    let snap = tokenizer.codebook().with_metric(Metric::Cosine)?;
    let mut kept: Vec<[Tensor<B, 4>; 3]> = Vec::new();
    for s in (0..pairs.len()).step_by(batch.max(1)) {
        let idx: Vec<usize> = (s..(s + batch.max(1)).min(pairs.len())).collect();
        let (gen, truth) = pairs.batch::<B>(&idx, device)?;
        let t0 = Instant::now();
        let refined = {
            let e = tokenizer.embed(gen.clone())?;
            let r = refiner.refine(e, grid)?;
            snap.nearest(r)?
        };
        // reading the ids back ends the timed section; counting happens on the host from here
        let refined_ids = read_i64(refined.clone())?;
        refine_time += t0.elapsed().as_secs_f64();
        let rows = |r: &[Vec<i64>]| {
            idx.iter()
                .flat_map(|&i| r[i].iter().copied())
                .collect::<Vec<i64>>()
        };
        let (gen_ids, truth_ids) = (rows(&pairs.generated), rows(&pairs.truth));
        for ((&g, &r), &t) in gen_ids.iter().zip(&refined_ids).zip(&truth_ids) {
            let counts = [g != r, g != t && r == t, g == t && r != t];
            for (m, c) in moves.iter_mut().zip(counts) {
                *m += c as u8 as f64;
            }
            sums[0][0] += (g == t) as u8 as f64;
            sums[1][0] += (r == t) as u8 as f64;
        }
        for (set, codes) in distinct.iter_mut().zip([&gen_ids, &refined_ids, &truth_ids]) {
            set.extend(codes.iter().map(|&v| v as u32));
        }
        let reference = match targets {
            Some(t) => {
                let imgs: Vec<Tensor<B, 3>> = idx
                    .iter()
                    .map(|&i| {
                        let img = &t[i];
                        let img = if img.dimensions() == (w as u32, h as u32) {
                            img.clone()
                        } else {
                            image::imageops::resize(
                                img,
                                w as u32,
                                h as u32,
                                image::imageops::FilterType::Triangle,
                            )
                        };
                        rgb_to_tensor::<B>(&img, device)
                    })
                    .collect();
                Tensor::stack(imgs, 0)
            }
            None => tokenizer.decode(truth.clone())?,
        };
        let e_truth = tokenizer.embed(truth)?;
        let mut decoded = Vec::new();
        for (which, codes) in [gen, refined].into_iter().enumerate() {
            let dist = cosine_distance(tokenizer.embed(codes.clone())?, e_truth.clone());
            for (p, v) in read_f32(dist.sum_dim(0).reshape([n]))?.iter().enumerate() {
                curves[which][p] += *v as f64;
            }
            let img = tokenizer.decode(codes)?;
            let m = idx.len() as f64;
            sums[which][1] += psnr(img.clone(), reference.clone())? * m;
            sums[which][2] += ssim(img.clone(), reference.clone())? * m;
            decoded.push(img);
        }
        let have: usize = kept.iter().map(|k| k[0].dims()[0]).sum();
        if have < keep {
            let take = (keep - have).min(idx.len());
            kept.push([
                decoded[0].clone().narrow(0, 0, take),
                decoded[1].clone().narrow(0, 0, take),
                reference.narrow(0, 0, take),
            ]);
        }
    }
    let count = pairs.len() as f64;
    let third = 2 * n / 3;
    let metrics = |which: usize| {
        let curve: Vec<f64> = curves[which].iter().map(|v| v / count).collect();
        Metrics {
            token_accuracy: sums[which][0] / (count * n as f64),
            psnr: sums[which][1] / count,
            ssim: sums[which][2] / count,
            cos_area: curve.iter().sum(),
            cos_area_last_third: curve[third..].iter().sum(),
        }
    };
    let eval = Evaluation {
        samples: pairs.len(),
        tokens: n,
        backbone: metrics(0),
        refined: metrics(1),
        curve_backbone: curves[0].iter().map(|v| v / count).collect(),
        curve_refined: curves[1].iter().map(|v| v / count).collect(),
        reference: if targets.is_some() {
            "targets"
        } else {
            "decoded truth"
        }
        .into(),
        refine_ms_per_sample: refine_time * 1e3 / count,
        changes: Changes {
            changed: moves[0] / (count * n as f64),
            fixed: moves[1] / (count * n as f64),
            broken: moves[2] / (count * n as f64),
            distinct_backbone: distinct[0].len(),
            distinct_refined: distinct[1].len(),
            distinct_truth: distinct[2].len(),
        },
    };
    let cat = |k: usize| -> Option<Tensor<B, 4>> {
        (!kept.is_empty()).then(|| Tensor::cat(kept.iter().map(|x| x[k].clone()).collect(), 0))
    };
    let empty = || Tensor::<B, 4>::zeros([0, 3, h, w], device);
    let images = EvalImages {
        backbone: cat(0).unwrap_or_else(empty),
        refined: cat(1).unwrap_or_else(empty),
        truth: cat(2).unwrap_or_else(empty),
    };
    Ok((eval, images))
}

/// `1 − cos(a, b)` per token: `[b, n, D]` × 2 → `[b, n]`.
fn cosine_distance<B: Backend>(a: Tensor<B, 3>, b: Tensor<B, 3>) -> Tensor<B, 2> {
    let norm = |x: Tensor<B, 3>| x.powi_scalar(2).sum_dim(2).sqrt().clamp_min(1e-8);
    let dot = (a.clone() * b.clone()).sum_dim(2);
    let cos = dot / (norm(a) * norm(b));
    cos.neg().add_scalar(1.0).squeeze_dim::<2>(2)
}
