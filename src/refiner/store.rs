//! Saving and loading a trained [`TransformerRefiner`]: `config.json` (architecture, decision
//! rule, training notes) and `model.safetensors` (weights by module path, f16 or f32), readable
//! without Burn's record format.

use crate::backend::ArBackend;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::config::TransformerRefinerConfig;
use super::decision::Decision;
use super::transformer::TransformerRefiner;
use crate::error::{Error, Result};
use crate::io::{
    load_module_tensors, module_tensors, save_safetensors, write_atomic, SafetensorsFile, StoreDtype,
};

/// The `format` field of a refiner's `config.json`.
pub const REFINER_FORMAT: &str = "ar-refine-refiner-v2";

/// A refiner loaded by [`load_refiner`].
#[derive(Debug)]
pub struct LoadedRefiner<B: ArBackend> {
    /// The model.
    pub refiner: TransformerRefiner<B>,
    /// The decision rule saved with it (calibrated on validation pairs when it is a gate).
    pub decision: Decision,
    /// Free-form notes saved with it (loss, steps, data, calibration).
    pub training: serde_json::Value,
}

#[derive(Serialize, Deserialize)]
struct ConfigFile {
    format: String,
    config: TransformerRefinerConfig,
    decision: Decision,
    #[serde(default)]
    training: serde_json::Value,
}

/// Writes `dir/config.json` and `dir/model.safetensors` (weights in `dtype`; f16 halves the
/// file), atomically. `decision` is the rule users get by default with this refiner; `training`
/// any notes (JSON).
///
/// ```
/// use ar_refine::refiner::{load_refiner, save_refiner, Decision};
/// use ar_refine::io::StoreDtype;
/// use ar_refine::TransformerRefinerConfig;
/// use burn::backend::NdArray;
/// let cfg = TransformerRefinerConfig::new(4).with_d_model(8).with_n_heads(2).with_n_layers(1);
/// let r = cfg.init::<NdArray>(&Default::default()).unwrap();
/// let dir = std::env::temp_dir().join("ar_refine_doc_refiner");
/// save_refiner(&r, Decision::Snap, serde_json::json!({"steps": 0}), &dir, StoreDtype::F16).unwrap();
/// let back = load_refiner::<NdArray>(&dir, &Default::default()).unwrap();
/// assert_eq!(back.refiner.config().d_model, 8);
/// assert_eq!(back.decision, Decision::Snap);
/// assert_eq!(back.refiner.param_count(), r.param_count());
/// ```
pub fn save_refiner<B: ArBackend>(
    refiner: &TransformerRefiner<B>,
    decision: Decision,
    training: serde_json::Value,
    dir: impl AsRef<Path>,
    dtype: StoreDtype,
) -> Result<()> {
    let dir = dir.as_ref();
    decision.validate()?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    save_safetensors(dir.join("model.safetensors"), &module_tensors(refiner)?, dtype)?;
    let file = ConfigFile {
        format: REFINER_FORMAT.into(),
        config: refiner.config().clone(),
        decision,
        training,
    };
    let text = serde_json::to_vec_pretty(&file).map_err(|e| Error::json("the refiner's config.json", e))?;
    write_atomic(dir.join("config.json"), &text)
}

/// Loads what [`save_refiner`] wrote. Corrupt or mismatched files, and refiners saved by
/// ar-refine 0.1 (`refiner.mpk`), are an [`Error::Checkpoint`] naming the problem.
pub fn load_refiner<B: ArBackend>(dir: impl AsRef<Path>, device: &B::Device) -> Result<LoadedRefiner<B>> {
    let dir = dir.as_ref();
    let bad = |path: &Path, reason: String| Error::Checkpoint {
        path: path.to_path_buf(),
        reason,
    };
    let meta_path = dir.join("config.json");
    if !meta_path.exists() && dir.join("refiner.mpk").exists() {
        return Err(bad(
            dir,
            "a refiner from ar-refine 0.1 (refiner.json + refiner.mpk, Burn's record format); \
             this version reads config.json + model.safetensors: retrain it with `ar-refine train-refiner`"
                .into(),
        ));
    }
    let text = std::fs::read(&meta_path).map_err(|e| Error::io(&meta_path, e))?;
    let file: ConfigFile = serde_json::from_slice(&text)
        .map_err(|e| bad(&meta_path, format!("not a refiner configuration: {e}")))?;
    if file.format != REFINER_FORMAT {
        return Err(bad(
            &meta_path,
            format!("format {:?}; this build reads {REFINER_FORMAT:?}", file.format),
        ));
    }
    file.config
        .validate()
        .map_err(|e| bad(&meta_path, e.to_string()))?;
    file.decision
        .validate()
        .map_err(|e| bad(&meta_path, e.to_string()))?;
    // the frozen codebook is one of the tensors: a zero placeholder of the right shape
    let codebook = (file.config.codebook_size > 0).then(|| {
        burn::tensor::Tensor::<B, 2>::zeros([file.config.codebook_size, file.config.code_dim], device)
    });
    let empty = TransformerRefiner::new(&file.config, codebook, device);
    let weights = SafetensorsFile::open(dir.join("model.safetensors"))?;
    let refiner = load_module_tensors(empty, &weights, device)?;
    Ok(LoadedRefiner {
        refiner,
        decision: file.decision,
        training: file.training,
    })
}
