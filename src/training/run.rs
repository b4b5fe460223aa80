//! The one training-loop skeleton of the crate: the refiner, LLaMA and VQGAN loops supply a
//! [`LoopBody`] (how a step's loss and gradients are computed, what happens after it) and
//! [`run_loop`] does the rest the same way for all three.

use std::path::Path;
use std::time::{Duration, Instant};

use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer};

use super::budget::{Planner, TimeBudget};
use super::checkpoint::{checkpoint_due, save_checkpoint, TrainOptimizer, TrainState};
use super::clip::clip_grad_norm;
use super::schedule::WarmupCosine;
use crate::backend::ArAutodiffBackend;
use crate::error::{Error, Result};
use crate::rng::SplitMix64;

/// The settings every loop shares.
pub(crate) struct LoopSettings<'a> {
    /// Steps asked for (a [`TimeBudget`] may lower it).
    pub steps: usize,
    /// The learning-rate schedule.
    pub schedule: WarmupCosine,
    /// Optional wall-clock limit.
    pub time_budget: Option<TimeBudget>,
    /// Global gradient-norm clip.
    pub grad_clip: Option<f64>,
    /// Checkpoint every this many steps (and at the end), into `checkpoints`.
    pub checkpoint_every: usize,
    /// Where checkpoints go (`None`: none are written, e.g. on a data-parallel replica).
    pub checkpoints: Option<&'a Path>,
    /// What the loss is called in a non-finite-loss error (`"VQGAN training loss"`).
    pub what: &'a str,
}

/// What [`run_loop`] knows after a step, for reports.
pub(crate) struct StepDone {
    /// The step just taken (1-based), and the planned total.
    pub step: usize,
    /// The planned total (after a [`TimeBudget`] has planned it).
    pub total: usize,
    /// Its loss (as [`LoopBody::grads`] returned it).
    pub loss: f32,
    /// The learning rate it used.
    pub lr: f64,
    /// The gradient norm before clipping (NaN without a clip).
    pub grad_norm: f64,
    /// Time since the loop started (this run, after resuming).
    pub elapsed: Duration,
    /// Steps taken by this run (after resuming), this one included.
    pub steps_this_run: usize,
}

/// One training loop's own parts.
pub(crate) trait LoopBody<B: ArAutodiffBackend, M: AutodiffModule<B>> {
    /// The loss value and gradients of the next step (`rng`: the loop's sampler, checkpointed).
    fn grads(&mut self, model: &M, rng: &mut SplitMix64) -> Result<(f32, GradientsParams)>;

    /// After the optimizer step and the bookkeeping, before a checkpoint: reports, validation,
    /// changes to the model (dead-code restarts).
    fn after<O: Optimizer<M, B>>(
        &mut self,
        model: &mut M,
        optim: &O,
        state: &mut TrainState,
        done: &StepDone,
        rng: &mut SplitMix64,
    ) -> Result<()>;

    /// Entries of `state.extra` to store with a checkpoint (merged, so other entries such as the
    /// planned step count stay).
    fn checkpoint_extra(&mut self) -> Option<serde_json::Map<String, serde_json::Value>> {
        None
    }
}

/// Runs `body` from `state` (fresh or resumed) to the planned total: per step its gradients,
/// the non-finite check, clipping, the learning rate, the optimizer step, the state (step,
/// losses, sampler), the time budget, the body's `after`, and checkpoints when due.
pub(crate) fn run_loop<B, M, L>(
    settings: &LoopSettings<'_>,
    mut model: M,
    mut optim: TrainOptimizer<M, B>,
    mut state: TrainState,
    body: &mut L,
) -> Result<(M, TrainOptimizer<M, B>, TrainState)>
where
    B: ArAutodiffBackend,
    M: AutodiffModule<B>,
    L: LoopBody<B, M>,
{
    let mut rng = SplitMix64::new(state.rng);
    let start = Instant::now();
    let first = state.step;
    let mut plan = Planner::new(settings.time_budget, &state, settings.steps, settings.schedule);
    while state.step < plan.total {
        let (loss, mut grads) = body.grads(&model, &mut rng)?;
        if !loss.is_finite() {
            return Err(Error::NonFinite {
                what: format!("{} at step {}", settings.what, state.step + 1),
            });
        }
        let grad_norm = match settings.grad_clip {
            Some(c) => clip_grad_norm(&model, &mut grads, c)?,
            None => f64::NAN,
        };
        let lr = plan.schedule.lr(state.step);
        model = optim.step(lr, model, grads);
        state.step += 1;
        let elapsed = start.elapsed();
        plan.after_step(&mut state, elapsed);
        state.losses.push(loss);
        state.rng = rng.state();
        let done = StepDone {
            step: state.step,
            total: plan.total,
            loss,
            lr,
            grad_norm,
            elapsed,
            steps_this_run: state.step - first,
        };
        body.after(&mut model, &optim, &mut state, &done, &mut rng)?;
        state.rng = rng.state();
        if let Some(dir) = settings.checkpoints {
            if checkpoint_due(state.step, settings.checkpoint_every, plan.total) {
                if let Some(extra) = body.checkpoint_extra() {
                    if !state.extra.is_object() {
                        state.extra = serde_json::json!({});
                    }
                    if let Some(obj) = state.extra.as_object_mut() {
                        obj.extend(extra);
                    }
                }
                save_checkpoint(dir, &model, &optim, &state)?;
            }
        }
    }
    Ok((model, optim, state))
}
