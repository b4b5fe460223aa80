//! The refiner training loop: the backbone is frozen (its outputs are precomputed [`Pairs`]),
//! the refiner learns to map the embeddings of generated codes to those of the ground truth.

use std::path::Path;
use std::time::{Duration, Instant};

use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use serde::{Deserialize, Serialize};

use super::checkpoint::{checkpoint_due, resume, save_checkpoint, TrainState};
use super::clip::clip_grad_norm;
use super::loss::RefinementLoss;
use super::pairs::Pairs;
use super::schedule::WarmupCosine;
use crate::checks::read_f32;
use crate::decode::Codebook;
use crate::error::{Error, Result};
use crate::rng::SplitMix64;
use crate::traits::{Refiner, TokenGrid};

/// Settings of [`train_refiner`].
///
/// ```
/// use ar_refine::train::RefinerTrainConfig;
/// let c = RefinerTrainConfig::new(2000, 32, 3e-4);
/// assert_eq!((c.validate_every, c.loss.mse_weight), (200, 0.0));
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RefinerTrainConfig {
    /// Optimizer steps.
    pub steps: usize,
    /// Pairs per step (drawn with replacement).
    pub batch_size: usize,
    /// AdamW learning-rate schedule.
    pub schedule: WarmupCosine,
    /// AdamW decoupled weight decay.
    pub weight_decay: f32,
    /// Global gradient-norm clip.
    pub grad_clip: Option<f64>,
    /// The loss: cosine distance (+ optional MSE).
    pub loss: RefinementLoss,
    /// Validation period in steps (when validation pairs are given).
    pub validate_every: usize,
    /// Checkpoint period in steps (when a directory is given).
    pub checkpoint_every: usize,
    /// Seed of the batch sampler.
    pub seed: u64,
}

impl RefinerTrainConfig {
    /// Pure cosine loss, 5 % warmup then cosine to `lr / 10`, weight decay 0.01, clip 1.0,
    /// validation every 200 steps, checkpoints every 500.
    pub fn new(steps: usize, batch_size: usize, lr: f64) -> Self {
        Self {
            steps,
            batch_size,
            schedule: WarmupCosine::new(lr, steps / 20, steps),
            weight_decay: 0.01,
            grad_clip: Some(1.0),
            loss: RefinementLoss::default(),
            validate_every: 200,
            checkpoint_every: 500,
            seed: 0,
        }
    }
}

/// What [`train_refiner`] reports after every step.
#[derive(Clone, Debug)]
pub struct RefinerStepReport {
    /// Steps done (1-based).
    pub step: usize,
    /// Steps in all.
    pub steps: usize,
    /// This step's training loss.
    pub loss: f32,
    /// Validation loss, on steps where it was computed.
    pub val_loss: Option<f32>,
    /// Learning rate.
    pub lr: f64,
    /// Tokens per second since the start (or resume).
    pub tokens_per_sec: f64,
    /// Estimated time to the end.
    pub eta: Duration,
}

/// The mean loss of `refiner` over `pairs` (in batches of `batch`), without gradients.
pub fn refiner_loss<B: Backend, M: Refiner<B>>(
    refiner: &M,
    codebook: &Codebook<B>,
    grid: TokenGrid,
    pairs: &Pairs,
    loss: &RefinementLoss,
    batch: usize,
) -> Result<f32> {
    let device = codebook.device();
    let mut total = 0.0;
    for s in (0..pairs.len()).step_by(batch.max(1)) {
        let idx: Vec<usize> = (s..(s + batch.max(1)).min(pairs.len())).collect();
        let (g, t) = pairs.batch::<B>(&idx, &device)?;
        let pred = refiner.refine(codebook.embed(g)?, grid)?;
        total += read_f32(loss.forward(pred, codebook.embed(t)?, None)?)?[0] as f64 * idx.len() as f64;
    }
    Ok((total / pairs.len().max(1) as f64) as f32)
}

/// What [`train_refiner`] trains on: the tokenizer's codebook (fixed; it embeds the codes), the
/// token grid, and the training and optional validation pairs.
#[derive(Clone, Copy)]
pub struct RefinerData<'a, B: Backend> {
    /// The codebook `[K, D]` on the training backend.
    pub codebook: &'a Codebook<B>,
    /// The token grid of one image (`n = rows · cols` tokens per pair).
    pub grid: TokenGrid,
    /// Training pairs.
    pub train: &'a Pairs,
    /// Validation pairs.
    pub val: Option<&'a Pairs>,
}

