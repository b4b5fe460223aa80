//! Next-token training of a [`Llama`] (pretraining a small backbone, or LoRA fine-tuning).

use crate::backend::{ArAutodiffBackend, ArBackend};
use std::path::Path;
use std::time::Duration;

use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

use super::model::Llama;
use crate::checks::{int_tensor, read_f32};
use crate::error::{Error, Result};
use crate::rng::SplitMix64;
use crate::training::{
    resume, run_loop, FusedAdamW, LoopBody, LoopSettings, StepDone, TimeBudget, TrainState, WarmupCosine,
};

/// Settings of [`train_lm`].
///
/// ```
/// use ar_refine::backbone::LmTrainConfig;
/// let c = LmTrainConfig::new(1000, 32, 3e-4);
/// assert_eq!((c.schedule.warmup, c.grad_clip), (50, Some(1.0)));
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LmTrainConfig {
    /// Optimizer steps.
    pub steps: usize,
    /// Sequences per step (drawn at random, with replacement, from the training set).
    pub batch_size: usize,
    /// Learning-rate schedule (AdamW).
    pub schedule: WarmupCosine,
    /// AdamW decoupled weight decay.
    pub weight_decay: f32,
    /// Global gradient-norm clip (`None`: off).
    pub grad_clip: Option<f64>,
    /// Seed of the batch sampler.
    pub seed: u64,
    /// Write a checkpoint every this many steps (and at the end) when a directory is given.
    pub checkpoint_every: usize,
    /// Only predictions of tokens at positions `>= loss_from` count (e.g. the query's output
    /// image of a visual sentence); `1` scores every next-token prediction.
    pub loss_from: usize,
    /// Stop early enough to end within this wall time (`None`: run all `steps`).
    #[serde(default)]
    pub time_budget: Option<TimeBudget>,
}

impl LmTrainConfig {
    /// `steps` steps of `batch_size` sequences at peak learning rate `lr`: 5 % linear warmup
    /// then cosine decay to `lr / 10`, weight decay 0.1, global clip 1.0, checkpoints every
    /// 500 steps, every position scored.
    pub fn new(steps: usize, batch_size: usize, lr: f64) -> Self {
        Self {
            steps,
            batch_size,
            schedule: WarmupCosine::new(lr, steps / 20, steps),
            weight_decay: 0.1,
            grad_clip: Some(1.0),
            seed: 0,
            checkpoint_every: 500,
            loss_from: 1,
            time_budget: None,
        }
    }
}

/// What [`train_lm`] reports after every step.
#[derive(Clone, Debug)]
pub struct StepReport {
    /// Steps done (1-based).
    pub step: usize,
    /// Steps in all.
    pub steps: usize,
    /// This step's mean cross-entropy.
    pub loss: f32,
    /// This step's learning rate.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Training tokens per second since the start (or resume).
    pub tokens_per_sec: f64,
    /// Wall time since the start (or resume).
    pub elapsed: Duration,
}

/// Mean next-token cross-entropy of `tokens` `[b, n]` over the predictions of positions
/// `loss_from..n` (`loss_from >= 1`). Returns a one-element tensor (differentiable on an
/// autodiff backend).
pub fn lm_loss<B: ArBackend>(
    model: &Llama<B>,
    tokens: Tensor<B, 2, Int>,
    loss_from: usize,
) -> Result<Tensor<B, 1>> {
    let [b, n] = tokens.dims();
    if loss_from == 0 || loss_from >= n {
        return Err(Error::Config(format!(
            "loss_from must be in 1..{n} for sequences of {n} tokens, got {loss_from}"
        )));
    }
    let hidden = model.forward_hidden(tokens.clone().narrow(1, 0, n - 1), None)?;
    let m = n - loss_from;
    let hidden = hidden.narrow(1, loss_from - 1, m);
    let logp = log_softmax(model.logits(hidden), 2);
    let targets = tokens.narrow(1, loss_from, m).reshape([b, m, 1]);
    Ok(logp.gather(2, targets).mean().neg())
}

