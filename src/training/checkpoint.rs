//! Training checkpoints: module weights, optimizer state and loop state, written atomically.
//!
//! Layout: `DIR/step-00000100/{model.safetensors, optim.safetensors, state.json}` and
//! `DIR/latest` naming the newest. `model.safetensors` holds the module's float parameters by
//! their field path (`blocks.0.attn.query.weight`, f32), `optim.safetensors` the optimizer's
//! moments of each parameter (`PATH.moment_1`, `PATH.moment_2`), and `state.json` the loop
//! state, each parameter's optimizer step count and checksums of the two weight files: readable
//! by any safetensors tool and independent of Burn's record format. A checkpoint directory is
//! assembled under a temporary name and renamed into place, so a crash never leaves a
//! half-written checkpoint where resume would look.

use crate::backend::ArAutodiffBackend;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::record::AdaptorRecord;
use burn::optim::{AdamWState, AdaptiveMomentumState, Optimizer};
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::adamw::FusedAdamW;
use crate::checks::read_f32;
use crate::error::{Error, Result};
use crate::io::{
    fnv1a64, load_module_tensors, module_tensors, safetensors_bytes, write_atomic, KeyReport,
    SafetensorsFile, StoreDtype,
};

/// The optimizer of the crate's training loops (AdamW with the fused update), whose state a
/// checkpoint holds.
pub type TrainOptimizer<M, B> = OptimizerAdaptor<FusedAdamW, M, B>;

/// The optimizer's per-parameter records.
type OptimRecord<B> = hashbrown::HashMap<ParamId, AdaptorRecord<FusedAdamW, B>>;

/// Loop state saved next to the weights.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps taken.
    pub step: usize,
    /// Training loss of every step so far.
    pub losses: Vec<f32>,
    /// State of the data/sampling generator ([`crate::rng::SplitMix64::state`]).
    pub rng: u64,
    /// What the run is (model and training configuration): a checkpoint resumes only a run with
    /// the same identity.
    #[serde(default)]
    pub identity: serde_json::Value,
    /// Anything else the loop wants back (validation history, ...).
    #[serde(default)]
    pub extra: serde_json::Value,
}

impl TrainState {
    /// A fresh state for a run identified by `identity`, its generator seeded with `seed`.
    pub fn start(identity: serde_json::Value, seed: u64) -> Self {
        Self {
            rng: seed,
            identity,
            ..Default::default()
        }
    }
}

/// Resumes from the newest checkpoint under `dir` when there is one and it was written by a run
/// with `fresh.identity` (another identity is an [`Error::Config`]: use a new directory);
/// otherwise returns `model`, `optim` and `fresh` unchanged.
pub fn resume<B, M>(
    dir: Option<&Path>,
    model: M,
    optim: TrainOptimizer<M, B>,
    fresh: TrainState,
    device: &B::Device,
) -> Result<(M, TrainOptimizer<M, B>, TrainState)>
where
    B: ArAutodiffBackend,
    M: AutodiffModule<B>,
{
    if let Some(dir) = dir {
        remove_stale_temporaries(dir);
    }
    let Some(path) = dir.map(latest_checkpoint).transpose()?.flatten() else {
        return Ok((model, optim, fresh));
    };
    let saved = read_state_file(&path)?;
    if saved.state.identity != fresh.identity {
        return Err(Error::Config(format!(
            "checkpoint {} was written by another run (model or training configuration); use a new directory",
            path.display()
        )));
    }
    load_checkpoint(&path, model, optim, device)
}

/// Removes what killed runs left in a checkpoint directory: half-assembled `.step-*.tmp-PID`
/// directories and `.latest.tmp-PID-N` files of processes that are no longer running (on
/// systems without `/proc`: of any other process). Best effort: what cannot be removed stays.
fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let me = std::process::id();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((_, tail)) = name.split_once(".tmp-").filter(|_| name.starts_with('.')) else {
            continue;
        };
        let Ok(pid) = tail.split('-').next().unwrap_or("").parse::<u32>() else {
            continue;
        };
        let proc_dir = Path::new("/proc");
        let alive = pid == me || (proc_dir.is_dir() && proc_dir.join(pid.to_string()).exists());
        if alive {
            continue;
        }
        let path = entry.path();
        let _ = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
    }
}

