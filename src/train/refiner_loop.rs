//! The refiner training loop: the backbone is frozen (its outputs are precomputed [`Pairs`]),
//! the refiner learns to map the embeddings of generated codes to those of the ground truth.

use crate::backend::{ArAutodiffBackend, ArBackend};
use std::path::Path;
use std::time::Duration;

use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::pairs::{HiddenSource, Pairs};
use crate::checks::{read_data, read_f32, read_i64};
use crate::decode::{Codebook, Metric};
use crate::error::{Error, Result};
use crate::io::{
    load_module_tensors, module_tensors, save_safetensors, write_atomic, SafetensorsFile, StoreDtype,
};
use crate::refiner::{Decision, GatePoint, GateScores, GateTable, PreparedLoss, RefinementLoss};
use crate::rng::SplitMix64;
use crate::training::data_parallel::{exclusive_run, Peer};
use crate::training::{resume, run_loop, LoopBody, LoopSettings, StepDone, TrainState, WarmupCosine};
use crate::traits::{RefineInput, Refiner, TokenGrid};

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
    /// The loss (default: the paper's cosine distance).
    pub loss: RefinementLoss,
    /// The rule that turns the refiner's output into codes for the validation token accuracy
    /// (`None`: argmax with code logits, else the nearest-code snap).
    #[serde(default)]
    pub decision: Option<Decision>,
    /// Return (and keep in the checkpoint directory as `best.safetensors`) the weights of the
    /// validation step with the highest token accuracy, not the last step's.
    #[serde(default = "yes")]
    pub keep_best: bool,
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
            decision: None,
            keep_best: true,
            validate_every: 200,
            checkpoint_every: 500,
            seed: 0,
        }
    }
}

fn yes() -> bool {
    true
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
    /// Validation token accuracy (under the configured decision rule), on those steps.
    pub val_accuracy: Option<f32>,
    /// Learning rate.
    pub lr: f64,
    /// Tokens per second since the start (or resume).
    pub tokens_per_sec: f64,
    /// Estimated time to the end.
    pub eta: Duration,
}

/// A refiner's mean loss and token accuracy over some pairs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Validation {
    /// Mean loss per pair.
    pub loss: f32,
    /// Fraction of codes equal to the truth after the decision rule.
    pub accuracy: f32,
}

/// Builds `idx`'s [`RefineInput`] for `refiner` (with hidden states from `hidden` when it reads
/// them) and the true codes.
pub(crate) fn pair_input<B: ArBackend, R: Refiner<B> + ?Sized>(
    refiner: &R,
    pairs: &Pairs,
    idx: &[usize],
    codebook: &Codebook<B>,
    grid: TokenGrid,
    hidden: Option<&dyn HiddenSource<B>>,
) -> Result<(RefineInput<B>, Tensor<B, 2, burn::tensor::Int>)> {
    let needs = refiner.needs();
    let device = codebook.device();
    let (mut input, truth) = pairs.input::<B>(idx, codebook, grid, needs, &device)?;
    if needs.hidden {
        let source = hidden.ok_or_else(|| {
            Error::Config("the refiner reads the backbone's hidden states: give a HiddenSource".into())
        })?;
        input = input.with_hidden(source.hidden(pairs, idx, &device)?);
    }
    Ok((input, truth))
}

/// The mean loss and the token accuracy (under `decision`, or the refiner's natural rule) of
/// `refiner` over `pairs`, in batches of `batch`, without gradients.
#[allow(clippy::too_many_arguments)]
pub fn validate_refiner<B: ArBackend, M: Refiner<B>>(
    refiner: &M,
    codebook: &Codebook<B>,
    grid: TokenGrid,
    pairs: &Pairs,
    loss: &RefinementLoss,
    decision: Option<Decision>,
    batch: usize,
    hidden: Option<&dyn HiddenSource<B>>,
) -> Result<Validation> {
    let prepared = loss.prepare(codebook)?;
    let (mut total, mut right, mut count) = (0.0f64, 0usize, 0usize);
    for s in (0..pairs.len()).step_by(batch.max(1)) {
        let idx: Vec<usize> = (s..(s + batch.max(1)).min(pairs.len())).collect();
        let (input, truth) = pair_input(refiner, pairs, &idx, codebook, grid, hidden)?;
        let own = input.codes.clone();
        let out = refiner.refine(input)?;
        total += read_f32(prepared.forward(&out, &own, &truth)?)?[0] as f64 * idx.len() as f64;
        let rule = decision.unwrap_or_else(|| Decision::natural(&out));
        let ids = read_i64(rule.decide(&out, &own, codebook)?)?;
        let truth = read_i64(truth)?;
        right += ids.iter().zip(&truth).filter(|(a, b)| a == b).count();
        count += truth.len();
    }
    Ok(Validation {
        loss: (total / pairs.len().max(1) as f64) as f32,
        accuracy: right as f32 / count.max(1) as f32,
    })
}

