//! Training a VQGAN from scratch: reconstruction + codebook + commitment loss with the
//! straight-through estimator, and dead-code restarts.

use crate::backend::{ArAutodiffBackend, ArBackend};
use std::path::Path;
use std::time::Duration;

use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::config::PixelRange;
use super::model::VqganModel;
use super::vqgan::Vqgan;
use crate::checks::{read_f32, read_i64};
use crate::data::ImageSet;
use crate::decode::{nearest_codes, Metric};
use crate::error::{Error, Result};
use crate::rng::SplitMix64;
use crate::training::{
    resume, run_loop, FusedAdamW, LoopBody, LoopSettings, StepDone, TimeBudget, TrainState, WarmupCosine,
};

/// Reconstruction loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Recon {
    /// Mean absolute error.
    L1,
    /// Mean squared error.
    L2,
}

/// Settings of [`train_vqgan`].
///
/// ```
/// use ar_refine::tokenizer::VqTrainConfig;
/// let c = VqTrainConfig::new(2000, 32, 2e-4);
/// assert_eq!(c.restart_dead_every, Some(100));
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VqTrainConfig {
    /// Optimizer steps.
    pub steps: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Learning-rate schedule (AdamW, β = (0.5, 0.9) as taming trains VQGANs).
    pub schedule: WarmupCosine,
    /// Reconstruction loss.
    pub recon: Recon,
    /// Weight of the codebook term `‖sg[z] − z_q‖²`.
    pub codebook_weight: f64,
    /// Weight β of the commitment term `‖z − sg[z_q]‖²` (`None`: the config's `commitment_cost`).
    pub beta: Option<f64>,
    /// Every this many steps, codes no batch used since the last restart are moved onto random
    /// encoder outputs of the current batch (`None`: never).
    pub restart_dead_every: Option<usize>,
    /// Global gradient-norm clip.
    pub grad_clip: Option<f64>,
    /// Seed of the batch sampler and restarts.
    pub seed: u64,
    /// Checkpoint period when a directory is given.
    pub checkpoint_every: usize,
    /// Stop early enough to end within this wall time (`None`: run all `steps`).
    #[serde(default)]
    pub time_budget: Option<TimeBudget>,
}

impl VqTrainConfig {
    /// L1 reconstruction, codebook weight 1, β from the config, restarts every 100 steps,
    /// clip 1.0, 2 % warmup then cosine to `lr / 10`.
    pub fn new(steps: usize, batch_size: usize, lr: f64) -> Self {
        Self {
            steps,
            batch_size,
            schedule: WarmupCosine::new(lr, steps / 50, steps),
            recon: Recon::L1,
            codebook_weight: 1.0,
            beta: None,
            restart_dead_every: Some(100),
            grad_clip: Some(1.0),
            seed: 0,
            checkpoint_every: 500,
            time_budget: None,
        }
    }
}

/// The losses of one batch.
#[derive(Clone, Debug)]
pub struct VqLosses<B: ArBackend> {
    /// `recon + codebook_weight·codebook + β·commitment` (differentiable).
    pub total: Tensor<B, 1>,
    /// Reconstruction term.
    pub recon: Tensor<B, 1>,
    /// Codebook term.
    pub codebook: Tensor<B, 1>,
    /// Commitment term.
    pub commitment: Tensor<B, 1>,
    /// Code ids `[b·h·w]` chosen for the batch.
    pub ids: Tensor<B, 1, Int>,
    /// Pre-quantisation latents `[b·h·w, D]`.
    pub latents: Tensor<B, 2>,
}

/// The VQ-VAE objective on `images` `[b, 3, H, W]` in `[0, 1]` (van den Oord et al. 2017):
/// the decoder sees `z + sg[z_q − z]` (straight-through), so the encoder gets the
/// reconstruction gradient while the codebook learns from the codebook term.
pub fn vq_losses<B: ArBackend>(
    model: &VqganModel<B>,
    images: Tensor<B, 4>,
    recon: Recon,
    codebook_weight: f64,
    beta: f64,
) -> Result<VqLosses<B>> {
    let target = match model.config.pixel_range {
        PixelRange::ZeroOne => images,
        PixelRange::MinusOneOne => images.mul_scalar(2.0).sub_scalar(1.0),
    };
    let z = model.encode_latent(target.clone());
    let [b, d, h, w] = z.dims();
    let flat = z
        .clone()
        .reshape([b, d, h * w])
        .swap_dims(1, 2)
        .reshape([b * h * w, d]);
    let codes = model.codebook.val();
    let ids = nearest_codes(
        flat.clone().detach().unsqueeze::<3>(),
        codes.clone().detach(),
        Metric::SquaredL2,
        None,
    )?
    .reshape([b * h * w]);
    let zq = codes.select(0, ids.clone());
    let codebook = (zq.clone() - flat.clone().detach()).powi_scalar(2).mean();
    let commitment = (flat.clone() - zq.clone().detach()).powi_scalar(2).mean();
    let st = flat.clone() + (zq - flat.clone()).detach();
    let zq_map = st.reshape([b, h * w, d]).swap_dims(1, 2).reshape([b, d, h, w]);
    let out = model.decode_latent(zq_map);
    let diff = out - target;
    let recon = match recon {
        Recon::L1 => diff.abs().mean(),
        Recon::L2 => diff.powi_scalar(2).mean(),
    };
    let total =
        recon.clone() + codebook.clone().mul_scalar(codebook_weight) + commitment.clone().mul_scalar(beta);
    Ok(VqLosses {
        total,
        recon,
        codebook,
        commitment,
        ids,
        latents: flat,
    })
}

