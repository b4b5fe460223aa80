//! Decision rules: how a refiner's output becomes code ids, and the calibration of the gate.

use crate::backend::ArBackend;
use burn::tensor::{activation, Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::checks::{expect_dims, read_f32, read_i64};
use crate::decode::{Codebook, Metric};
use crate::error::{Error, Result};
use crate::traits::RefineOutput;

/// Norms below this count as zero.
const NORM_EPS: f64 = 1e-8;

/// How a [`RefineOutput`] becomes code ids `[b, n]`. Every rule keeps the backbone's own code
/// when it ties with the rule's choice, so a refiner at its identity initialisation returns the
/// backbone's tokens under every rule.
///
/// ```
/// use ar_refine::refiner::Decision;
/// let d: Decision = serde_json::from_str(r#"{"rule":"gate","margin":0.5,"threshold":0.3}"#).unwrap();
/// assert_eq!(d, Decision::Gate { margin: 0.5, threshold: 0.3 });
/// assert_eq!(serde_json::to_string(&Decision::Snap).unwrap(), r#"{"rule":"snap"}"#);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum Decision {
    /// The code nearest (cosine) to the refined embedding: the paper's rule. It picks the code
    /// of least *expected embedding distance*, not the most likely one.
    Snap,
    /// The most likely code under the refiner's logits: maximises expected token accuracy.
    Argmax,
    /// The code nearest (cosine) to the expected embedding `Σ_k p_k c_k` under the logits.
    ExpectedSnap,
    /// Keep the backbone's code unless the refiner prefers another by more than `margin` (in
    /// logits; in cosine similarity for a refiner without logits) **and** the probability that
    /// the backbone's code is wrong exceeds `threshold` (the critic's when the refiner has one,
    /// else `1 − p(own code)` under the logits, else 1). `threshold = 1` returns the backbone's
    /// tokens exactly.
    Gate {
        /// Required logit (or cosine) advantage of the proposal over the backbone's code.
        margin: f64,
        /// Required probability that the backbone's code is wrong, in `[0, 1]`.
        threshold: f64,
    },
}

impl Decision {
    /// The natural rule for an output: [`Argmax`](Self::Argmax) with logits, else
    /// [`Snap`](Self::Snap).
    pub fn natural<B: ArBackend>(output: &RefineOutput<B>) -> Self {
        if output.logits.is_some() {
            Self::Argmax
        } else {
            Self::Snap
        }
    }

    /// A short name for tables (`snap`, `argmax`, `expected_snap`, `gate`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Snap => "snap",
            Self::Argmax => "argmax",
            Self::ExpectedSnap => "expected_snap",
            Self::Gate { .. } => "gate",
        }
    }

    /// Checks the rule's numbers.
    pub fn validate(&self) -> Result<()> {
        if let Self::Gate { margin, threshold } = self {
            if !(margin.is_finite() && *margin >= 0.0 && (0.0..=1.0).contains(threshold)) {
                return Err(Error::Config(format!(
                    "gate needs margin >= 0 and threshold in [0, 1], got {margin} and {threshold}"
                )));
            }
        }
        Ok(())
    }

    /// The code ids `[b, n]` this rule picks from `output`, given the backbone's codes `own`
    /// `[b, n]` and the codebook `[K, D]`. A rule that needs logits on an output without them
    /// is an [`Error::Config`].
    pub fn decide<B: ArBackend>(
        &self,
        output: &RefineOutput<B>,
        own: &Tensor<B, 2, Int>,
        codebook: &Codebook<B>,
    ) -> Result<Tensor<B, 2, Int>> {
        self.validate()?;
        check_output(output, own, codebook)?;
        match self {
            Self::Snap => snap_keep(output.embeddings.clone(), own, codebook),
            Self::Argmax => Ok(argmax_keep(logits(output, "argmax")?, own)),
            Self::ExpectedSnap => {
                let p = activation::softmax(logits(output, "expected_snap")?, 2);
                snap_keep(expected(p, codebook), own, codebook)
            }
            Self::Gate { margin, threshold } => {
                let g = GateScores::compute(output, own, codebook)?;
                Ok(g.apply(own, *margin, *threshold))
            }
        }
    }
}

fn check_output<B: ArBackend>(
    output: &RefineOutput<B>,
    own: &Tensor<B, 2, Int>,
    codebook: &Codebook<B>,
) -> Result<()> {
    let [b, n] = own.dims();
    let (k, d) = (codebook.size(), codebook.dim());
    let dims = output.embeddings.dims();
    expect_dims(
        "refined embeddings",
        &format!("[{b}, {n}, {d}]"),
        &dims,
        &[Some(b), Some(n), Some(d)],
    )?;
    if let Some(l) = &output.logits {
        expect_dims(
            "refiner logits",
            &format!("[{b}, {n}, {k}]"),
            &l.dims(),
            &[Some(b), Some(n), Some(k)],
        )?;
    }
    if let Some(w) = &output.wrong_logit {
        expect_dims(
            "refiner critic logits",
            &format!("[{b}, {n}]"),
            &w.dims(),
            &[Some(b), Some(n)],
        )?;
    }
    Ok(())
}