/// Chooses the gate's margin and threshold for `refiner` on validation `pairs` (never on the
/// pairs you report): the [`GateTable::calibrate`] point of highest token accuracy, ties to
/// fewer edits. Returns the rule and what it does on `pairs`.
pub fn calibrate_gate<B: ArBackend, M: Refiner<B>>(
    refiner: &M,
    codebook: &Codebook<B>,
    grid: TokenGrid,
    pairs: &Pairs,
    batch: usize,
    hidden: Option<&dyn HiddenSource<B>>,
) -> Result<(Decision, GatePoint)> {
    let mut table = GateTable::default();
    for s in (0..pairs.len()).step_by(batch.max(1)) {
        let idx: Vec<usize> = (s..(s + batch.max(1)).min(pairs.len())).collect();
        let (input, _) = pair_input(refiner, pairs, &idx, codebook, grid, hidden)?;
        let own = input.codes.clone();
        let out = refiner.refine(input)?;
        table.extend(GateScores::compute(&out, &own, codebook)?.to_host(&own)?);
    }
    let truth: Vec<i64> = pairs.truth.iter().flatten().copied().collect();
    let best = table.calibrate(&truth);
    let rule = Decision::Gate {
        margin: best.margin,
        threshold: best.threshold,
    };
    Ok((rule, best))
}

/// What [`train_refiner`] trains on: the tokenizer's codebook (fixed; it embeds the codes), the
/// token grid, the training and optional validation pairs, the devices to train on, and where
/// hidden states come from for refiners that read them.
#[derive(Clone, Copy)]
pub struct RefinerData<'a, B: ArAutodiffBackend> {
    /// The codebook `[K, D]` on the training backend.
    pub codebook: &'a Codebook<B>,
    /// The token grid of one image (`n = rows · cols` tokens per pair).
    pub grid: TokenGrid,
    /// Training pairs.
    pub train: &'a Pairs,
    /// Validation pairs.
    pub val: Option<&'a Pairs>,
    /// Devices to train on. Empty: the codebook's device. Two or more: data-parallel training,
    /// one replica per device (see [`train_refiner`]).
    pub devices: &'a [B::Device],
    /// The backbone's hidden states, for refiners that read them (one device only).
    pub hidden: Option<&'a dyn HiddenSource<B::InnerBackend>>,
}

