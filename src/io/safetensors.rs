//! Reading and writing `.safetensors` checkpoints: single files, sharded HF checkpoints
//! (`*.safetensors.index.json`) and whole model directories.
//!
//! Loading never runs code from the file: the format is a JSON header plus raw little-endian
//! buffers. Shard files are memory-mapped, not read: opening a checkpoint costs its headers, and
//! each tensor is copied out of the map when it is asked for, one at a time, in its stored type
//! ([`TensorSource::read_data`]: f16 and bf16 stay 2 bytes per value until the backend converts
//! them to its own float type) or as `f32` ([`TensorSource::read_f32`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use burn::tensor::{DType, TensorData};
use safetensors::{Dtype, SafeTensors};

use super::atomic::write_atomic;
use super::source::TensorSource;
use crate::error::{Error, Result};

struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// The tensors of one checkpoint, possibly spread over several shard files.
///
/// ```
/// use ar_refine::io::{save_safetensors, SafetensorsFile, StoreDtype, TensorSource};
/// let dir = std::env::temp_dir().join("ar_refine_doc_st");
/// std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("w.safetensors");
/// save_safetensors(&path, &[("w".into(), vec![2, 2], vec![1.0, 2.0, 3.0, 4.0])], StoreDtype::F16).unwrap();
/// let f = SafetensorsFile::open(&path).unwrap();
/// assert_eq!(f.shape("w"), Some(vec![2, 2]));
/// assert_eq!(f.read_f32("w").unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
/// ```
pub struct SafetensorsFile {
    origin: PathBuf,
    /// Each shard's path and its read-only map (`None` for an empty file).
    buffers: Vec<(PathBuf, Option<memmap2::Mmap>)>,
    entries: BTreeMap<String, Entry>,
}