/// Trains `refiner` on `data.train` pairs: embeddings of the generated codes in, embeddings of the
/// ground truth as the target, `cfg.loss` (cosine distance) between them. The backbone never
/// enters the graph (pairs are precomputed) and the codebook is fixed.
///
/// With `checkpoints`, refiner weights, AdamW state, sampler state, step and loss history are
/// saved there every `checkpoint_every` steps and at the end (atomically), and a run that finds
/// a checkpoint resumes from it: on the CPU backend the resumed loss curve equals the
/// uninterrupted one. With validation pairs, the validation loss is computed every `validate_every` steps
/// and kept in the state's `extra.val`. Returns the trained refiner and the final state.
pub fn train_refiner<B, M>(
    refiner: M,
    data: RefinerData<'_, B>,
    cfg: &RefinerTrainConfig,
    checkpoints: Option<&Path>,
    on_step: &mut dyn FnMut(&RefinerStepReport),
) -> Result<(M, TrainState)>
where
    B: AutodiffBackend,
    M: Refiner<B> + AutodiffModule<B>,
    M::InnerModule: Refiner<B::InnerBackend>,
{
    let RefinerData {
        codebook,
        grid,
        train,
        val,
    } = data;
    cfg.schedule.validate()?;
    if train.is_empty() || train.tokens() != grid.len() {
        return Err(Error::Config(format!(
            "training pairs must be non-empty with {} tokens each (the grid), got {} pairs of {}",
            grid.len(),
            train.len(),
            train.tokens()
        )));
    }
    if cfg.batch_size == 0 || cfg.checkpoint_every == 0 || cfg.validate_every == 0 {
        return Err(Error::Config(
            "batch_size, checkpoint_every and validate_every must be >= 1".into(),
        ));
    }
    let device = codebook.device();
    let inner_book = Codebook::<B::InnerBackend>::new(codebook.codes().clone().inner(), codebook.metric())?;
    let mut optim = AdamWConfig::new()
        .with_weight_decay(cfg.weight_decay)
        .init::<B, M>();
    let identity = serde_json::json!({ "train": cfg, "params": refiner.num_params(), "grid": grid });
    let mut model = refiner;
    let mut state = TrainState::start(identity, cfg.seed);
    state.extra = serde_json::json!({ "val": [] });
    (model, optim, state) = resume(checkpoints, model, optim, state, &device)?;
    let mut rng = SplitMix64::new(state.rng);
    let start = Instant::now();
    let first = state.step;
    while state.step < cfg.steps {
        let idx: Vec<usize> = (0..cfg.batch_size).map(|_| rng.below(train.len())).collect();
        let (g, t) = train.batch::<B>(&idx, &device)?;
        let pred = model.refine(codebook.embed(g)?, grid)?;
        let loss = cfg.loss.forward(pred, codebook.embed(t)?, None)?;
        let value = read_f32(loss.clone())?[0];
        if !value.is_finite() {
            return Err(Error::NonFinite {
                what: format!("refiner training loss at step {}", state.step + 1),
            });
        }
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        if let Some(c) = cfg.grad_clip {
            clip_grad_norm(&model, &mut grads, c)?;
        }
        let lr = cfg.schedule.lr(state.step);
        model = optim.step(lr, model, grads);
        state.step += 1;
        state.losses.push(value);
        state.rng = rng.state();
        let val_loss = match val {
            Some(v) if state.step.is_multiple_of(cfg.validate_every) || state.step == cfg.steps => {
                let l = refiner_loss(&model.valid(), &inner_book, grid, v, &cfg.loss, cfg.batch_size)?;
                if let Some(a) = state.extra.get_mut("val").and_then(|a| a.as_array_mut()) {
                    a.push(serde_json::json!([state.step, l]));
                }
                Some(l)
            }
            _ => None,
        };
        let elapsed = start.elapsed().as_secs_f64().max(1e-9);
        let done = (state.step - first) as f64;
        on_step(&RefinerStepReport {
            step: state.step,
            steps: cfg.steps,
            loss: value,
            val_loss,
            lr,
            tokens_per_sec: done * (cfg.batch_size * grid.len()) as f64 / elapsed,
            eta: Duration::from_secs_f64(elapsed / done * (cfg.steps - state.step) as f64),
        });
        if let Some(dir) = checkpoints {
            if checkpoint_due(state.step, cfg.checkpoint_every, cfg.steps) {
                save_checkpoint(dir, &model, &optim, &state)?;
            }
        }
    }
    Ok((model, state))
}
