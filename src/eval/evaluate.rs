//! Side-by-side evaluation of refiners on the same cached backbone outputs: per-image metrics,
//! paired deltas against the backbone with bootstrap intervals, several seeds per method.

use crate::backend::ArBackend;
use std::collections::HashSet;
use std::time::Instant;

use burn::tensor::{Int, Tensor};
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::checks::{read_f32, read_i64};
use crate::decode::Metric;
use crate::error::{Error, Result};
use crate::io::rgb_to_tensor;
use crate::metrics::psnr_per_image;
use crate::metrics::ssim_per_image;
use crate::refiner::{Decision, GatePoint, GateScores, GateTable};
use crate::rng::SplitMix64;
use crate::train::{pair_input, HiddenSource, Pairs};
use crate::traits::{Refiner, Tokenizer};

/// Mean metrics of one set of codes against the ground truth.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Fraction of codes equal to the ground truth.
    pub token_accuracy: f64,
    /// Fraction of positions whose true code is among the 5 most likely (the refiner's logits,
    /// or the backbone's recorded distribution); `None` without a distribution.
    pub top5_accuracy: Option<f64>,
    /// Mean PSNR (dB) of the decoded images against the reference images (the task's true
    /// outputs, e.g. photos).
    pub psnr: f64,
    /// Mean SSIM against the reference images.
    pub ssim: f64,
    /// Mean PSNR against the decoding of the true codes (the tokenizer's ceiling removed).
    pub psnr_decoded: f64,
    /// Mean SSIM against the decoding of the true codes.
    pub ssim_decoded: f64,
    /// Area under the per-position cosine-distance curve: the sum over positions of the mean
    /// (over samples) of `1 − cos(e(pred), e(truth))`.
    pub cos_area: f64,
    /// The same sum over the last third of the positions (`⌊2n/3⌋..n`, positions 171–256 of
    /// 256), where accumulated errors show (the paper's Figure 2).
    pub cos_area_last_third: f64,
}

/// How a method changed the backbone's codes, as fractions of all tokens.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Changes {
    /// Tokens whose code changed.
    pub changed: f64,
    /// Tokens wrong before and right after.
    pub fixed: f64,
    /// Tokens right before and wrong after.
    pub broken: f64,
    /// Distinct codes in the outputs (all samples together).
    pub distinct: usize,
}

/// A mean with its 95 % bootstrap interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// Mean over the images.
    pub mean: f64,
    /// 2.5th percentile of the bootstrap means.
    pub lo: f64,
    /// 97.5th percentile of the bootstrap means.
    pub hi: f64,
}

/// Paired per-image differences (method − backbone), averaged over seeds, with intervals.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Deltas {
    /// Token accuracy.
    pub token_accuracy: Interval,
    /// PSNR against the reference images (dB).
    pub psnr: Interval,
    /// SSIM against the reference images.
    pub ssim: Interval,
    /// PSNR against the decoded true codes (dB).
    pub psnr_decoded: Interval,
}

/// One method's results over its seeds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MethodResult {
    /// The method's name.
    pub name: String,
    /// The decision rule's name.
    pub decision: String,
    /// Mean over seeds.
    pub metrics: Metrics,
    /// Standard deviation over seeds (zeros for one seed).
    pub std: Metrics,
    /// Every seed's metrics.
    pub per_seed: Vec<Metrics>,
    /// Paired deltas against the backbone.
    pub delta: Deltas,
    /// Code changes (mean over seeds; distinct codes of the first seed).
    pub changes: Changes,
    /// Mean cosine distance per position (mean over seeds).
    pub curve: Vec<f64>,
    /// Accuracy against edit rate as the gate's threshold goes from 0 to 1 (first seed, margin
    /// of the method's gate), when asked for.
    #[serde(default)]
    pub gate_curve: Vec<GatePoint>,
    /// Wall time of refinement (inputs, refiner, decision) per sample, ms.
    pub refine_ms_per_sample: f64,
}

/// The backbone's results.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BackboneResult {
    /// Metrics.
    pub metrics: Metrics,
    /// Distinct codes in its outputs.
    pub distinct: usize,
    /// Mean cosine distance per position.
    pub curve: Vec<f64>,
}

/// What [`compare`] measures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// Pairs evaluated.
    pub samples: usize,
    /// Tokens per image.
    pub tokens: usize,
    /// Reference images: `"targets"` (the task outputs, e.g. real photos) or `"decoded truth"`.
    pub reference: String,
    /// Bootstrap resamples behind every interval.
    pub bootstrap: usize,
    /// The frozen backbone.
    pub backbone: BackboneResult,
    /// Distinct codes in the ground truth.
    pub distinct_truth: usize,
    /// The methods, in the order given.
    pub methods: Vec<MethodResult>,
}