fn logits<B: ArBackend>(output: &RefineOutput<B>, rule: &str) -> Result<Tensor<B, 3>> {
    output.logits.clone().ok_or_else(|| {
        Error::Config(format!(
            "decision rule {rule} needs code logits; this refiner returns embeddings only (use snap or gate)"
        ))
    })
}

/// `Σ_k p_k c_k`: `[b, n, K]` probabilities → `[b, n, D]`.
fn expected<B: ArBackend>(p: Tensor<B, 3>, codebook: &Codebook<B>) -> Tensor<B, 3> {
    p.matmul(codebook.codes().clone().unsqueeze_dim::<3>(0))
}

/// `cos(v, c_ids)` per token: `[b, n, D]`, ids `[b, n]` → `[b, n]`.
fn cosine_to<B: ArBackend>(
    v: &Tensor<B, 3>,
    ids: &Tensor<B, 2, Int>,
    codebook: &Codebook<B>,
) -> Result<Tensor<B, 2>> {
    let c = codebook.embed(ids.clone())?;
    let norm = |x: Tensor<B, 3>| x.powi_scalar(2).sum_dim(2).sqrt().clamp_min(NORM_EPS);
    let cos = (v.clone() * c.clone()).sum_dim(2) / (norm(v.clone()) * norm(c));
    Ok(cos.squeeze_dim::<2>(2))
}

/// The nearest code by cosine, the backbone's own code where it is as near.
fn snap_keep<B: ArBackend>(
    v: Tensor<B, 3>,
    own: &Tensor<B, 2, Int>,
    codebook: &Codebook<B>,
) -> Result<Tensor<B, 2, Int>> {
    let snap = match codebook.metric() {
        Metric::Cosine => codebook.nearest(v.clone())?,
        Metric::SquaredL2 => codebook.with_metric(Metric::Cosine)?.nearest(v.clone())?,
    };
    let keep = cosine_to(&v, own, codebook)?.greater_equal(cosine_to(&v, &snap, codebook)?);
    Ok(snap.mask_where(keep, own.clone()))
}

/// The argmax of `logits` `[b, n, K]`, the backbone's own code where it ties with the maximum.
fn argmax_keep<B: ArBackend>(logits: Tensor<B, 3>, own: &Tensor<B, 2, Int>) -> Tensor<B, 2, Int> {
    let [b, n, _] = logits.dims();
    let best = logits.clone().argmax(2).reshape([b, n]);
    let own_logit = logits
        .clone()
        .gather(2, own.clone().unsqueeze_dim::<3>(2))
        .reshape([b, n]);
    let max = logits.max_dim(2).reshape([b, n]);
    best.mask_where(own_logit.greater_equal(max), own.clone())
}

/// What the gate looks at, per token: the refiner's proposal, its advantage over the backbone's
/// code, and the probability that the backbone's code is wrong.
#[derive(Clone, Debug)]
pub struct GateScores<B: ArBackend> {
    /// The code the refiner prefers `[b, n]` (argmax, or the snap without logits).
    pub proposal: Tensor<B, 2, Int>,
    /// Its advantage over the backbone's code `[b, n]` (logits, or cosine), `>= 0`.
    pub gap: Tensor<B, 2>,
    /// Probability that the backbone's code is wrong `[b, n]`.
    pub p_wrong: Tensor<B, 2>,
}

impl<B: ArBackend> GateScores<B> {
    /// The gate's inputs for `output` and the backbone's codes `own` `[b, n]`.
    pub fn compute(
        output: &RefineOutput<B>,
        own: &Tensor<B, 2, Int>,
        codebook: &Codebook<B>,
    ) -> Result<Self> {
        check_output(output, own, codebook)?;
        let [b, n] = own.dims();
        let own3 = own.clone().unsqueeze_dim::<3>(2);
        let (proposal, gap, p_own) = match &output.logits {
            Some(l) => {
                let proposal = argmax_keep(l.clone(), own);
                let gap = l.clone().max_dim(2) - l.clone().gather(2, own3.clone());
                let p_own = activation::softmax(l.clone(), 2).gather(2, own3).reshape([b, n]);
                (proposal, gap.reshape([b, n]), Some(p_own))
            }
            None => {
                let v = &output.embeddings;
                let proposal = snap_keep(v.clone(), own, codebook)?;
                let gap = cosine_to(v, &proposal, codebook)? - cosine_to(v, own, codebook)?;
                (proposal, gap, None)
            }
        };
        let p_wrong = match (&output.wrong_logit, p_own) {
            (Some(w), _) => activation::sigmoid(w.clone()),
            (None, Some(p)) => p.neg().add_scalar(1.0),
            (None, None) => Tensor::ones([b, n], &own.device()),
        };
        Ok(Self {
            proposal,
            gap: gap.clamp_min(0.0),
            p_wrong,
        })
    }

