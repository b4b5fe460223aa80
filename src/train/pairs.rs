//! Refiner training pairs (backbone output, ground truth) from a frozen backbone, cached on
//! disk in a versioned, checksummed format and resumable.

use std::path::{Path, PathBuf};

use burn::tensor::{backend::Backend, Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::backbone::Sampling;
use crate::checks::read_i64;
use crate::data::{prompt_tensor, TokenSentence};
use crate::error::{Error, Result};
use crate::io::{fnv1a64, write_atomic};
use crate::traits::ArBackbone;

/// How the backbone produces the query's output tokens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PairMode {
    /// Free-running generation with these sampling settings (the inference-time condition the
    /// refiner must fix; error accumulates along the sequence).
    FreeRunning(Sampling),
    /// One teacher-forced pass over prompt + ground truth, argmax at every target position
    /// (each token sees the true prefix: no accumulated error).
    TeacherForced,
}

/// Token pairs for the query outputs: `generated[i]` and `truth[i]` are code ids of length
/// `n` (the tokenizer's grid).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pairs {
    /// Backbone outputs.
    pub generated: Vec<Vec<i64>>,
    /// Ground truth.
    pub truth: Vec<Vec<i64>>,
}

impl Pairs {
    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.truth.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.truth.is_empty()
    }

    /// Tokens per output image.
    pub fn tokens(&self) -> usize {
        self.truth.first().map_or(0, Vec::len)
    }

    /// Rows `idx` as `(generated, truth)` tensors `[b, n]`.
    pub fn batch<B: Backend>(
        &self,
        idx: &[usize],
        device: &B::Device,
    ) -> Result<(Tensor<B, 2, Int>, Tensor<B, 2, Int>)> {
        let n = self.tokens();
        let pick = |rows: &Vec<Vec<i64>>| -> Result<Tensor<B, 2, Int>> {
            let mut flat = Vec::with_capacity(idx.len() * n);
            for &i in idx {
                let r = rows
                    .get(i)
                    .ok_or_else(|| Error::Config(format!("pair {i} out of range 0..{}", self.len())))?;
                flat.extend_from_slice(r);
            }
            Ok(Tensor::from_data(
                burn::tensor::TensorData::new(flat, [idx.len(), n]),
                device,
            ))
        };
        Ok((pick(&self.generated)?, pick(&self.truth)?))
    }
}

#[derive(Serialize, Deserialize)]
struct Chunk {
    file: String,
    count: usize,
    checksum: String,
}

#[derive(Serialize, Deserialize)]
struct Meta {
    format: u32,
    /// Everything that produced the pairs (mode, task, K, models, data, seed, ...).
    config: serde_json::Value,
    total: usize,
    tokens: usize,
    chunks: Vec<Chunk>,
}

const FORMAT: u32 = 1;

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Settings of [`generate_pairs`].
#[derive(Clone, Debug)]
pub struct PairOptions<'a> {
    /// Free-running or teacher-forced.
    pub mode: PairMode,
    /// Sentences per backbone call.
    pub batch: usize,
    /// Cache directory (resumable), or `None`.
    pub cache: Option<&'a Path>,
    /// Anything that identifies how the pairs are made (task, K, model paths, data, seed); a
    /// cache is reused only when it matches.
    pub config: serde_json::Value,
}