impl Comparison {
    /// The method called `name`.
    pub fn method(&self, name: &str) -> Option<&MethodResult> {
        self.methods.iter().find(|m| m.name == name)
    }
}

/// A method to evaluate: one trained refiner per seed, each with the rule that turns its output
/// into codes (`None`: argmax with code logits, else snap).
pub struct Method<'a, B: ArBackend> {
    /// Name in tables.
    pub name: String,
    /// `(refiner, rule)` per seed (at least one).
    pub runs: Vec<(&'a dyn Refiner<B>, Option<Decision>)>,
    /// Record the accuracy-vs-edit-rate curve of its gate scores (first seed).
    pub gate_curve: bool,
}

/// Settings of [`compare`].
pub struct CompareOptions<'a, B: ArBackend> {
    /// Pairs per batch.
    pub batch: usize,
    /// Samples whose decoded images are returned for a grid.
    pub keep: usize,
    /// Bootstrap resamples (e.g. 2,000).
    pub bootstrap: usize,
    /// Seed of the bootstrap.
    pub seed: u64,
    /// The backbone's hidden states, for refiners that read them.
    pub hidden: Option<&'a dyn HiddenSource<B>>,
}

impl<B: ArBackend> Default for CompareOptions<'_, B> {
    fn default() -> Self {
        Self {
            batch: 16,
            keep: 6,
            bootstrap: 2000,
            seed: 0,
            hidden: None,
        }
    }
}

/// Decoded images of the first samples, for a comparison grid: `[m, 3, H, W]` each.
#[derive(Clone, Debug)]
pub struct EvalImages<B: ArBackend> {
    /// Backbone outputs.
    pub backbone: Tensor<B, 4>,
    /// Each method's outputs (its first seed), in the order of the methods.
    pub methods: Vec<Tensor<B, 4>>,
    /// Reference images.
    pub truth: Tensor<B, 4>,
}

/// Per-image values of one set of codes.
#[derive(Clone, Default)]
struct PerImage {
    acc: Vec<f64>,
    top5: Vec<f64>,
    psnr: Vec<f64>,
    ssim: Vec<f64>,
    psnr_dec: Vec<f64>,
    ssim_dec: Vec<f64>,
    curve: Vec<f64>,
    moves: [f64; 3],
    distinct: HashSet<i64>,
    has_top5: bool,
}

impl PerImage {
    fn metrics(&self, count: f64, n: usize) -> Metrics {
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let curve: Vec<f64> = self.curve.iter().map(|v| v / count).collect();
        Metrics {
            token_accuracy: mean(&self.acc),
            top5_accuracy: self.has_top5.then(|| mean(&self.top5)),
            psnr: mean(&self.psnr),
            ssim: mean(&self.ssim),
            psnr_decoded: mean(&self.psnr_dec),
            ssim_decoded: mean(&self.ssim_dec),
            cos_area: curve.iter().sum(),
            cos_area_last_third: curve[2 * n / 3..].iter().sum(),
        }
    }
}

/// What every set of codes in a batch is compared with.
struct Refs<B: ArBackend> {
    truth_ids: Vec<i64>,
    e_truth: Tensor<B, 3>,
    reference: Tensor<B, 4>,
    decoded_truth: Tensor<B, 4>,
}