/// Trains `refiner` on `data.train` pairs: the backbone's answer (and whatever else the refiner
/// [reads](Refiner::needs): prompt images, confidence, hidden states) in, `cfg.loss` against the
/// ground truth. The backbone never enters the graph (pairs are precomputed; hidden states come
/// from `data.hidden` without gradients) and the codebook is fixed.
///
/// With `checkpoints`, refiner weights, AdamW state, sampler state, step and loss history are
/// saved there every `checkpoint_every` steps and at the end (atomically), and a run that finds
/// a checkpoint resumes from it: on the CPU backend the resumed loss curve equals the
/// uninterrupted one. With validation pairs, the validation loss and token accuracy are computed
/// every `validate_every` steps and kept in the state's `extra.val` (`[step, loss, accuracy]`);
/// with `cfg.keep_best` the weights of the most accurate validation step are returned (and kept
/// as `best.safetensors` beside the checkpoints, so a resumed run still knows them), the step in
/// `extra.best`. Returns the refiner and the final state.
///
/// **Several devices** (`data.devices`, e.g. two CUDA GPUs): one replica per device, each in its
/// own thread. Every step draws the same global batch of `batch_size` pairs as one device would,
/// splits it into contiguous shards (one per device), and sums the shard gradients (each shard's
/// loss weighted by its share of the batch) with one all-reduce through Burn's collective
/// operations (`burn-collective`); clipping and the AdamW step then run identically on every
/// replica. The losses, the checkpoints (written by the first device) and resume are those of a
/// one-device run with the same `batch_size`, up to float rounding, so a run may resume on another
/// number of devices. `on_step`, validation and checkpoints run on the first device's thread
/// (the caller's). One data-parallel run per process at a time (others wait). Several devices
/// need the `multi-device` feature (a [`Error::Config`] otherwise).
pub fn train_refiner<B, M>(
    refiner: M,
    data: RefinerData<'_, B>,
    cfg: &RefinerTrainConfig,
    checkpoints: Option<&Path>,
    on_step: &mut dyn FnMut(&RefinerStepReport),
) -> Result<(M, TrainState)>
where
    B: ArAutodiffBackend,
    M: Refiner<B> + AutodiffModule<B>,
    M::InnerModule: Refiner<B::InnerBackend>,
{
    let RefinerData {
        codebook,
        grid,
        train,
        val,
        devices,
        hidden,
    } = data;
    cfg.schedule.validate()?;
    cfg.loss.validate()?;
    if let Some(d) = cfg.decision {
        d.validate()?;
    }
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
    let devices = if devices.is_empty() {
        vec![codebook.device()]
    } else {
        devices.to_vec()
    };
    if devices.len() > cfg.batch_size {
        return Err(Error::Config(format!(
            "data-parallel training splits each batch between the devices: batch_size {} < {} devices",
            cfg.batch_size,
            devices.len()
        )));
    }
    if devices.len() > 1 && refiner.needs().hidden {
        return Err(Error::Config(
            "refiners that read the backbone's hidden states train on one device".into(),
        ));
    }
    if devices.len() > 1 && !cfg!(feature = "multi-device") {
        return Err(Error::Config(format!(
            "training on {} devices needs ar-refine's `multi-device` feature",
            devices.len()
        )));
    }
    let job = Job {
        codes: read_data(codebook.codes().clone().inner())?,
        metric: codebook.metric(),
        grid,
        train,
        val,
        cfg,
        checkpoints,
        identity: serde_json::json!({ "train": cfg, "params": refiner.num_params(), "grid": grid }),
    };
    if devices.len() == 1 {
        return job.train::<B, M>(0, None, refiner, &devices[0], hidden, on_step);
    }
    let _one_run = exclusive_run();
    let n = devices.len();
    // Materialise lazily initialised parameters once: clones of an uninitialised `Param` each
    // run their own initialiser, and the replicas must start from the same weights.
    let refiner = refiner.fork(&devices[0]);
    std::thread::scope(|s| {
        let job = &job;
        let workers: Vec<_> = devices[1..]
            .iter()
            .enumerate()
            .map(|(i, device)| {
                let replica = refiner.clone();
                s.spawn(move || {
                    job.train::<B, M>(i + 1, Some(n), replica, device, None, &mut |_| {})
                        .map(|_| ())
                })
            })
            .collect();
        let first = job.train::<B, M>(0, Some(n), refiner, &devices[0], None, on_step);
        let mut errors = Vec::new();
        for (i, w) in workers.into_iter().enumerate() {
            match w.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(e),
                Err(_) => errors.push(Error::Parallel {
                    rank: i + 1,
                    reason: "the worker thread panicked".into(),
                }),
            }
        }
        match first {
            Ok(r) if errors.is_empty() => Ok(r),
            Ok(_) => Err(cause(errors)),
            Err(e) => {
                errors.insert(0, e);
                Err(cause(errors))
            }
        }
    })
}

/// The error to report from a failed data-parallel run: the first that is not a replica's
/// report that another one failed.
fn cause(mut errors: Vec<Error>) -> Error {
    let pos = errors
        .iter()
        .position(|e| !matches!(e, Error::Parallel { .. }))
        .unwrap_or(0);
    errors.swap_remove(pos)
}

