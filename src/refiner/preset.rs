//! Named refiner configurations: the paper's, the categorical corrector, and the steps between
//! them that `docs/tiny-lvm/RESULTS.md` measures side by side.

use serde::{Deserialize, Serialize};

use super::config::{CodeHead, RefinerHeads, RefinerInputs, TransformerRefinerConfig};
use super::decision::Decision;
use super::loss::RefinementLoss;
use crate::error::{Error, Result};

/// A named configuration: inputs, heads, loss and decision rule together. Sizes (`d_model`,
/// layers, heads) stay the caller's.
///
/// ```
/// use ar_refine::refiner::{Decision, Preset};
/// let p: Preset = "corrector".parse().unwrap();
/// let cfg = p.config(32).with_d_model(64).with_n_heads(4);
/// assert_eq!(cfg.inputs.prompt_images, 1);
/// assert!(cfg.inputs.confidence && cfg.heads.critic);
/// assert!(matches!(p.decision(), Decision::Gate { .. }));
/// assert_eq!(Preset::Paper.loss().cosine, 1.0);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// Wang et al. (2025): the answer alone, cosine loss, nearest-code snap.
    Paper,
    /// The paper's refiner with the query image as a prefix.
    CosineQuery,
    /// Cross-entropy over cosine code logits (identity-initialised), the answer alone, argmax.
    CeAnswer,
    /// Cross-entropy with the query image as a prefix, argmax.
    CeQuery,
    /// Cross-entropy, query prefix and the backbone's confidence, argmax.
    CeQueryConfidence,
    /// The categorical corrector: query prefix, confidence, a critic head; cross-entropy +
    /// critic BCE + a small cosine term; the gate decides (calibrate it on validation pairs).
    Corrector,
    /// The control: the corrector's network without the backbone's answer (a learned mask token
    /// per answer position, no confidence), cross-entropy, argmax.
    PromptOnly,
}

impl Preset {
    /// Every preset, in the order of the results tables.
    pub const ALL: [Preset; 7] = [
        Preset::Paper,
        Preset::CosineQuery,
        Preset::CeAnswer,
        Preset::CeQuery,
        Preset::CeQueryConfidence,
        Preset::Corrector,
        Preset::PromptOnly,
    ];

    /// The name used on command lines and in files (`paper`, `ce-query`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Preset::Paper => "paper",
            Preset::CosineQuery => "cosine-query",
            Preset::CeAnswer => "ce-answer",
            Preset::CeQuery => "ce-query",
            Preset::CeQueryConfidence => "ce-query-confidence",
            Preset::Corrector => "corrector",
            Preset::PromptOnly => "prompt-only",
        }
    }

    /// The architecture's inputs and heads for codes of width `code_dim` (default sizes).
    pub fn config(&self, code_dim: usize) -> TransformerRefinerConfig {
        let query = !matches!(self, Preset::Paper | Preset::CeAnswer);
        let logits = !matches!(self, Preset::Paper | Preset::CosineQuery);
        let inputs = RefinerInputs::new()
            .with_answer(*self != Preset::PromptOnly)
            .with_prompt_images(query as usize)
            .with_confidence(matches!(self, Preset::CeQueryConfidence | Preset::Corrector));
        let heads = RefinerHeads::new()
            .with_logits(if logits { CodeHead::Cosine } else { CodeHead::None })
            .with_critic(*self == Preset::Corrector);
        TransformerRefinerConfig::new(code_dim)
            .with_inputs(inputs)
            .with_heads(heads)
    }

    /// The training loss.
    pub fn loss(&self) -> RefinementLoss {
        match self {
            Preset::Paper | Preset::CosineQuery => RefinementLoss::default(),
            Preset::Corrector => RefinementLoss {
                cosine: 0.1,
                cross_entropy: 1.0,
                critic: 0.5,
                ..RefinementLoss::none()
            },
            _ => RefinementLoss {
                cosine: 0.0,
                cross_entropy: 1.0,
                ..RefinementLoss::none()
            },
        }
    }

    /// The decision rule before calibration (the corrector's gate starts closed: `threshold`
    /// 1 keeps every backbone token until [`crate::refiner::GateTable::calibrate`] sets it).
    pub fn decision(&self) -> Decision {
        match self {
            Preset::Paper | Preset::CosineQuery => Decision::Snap,
            Preset::Corrector => Decision::Gate {
                margin: 0.0,
                threshold: 1.0,
            },
            _ => Decision::Argmax,
        }
    }
}

impl std::str::FromStr for Preset {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Preset::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Preset::ALL.iter().map(|p| p.name()).collect();
            Error::Config(format!(
                "unknown refiner preset {s:?}; presets are {}",
                names.join(", ")
            ))
        })
    }
}