fn read_state_file(dir: &Path) -> Result<StateFile> {
    let state_path = dir.join("state.json");
    let text = std::fs::read(&state_path).map_err(|e| Error::io(&state_path, e))?;
    serde_json::from_slice(&text).map_err(|e| bad(&state_path, format!("bad state.json: {e}")))
}

/// Whether a loop at `step` (1-based, of `total`) saves a checkpoint every `every` steps: on
/// multiples of `every` and at the end.
pub fn checkpoint_due(step: usize, every: usize, total: usize) -> bool {
    step == total || (every > 0 && step.is_multiple_of(every))
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    format: u32,
    state: TrainState,
    checksums: BTreeMap<String, String>,
    /// Optimizer steps of each parameter that has optimizer state, by its path.
    #[serde(default)]
    optimizer_steps: BTreeMap<String, usize>,
}

/// 2: safetensors + JSON (1 was Burn's MessagePack records, `model.mpk` / `optim.mpk`).
const FORMAT: u32 = 2;

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Saves `model`, `optim` and `state` as `dir/step-NNNNNNNN` and points `dir/latest` at it.
/// Returns the checkpoint's directory.
pub fn save_checkpoint<B, M>(
    dir: impl AsRef<Path>,
    model: &M,
    optim: &TrainOptimizer<M, B>,
    state: &TrainState,
) -> Result<PathBuf>
where
    B: ArAutodiffBackend,
    M: AutodiffModule<B>,
{
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = format!("step-{:08}", state.step);
    let final_dir = dir.join(&name);
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let weights = module_tensors(model)?;
    let mut moments = OptimMoments::<B> {
        path: Vec::new(),
        record: optim.to_record(),
        tensors: Vec::new(),
        steps: BTreeMap::new(),
        error: None,
    };
    model.visit(&mut moments);
    if let Some(e) = moments.error {
        return Err(e);
    }
    let mut checksums = BTreeMap::new();
    for (file, tensors) in [(MODEL_FILE, &weights), (OPTIM_FILE, &moments.tensors)] {
        let path = tmp.join(file);
        let bytes = safetensors_bytes(&path, tensors, StoreDtype::F32, Default::default())?;
        write_atomic(&path, &bytes)?;
        checksums.insert(file.to_string(), format!("{:016x}", fnv1a64(&bytes)));
    }
    let sf = StateFile {
        format: FORMAT,
        state: state.clone(),
        checksums,
        optimizer_steps: moments.steps,
    };
    let json = serde_json::to_vec_pretty(&sf).map_err(|e| Error::json("state.json", e))?;
    write_atomic(tmp.join("state.json"), &json)?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(|e| Error::io(&final_dir, e))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
    write_atomic(dir.join("latest"), name.as_bytes())?;
    Ok(final_dir)
}

const MODEL_FILE: &str = "model.safetensors";
const OPTIM_FILE: &str = "optim.safetensors";

/// Collects the optimizer's moments of every parameter, named by the parameter's path.
struct OptimMoments<B: ArAutodiffBackend> {
    path: Vec<String>,
    record: OptimRecord<B>,
    tensors: Vec<crate::io::NamedTensor>,
    steps: BTreeMap<String, usize>,
    error: Option<Error>,
}

impl<B: ArAutodiffBackend> ModuleVisitor<B> for OptimMoments<B> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some(record) = self.record.remove(&param.id) else {
            return;
        };
        if self.error.is_some() {
            return;
        }
        // the record of a rank-D parameter holds rank-D moments (the optimizer made it so)
        let state: AdamWState<B::InnerBackend, D> = record.into_state::<D>();
        let name = self.path.join(".");
        let m = state.momentum;
        for (suffix, t) in [("moment_1", m.moment_1), ("moment_2", m.moment_2)] {
            let shape = t.dims().to_vec();
            match read_f32(t) {
                Ok(v) => self.tensors.push((format!("{name}.{suffix}"), shape, v)),
                Err(e) => self.error = Some(e),
            }
        }
        self.steps.insert(name, m.time);
    }
}

