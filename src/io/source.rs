//! One interface over checkpoint formats, so that model loaders are written once.

use crate::backend::ArBackend;
use std::path::Path;

use burn::tensor::{Tensor, TensorData};

use super::pytorch::PytorchFile;
use super::safetensors::SafetensorsFile;
use crate::error::{Error, Result};

/// Named float tensors from a checkpoint file (safetensors or PyTorch pickle).
pub trait TensorSource {
    /// Where the tensors come from.
    fn path(&self) -> &Path;
    /// Every tensor name, sorted.
    fn keys(&self) -> Vec<String>;
    /// The shape of `key`, if present.
    fn shape(&self, key: &str) -> Option<Vec<usize>>;
    /// `key` as row-major `f32` values (f16/bf16/f64 converted).
    fn read_f32(&self, key: &str) -> Result<Vec<f32>>;

    /// `key` in its stored float type where the format allows (safetensors: f16, bf16, f32), so
    /// that the backend converts it once, straight to its own float type; `f32` otherwise.
    fn read_data(&self, key: &str) -> Result<TensorData> {
        let shape = self.shape(key).ok_or_else(|| Error::Checkpoint {
            path: self.path().to_path_buf(),
            reason: format!("missing tensor {key}"),
        })?;
        Ok(TensorData::new(self.read_f32(key)?, shape))
    }

    /// Whether `key` is present.
    fn contains(&self, key: &str) -> bool {
        self.shape(key).is_some()
    }

    /// `key` as a rank-`D` tensor on `device`.
    fn tensor<B: ArBackend, const D: usize>(&self, key: &str, device: &B::Device) -> Result<Tensor<B, D>>
    where
        Self: Sized,
    {
        let shape = self.shape(key).ok_or_else(|| Error::Checkpoint {
            path: self.path().to_path_buf(),
            reason: format!("missing tensor {key}"),
        })?;
        if shape.len() != D {
            return Err(Error::Checkpoint {
                path: self.path().to_path_buf(),
                reason: format!(
                    "tensor {key} has rank {} ({shape:?}); expected rank {D}",
                    shape.len()
                ),
            });
        }
        Ok(Tensor::from_data(self.read_data(key)?, device))
    }
}

/// Checks, before a loader allocates anything, that a configuration could belong to `source`:
/// `needed` (at least as many elements as the configuration's model has, `None` when that count
/// overflows) must not exceed 16 times the elements `source` holds (at least 2^20). Closer
/// mismatches pass, so that the loader's key-by-key report names them; this only stops configs
/// whose model alone would cost far more than the checkpoint. `what` names the configuration.
pub(crate) fn check_param_budget(source: &dyn TensorSource, needed: Option<u128>, what: &str) -> Result<()> {
    let held: u128 = source
        .keys()
        .iter()
        .filter_map(|k| source.shape(k))
        .map(|s| s.iter().map(|&d| d as u128).product::<u128>())
        .sum();
    match needed {
        Some(n) if n <= held.saturating_mul(16).max(1 << 20) => Ok(()),
        _ => Err(Error::Checkpoint {
            path: source.path().to_path_buf(),
            reason: format!(
                "{what} describes {} parameters, more than 16 × the {held} values the checkpoint \
                 holds: config and checkpoint do not belong together (nothing was allocated)",
                needed.map_or("more than 2^128".to_string(), |n| n.to_string())
            ),
        }),
    }
}

/// Opens a checkpoint by its name: `.safetensors`, a `*.safetensors.index.json` shard index or a
/// directory with `model.safetensors` / `diffusion_pytorch_model.safetensors` → safetensors;
/// `.bin`, `.pt`, `.pth`, `.ckpt` (or a directory with `pytorch_model.bin`) → PyTorch pickle
/// (read without running code).
pub fn open_checkpoint(path: impl AsRef<Path>) -> Result<Box<dyn TensorSource>> {
    let path = path.as_ref();
    if path.is_dir() {
        for name in [
            "model.safetensors.index.json",
            "model.safetensors",
            "diffusion_pytorch_model.safetensors",
            "pytorch_model.bin",
            "diffusion_pytorch_model.bin",
        ] {
            if path.join(name).is_file() {
                return open_checkpoint(path.join(name));
            }
        }
        return Err(Error::Checkpoint {
            path: path.to_path_buf(),
            reason: "directory holds no model.safetensors, diffusion_pytorch_model.safetensors or pytorch_model.bin"
                .into(),
        });
    }
    let name = path.to_string_lossy().to_lowercase();
    if [".bin", ".pt", ".pth", ".ckpt"].iter().any(|e| name.ends_with(e)) {
        Ok(Box::new(PytorchFile::open(path)?))
    } else {
        Ok(Box::new(SafetensorsFile::open(path)?))
    }
}
