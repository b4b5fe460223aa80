//! Training checkpoints: module weights, optimizer state and loop state, written atomically.
//!
//! Layout: `DIR/step-00000100/{model.mpk, optim.mpk, state.json}` and `DIR/latest` naming the
//! newest. A checkpoint directory is assembled under a temporary name and renamed into place,
//! so a crash never leaves a half-written checkpoint where resume would look; `state.json`
//! carries checksums of the two weight files.

use crate::backend::ArAutodiffBackend;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::optim::Optimizer;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::{fnv1a64, write_atomic};

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
pub fn resume<B, M, O>(
    dir: Option<&Path>,
    model: M,
    optim: O,
    fresh: TrainState,
    device: &B::Device,
) -> Result<(M, O, TrainState)>
where
    B: ArAutodiffBackend,
    M: AutodiffModule<B>,
    O: Optimizer<M, B>,
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
}

const FORMAT: u32 = 1;

fn recorder() -> NamedMpkBytesRecorder<FullPrecisionSettings> {
    NamedMpkBytesRecorder::default()
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Saves `model`, `optim` and `state` as `dir/step-NNNNNNNN` and points `dir/latest` at it.
/// Returns the checkpoint's directory.
pub fn save_checkpoint<B, M, O>(
    dir: impl AsRef<Path>,
    model: &M,
    optim: &O,
    state: &TrainState,
) -> Result<PathBuf>
where
    B: ArAutodiffBackend,
    M: AutodiffModule<B>,
    O: Optimizer<M, B>,
{
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = format!("step-{:08}", state.step);
    let final_dir = dir.join(&name);
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let model_bytes = Recorder::<B>::record(&recorder(), model.clone().into_record(), ())
        .map_err(|e| bad(&tmp, format!("cannot encode the model: {e}")))?;
    let optim_bytes = Recorder::<B>::record(&recorder(), optim.to_record(), ())
        .map_err(|e| bad(&tmp, format!("cannot encode the optimizer: {e}")))?;
    let mut checksums = BTreeMap::new();
    for (file, bytes) in [("model.mpk", &model_bytes), ("optim.mpk", &optim_bytes)] {
        write_atomic(tmp.join(file), bytes)?;
        checksums.insert(file.to_string(), format!("{:016x}", fnv1a64(bytes)));
    }
    let sf = StateFile {
        format: FORMAT,
        state: state.clone(),
        checksums,
    };
    let json = serde_json::to_vec_pretty(&sf).map_err(|e| bad(&tmp, e.to_string()))?;
    write_atomic(tmp.join("state.json"), &json)?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(|e| Error::io(&final_dir, e))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
    write_atomic(dir.join("latest"), name.as_bytes())?;
    Ok(final_dir)
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
pub fn load_checkpoint<B, M, O>(
    path: impl AsRef<Path>,
    model: M,
    optim: O,
    device: &B::Device,
) -> Result<(M, O, TrainState)>
where
    B: ArAutodiffBackend,
    M: AutodiffModule<B>,
    O: Optimizer<M, B>,
{
    let path = path.as_ref();
    let sf = read_state_file(path)?;
    if sf.format != FORMAT {
        return Err(bad(
            path,
            format!("checkpoint format {} (this build reads {FORMAT})", sf.format),
        ));
    }
    let read = |file: &str| -> Result<Vec<u8>> {
        let p = path.join(file);
        let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
        let want = sf
            .checksums
            .get(file)
            .ok_or_else(|| bad(path, format!("state.json has no checksum for {file}")))?;
        if format!("{:016x}", fnv1a64(&bytes)) != *want {
            return Err(bad(&p, "checksum mismatch: the file is corrupt or was modified"));
        }
        // Burn's decoder reserves the element counts a record claims: bound them first
        crate::io::check_msgpack_claims(&bytes)
            .map_err(|e| bad(&p, format!("not a MessagePack record: {e}")))?;
        Ok(bytes)
    };
    let (mut model_bytes, mut optim_bytes) = (Some(read("model.mpk")?), Some(read("optim.mpk")?));
    // Burn 0.21 panics on some malformed records (a parameter id that does not decode, found by
    // fuzzing `checkpoint_mpk`) instead of returning its error: such a panic becomes this error.
    let guarded = |what: &str, f: &mut dyn FnMut() -> Result<()>| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
            .unwrap_or_else(|_| Err(bad(path, format!("{what} is malformed (the decoder panicked)"))))
    };
    let want = shapes(&model);
    let mut loaded = None;
    guarded("the model record", &mut || {
        let rec = Recorder::<B>::load(&recorder(), model_bytes.take().unwrap_or_default(), device)
            .map_err(|e| bad(path, format!("model record does not match this model: {e}")))?;
        loaded = Some(model.clone().load_record(rec));
        Ok(())
    })?;
    let model = loaded.expect("set by the guarded load");
    let got = shapes(&model);
    if got != want {
        let detail = match want.iter().zip(&got).position(|(w, g)| w != g) {
            Some(i) => format!("parameter {i} has shape {:?}, the model {:?}", got[i], want[i]),
            None => format!("{} parameters, the model {}", got.len(), want.len()),
        };
        return Err(bad(
            path,
            format!("model record does not match this model: {detail}"),
        ));
    }
    let mut optim = Some(optim);
    let mut loaded = None;
    guarded("the optimizer record", &mut || {
        let rec = Recorder::<B>::load(&recorder(), optim_bytes.take().unwrap_or_default(), device)
            .map_err(|e| bad(path, format!("optimizer record does not match: {e}")))?;
        loaded = optim.take().map(|o| o.load_record(rec));
        Ok(())
    })?;
    let optim = loaded.ok_or_else(|| bad(path, "the optimizer record could not be loaded"))?;
    Ok((model, optim, sf.state))
}

/// The shapes of a module's parameters in visiting order.
fn shapes<B: burn::tensor::backend::Backend, M: burn::module::Module<B>>(module: &M) -> Vec<Vec<usize>> {
    struct Shapes(Vec<Vec<usize>>);
    impl<B: burn::tensor::backend::Backend> burn::module::ModuleVisitor<B> for Shapes {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<burn::tensor::Tensor<B, D>>) {
            self.0.push(p.val().dims().to_vec());
        }
        fn visit_int<const D: usize>(
            &mut self,
            p: &burn::module::Param<burn::tensor::Tensor<B, D, burn::tensor::Int>>,
        ) {
            self.0.push(p.val().dims().to_vec());
        }
        fn visit_bool<const D: usize>(
            &mut self,
            p: &burn::module::Param<burn::tensor::Tensor<B, D, burn::tensor::Bool>>,
        ) {
            self.0.push(p.val().dims().to_vec());
        }
    }
    let mut v = Shapes(Vec::new());
    module.visit(&mut v);
    v.0
}