    /// The gate's ids: the proposal where `gap > margin` and `p_wrong > threshold`, else `own`.
    pub fn apply(&self, own: &Tensor<B, 2, Int>, margin: f64, threshold: f64) -> Tensor<B, 2, Int> {
        let change = self
            .gap
            .clone()
            .greater_elem(margin)
            .bool_and(self.p_wrong.clone().greater_elem(threshold));
        own.clone().mask_where(change, self.proposal.clone())
    }

    /// The scores on the host, with the backbone's codes, for sweeps and calibration.
    pub fn to_host(&self, own: &Tensor<B, 2, Int>) -> Result<GateTable> {
        Ok(GateTable {
            own: read_i64(own.clone().flatten::<1>(0, 1))?,
            proposal: read_i64(self.proposal.clone().flatten::<1>(0, 1))?,
            gap: read_f32(self.gap.clone().flatten::<1>(0, 1))?,
            p_wrong: read_f32(self.p_wrong.clone().flatten::<1>(0, 1))?,
        })
    }
}

/// [`GateScores`] of many tokens on the host (row-major over samples and positions).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GateTable {
    /// The backbone's codes.
    pub own: Vec<i64>,
    /// The refiner's proposals.
    pub proposal: Vec<i64>,
    /// Advantage of the proposal.
    pub gap: Vec<f32>,
    /// Probability that the backbone's code is wrong.
    pub p_wrong: Vec<f32>,
}

/// One setting of the gate and what it does to a set of tokens.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GatePoint {
    /// Margin.
    pub margin: f64,
    /// Threshold.
    pub threshold: f64,
    /// Fraction of tokens changed.
    pub edit_rate: f64,
    /// Token accuracy after the gate.
    pub accuracy: f64,
    /// Fraction of tokens wrong before and right after.
    pub fixed: f64,
    /// Fraction of tokens right before and wrong after.
    pub broken: f64,
}

/// Margins tried by [`GateTable::calibrate`].
pub const GATE_MARGINS: [f64; 6] = [0.0, 0.25, 0.5, 1.0, 2.0, 4.0];

impl GateTable {
    /// Appends another batch's table.
    pub fn extend(&mut self, other: GateTable) {
        self.own.extend(other.own);
        self.proposal.extend(other.proposal);
        self.gap.extend(other.gap);
        self.p_wrong.extend(other.p_wrong);
    }

    /// What the gate `(margin, threshold)` does against `truth` (same order as the table).
    pub fn point(&self, truth: &[i64], margin: f64, threshold: f64) -> GatePoint {
        let (mut edits, mut right, mut fixed, mut broken) = (0usize, 0usize, 0usize, 0usize);
        let rows = self
            .own
            .iter()
            .zip(&self.proposal)
            .zip(self.gap.iter().zip(&self.p_wrong));
        for (((&own, &proposal), (&gap, &p_wrong)), &t) in rows.zip(truth) {
            let change = gap as f64 > margin && p_wrong as f64 > threshold;
            let pick = if change { proposal } else { own };
            let (was, is) = (own == t, pick == t);
            edits += (pick != own) as usize;
            right += is as usize;
            fixed += (!was && is) as usize;
            broken += (was && !is) as usize;
        }
        let total = self.own.len().min(truth.len()).max(1) as f64;
        GatePoint {
            margin,
            threshold,
            edit_rate: edits as f64 / total,
            accuracy: right as f64 / total,
            fixed: fixed as f64 / total,
            broken: broken as f64 / total,
        }
    }

    /// The accuracy-vs-edit-rate curve at `margin`: one point per threshold `0, 0.025, …, 1`.
    pub fn curve(&self, truth: &[i64], margin: f64) -> Vec<GatePoint> {
        (0..=40)
            .map(|t| self.point(truth, margin, t as f64 / 40.0))
            .collect()
    }

    /// The `(margin, threshold)` of highest token accuracy against `truth` over
    /// [`GATE_MARGINS`] × thresholds `0, 0.025, …, 1` (ties: fewer edits). Calibrate on
    /// validation pairs, never on the pairs you report.
    pub fn calibrate(&self, truth: &[i64]) -> GatePoint {
        let mut best = self.point(truth, 0.0, 1.0);
        for &m in &GATE_MARGINS {
            for p in self.curve(truth, m) {
                if p.accuracy > best.accuracy || (p.accuracy == best.accuracy && p.edit_rate < best.edit_rate)
                {
                    best = p;
                }
            }
        }
        best
    }
}
