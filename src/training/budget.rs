//! Fitting a training run into a wall-clock budget.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::schedule::WarmupCosine;
use super::TrainState;

/// A wall-clock limit for a training loop: after `calibrate` steps the loop measures its time
/// per step (those steps only: start-up and kernel autotuning on the first `skip` steps count
/// as spent budget, not towards the step rate) and lowers the total step count so that the run
/// ends within `limit`; the learning-rate schedule then decays to its end at the new total, and
/// its warmup keeps the same share of the (shorter) run.
/// The planned total is kept in the checkpoint state, so a resumed run keeps it.
///
/// ```
/// use std::time::Duration;
/// use ar_refine::train::TimeBudget;
/// let b = TimeBudget::new(Duration::from_secs(60));
/// assert_eq!((b.skip, b.calibrate), (5, 20));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimeBudget {
    /// Wall time of the whole run (from the loop's start or resume).
    pub limit: Duration,
    /// Steps measured before planning (after the first `skip`).
    pub calibrate: usize,
    /// Steps at the start not measured (autotuning, warm caches).
    pub skip: usize,
}

impl TimeBudget {
    /// `limit`, measured over steps 6..=25 of the run.
    pub fn new(limit: Duration) -> Self {
        Self {
            limit,
            calibrate: 20,
            skip: 5,
        }
    }
}

/// Applies an optional [`TimeBudget`] inside a loop: create it after resuming, call
/// [`Planner::after_step`] after every step.
pub(crate) struct Planner {
    budget: Option<TimeBudget>,
    first: usize,
    t_skip: Duration,
    /// The total step count to run to.
    pub total: usize,
    /// The schedule, its end moved to `total` once planned.
    pub schedule: WarmupCosine,
}

impl Planner {
    /// For a loop asked for `steps` steps with `schedule`, now at `state.step`.
    pub fn new(budget: Option<TimeBudget>, state: &TrainState, steps: usize, schedule: WarmupCosine) -> Self {
        let mut p = Self {
            budget,
            first: state.step,
            t_skip: Duration::ZERO,
            total: steps,
            schedule,
        };
        if let Some(t) = planned(state) {
            p.set_total(t);
            p.budget = None;
        }
        p
    }

    fn set_total(&mut self, total: usize) {
        if total < self.schedule.total && self.schedule.total > 0 {
            // the warmup keeps its share of the run
            let share = self.schedule.warmup as f64 / self.schedule.total as f64;
            self.schedule.warmup = (share * total as f64).round() as usize;
        }
        self.total = total;
        self.schedule.total = self.schedule.total.min(total);
    }

    /// After step `state.step` ended at `elapsed` since the loop started.
    pub fn after_step(&mut self, state: &mut TrainState, elapsed: Duration) {
        let Some(b) = self.budget else { return };
        let step = state.step;
        if step == self.first + b.skip {
            self.t_skip = elapsed;
        }
        if step < self.first + b.skip + b.calibrate.max(1) {
            return;
        }
        let measured = (step - self.first - b.skip).max(1);
        let per_step = elapsed.saturating_sub(self.t_skip).as_secs_f64() / measured as f64;
        let left = b.limit.saturating_sub(elapsed).as_secs_f64();
        let more = if per_step > 0.0 {
            (left / per_step).floor() as usize
        } else {
            usize::MAX / 4
        };
        let total = step.saturating_add(more).min(self.total);
        self.set_total(total);
        if !state.extra.is_object() {
            state.extra = serde_json::json!({});
        }
        if let Some(obj) = state.extra.as_object_mut() {
            obj.insert("planned_steps".into(), total.into());
        }
        self.budget = None;
    }
}

/// The total planned by an earlier part of the run, if any.
fn planned(state: &TrainState) -> Option<usize> {
    state.extra.get("planned_steps")?.as_u64().map(|s| s as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_from_the_measured_rate_and_survives_resume() {
        let budget = TimeBudget {
            limit: Duration::from_secs(60),
            calibrate: 10,
            skip: 2,
        };
        let mut state = TrainState::default();
        let mut p = Planner::new(Some(budget), &state, 10_000, WarmupCosine::new(1e-3, 500, 10_000));
        for step in 1..=12 {
            state.step = step;
            // 4 s of start-up in the first two steps, then 0.1 s per step
            let t = if step <= 2 {
                2.0 * step as f64
            } else {
                4.0 + 0.1 * (step - 2) as f64
            };
            p.after_step(&mut state, Duration::from_secs_f64(t));
        }
        // 5 s spent, 55 s left at 0.1 s/step
        assert_eq!(p.total, 12 + 550);
        assert_eq!(p.schedule.total, 562);
        // warmup was 500 of 10,000 steps: 5 % of 562
        assert_eq!(p.schedule.warmup, 28);
        let resumed = Planner::new(Some(budget), &state, 10_000, WarmupCosine::new(1e-3, 500, 10_000));
        assert_eq!(
            (resumed.total, resumed.schedule.total, resumed.schedule.warmup),
            (562, 562, 28)
        );
        // never more than asked for
        let mut s2 = TrainState::default();
        let mut q = Planner::new(Some(budget), &s2, 100, WarmupCosine::new(1e-3, 5, 100));
        for step in 1..=12 {
            s2.step = step;
            q.after_step(&mut s2, Duration::from_millis(step as u64));
        }
        assert_eq!(q.total, 100);
    }
}
