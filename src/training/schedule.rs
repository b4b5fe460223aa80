//! Learning-rate schedule: linear warmup, then cosine decay.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Linear warmup from `peak / warmup` to `peak` over `warmup` steps, then cosine decay to
/// `min_lr` at step `total` (and `min_lr` after it).
///
/// ```
/// use ar_refine::train::WarmupCosine;
/// let s = WarmupCosine { peak_lr: 1e-3, min_lr: 1e-5, warmup: 10, total: 110 };
/// assert!((s.lr(9) - 1e-3).abs() < 1e-12);             // end of warmup
/// assert!((s.lr(60) - (1e-5 + 0.5 * (1e-3 - 1e-5))).abs() < 1e-9); // halfway through the decay
/// assert!((s.lr(500) - 1e-5).abs() < 1e-12);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct WarmupCosine {
    /// Learning rate at the end of warmup.
    pub peak_lr: f64,
    /// Final learning rate.
    pub min_lr: f64,
    /// Warmup steps (0: none).
    pub warmup: usize,
    /// Step at which the decay reaches `min_lr`.
    pub total: usize,
}

impl WarmupCosine {
    /// Peak `lr` after `warmup` steps, cosine decay to `lr / 10` at step `total`.
    pub fn new(lr: f64, warmup: usize, total: usize) -> Self {
        Self {
            peak_lr: lr,
            min_lr: lr / 10.0,
            warmup,
            total,
        }
    }

    /// The learning rate of step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.peak_lr * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1);
        let t = ((step - self.warmup) as f64 / span as f64).min(1.0);
        self.min_lr + 0.5 * (self.peak_lr - self.min_lr) * (1.0 + (std::f64::consts::PI * t).cos())
    }

    /// Checks `0 <= min_lr <= peak_lr`, both finite.
    pub fn validate(&self) -> Result<()> {
        if !(self.peak_lr.is_finite()
            && self.min_lr >= 0.0
            && self.min_lr <= self.peak_lr
            && self.peak_lr > 0.0)
        {
            return Err(Error::Config(format!(
                "learning rates need 0 <= min_lr ({}) <= peak_lr ({}), peak > 0",
                self.min_lr, self.peak_lr
            )));
        }
        Ok(())
    }
}
