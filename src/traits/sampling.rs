//! Token sampling: greedy, temperature, top-k and top-p (nucleus), seeded.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rng::SplitMix64;

/// How [`crate::ArBackbone::generate`] picks each token.
///
/// `temperature == 0` is greedy decoding (ties: the lowest id). Otherwise logits are divided by
/// the temperature, restricted to the `top_k` most likely ids and then to the smallest set whose
/// probability reaches `top_p`, and sampled with a generator seeded by `seed`: the same seed,
/// model and prompt give the same tokens.
///
/// ```
/// use ar_refine::Sampling;
/// let s = Sampling::temperature(0.8).with_top_p(0.9).with_seed(7);
/// assert!(s.validate().is_ok());
/// assert!(Sampling::greedy().with_top_p(1.5).validate().is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    /// Softmax temperature; `0.0` selects greedy decoding.
    pub temperature: f32,
    /// Keep only the `k` most likely ids (`None`: all).
    pub top_k: Option<usize>,
    /// Keep the smallest set of ids whose probability reaches `p` in `(0, 1]` (`None`: all).
    pub top_p: Option<f32>,
    /// Seed of the sampling generator.
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Self::greedy()
    }
}

impl Sampling {
    /// Greedy (argmax) decoding.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
        }
    }

    /// Sampling at temperature `t`.
    pub fn temperature(t: f32) -> Self {
        Self {
            temperature: t,
            ..Self::greedy()
        }
    }

    /// Restricts sampling to the `k` most likely ids.
    pub fn with_top_k(mut self, k: usize) -> Self {
        self.top_k = Some(k);
        self
    }

    /// Restricts sampling to the nucleus of probability `p`.
    pub fn with_top_p(mut self, p: f32) -> Self {
        self.top_p = Some(p);
        self
    }

    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Checks the settings: temperature finite and `>= 0`, `top_k >= 1`, `top_p` in `(0, 1]`.
    pub fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(Error::Config(format!(
                "sampling temperature must be finite and >= 0, got {}",
                self.temperature
            )));
        }
        if self.top_k == Some(0) {
            return Err(Error::Config("sampling top_k must be >= 1".into()));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(Error::Config(format!(
                    "sampling top_p must be in (0, 1], got {p}"
                )));
            }
        }
        Ok(())
    }
}

/// Picks one id from `logits` (one row, length = vocabulary) among `allowed` ids.
/// Returns the vocabulary id. `allowed` must be non-empty and inside the row.
pub(crate) fn sample_row(
    logits: &[f32],
    allowed: std::ops::Range<usize>,
    s: &Sampling,
    rng: &mut SplitMix64,
) -> Result<usize> {
    let slice = &logits[allowed.clone()];
    if slice.iter().any(|v| v.is_nan()) {
        return Err(Error::NonFinite {
            what: "backbone logits".into(),
        });
    }
    let argmax = || {
        let mut best = 0;
        for (i, v) in slice.iter().enumerate() {
            if *v > slice[best] {
                best = i;
            }
        }
        best
    };
    if s.temperature == 0.0 {
        return Ok(allowed.start + argmax());
    }
    // Candidates sorted by logit, descending; stable so equal logits keep id order.
    let mut order: Vec<usize> = (0..slice.len()).collect();
    order.sort_by(|a, b| slice[*b].total_cmp(&slice[*a]));
    if let Some(k) = s.top_k {
        order.truncate(k.min(order.len()));
    }
    let t = s.temperature as f64;
    let max = slice[order[0]] as f64;
    let mut probs: Vec<f64> = order
        .iter()
        .map(|&i| ((slice[i] as f64 - max) / t).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    if !(total.is_finite() && total > 0.0) {
        // Every candidate underflowed (e.g. all logits -inf): fall back to the argmax.
        return Ok(allowed.start + argmax());
    }
    probs.iter_mut().for_each(|p| *p /= total);
    if let Some(p) = s.top_p {
        let mut acc = 0.0;
        let mut keep = probs.len();
        for (i, q) in probs.iter().enumerate() {
            acc += q;
            if acc >= p as f64 {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
        order.truncate(keep);
        let kept: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= kept);
    }
    let u = rng.next_f64();
    let mut acc = 0.0;
    for (i, q) in probs.iter().enumerate() {
        acc += q;
        if u < acc {
            return Ok(allowed.start + order[i]);
        }
    }
    Ok(allowed.start + order[probs.len() - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draw(logits: &[f32], allowed: std::ops::Range<usize>, s: &Sampling, n: usize) -> Vec<usize> {
        let mut rng = SplitMix64::new(s.seed);
        let mut counts = vec![0; logits.len()];
        for _ in 0..n {
            counts[sample_row(logits, allowed.clone(), s, &mut rng).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn greedy_takes_the_lowest_argmax_inside_the_allowed_range() {
        let logits = [9.0, 1.0, 3.0, 3.0, 2.0];
        let mut rng = SplitMix64::new(0);
        // Id 0 has the largest logit but lies outside the image-token range.
        assert_eq!(
            sample_row(&logits, 1..5, &Sampling::greedy(), &mut rng).unwrap(),
            2
        );
        let top1 = Sampling::temperature(1.0).with_top_k(1);
        assert_eq!(sample_row(&logits, 1..5, &top1, &mut rng).unwrap(), 2);
    }

    #[test]
    fn temperature_sampling_follows_the_softmax() {
        let logits = [0.0, (2.0f32).ln(), (5.0f32).ln(), f32::NEG_INFINITY];
        let n = 40_000;
        let counts = draw(&logits, 0..4, &Sampling::temperature(1.0).with_seed(3), n);
        for (i, p) in [1.0 / 8.0, 2.0 / 8.0, 5.0 / 8.0, 0.0].iter().enumerate() {
            let f = counts[i] as f64 / n as f64;
            assert!((f - p).abs() < 0.01, "id {i}: frequency {f} vs probability {p}");
        }
    }

    #[test]
    fn top_k_and_top_p_cut_the_tail() {
        let logits = [0.0, (2.0f32).ln(), (5.0f32).ln()];
        let k2 = draw(&logits, 0..3, &Sampling::temperature(1.0).with_top_k(2), 2000);
        assert_eq!(k2[0], 0);
        // Probabilities 5/8, 2/8, 1/8: a nucleus of 0.8 keeps ids 2 and 1.
        let p = draw(&logits, 0..3, &Sampling::temperature(1.0).with_top_p(0.8), 2000);
        assert_eq!(p[0], 0);
        assert!(p[1] > 0 && p[2] > p[1]);
        // A nucleus smaller than the top probability is greedy.
        let tiny = draw(&logits, 0..3, &Sampling::temperature(1.0).with_top_p(0.1), 100);
        assert_eq!(tiny, vec![0, 0, 100]);
    }

    #[test]
    fn nan_logits_and_bad_settings_are_errors() {
        let mut rng = SplitMix64::new(0);
        let err = sample_row(&[0.0, f32::NAN], 0..2, &Sampling::greedy(), &mut rng).unwrap_err();
        assert!(matches!(err, Error::NonFinite { .. }));
        for bad in [
            Sampling::temperature(f32::NAN),
            Sampling::temperature(-0.5),
            Sampling::greedy().with_top_k(0),
            Sampling::greedy().with_top_p(0.0),
        ] {
            assert!(matches!(bad.validate(), Err(Error::Config(_))), "{bad:?}");
        }
    }
}