/// Everything a replica needs, shared (read-only) between the device threads.
struct Job<'a> {
    codes: TensorData,
    metric: Metric,
    grid: TokenGrid,
    train: &'a Pairs,
    val: Option<&'a Pairs>,
    cfg: &'a RefinerTrainConfig,
    checkpoints: Option<&'a Path>,
    identity: serde_json::Value,
}

/// `[lo, hi)`: replica `rank`'s contiguous share of a batch of `batch` split `n` ways.
fn shard(batch: usize, rank: usize, n: usize) -> (usize, usize) {
    (rank * batch / n, (rank + 1) * batch / n)
}

impl Job<'_> {
    /// The training loop of replica `rank` (`peers: None`: a one-device run, no collective).
    /// Only rank 0 validates, reports and writes checkpoints.
    fn train<B, M>(
        &self,
        rank: usize,
        peers: Option<usize>,
        refiner: M,
        device: &B::Device,
        hidden: Option<&dyn HiddenSource<B::InnerBackend>>,
        on_step: &mut dyn FnMut(&RefinerStepReport),
    ) -> Result<(M, TrainState)>
    where
        B: ArAutodiffBackend,
        M: Refiner<B> + AutodiffModule<B>,
        M::InnerModule: Refiner<B::InnerBackend>,
    {
        let cfg = self.cfg;
        let peer = peers
            .map(|n| Peer::join::<B::InnerBackend>(rank, n, device))
            .transpose()?;
        let peer = peer.as_ref();
        let setup = || -> Result<_> {
            let book = Codebook::<B>::new(Tensor::from_data(self.codes.clone(), device), self.metric)?;
            let inner_book =
                Codebook::<B::InnerBackend>::new(Tensor::from_data(self.codes.clone(), device), self.metric)?;
            let optim = super::FusedAdamW::init::<B, M>(0.9, 0.999, cfg.weight_decay);
            let mut state = TrainState::start(self.identity.clone(), cfg.seed);
            state.extra = serde_json::json!({ "val": [] });
            let (model, optim, state) = resume(self.checkpoints, refiner.fork(device), optim, state, device)?;
            let loss = cfg.loss.prepare(&book)?;
            let best = match (rank, self.checkpoints) {
                (0, Some(dir)) if cfg.keep_best => load_best(dir, model.clone(), &self.identity, device)?,
                _ => None,
            };
            Ok((book, inner_book, model, optim, state, loss, best))
        };
        let set = setup();
        if let Some(p) = peer {
            // every replica must start, or none: a replica that stops alone would leave the
            // others waiting in the all-reduce
            let failed = Tensor::<B::InnerBackend, 1>::from_data([set.is_err() as u8 as f32], device);
            if set.is_ok() && p.sum_values(failed)?[0] > 0.0 {
                return Err(Error::Parallel {
                    rank,
                    reason: "another device failed to start".into(),
                });
            }
        }
        let (book, inner_book, model, optim, state, prepared, best) = set?;
        // hidden states come from the inner backend, without gradients
        let hidden_ad = hidden.map(|h| FromInner { inner: h });
        let hidden_ad = hidden_ad.as_ref().map(|h| h as &dyn HiddenSource<B>);
        let settings = LoopSettings {
            steps: cfg.steps,
            schedule: cfg.schedule,
            time_budget: None,
            grad_clip: cfg.grad_clip,
            checkpoint_every: cfg.checkpoint_every,
            // only rank 0 writes checkpoints
            checkpoints: self.checkpoints.filter(|_| rank == 0),
            what: "refiner training loss",
        };
        let mut body = RefinerBody {
            job: self,
            rank,
            peer,
            book,
            inner_book,
            prepared,
            hidden,
            hidden_ad,
            best,
            pending: None,
            device: device.clone(),
            on_step,
        };
        let (model, _, state) = run_loop(&settings, model, optim, state, &mut body)?;
        match body.best {
            Some((m, _)) if cfg.keep_best && rank == 0 => Ok((m, state)),
            _ => Ok((model, state)),
        }
    }
}