impl SafetensorsFile {
    /// Opens a checkpoint: a `.safetensors` file, a `*.safetensors.index.json` shard index, or a
    /// directory holding `model.safetensors` or `model.safetensors.index.json`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.is_dir() {
            let index = path.join("model.safetensors.index.json");
            if index.is_file() {
                return Self::open_index(&index);
            }
            let single = path.join("model.safetensors");
            if single.is_file() {
                return Self::open_files(path, vec![single]);
            }
            return Err(checkpoint(
                path,
                "directory has neither model.safetensors nor model.safetensors.index.json",
            ));
        }
        if path.to_string_lossy().ends_with(".json") {
            return Self::open_index(path);
        }
        Self::open_files(path, vec![path.to_path_buf()])
    }

    fn open_index(index: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| checkpoint(index, format!("bad index json: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| checkpoint(index, "index json has no \"weight_map\" object"))?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut shards = BTreeSet::new();
        for (key, file) in map {
            let file = file
                .as_str()
                .ok_or_else(|| checkpoint(index, format!("weight_map entry {key} is not a file name")))?;
            if file.contains("..") || Path::new(file).is_absolute() {
                return Err(checkpoint(
                    index,
                    format!("shard name {file:?} leaves the directory"),
                ));
            }
            shards.insert(file.to_string());
        }
        let files: Vec<PathBuf> = shards.iter().map(|s| dir.join(s)).collect();
        let me = Self::open_files(index, files)?;
        let missing: Vec<&String> = map.keys().filter(|k| !me.entries.contains_key(*k)).collect();
        if !missing.is_empty() {
            return Err(checkpoint(
                index,
                format!(
                    "index lists tensors that no shard holds: {}",
                    list(missing.iter())
                ),
            ));
        }
        Ok(me)
    }

    fn open_files(origin: &Path, files: Vec<PathBuf>) -> Result<Self> {
        let mut buffers = Vec::with_capacity(files.len());
        let mut entries = BTreeMap::new();
        for (i, file) in files.into_iter().enumerate() {
            let handle = std::fs::File::open(&file).map_err(|e| Error::io(&file, e))?;
            let len = handle.metadata().map_err(|e| Error::io(&file, e))?.len();
            // SAFETY: mapped read-only; as with every memory-mapped loader (candle's
            // `VarBuilder`, burn-store), another process truncating the file while it is open is
            // not defended against.
            let map = if len == 0 {
                None
            } else {
                Some(unsafe { memmap2::Mmap::map(&handle) }.map_err(|e| Error::io(&file, e))?)
            };
            let bytes: &[u8] = map.as_deref().unwrap_or(&[]);
            let (header, meta) = SafeTensors::read_metadata(bytes)
                .map_err(|e| checkpoint(&file, format!("not a valid safetensors file: {e}")))?;
            let base = 8 + header;
            for (name, info) in meta.tensors() {
                let (start, end) = info.data_offsets;
                if entries.contains_key(&name) {
                    return Err(checkpoint(&file, format!("tensor {name} appears in two shards")));
                }
                entries.insert(
                    name,
                    Entry {
                        file: i,
                        dtype: info.dtype,
                        shape: info.shape.clone(),
                        start: base + start,
                        end: base + end,
                    },
                );
            }
            buffers.push((file, map));
        }
        Ok(Self {
            origin: origin.to_path_buf(),
            buffers,
            entries,
        })
    }

    /// The stored element type of `key` (`"F16"`, `"BF16"`, `"F32"`, ...), if present.
    pub fn dtype(&self, key: &str) -> Option<String> {
        self.entries.get(key).map(|e| format!("{:?}", e.dtype))
    }

    /// The stored bytes of `key` (in the map), after checking that the type is a float type and
    /// that the byte count matches the shape.
    fn raw(&self, key: &str) -> Result<(&Entry, &[u8])> {
        let e = self
            .entries
            .get(key)
            .ok_or_else(|| checkpoint(&self.origin, format!("missing tensor {key}")))?;
        let (file, map) = &self.buffers[e.file];
        let bytes: &[u8] = map.as_deref().unwrap_or(&[]);
        let width = match e.dtype {
            Dtype::F16 | Dtype::BF16 => 2,
            Dtype::F32 => 4,
            Dtype::F64 => 8,
            other => {
                return Err(checkpoint(
                    file,
                    format!("tensor {key} has dtype {other:?}; expected a float type"),
                ))
            }
        };
        let n = e.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let raw = bytes.get(e.start..e.end);
        match (raw, n.and_then(|n| n.checked_mul(width))) {
            (Some(raw), Some(len)) if raw.len() == len => Ok((e, raw)),
            _ => Err(checkpoint(
                file,
                format!("tensor {key} data has the wrong length"),
            )),
        }
    }

    /// Drops `e`'s pages from this process's resident set once its bytes are copied out: a
    /// loader reads every tensor once, so without this a whole checkpoint's pages would stay
    /// mapped (and counted as the process's memory) until the file is closed.
    fn release(&self, e: &Entry) {
        #[cfg(unix)]
        if let Some(map) = &self.buffers[e.file].1 {
            // SAFETY: the map is read-only and owned by `self`; no borrow of this range is alive
            // (callers copied the bytes out first), and a later read of it faults the same bytes
            // back in from the file. Failure only leaves the pages resident.
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, e.start, e.end - e.start)
            };
        }
        #[cfg(not(unix))]
        let _ = e;
    }

    /// Reads `key` in its stored float type: f16, bf16 and f32 as they are stored (copied out
    /// of the map once), f64 narrowed to f32. Shape `e.shape`.
    pub fn read_data(&self, key: &str) -> Result<TensorData> {
        let (e, raw) = self.raw(key)?;
        let dtype = match e.dtype {
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            Dtype::F32 => DType::F32,
            _ => return Ok(TensorData::new(self.read_f32(key)?, e.shape.clone())),
        };
        let bytes = raw.to_vec();
        self.release(e);
        Ok(TensorData::from_bytes_vec(bytes, e.shape.clone(), dtype))
    }

    /// Reads `key` as row-major `f32` values, converting f16/bf16/f64 (also available through
    /// [`TensorSource`]).
    pub fn read_f32(&self, key: &str) -> Result<Vec<f32>> {
        let (e, raw) = self.raw(key)?;
        let out = match e.dtype {
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            _ => raw
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32)
                .collect(),
        };
        self.release(e);
        Ok(out)
    }
}

impl TensorSource for SafetensorsFile {
    fn path(&self) -> &Path {
        &self.origin
    }