/// What [`train_vqgan`] reports after every step.
#[derive(Clone, Debug)]
pub struct VqStepReport {
    /// Steps done (1-based).
    pub step: usize,
    /// Steps in all.
    pub steps: usize,
    /// Total loss.
    pub loss: f32,
    /// Reconstruction term.
    pub recon: f32,
    /// Distinct codes used by this batch.
    pub codes_used: usize,
    /// Codes restarted at this step.
    pub restarted: usize,
    /// Learning rate.
    pub lr: f64,
    /// Images per second since the start (or resume).
    pub images_per_sec: f64,
    /// Wall time since the start (or resume).
    pub elapsed: Duration,
}

/// Trains `vq` on random batches of `images` (resized to the model's resolution beforehand by
/// the caller) with AdamW, warmup + cosine and global clipping; resumable from `checkpoints`
/// like [`crate::backbone::train_lm`]. The state's `losses` is the total-loss curve.
pub fn train_vqgan<B: ArAutodiffBackend>(
    vq: Vqgan<B>,
    images: &ImageSet,
    cfg: &VqTrainConfig,
    checkpoints: Option<&Path>,
    on_step: &mut dyn FnMut(&VqStepReport),
) -> Result<(Vqgan<B>, TrainState)> {
    cfg.schedule.validate()?;
    let model = vq.into_model();
    let c = model.config.clone();
    if images.size() != c.resolution {
        return Err(Error::Config(format!(
            "training images are {0}×{0}; the model takes {1}×{1} (use ImageSet::resized)",
            images.size(),
            c.resolution
        )));
    }
    if cfg.batch_size == 0 || cfg.checkpoint_every == 0 || images.is_empty() {
        return Err(Error::Config(
            "batch_size, checkpoint_every and the image set must be non-empty".into(),
        ));
    }
    let beta = cfg.beta.unwrap_or(c.commitment_cost);
    let device = model.codebook.val().device();
    let optim = FusedAdamW::init::<B, VqganModel<B>>(0.5, 0.9, 0.0);
    let identity = serde_json::json!({ "model": c, "train": cfg });
    let state = TrainState::start(identity, cfg.seed);
    let (model, optim, state) = resume(checkpoints, model, optim, state, &device)?;
    // codes used since the last dead-code restart: part of the checkpoint, so a resumed run
    // restarts the same codes as an uninterrupted one
    let mut used = vec![false; c.num_embeddings];
    if let Some(ids) = state.extra.get("used_codes").and_then(|v| v.as_array()) {
        for id in ids.iter().filter_map(|v| v.as_u64()) {
            if let Some(u) = used.get_mut(id as usize) {
                *u = true;
            }
        }
    }
    let settings = LoopSettings {
        steps: cfg.steps,
        schedule: cfg.schedule,
        time_budget: cfg.time_budget,
        grad_clip: cfg.grad_clip,
        checkpoint_every: cfg.checkpoint_every,
        checkpoints,
        what: "VQGAN training loss",
    };
    let mut body = VqBody {
        images,
        cfg,
        beta,
        device,
        used,
        last: None,
        on_step,
    };
    let (model, _, state) = run_loop(&settings, model, optim, state, &mut body)?;
    Ok((Vqgan::from_trained(model)?, state))
}

/// [`train_vqgan`]'s step: a random batch, the VQ losses, and dead-code restarts after it.
struct VqBody<'a, B: ArAutodiffBackend> {
    images: &'a ImageSet,
    cfg: &'a VqTrainConfig,
    beta: f64,
    device: B::Device,
    /// Codes used since the last restart.
    used: Vec<bool>,
    /// The last step's reconstruction loss, its code ids and encoder latents `[n, embed_dim]`.
    last: Option<(f32, Vec<i64>, Tensor<B::InnerBackend, 2>)>,
    on_step: &'a mut dyn FnMut(&VqStepReport),
}