/// [`Job::train`]'s step on replica `rank`: its share of a batch through the refiner and the
/// loss, gradients summed over the replicas; rank 0 validates and reports after each step.
struct RefinerBody<'a, 'j, B: ArAutodiffBackend, M: AutodiffModule<B>> {
    job: &'a Job<'j>,
    rank: usize,
    peer: Option<&'a Peer>,
    book: Codebook<B>,
    inner_book: Codebook<B::InnerBackend>,
    prepared: PreparedLoss<B>,
    hidden: Option<&'a dyn HiddenSource<B::InnerBackend>>,
    hidden_ad: Option<&'a dyn HiddenSource<B>>,
    /// The best weights by validation accuracy so far (rank 0, `keep_best`).
    best: Option<(M, f32)>,
    /// An error of this replica, reported to the others through the next all-reduce.
    pending: Option<Error>,
    device: B::Device,
    on_step: &'a mut dyn FnMut(&RefinerStepReport),
}

impl<B, M> LoopBody<B, M> for RefinerBody<'_, '_, B, M>
where
    B: ArAutodiffBackend,
    M: Refiner<B> + AutodiffModule<B>,
    M::InnerModule: Refiner<B::InnerBackend>,
{
    fn grads(&mut self, model: &M, rng: &mut SplitMix64) -> Result<(f32, GradientsParams)> {
        let cfg = self.job.cfg;
        let (grid, train) = (self.job.grid, self.job.train);
        let n = self.peer.map_or(1, Peer::peers);
        let idx: Vec<usize> = (0..cfg.batch_size).map(|_| rng.below(train.len())).collect();
        let (lo, hi) = shard(cfg.batch_size, self.rank, n);
        let local = (|| -> Result<_> {
            let (input, truth) = pair_input(model, train, &idx[lo..hi], &self.book, grid, self.hidden_ad)?;
            let own = input.codes.clone();
            let loss = self.prepared.forward(&model.refine(input)?, &own, &truth)?;
            Ok(if n > 1 {
                loss.mul_scalar((hi - lo) as f64 / cfg.batch_size as f64)
            } else {
                loss
            })
        })();
        match self.peer {
            None => {
                let loss = local?;
                let value = read_f32(loss.clone())?[0];
                Ok((value, GradientsParams::from_grads(loss.backward(), model)))
            }
            Some(p) => {
                let failed = self.pending.is_some() || local.is_err();
                let (grads, loss) = match local {
                    Ok(loss) => {
                        let inner = loss.clone().inner().reshape([1]);
                        (GradientsParams::from_grads(loss.backward(), model), inner)
                    }
                    Err(e) => {
                        self.pending.get_or_insert(e);
                        (GradientsParams::new(), Tensor::zeros([1], &self.device))
                    }
                };
                let flag = Tensor::from_data([failed as u8 as f32], &self.device);
                let (grads, sums) =
                    p.sum_gradients::<B, M>(model, grads, Tensor::cat(vec![loss, flag], 0))?;
                if sums[1] > 0.0 {
                    return Err(self.pending.take().unwrap_or_else(|| Error::Parallel {
                        rank: self.rank,
                        reason: "another device failed".into(),
                    }));
                }
                Ok((sums[0], grads))
            }
        }
    }

    fn after<O: Optimizer<M, B>>(
        &mut self,
        model: &mut M,
        _optim: &O,
        state: &mut TrainState,
        done: &StepDone,
        _rng: &mut SplitMix64,
    ) -> Result<()> {
        if self.rank != 0 {
            return Ok(());
        }
        let after = self.validate_and_report(model, state, done);
        match (after, self.peer) {
            // the other replicas learn of it at the next all-reduce
            (Err(e), Some(_)) if state.step < self.job.cfg.steps => {
                self.pending = Some(e);
                Ok(())
            }
            (r, _) => r,
        }
    }
}