/// Runs the frozen `backbone` on every sentence (`opts.batch` at a time) and returns the pairs.
///
/// Code `c` is vocabulary id `backbone.image_token_ids().start + c`. With a cache directory,
/// finished batches are written there as checksummed chunks together with the configuration; a
/// later call with the same configuration loads what is there and generates only the rest, so an
/// interrupted run resumes. `progress(done, total)` is called after every batch.
pub fn generate_pairs<B: Backend>(
    backbone: &dyn ArBackbone<B>,
    sentences: &[TokenSentence],
    opts: &PairOptions<'_>,
    device: &B::Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Pairs> {
    let (mode, batch, cache) = (&opts.mode, opts.batch, opts.cache);
    let config = opts.config.clone();
    let total = sentences.len();
    let n = sentences.first().map_or(0, |s| s.target.len());
    if total == 0 || n == 0 || sentences.iter().any(|s| s.target.len() != n) {
        return Err(Error::Config(
            "pair generation needs sentences with equal, non-empty targets".into(),
        ));
    }
    let offset = backbone.image_token_ids().start as i64;
    let codes = backbone.image_token_ids().len() as i64;
    for (i, s) in sentences.iter().enumerate() {
        if let Some(c) = s
            .prompt
            .iter()
            .chain(&s.target)
            .find(|c| !(0..codes).contains(*c))
        {
            return Err(Error::TokenOutOfRange {
                what: format!(
                    "sentence {i} (the tokenizer's codebook is larger than the backbone's {codes} image ids?)"
                ),
                id: *c,
                valid: format!("0..{codes}"),
            });
        }
    }
    let full_config = serde_json::json!({ "mode": mode, "user": config, "tokens": n, "total": total });
    let mut pairs = Pairs::default();
    let mut meta = Meta {
        format: FORMAT,
        config: full_config.clone(),
        total,
        tokens: n,
        chunks: Vec::new(),
    };
    if let Some(dir) = cache {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        if let Some(old) = read_meta(dir)? {
            if old.config != full_config {
                return Err(bad(
                    dir,
                    "the cache was made with another configuration; use a new directory",
                ));
            }
            for c in &old.chunks {
                read_chunk(&dir.join(&c.file), c, n, &mut pairs)?;
            }
            meta.chunks = old.chunks;
        }
    }
    progress(pairs.len(), total);
    while pairs.len() < total {
        let start = pairs.len();
        let part = &sentences[start..(start + batch.max(1)).min(total)];
        let generated = run_backbone(backbone, part, mode, offset, device)?;
        let truth: Vec<Vec<i64>> = part.iter().map(|s| s.target.clone()).collect();
        if let Some(dir) = cache {
            let file = format!("chunk-{:06}.bin", meta.chunks.len());
            let bytes: Vec<u8> = generated
                .iter()
                .zip(&truth)
                .flat_map(|(g, t)| g.iter().chain(t.iter()).flat_map(|v| (*v as i32).to_le_bytes()))
                .collect();
            write_atomic(dir.join(&file), &bytes)?;
            meta.chunks.push(Chunk {
                file,
                count: part.len(),
                checksum: format!("{:016x}", fnv1a64(&bytes)),
            });
            let json = serde_json::to_vec_pretty(&meta).map_err(|e| Error::Config(e.to_string()))?;
            write_atomic(dir.join("meta.json"), &json)?;
        }
        pairs.generated.extend(generated);
        pairs.truth.extend(truth);
        progress(pairs.len(), total);
    }
    Ok(pairs)
}

/// `dir/meta.json` if there is one, checked for this build's format.
fn read_meta(dir: &Path) -> Result<Option<Meta>> {
    let meta_path = dir.join("meta.json");
    if !meta_path.exists() {
        return Ok(None);
    }
    let text = std::fs::read(&meta_path).map_err(|e| Error::io(&meta_path, e))?;
    let old: Meta =
        serde_json::from_slice(&text).map_err(|e| bad(&meta_path, format!("bad meta.json: {e}")))?;
    if old.format != FORMAT {
        return Err(bad(
            &meta_path,
            format!("pair cache format {} (this build reads {FORMAT})", old.format),
        ));
    }
    Ok(Some(old))
}

/// Loads a complete pair cache that [`generate_pairs`] wrote with the same `mode` and `config`
/// (the `PairOptions` fields), without the backbone, the tokenizer or the sentences: e.g. pairs
/// generated on a GPU machine, used for refiner training elsewhere. `Ok(None)` when `dir` has
/// no cache or an unfinished one; a cache made with another configuration, or a corrupt chunk,
/// is an error.
pub fn load_pairs(dir: &Path, mode: &PairMode, config: &serde_json::Value) -> Result<Option<Pairs>> {
    let Some(meta) = read_meta(dir)? else {
        return Ok(None);
    };
    let mode = serde_json::to_value(mode).map_err(|e| Error::Config(e.to_string()))?;
    if meta.config.get("mode") != Some(&mode) || meta.config.get("user") != Some(config) {
        return Err(bad(
            dir,
            "the cache was made with another configuration; use a new directory",
        ));
    }
    let mut pairs = Pairs::default();
    for c in &meta.chunks {
        read_chunk(&dir.join(&c.file), c, meta.tokens, &mut pairs)?;
    }
    Ok((pairs.len() == meta.total).then_some(pairs))
}

fn read_chunk(path: &PathBuf, c: &Chunk, n: usize, pairs: &mut Pairs) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if format!("{:016x}", fnv1a64(&bytes)) != c.checksum || bytes.len() != c.count * 2 * n * 4 {
        return Err(bad(
            path,
            "checksum or size mismatch: the chunk is corrupt or truncated",
        ));
    }
    let v: Vec<i64> = bytes
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
        .collect();
    for row in v.chunks(2 * n) {
        pairs.generated.push(row[..n].to_vec());
        pairs.truth.push(row[n..].to_vec());
    }
    Ok(())
}

/// The backbone's codes for the query outputs of `part`.
fn run_backbone<B: Backend>(
    backbone: &dyn ArBackbone<B>,
    part: &[TokenSentence],
    mode: &PairMode,
    offset: i64,
    device: &B::Device,
) -> Result<Vec<Vec<i64>>> {
    let n = part[0].target.len();
    let prompt = prompt_tensor::<B>(part, offset, device)?;
    let ids = match mode {
        PairMode::FreeRunning(s) => backbone.generate(prompt, n, s)?,
        PairMode::TeacherForced => {
            let p = prompt.dims()[1];
            let truth: Vec<TokenSentence> = part
                .iter()
                .map(|s| TokenSentence {
                    prompt: s.target[..n - 1].to_vec(),
                    target: vec![],
                })
                .collect();
            let seq = Tensor::cat(vec![prompt, prompt_tensor::<B>(&truth, offset, device)?], 1);
            if p + n - 1 > backbone.context_len() {
                return Err(Error::Config(format!(
                    "teacher forcing needs {} positions; the backbone's context is {}",
                    p + n - 1,
                    backbone.context_len()
                )));
            }
            let logits = backbone.forward(seq, false)?.logits.narrow(1, p - 1, n);
            let allowed = backbone.image_token_ids();
            logits
                .narrow(2, allowed.start, allowed.len())
                .argmax(2)
                .squeeze_dim::<2>(2)
                .add_scalar(allowed.start as i64)
        }
    };
    let flat = read_i64(ids)?;
    let out: Vec<Vec<i64>> = flat
        .chunks(n)
        .map(|r| r.iter().map(|v| v - offset).collect())
        .collect();
    Ok(out)
}