impl<B: ArAutodiffBackend> LoopBody<B, VqganModel<B>> for VqBody<'_, B> {
    fn grads(&mut self, model: &VqganModel<B>, rng: &mut SplitMix64) -> Result<(f32, GradientsParams)> {
        let cfg = self.cfg;
        let idx: Vec<usize> = (0..cfg.batch_size)
            .map(|_| rng.below(self.images.len()))
            .collect();
        let batch = self.images.batch::<B>(&idx, &self.device)?;
        let losses = vq_losses(model, batch, cfg.recon, cfg.codebook_weight, self.beta)?;
        let loss = read_f32(losses.total.clone())?[0];
        if !loss.is_finite() {
            return Ok((loss, GradientsParams::new()));
        }
        let recon = read_f32(losses.recon.clone())?[0];
        let ids = read_i64(losses.ids.clone().inner())?;
        for &i in &ids {
            self.used[i as usize] = true;
        }
        self.last = Some((recon, ids, losses.latents.clone().inner()));
        Ok((loss, GradientsParams::from_grads(losses.total.backward(), model)))
    }

    fn after<O: Optimizer<VqganModel<B>, B>>(
        &mut self,
        model: &mut VqganModel<B>,
        _optim: &O,
        state: &mut TrainState,
        done: &StepDone,
        rng: &mut SplitMix64,
    ) -> Result<()> {
        let c = &model.config;
        let (k, dim) = (c.num_embeddings, c.embed_dim);
        let Some((recon, ids, latents)) = self.last.take() else {
            return Ok(());
        };
        let batch_used: std::collections::HashSet<i64> = ids.iter().copied().collect();
        let mut restarted = 0;
        if self
            .cfg
            .restart_dead_every
            .is_some_and(|e| e > 0 && state.step.is_multiple_of(e))
        {
            let dead: Vec<usize> = (0..k).filter(|i| !self.used[*i]).collect();
            if !dead.is_empty() {
                let lat = read_f32(latents)?;
                let n = ids.len();
                let mut codes = read_f32(model.codebook.val().inner())?;
                for &code in &dead {
                    let src = rng.below(n);
                    codes[code * dim..(code + 1) * dim].copy_from_slice(&lat[src * dim..(src + 1) * dim]);
                }
                let t = Tensor::<B, 2>::from_data(TensorData::new(codes, [k, dim]), &self.device);
                model.codebook = model.codebook.clone().map(|_| t.require_grad());
                restarted = dead.len();
            }
            self.used.iter_mut().for_each(|u| *u = false);
        }
        (self.on_step)(&VqStepReport {
            step: done.step,
            steps: done.total,
            loss: done.loss,
            recon,
            codes_used: batch_used.len(),
            restarted,
            lr: done.lr,
            images_per_sec: (done.steps_this_run * self.cfg.batch_size) as f64
                / done.elapsed.as_secs_f64().max(1e-9),
            elapsed: done.elapsed,
        });
        Ok(())
    }

    fn checkpoint_extra(&mut self) -> Option<serde_json::Map<String, serde_json::Value>> {
        let ids: Vec<usize> = (0..self.used.len()).filter(|k| self.used[*k]).collect();
        let mut m = serde_json::Map::new();
        m.insert("used_codes".into(), serde_json::json!(ids));
        Some(m)
    }
}

/// Mean reconstruction PSNR (dB) of `images` through encode → decode, in chunks of `batch`.
pub fn reconstruction_psnr<B: ArBackend>(
    vq: &Vqgan<B>,
    images: &ImageSet,
    batch: usize,
    device: &B::Device,
) -> Result<f64> {
    use crate::traits::Tokenizer;
    let mut total = 0.0;
    let n = images.len();
    for s in (0..n).step_by(batch.max(1)) {
        let idx: Vec<usize> = (s..(s + batch.max(1)).min(n)).collect();
        let x = images.batch::<B>(&idx, device)?;
        let y = vq.decode(vq.encode(x.clone())?)?;
        total += crate::metrics::psnr(x, y)? * idx.len() as f64;
    }
    Ok(total / n.max(1) as f64)
}

/// The model without autodiff, for inference after training.
pub fn valid<B: ArAutodiffBackend>(vq: Vqgan<B>) -> Result<Vqgan<B::InnerBackend>> {
    Vqgan::from_trained(vq.into_model().valid())
}
