//! Saving and loading a trained [`TransformerRefiner`] with its configuration.

use std::path::Path;

use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::Backend;

use super::config::TransformerRefinerConfig;
use super::transformer::TransformerRefiner;
use crate::error::{Error, Result};
use crate::io::{fnv1a64, write_atomic};

/// Writes `dir/refiner.json` (the configuration plus a checksum of the weights) and
/// `dir/refiner.mpk` (the weights), atomically.
///
/// ```
/// use ar_refine::refiner::{load_refiner, save_refiner};
/// use ar_refine::TransformerRefinerConfig;
/// use burn::backend::NdArray;
/// let cfg = TransformerRefinerConfig::new(4).with_d_model(8).with_n_heads(2).with_n_layers(1);
/// let r = cfg.init::<NdArray>(&Default::default()).unwrap();
/// let dir = std::env::temp_dir().join("ar_refine_doc_refiner");
/// save_refiner(&r, &cfg, &dir).unwrap();
/// let (back, cfg2) = load_refiner::<NdArray>(&dir, &Default::default()).unwrap();
/// assert_eq!(cfg2.d_model, 8);
/// assert_eq!(back.param_count(), r.param_count());
/// ```
pub fn save_refiner<B: Backend>(
    refiner: &TransformerRefiner<B>,
    config: &TransformerRefinerConfig,
    dir: impl AsRef<Path>,
) -> Result<()> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let bytes = Recorder::<B>::record(
        &NamedMpkBytesRecorder::<FullPrecisionSettings>::default(),
        refiner.clone().into_record(),
        (),
    )
    .map_err(|e| Error::Checkpoint {
        path: dir.to_path_buf(),
        reason: format!("cannot encode the refiner: {e}"),
    })?;
    write_atomic(dir.join("refiner.mpk"), &bytes)?;
    let json = serde_json::json!({ "config": config, "checksum": format!("{:016x}", fnv1a64(&bytes)) });
    let text = serde_json::to_vec_pretty(&json).map_err(|e| Error::Config(e.to_string()))?;
    write_atomic(dir.join("refiner.json"), &text)
}

/// Loads what [`save_refiner`] wrote; a corrupt or mismatched file is [`Error::Checkpoint`].
pub fn load_refiner<B: Backend>(
    dir: impl AsRef<Path>,
    device: &B::Device,
) -> Result<(TransformerRefiner<B>, TransformerRefinerConfig)> {
    let dir = dir.as_ref();
    let bad = |reason: String| Error::Checkpoint {
        path: dir.to_path_buf(),
        reason,
    };
    let meta_path = dir.join("refiner.json");
    let text = std::fs::read(&meta_path).map_err(|e| Error::io(&meta_path, e))?;
    let meta: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| bad(format!("bad refiner.json: {e}")))?;
    let config: TransformerRefinerConfig = meta
        .get("config")
        .cloned()
        .and_then(|c| serde_json::from_value(c).ok())
        .ok_or_else(|| bad("refiner.json has no valid \"config\"".into()))?;
    let path = dir.join("refiner.mpk");
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    if meta.get("checksum").and_then(|c| c.as_str()) != Some(format!("{:016x}", fnv1a64(&bytes)).as_str()) {
        return Err(bad(
            "refiner.mpk does not match the checksum in refiner.json".into()
        ));
    }
    let record = Recorder::<B>::load(
        &NamedMpkBytesRecorder::<FullPrecisionSettings>::default(),
        bytes,
        device,
    )
    .map_err(|e| bad(format!("cannot decode refiner.mpk: {e}")))?;
    let refiner = config.init::<B>(device)?.load_record(record);
    Ok((refiner, config))
}