/// Trains `model` on `sequences` (token sequences of vocabulary ids; each batch holds sequences of
/// one length, so visual sentences with different numbers of demonstrations can be mixed) with AdamW,
/// warmup + cosine learning rate and global gradient clipping. Parameters without gradients
/// (a frozen base under LoRA, see [`Llama::with_lora`]) are not changed.
///
/// With `checkpoints`, state is saved there every `checkpoint_every` steps and at the end, and
/// a run that finds a checkpoint there resumes from it (weights, AdamW moments, sampler state
/// and loss history), continuing the same loss curve. `on_step` sees every step (progress
/// output). Returns the trained model and the final state (its `losses` is the loss curve).
pub fn train_lm<B: ArAutodiffBackend>(
    model: Llama<B>,
    sequences: &[Vec<i64>],
    cfg: &LmTrainConfig,
    checkpoints: Option<&Path>,
    on_step: &mut dyn FnMut(&StepReport),
) -> Result<(Llama<B>, TrainState)> {
    cfg.schedule.validate()?;
    if cfg.batch_size == 0 || cfg.checkpoint_every == 0 {
        return Err(Error::Config(
            "batch_size and checkpoint_every must be >= 1".into(),
        ));
    }
    if sequences.is_empty() {
        return Err(Error::Config("no training sequences".into()));
    }
    if let Some(i) = sequences.iter().position(|s| s.len() < 2) {
        return Err(Error::shape(
            format!("training sequence {i}"),
            "at least 2 tokens",
            &[sequences[i].len()],
        ));
    }
    // sequences of one length per batch: a batch is one random sequence and others of its length
    let mut groups: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for (i, s) in sequences.iter().enumerate() {
        groups.entry(s.len()).or_default().push(i);
    }
    let vocab = model.config.vocab_size as i64;
    for (i, s) in sequences.iter().enumerate() {
        if let Some(id) = s.iter().find(|id| !(0..vocab).contains(*id)) {
            return Err(Error::TokenOutOfRange {
                what: format!("training sequence {i}"),
                id: *id,
                valid: format!("0..{vocab}"),
            });
        }
    }
    let device = model.embed_tokens.val().device();
    let optim = FusedAdamW::init::<B, Llama<B>>(0.9, 0.999, cfg.weight_decay);
    // `layout`: projection weights are stored `[out, in]` since 0.2; a checkpoint of the
    // `[in, out]` layout has no such key and is refused as another run's, not misread.
    let identity = serde_json::json!({ "model": model.config, "train": cfg, "layout": "out_in" });
    let state = TrainState::start(identity, cfg.seed);
    let (model, optim, state) = resume(checkpoints, model, optim, state, &device)?;
    let settings = LoopSettings {
        steps: cfg.steps,
        schedule: cfg.schedule,
        time_budget: cfg.time_budget,
        grad_clip: cfg.grad_clip,
        checkpoint_every: cfg.checkpoint_every,
        checkpoints,
        what: "training loss",
    };
    let mut body = LmBody {
        sequences,
        groups: &groups,
        batch_size: cfg.batch_size,
        loss_from: cfg.loss_from,
        device,
        tokens_seen: 0,
        len: 0,
        on_step,
    };
    let (model, _, state) = run_loop(&settings, model, optim, state, &mut body)?;
    Ok((model, state))
}

/// [`train_lm`]'s step: a batch of sequences of one length, next-token loss.
struct LmBody<'a, B: ArAutodiffBackend> {
    sequences: &'a [Vec<i64>],
    groups: &'a std::collections::BTreeMap<usize, Vec<usize>>,
    batch_size: usize,
    loss_from: usize,
    device: B::Device,
    tokens_seen: usize,
    /// The length of the last batch's sequences.
    len: usize,
    on_step: &'a mut dyn FnMut(&StepReport),
}

impl<B: ArAutodiffBackend> LoopBody<B, Llama<B>> for LmBody<'_, B> {
    fn grads(&mut self, model: &Llama<B>, rng: &mut SplitMix64) -> Result<(f32, GradientsParams)> {
        let lead = rng.below(self.sequences.len());
        let len = self.sequences[lead].len();
        let group = &self.groups[&len];
        let mut batch: Vec<i64> = self.sequences[lead].clone();
        for _ in 1..self.batch_size {
            batch.extend_from_slice(&self.sequences[group[rng.below(group.len())]]);
        }
        let tokens = int_tensor(batch, self.batch_size, len, &self.device);
        let loss = lm_loss(model, tokens, self.loss_from)?;
        let value = read_f32(loss.clone())?[0];
        if !value.is_finite() {
            // no backward pass through a non-finite loss: the loop reports it
            return Ok((value, GradientsParams::new()));
        }
        self.len = len;
        Ok((value, GradientsParams::from_grads(loss.backward(), model)))
    }

    fn after<O: Optimizer<Llama<B>, B>>(
        &mut self,
        _model: &mut Llama<B>,
        _optim: &O,
        _state: &mut TrainState,
        done: &StepDone,
        _rng: &mut SplitMix64,
    ) -> Result<()> {
        self.tokens_seen += self.batch_size * self.len;
        (self.on_step)(&StepReport {
            step: done.step,
            steps: done.total,
            loss: done.loss,
            lr: done.lr,
            grad_norm: done.grad_norm,
            tokens_per_sec: self.tokens_seen as f64 / done.elapsed.as_secs_f64().max(1e-9),
            elapsed: done.elapsed,
        });
        Ok(())
    }
}