impl<B, M> RefinerBody<'_, '_, B, M>
where
    B: ArAutodiffBackend,
    M: Refiner<B> + AutodiffModule<B>,
    M::InnerModule: Refiner<B::InnerBackend>,
{
    /// Rank 0 after a step: validation (and the best weights so far), then the report.
    fn validate_and_report(&mut self, model: &M, state: &mut TrainState, done: &StepDone) -> Result<()> {
        let job = self.job;
        let cfg = job.cfg;
        let val = match job.val {
            Some(v) if state.step.is_multiple_of(cfg.validate_every) || state.step == cfg.steps => {
                let r = validate_refiner(
                    &model.valid(),
                    &self.inner_book,
                    job.grid,
                    v,
                    &cfg.loss,
                    cfg.decision,
                    cfg.batch_size,
                    self.hidden,
                )?;
                if let Some(a) = state.extra.get_mut("val").and_then(|a| a.as_array_mut()) {
                    a.push(serde_json::json!([state.step, r.loss, r.accuracy]));
                }
                if cfg.keep_best && self.best.as_ref().is_none_or(|(_, acc)| r.accuracy > *acc) {
                    self.best = Some((model.clone(), r.accuracy));
                    state.extra["best"] = serde_json::json!({ "step": state.step, "accuracy": r.accuracy });
                    if let Some(dir) = job.checkpoints {
                        save_best(dir, model, &state.identity, state.step, r.accuracy)?;
                    }
                }
                Some(r)
            }
            _ => None,
        };
        let elapsed = done.elapsed.as_secs_f64().max(1e-9);
        let steps_done = done.steps_this_run as f64;
        (self.on_step)(&RefinerStepReport {
            step: state.step,
            steps: cfg.steps,
            loss: done.loss,
            val_loss: val.map(|v| v.loss),
            val_accuracy: val.map(|v| v.accuracy),
            lr: done.lr,
            tokens_per_sec: steps_done * (cfg.batch_size * job.grid.len()) as f64 / elapsed,
            eta: Duration::from_secs_f64(elapsed / steps_done * (cfg.steps - state.step) as f64),
        });
        Ok(())
    }
}

/// A [`HiddenSource`] of the inner backend used on its autodiff backend (no gradients).
struct FromInner<'a, B: ArAutodiffBackend> {
    inner: &'a dyn HiddenSource<B::InnerBackend>,
}

impl<B: ArAutodiffBackend> HiddenSource<B> for FromInner<'_, B> {
    fn hidden(&self, pairs: &Pairs, idx: &[usize], device: &B::Device) -> Result<Tensor<B, 3>> {
        Ok(Tensor::from_inner(self.inner.hidden(pairs, idx, device)?))
    }
}

/// Writes `dir/best.safetensors` (f32) and `dir/best.json` (`{identity, step, accuracy}`).
fn save_best<B: ArBackend, M: burn::module::Module<B>>(
    dir: &Path,
    model: &M,
    identity: &serde_json::Value,
    step: usize,
    accuracy: f32,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    save_safetensors(
        dir.join("best.safetensors"),
        &module_tensors(model)?,
        StoreDtype::F32,
    )?;
    let json = serde_json::json!({ "identity": identity, "step": step, "accuracy": accuracy });
    write_atomic(dir.join("best.json"), json.to_string().as_bytes())
}

/// What [`save_best`] wrote, loaded into `model`, with its accuracy; a file of another run
/// (`identity`) is an [`Error::Config`], as for checkpoints.
fn load_best<B: ArBackend, M: burn::module::Module<B>>(
    dir: &Path,
    model: M,
    identity: &serde_json::Value,
    device: &B::Device,
) -> Result<Option<(M, f32)>> {
    let meta = dir.join("best.json");
    if !meta.exists() {
        return Ok(None);
    }
    let text = std::fs::read(&meta).map_err(|e| Error::io(&meta, e))?;
    let v: serde_json::Value = serde_json::from_slice(&text).map_err(|e| Error::Checkpoint {
        path: meta.clone(),
        reason: format!("bad best.json: {e}"),
    })?;
    let accuracy = v
        .get("accuracy")
        .and_then(|a| a.as_f64())
        .ok_or_else(|| Error::Checkpoint {
            path: meta.clone(),
            reason: "best.json has no accuracy".into(),
        })? as f32;
    if v.get("identity") != Some(identity) {
        return Err(Error::Config(format!(
            "{} was written by another run (model or training configuration); use a new directory",
            meta.display()
        )));
    }
    let file = SafetensorsFile::open(dir.join("best.safetensors"))?;
    Ok(Some((load_module_tensors(model, &file, device)?, accuracy)))
}