    fn keys(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    fn shape(&self, key: &str) -> Option<Vec<usize>> {
        self.entries.get(key).map(|e| e.shape.clone())
    }

    fn read_f32(&self, key: &str) -> Result<Vec<f32>> {
        SafetensorsFile::read_f32(self, key)
    }

    fn read_data(&self, key: &str) -> Result<TensorData> {
        SafetensorsFile::read_data(self, key)
    }
}

/// Collects what a loader found wrong with a checkpoint, so that one error lists every missing
/// key, unexpected key and shape mismatch instead of stopping at the first.
///
/// ```
/// use ar_refine::io::{save_safetensors, KeyReport, SafetensorsFile, StoreDtype, TensorSource};
/// let p = std::env::temp_dir().join("ar_refine_doc_report.safetensors");
/// save_safetensors(&p, &[("a".into(), vec![2], vec![1.0, 2.0]), ("extra".into(), vec![1], vec![0.0])],
///     StoreDtype::F32).unwrap();
/// let f = SafetensorsFile::open(&p).unwrap();
/// let mut r = KeyReport::new(&f);
/// assert!(r.take("a", &[3]).is_none());        // shape mismatch
/// assert!(r.take("b", &[2]).is_none());        // missing
/// let msg = r.finish().unwrap_err().to_string();
/// assert!(msg.contains("missing keys: b") && msg.contains("unexpected keys: extra") && msg.contains("a: checkpoint [2]"));
/// ```
pub struct KeyReport<'a> {
    file: &'a dyn TensorSource,
    used: BTreeSet<String>,
    missing: Vec<String>,
    mismatched: Vec<String>,
    ignored_prefixes: Vec<String>,
}

impl<'a> KeyReport<'a> {
    /// A report over `file` with nothing taken yet.
    pub fn new(file: &'a dyn TensorSource) -> Self {
        Self {
            file,
            used: BTreeSet::new(),
            missing: Vec::new(),
            mismatched: Vec::new(),
            ignored_prefixes: Vec::new(),
        }
    }

    /// Keys containing `pattern` are not reported as unexpected (e.g. buffers the model
    /// recomputes, such as `rotary_emb.inv_freq`).
    pub fn ignore_unused(&mut self, pattern: &str) {
        self.ignored_prefixes.push(pattern.to_string());
    }

    /// Marks `key` used and returns its `f32` values when its shape is `shape`; records a
    /// missing key or a mismatch otherwise (and returns `None`).
    pub fn take(&mut self, key: &str, shape: &[usize]) -> Option<Vec<f32>> {
        self.take_with(key, shape, |f| f.read_f32(key))
    }

    /// [`KeyReport::take`] in the stored float type ([`TensorSource::read_data`]): what model
    /// loaders use, so that an f16 checkpoint reaches an f16 backend without an f32 copy.
    pub fn take_data(&mut self, key: &str, shape: &[usize]) -> Option<TensorData> {
        self.take_with(key, shape, |f| f.read_data(key))
    }

    fn take_with<T>(
        &mut self,
        key: &str,
        shape: &[usize],
        read: impl FnOnce(&dyn TensorSource) -> Result<T>,
    ) -> Option<T> {
        self.used.insert(key.to_string());
        match self.file.shape(key) {
            None => {
                self.missing.push(key.to_string());
                None
            }
            Some(s) if s.as_slice() != shape => {
                self.mismatched
                    .push(format!("{key}: checkpoint {s:?}, model {shape:?}"));
                None
            }
            Some(_) => match read(self.file) {
                Ok(v) => Some(v),
                Err(e) => {
                    self.mismatched.push(format!("{key}: {e}"));
                    None
                }
            },
        }
    }

    /// Marks `key` used and checks its shape without reading it: `true` when present with shape
    /// `shape`, else the missing key or mismatch is recorded. Loaders check every key this way
    /// first, then ([`KeyReport::finish`] passed) read one tensor at a time.
    pub fn expect(&mut self, key: &str, shape: &[usize]) -> bool {
        self.take_with(key, shape, |_| Ok(())).is_some()
    }

    /// Whether `key` is present (without taking it).
    pub fn has(&self, key: &str) -> bool {
        self.file.contains(key)
    }

    /// `Ok` when every key was found with the right shape and nothing was left over;
    /// otherwise one [`Error::Checkpoint`] naming all problems.
    pub fn finish(self) -> Result<()> {
        let unexpected: Vec<String> = self
            .file
            .keys()
            .into_iter()
            .filter(|k| !self.used.contains(k))
            .filter(|k| !self.ignored_prefixes.iter().any(|p| k.contains(p.as_str())))
            .collect();
        if self.missing.is_empty() && self.mismatched.is_empty() && unexpected.is_empty() {
            return Ok(());
        }
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            parts.push(format!("missing keys: {}", list(self.missing.iter())));
        }
        if !unexpected.is_empty() {
            parts.push(format!("unexpected keys: {}", list(unexpected.iter())));
        }
        if !self.mismatched.is_empty() {
            parts.push(format!("shape mismatches: {}", list(self.mismatched.iter())));
        }
        Err(checkpoint(self.file.path(), parts.join("; ")))
    }
}