/// Evaluates the frozen backbone's cached outputs `pairs` and every method on them: token
/// accuracy, top-5 accuracy, PSNR and SSIM against `targets` (one per pair, resized to the
/// tokenizer's size; else the decoded true codes) and against the decoded true codes, the
/// per-position cosine-distance curve, and what each method changed. Per-image differences
/// against the backbone are averaged over a method's seeds and given with a 95 % bootstrap
/// interval over the images. The first `opts.keep` samples' decoded images are returned.
pub fn compare<B: ArBackend>(
    tokenizer: &dyn Tokenizer<B>,
    pairs: &Pairs,
    targets: Option<&[RgbImage]>,
    methods: &[Method<'_, B>],
    opts: &CompareOptions<'_, B>,
    device: &B::Device,
) -> Result<(Comparison, EvalImages<B>)> {
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
    if let Some(m) = methods.iter().find(|m| m.runs.is_empty()) {
        return Err(Error::Config(format!("method {:?} has no refiner", m.name)));
    }
    let (h, w) = tokenizer.image_size();
    let grid = tokenizer.grid();
    let snap = tokenizer.codebook().with_metric(Metric::Cosine)?;
    let mut base = PerImage {
        has_top5: pairs.top.len() == pairs.len(),
        curve: vec![0.0; n],
        ..Default::default()
    };
    let mut runs: Vec<Vec<PerImage>> = methods
        .iter()
        .map(|m| {
            vec![
                PerImage {
                    curve: vec![0.0; n],
                    ..Default::default()
                };
                m.runs.len()
            ]
        })
        .collect();
    let mut gates: Vec<Option<(GateTable, f64)>> = methods.iter().map(|_| None).collect();
    let mut gate_truth: Vec<i64> = Vec::new();
    let mut times = vec![0.0f64; methods.len()];
    let mut rules = vec![""; methods.len()];
    let mut truth_codes: HashSet<i64> = HashSet::new();
    let mut kept: Vec<Vec<Tensor<B, 4>>> = Vec::new();
    let mut kept_count = 0;
    for s in (0..pairs.len()).step_by(opts.batch.max(1)) {
        let idx: Vec<usize> = (s..(s + opts.batch.max(1)).min(pairs.len())).collect();
        let (gen, truth) = pairs.batch::<B>(&idx, device)?;
        let reference = match targets {
            Some(t) => reference_images::<B>(t, &idx, h, w, device),
            None => tokenizer.decode(truth.clone())?,
        };
        let refs = Refs {
            truth_ids: read_i64(truth.clone())?,
            e_truth: tokenizer.embed(truth.clone())?,
            decoded_truth: tokenizer.decode(truth.clone())?,
            reference,
        };
        truth_codes.extend(refs.truth_ids.iter().copied());
        gate_truth.extend(refs.truth_ids.iter().copied());
        let gen_ids = read_i64(gen.clone())?;
        let top5 = base.has_top5.then(|| {
            idx.iter()
                .flat_map(|&i| {
                    let row = &pairs.top[i];
                    let t = row.len() / n;
                    let truth = &pairs.truth[i];
                    (0..n).map(move |p| row[p * t..p * t + t.min(5)].contains(&truth[p]) as u8 as f64)
                })
                .collect::<Vec<f64>>()
        });
        let mut decoded = vec![score(
            tokenizer,
            &mut base,
            gen.clone(),
            &gen_ids,
            &gen_ids,
            &refs,
            top5,
            n,
        )?];
        for (mi, m) in methods.iter().enumerate() {
            for (si, (refiner, rule)) in m.runs.iter().enumerate() {
                let t0 = Instant::now();
                let (input, _) = pair_input(*refiner, pairs, &idx, tokenizer.codebook(), grid, opts.hidden)?;
                let out = refiner.refine(input)?;
                let rule = rule.unwrap_or_else(|| Decision::natural(&out));
                if si == 0 && s == 0 {
                    rules[mi] = rule.name();
                }
                let ids = rule.decide(&out, &gen, &snap)?;
                let ids_host = read_i64(ids.clone())?;
                times[mi] += t0.elapsed().as_secs_f64() / m.runs.len() as f64;
                let top5 = match &out.logits {
                    Some(l) => Some(top5_hits(l.clone(), &truth)?),
                    None => None,
                };
                if m.gate_curve && si == 0 {
                    let margin = match rule {
                        Decision::Gate { margin, .. } => margin,
                        _ => 0.0,
                    };
                    let table = GateScores::compute(&out, &gen, &snap)?.to_host(&gen)?;
                    match &mut gates[mi] {
                        Some((t, _)) => t.extend(table),
                        None => gates[mi] = Some((table, margin)),
                    }
                }
                let img = score(
                    tokenizer,
                    &mut runs[mi][si],
                    ids,
                    &ids_host,
                    &gen_ids,
                    &refs,
                    top5,
                    n,
                )?;
                if si == 0 {
                    decoded.push(img);
                }
            }
        }
        if kept_count < opts.keep {
            let take = (opts.keep - kept_count).min(idx.len());
            decoded.push(refs.reference.clone());
            kept.push(decoded.into_iter().map(|t| t.narrow(0, 0, take)).collect());
            kept_count += take;
        }
    }
    let count = pairs.len() as f64;
    let mut rng = SplitMix64::new(opts.seed);
    let base_metrics = base.metrics(count, n);
    let mut results = Vec::with_capacity(methods.len());
    for (mi, m) in methods.iter().enumerate() {
        let seeds = &runs[mi];
        let per_seed: Vec<Metrics> = seeds.iter().map(|r| r.metrics(count, n)).collect();
        let paired = |get: &dyn Fn(&PerImage) -> &Vec<f64>| -> Vec<f64> {
            (0..pairs.len())
                .map(|i| seeds.iter().map(|r| get(r)[i] - get(&base)[i]).sum::<f64>() / seeds.len() as f64)
                .collect()
        };
        let delta = Deltas {
            token_accuracy: bootstrap(&paired(&|r| &r.acc), opts.bootstrap, &mut rng),
            psnr: bootstrap(&paired(&|r| &r.psnr), opts.bootstrap, &mut rng),
            ssim: bootstrap(&paired(&|r| &r.ssim), opts.bootstrap, &mut rng),
            psnr_decoded: bootstrap(&paired(&|r| &r.psnr_dec), opts.bootstrap, &mut rng),
        };
        let k = seeds.len() as f64;
        let tokens = count * n as f64;
        let moves = |j: usize| seeds.iter().map(|r| r.moves[j]).sum::<f64>() / k / tokens;
        results.push(MethodResult {
            name: m.name.clone(),
            decision: rules[mi].to_string(),
            metrics: mean_metrics(&per_seed),
            std: std_metrics(&per_seed),
            per_seed,
            delta,
            changes: Changes {
                changed: moves(0),
                fixed: moves(1),
                broken: moves(2),
                distinct: seeds[0].distinct.len(),
            },
            curve: (0..n)
                .map(|p| seeds.iter().map(|r| r.curve[p]).sum::<f64>() / k / count)
                .collect(),
            gate_curve: gates[mi]
                .as_ref()
                .map(|(t, margin)| t.curve(&gate_truth, *margin))
                .unwrap_or_default(),
            refine_ms_per_sample: times[mi] * 1e3 / count,
        });
    }
    let comparison = Comparison {
        samples: pairs.len(),
        tokens: n,
        reference: if targets.is_some() {
            "targets"
        } else {
            "decoded truth"
        }
        .into(),
        bootstrap: opts.bootstrap,
        backbone: BackboneResult {
            curve: base.curve.iter().map(|v| v / count).collect(),
            distinct: base.distinct.len(),
            metrics: base_metrics,
        },
        distinct_truth: truth_codes.len(),
        methods: results,
    };
    let cat = |k: usize| -> Tensor<B, 4> {
        if kept.is_empty() {
            Tensor::zeros([0, 3, h, w], device)
        } else {
            Tensor::cat(kept.iter().map(|x| x[k].clone()).collect(), 0)
        }
    };
    let images = EvalImages {
        backbone: cat(0),
        methods: (1..=methods.len()).map(cat).collect(),
        truth: cat(methods.len() + 1),
    };
    Ok((comparison, images))
}

/// Scores one batch of codes `ids` (host copy `ids_host`) against `refs` into `acc`; `own` are
/// the backbone's codes (for the change counts). Returns the decoded images.
#[allow(clippy::too_many_arguments)]
fn score<B: ArBackend>(
    tokenizer: &dyn Tokenizer<B>,
    acc: &mut PerImage,
    ids: Tensor<B, 2, Int>,
    ids_host: &[i64],
    own: &[i64],
    refs: &Refs<B>,
    top5: Option<Vec<f64>>,
    n: usize,
) -> Result<Tensor<B, 4>> {
    for (row, t) in ids_host.chunks(n).zip(refs.truth_ids.chunks(n)) {
        acc.acc
            .push(row.iter().zip(t).filter(|(a, b)| a == b).count() as f64 / n as f64);
    }
    if let Some(hits) = top5 {
        acc.has_top5 = true;
        acc.top5
            .extend(hits.chunks(n).map(|r| r.iter().sum::<f64>() / n as f64));
    }
    for ((&r, &g), &t) in ids_host.iter().zip(own).zip(&refs.truth_ids) {
        let counts = [g != r, g != t && r == t, g == t && r != t];
        for (m, c) in acc.moves.iter_mut().zip(counts) {
            *m += c as u8 as f64;
        }
    }
    acc.distinct.extend(ids_host.iter().copied());
    let dist = cosine_distance(tokenizer.embed(ids.clone())?, refs.e_truth.clone());
    for (p, v) in read_f32(dist.sum_dim(0).reshape([n]))?.iter().enumerate() {
        acc.curve[p] += *v as f64;
    }
    let img = tokenizer.decode(ids)?;
    acc.psnr
        .extend(psnr_per_image(img.clone(), refs.reference.clone())?);
    acc.ssim
        .extend(ssim_per_image(img.clone(), refs.reference.clone())?);
    acc.psnr_dec
        .extend(psnr_per_image(img.clone(), refs.decoded_truth.clone())?);
    acc.ssim_dec
        .extend(ssim_per_image(img.clone(), refs.decoded_truth.clone())?);
    Ok(img)
}

/// Whether the truth is among the 5 largest logits, per position, as 0/1 in row-major order.
fn top5_hits<B: ArBackend>(logits: Tensor<B, 3>, truth: &Tensor<B, 2, Int>) -> Result<Vec<f64>> {
    let k = logits.dims()[2].min(5);
    let (_, top) = logits.topk_with_indices(k, 2);
    let top = read_i64(top)?;
    let truth = read_i64(truth.clone())?;
    Ok(truth
        .iter()
        .enumerate()
        .map(|(i, t)| top[i * k..(i + 1) * k].contains(t) as u8 as f64)
        .collect())
}

/// The reference images of pairs `idx` `[b, 3, h, w]`, resized when needed.
fn reference_images<B: ArBackend>(
    t: &[RgbImage],
    idx: &[usize],
    h: usize,
    w: usize,
    device: &B::Device,
) -> Tensor<B, 4> {
    let imgs: Vec<Tensor<B, 3>> = idx
        .iter()
        .map(|&i| {
            let img = &t[i];
            let img = if img.dimensions() == (w as u32, h as u32) {
                img.clone()
            } else {
                image::imageops::resize(img, w as u32, h as u32, image::imageops::FilterType::Triangle)
            };
            rgb_to_tensor::<B>(&img, device)
        })
        .collect();
    Tensor::stack(imgs, 0)
}

/// The mean of `values` and the 2.5th / 97.5th percentiles of `resamples` bootstrap means.
pub fn bootstrap(values: &[f64], resamples: usize, rng: &mut SplitMix64) -> Interval {
    let n = values.len();
    let mean = values.iter().sum::<f64>() / n.max(1) as f64;
    if n == 0 || resamples == 0 {
        return Interval {
            mean,
            lo: mean,
            hi: mean,
        };
    }
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| (0..n).map(|_| values[rng.below(n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((q * resamples as f64) as usize).min(resamples - 1)];
    Interval {
        mean,
        lo: at(0.025),
        hi: at(0.975),
    }
}

fn map_metrics(ms: &[Metrics], f: &dyn Fn(&[f64]) -> f64) -> Metrics {
    let col = |g: &dyn Fn(&Metrics) -> f64| f(&ms.iter().map(g).collect::<Vec<_>>());
    Metrics {
        token_accuracy: col(&|m| m.token_accuracy),
        top5_accuracy: ms
            .iter()
            .all(|m| m.top5_accuracy.is_some())
            .then(|| col(&|m| m.top5_accuracy.unwrap_or(0.0))),
        psnr: col(&|m| m.psnr),
        ssim: col(&|m| m.ssim),
        psnr_decoded: col(&|m| m.psnr_decoded),
        ssim_decoded: col(&|m| m.ssim_decoded),
        cos_area: col(&|m| m.cos_area),
        cos_area_last_third: col(&|m| m.cos_area_last_third),
    }
}

fn mean_metrics(ms: &[Metrics]) -> Metrics {
    map_metrics(ms, &|v| v.iter().sum::<f64>() / v.len().max(1) as f64)
}

/// Sample standard deviation over seeds (0 for one seed).
fn std_metrics(ms: &[Metrics]) -> Metrics {
    map_metrics(ms, &|v| {
        if v.len() < 2 {
            return 0.0;
        }
        let m = v.iter().sum::<f64>() / v.len() as f64;
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
    })
}

/// `1 − cos(a, b)` per token: `[b, n, D]` × 2 → `[b, n]`.
fn cosine_distance<B: ArBackend>(a: Tensor<B, 3>, b: Tensor<B, 3>) -> Tensor<B, 2> {
    let norm = |x: Tensor<B, 3>| x.powi_scalar(2).sum_dim(2).sqrt().clamp_min(1e-8);
    let dot = (a.clone() * b.clone()).sum_dim(2);
    let cos = dot / (norm(a) * norm(b));
    cos.neg().add_scalar(1.0).squeeze_dim::<2>(2)
}
