//! PyTorch checkpoints (`.bin`, `.pt`, `.pth`, `.ckpt`) read through `burn-store`'s pickle reader,
//! which parses the pickle stream without executing any code from it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::DType;
use burn_store::pytorch::PytorchReader;
use burn_store::TensorSnapshot;

use super::source::TensorSource;
use crate::error::{Error, Result};

/// The float tensors of a PyTorch checkpoint: a plain state dict, or one nested under
/// `state_dict` (Lightning) or `model`, whose prefix is removed.
///
/// ```no_run
/// use ar_refine::io::{PytorchFile, TensorSource};
/// let f = PytorchFile::open("pytorch_model.bin").unwrap();
/// println!("{} tensors, first {:?}", f.keys().len(), f.keys().first());
/// ```
pub struct PytorchFile {
    path: PathBuf,
    /// The file's size at open: no tensor may claim more.
    file_len: u64,
    tensors: BTreeMap<String, TensorSnapshot>,
}

impl PytorchFile {
    /// Reads the checkpoint's tensor index (tensor data is read on demand).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            ));
        }
        super::pickle_scan::check_checkpoint(path)?;
        let file_len = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
        let reader = PytorchReader::new(path).map_err(|e| Error::Checkpoint {
            path: path.to_path_buf(),
            reason: format!("not a readable PyTorch checkpoint: {e}"),
        })?;
        let all = reader.into_tensors();
        let nested = ["state_dict.", "model."].into_iter().find(|p| {
            !all.is_empty()
                && all.keys().all(|k| k.starts_with(p) || !k.contains('.'))
                && all.keys().any(|k| k.starts_with(p))
        });
        let tensors = all
            .into_iter()
            .filter_map(|(k, v)| match nested {
                Some(p) => k.strip_prefix(p).map(|s| (s.to_string(), v)),
                None => Some((k, v)),
            })
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            file_len,
            tensors,
        })
    }
}

impl TensorSource for PytorchFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn keys(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }

    fn shape(&self, key: &str) -> Option<Vec<usize>> {
        self.tensors.get(key).map(|t| t.shape.to_vec())
    }

    fn read_f32(&self, key: &str) -> Result<Vec<f32>> {
        let bad = |reason: String| Error::Checkpoint {
            path: self.path.clone(),
            reason,
        };
        let t = self
            .tensors
            .get(key)
            .ok_or_else(|| bad(format!("missing tensor {key}")))?;
        if !matches!(t.dtype, DType::F16 | DType::BF16 | DType::F32 | DType::F64) {
            return Err(bad(format!(
                "tensor {key} has dtype {:?}; expected a float type",
                t.dtype
            )));
        }
        // `burn-store` allocates the elements a tensor's shape claims before reading them: the
        // claim must fit in the file.
        let file_len = self.file_len;
        let bytes = t
            .shape
            .iter()
            .try_fold(t.dtype.size() as u64, |acc, &d| acc.checked_mul(d as u64));
        if bytes.is_none_or(|b| b > file_len) {
            return Err(bad(format!(
                "tensor {key} of shape {:?} needs more bytes than the file's {file_len}",
                t.shape
            )));
        }
        let data = t
            .to_data()
            .map_err(|e| bad(format!("cannot read tensor {key}: {e:?}")))?;
        let data = data.convert::<f32>();
        data.to_vec::<f32>()
            .map_err(|e| bad(format!("cannot read tensor {key}: {e:?}")))
    }
}