/// Element type for [`save_safetensors`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreDtype {
    /// 32-bit float.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
}

/// Writes named tensors `(name, shape, row-major values)` to a `.safetensors` file atomically
/// (temporary file + rename), converting to `dtype`.
pub fn save_safetensors(
    path: impl AsRef<Path>,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    dtype: StoreDtype,
) -> Result<()> {
    save_safetensors_with_metadata(path, tensors, dtype, HashMap::new())
}

/// [`save_safetensors`] with string metadata in the header (`__metadata__`).
pub fn save_safetensors_with_metadata(
    path: impl AsRef<Path>,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    dtype: StoreDtype,
    metadata: HashMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    write_atomic(path, &safetensors_bytes(path, tensors, dtype, metadata)?)
}

/// The bytes [`save_safetensors_with_metadata`] writes (for callers that also checksum them);
/// `path` only names the file in errors.
pub(crate) fn safetensors_bytes(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    dtype: StoreDtype,
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let mut buffers = Vec::with_capacity(tensors.len());
    for (name, shape, values) in tensors {
        if shape.iter().product::<usize>() != values.len() {
            return Err(Error::shape(
                format!("tensor {name} to save"),
                format!("{} values", values.len()),
                shape,
            ));
        }
        let bytes: Vec<u8> = match dtype {
            StoreDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            StoreDtype::F16 => values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            StoreDtype::BF16 => values
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
        };
        buffers.push(bytes);
    }
    let st_dtype = match dtype {
        StoreDtype::F32 => Dtype::F32,
        StoreDtype::F16 => Dtype::F16,
        StoreDtype::BF16 => Dtype::BF16,
    };
    let raw: Vec<RawTensor> = tensors
        .iter()
        .zip(&buffers)
        .map(|((name, shape, _), bytes)| (name.as_str(), st_dtype, shape.clone(), bytes.as_slice()))
        .collect();
    serialize_raw(path, &raw, metadata)
}

/// One tensor to serialise: `(name, element type, shape, little-endian bytes)`.
pub(crate) type RawTensor<'a> = (&'a str, Dtype, Vec<usize>, &'a [u8]);

/// The bytes of a `.safetensors` file holding `tensors` (any element type; the byte count must
/// match each shape) and string `metadata`; `path` only names the file in errors.
pub(crate) fn serialize_raw(
    path: &Path,
    tensors: &[RawTensor<'_>],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let mut views = Vec::with_capacity(tensors.len());
    for (name, dtype, shape, bytes) in tensors {
        let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
            .map_err(|e| checkpoint(path, format!("cannot serialise {name}: {e}")))?;
        views.push((name.to_string(), view));
    }
    let meta = (!metadata.is_empty()).then_some(metadata);
    safetensors::serialize(views, meta).map_err(|e| checkpoint(path, format!("cannot serialise: {e}")))
}

/// The data of each tensor in `expected` (`(name, element type, shape)`, in that order) from
/// the `.safetensors` bytes `bytes`: a tensor missing, of another type or shape, or one not
/// expected is an [`Error::Checkpoint`] naming `path`.
pub(crate) fn read_raw<'a>(
    path: &Path,
    bytes: &'a [u8],
    expected: &[(&str, Dtype, Vec<usize>)],
) -> Result<Vec<&'a [u8]>> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| checkpoint(path, format!("not a valid safetensors file: {e}")))?;
    if st.len() != expected.len() {
        return Err(checkpoint(
            path,
            format!("{} tensors, expected {}", st.len(), expected.len()),
        ));
    }
    expected
        .iter()
        .map(|(name, dtype, shape)| {
            let t = st
                .tensor(name)
                .map_err(|_| checkpoint(path, format!("missing tensor {name}")))?;
            if t.dtype() != *dtype || t.shape() != shape.as_slice() {
                return Err(checkpoint(
                    path,
                    format!(
                        "tensor {name}: {:?} {:?}, expected {dtype:?} {shape:?}",
                        t.dtype(),
                        t.shape()
                    ),
                ));
            }
            Ok(t.data())
        })
        .collect()
}

fn checkpoint(path: &Path, reason: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// At most 20 names, comma separated, with a count of the rest.
fn list<S: AsRef<str>>(items: impl Iterator<Item = S>) -> String {
    let all: Vec<String> = items.map(|s| s.as_ref().to_string()).collect();
    let mut out = all.iter().take(20).cloned().collect::<Vec<_>>().join(", ");
    if all.len() > 20 {
        out.push_str(&format!(" (and {} more)", all.len() - 20));
    }
    out
}