/// Reads the optimizer's moments back into records keyed by the parameters' ids.
struct LoadMoments<'a, B: ArAutodiffBackend> {
    path: Vec<String>,
    steps: &'a BTreeMap<String, usize>,
    report: KeyReport<'a>,
    record: OptimRecord<B>,
    device: B::Device,
    missing: Vec<String>,
}

impl<B: ArAutodiffBackend> ModuleVisitor<B> for LoadMoments<'_, B> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let name = self.path.join(".");
        let Some(&time) = self.steps.get(&name) else {
            return;
        };
        let shape = param.val().dims();
        let mut moment = |suffix: &str| {
            let key = format!("{name}.{suffix}");
            let t = self
                .report
                .take(&key, &shape)
                .map(|v| Tensor::<B::InnerBackend, D>::from_data(TensorData::new(v, shape), &self.device));
            if t.is_none() {
                self.missing.push(key);
            }
            t
        };
        let (Some(m1), Some(m2)) = (moment("moment_1"), moment("moment_2")) else {
            return;
        };
        let state = AdamWState {
            momentum: AdaptiveMomentumState::new(time, m1, m2),
        };
        self.record
            .insert(param.id, AdaptorRecord::from_state::<D>(state));
    }
}

/// The newest checkpoint under `dir` (from `dir/latest`), or `None` when there is none.
pub fn latest_checkpoint(dir: impl AsRef<Path>) -> Result<Option<PathBuf>> {
    let latest = dir.as_ref().join("latest");
    if !latest.exists() {
        return Ok(None);
    }
    let name = std::fs::read_to_string(&latest).map_err(|e| Error::io(&latest, e))?;
    let name = name.trim();
    if name.is_empty() || name.contains('/') || name.contains("..") {
        return Err(bad(&latest, format!("names an invalid checkpoint {name:?}")));
    }
    Ok(Some(dir.as_ref().join(name)))
}

/// Loads a checkpoint directory written by [`save_checkpoint`] into `model` and `optim`
/// (which must have the same structure). Corrupt, truncated or mismatched files are
/// [`Error::Checkpoint`].
pub fn load_checkpoint<B, M>(
    path: impl AsRef<Path>,
    model: M,
    optim: TrainOptimizer<M, B>,
    device: &B::Device,
) -> Result<(M, TrainOptimizer<M, B>, TrainState)>
where
    B: ArAutodiffBackend,
    M: AutodiffModule<B>,
{
    let path = path.as_ref();
    let sf = read_state_file(path)?;
    if sf.format != FORMAT {
        return Err(bad(
            path,
            format!(
                "checkpoint format {} (this build reads {FORMAT}; format 1, Burn's MessagePack \
                 records, is not read: start the run again in a new directory)",
                sf.format
            ),
        ));
    }
    let open = |file: &str| -> Result<SafetensorsFile> {
        let p = path.join(file);
        let want = sf
            .checksums
            .get(file)
            .ok_or_else(|| bad(path, format!("state.json has no checksum for {file}")))?;
        let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
        if format!("{:016x}", fnv1a64(&bytes)) != *want {
            return Err(bad(&p, "checksum mismatch: the file is corrupt or was modified"));
        }
        drop(bytes);
        SafetensorsFile::open(&p)
    };
    let weights = open(MODEL_FILE)?;
    let model = load_module_tensors(model, &weights, device)?;
    let moments = open(OPTIM_FILE)?;
    let mut load = LoadMoments::<B> {
        path: Vec::new(),
        steps: &sf.optimizer_steps,
        report: KeyReport::new(&moments),
        record: OptimRecord::<B>::new(),
        device: device.clone(),
        missing: Vec::new(),
    };
    model.visit(&mut load);
    if !load.missing.is_empty() {
        return Err(bad(
            &path.join(OPTIM_FILE),
            format!("no moments (or other shapes) for {}", load.missing.join(", ")),
        ));
    }
    let steps_known = load.record.len();
    let record = std::mem::take(&mut load.record);
    load.report.finish()?;
    if steps_known != sf.optimizer_steps.len() {
        return Err(bad(
            path,
            format!(
                "state.json names {} parameters with optimizer state, the model has {steps_known} of them",
                sf.optimizer_steps.len()
            ),
        ));
    }
    let optim = optim.load_record(record);
    Ok((model, optim, sf.state))
}
