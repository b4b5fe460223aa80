//! The on-disk pair cache: `meta.json` (format, the producing configuration, chunk list with
//! checksums) and `chunk-NNNNNN.safetensors` files, written atomically in prompt order. Format 3:
//! each chunk of `c` pairs holds the tensors `prompts` `[c, prompt_len]` (i32), `generated`
//! `[c, n]` (i32, the backbone's codes), `truth` `[c, n]` (i32), `log_prob` and `entropy`
//! `[c, n]` (f32, the backbone's per-token log-probability and entropy) and `top`
//! `[c, n, top_k]` (i32, its top codes), so any safetensors reader (e.g. Python's
//! `safetensors.numpy.load_file`) opens a chunk.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{PairMode, PairOptions, Pairs, Scored};
use crate::data::TokenSentence;
use crate::error::{Error, Result};
use crate::io::{fnv1a64, read_raw, serialize_raw, write_atomic, RawTensor};
use ::safetensors::Dtype;

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
    #[serde(default)]
    prompt_len: usize,
    #[serde(default)]
    top_k: usize,
    chunks: Vec<Chunk>,
}

impl Meta {
    /// Bytes of one pair's tensor data in a chunk.
    fn row_bytes(&self) -> usize {
        4 * (self.prompt_len + 2 * self.tokens + 2 * self.tokens + self.tokens * self.top_k)
    }

    /// A chunk of `count` pairs: each tensor's name, element type and shape, in reading order.
    fn chunk_tensors(&self, count: usize) -> [(&'static str, Dtype, Vec<usize>); 6] {
        let (p, n, k) = (self.prompt_len, self.tokens, self.top_k);
        [
            ("prompts", Dtype::I32, vec![count, p]),
            ("generated", Dtype::I32, vec![count, n]),
            ("truth", Dtype::I32, vec![count, n]),
            ("log_prob", Dtype::F32, vec![count, n]),
            ("entropy", Dtype::F32, vec![count, n]),
            ("top", Dtype::I32, vec![count, n, k]),
        ]
    }
}

const FORMAT: u32 = 3;

/// Room for a chunk's safetensors header (six tensor entries, a few hundred bytes).
const MAX_HEADER: u64 = 1 << 16;

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
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
    if old.format < FORMAT {
        return Err(bad(
            &meta_path,
            format!(
                "pair cache format {} (raw chunks, from an earlier ar-refine) — this build reads format \
                 {FORMAT} (safetensors chunks{}); generate the pairs again in a new directory",
                old.format,
                if old.format == 1 {
                    ", with the prompts and the backbone's per-token log-probabilities and entropies"
                } else {
                    ""
                }
            ),
        ));
    }
    if old.format != FORMAT {
        return Err(bad(
            &meta_path,
            format!("pair cache format {} (this build reads {FORMAT})", old.format),
        ));
    }
    // bounded before anything is allocated from it
    if old.tokens == 0 || old.tokens > 1 << 20 || old.prompt_len > 1 << 24 || old.top_k > 64 {
        return Err(bad(&meta_path, "implausible sizes in meta.json"));
    }
    Ok(Some(old))
}

/// Loads a complete pair cache that [`generate_pairs`](super::generate_pairs) (or
/// [`generate_pairs_sharded`](super::generate_pairs_sharded)) wrote with the same `mode` and
/// `config` (the `PairOptions` fields), without the backbone, the tokenizer or the sentences:
/// e.g. pairs generated on a GPU machine, used for refiner training elsewhere. `Ok(None)` when `dir` has
/// no cache or an unfinished one; a cache made with another configuration, a corrupt chunk, or
/// a cache of ar-refine 0.1's format is an error.
pub fn load_pairs(dir: &Path, mode: &PairMode, config: &serde_json::Value) -> Result<Option<Pairs>> {
    let Some(meta) = read_meta(dir)? else {
        return Ok(None);
    };
    let mode = serde_json::to_value(mode).map_err(|e| Error::json("the pair mode", e))?;
    if meta.config.get("mode") != Some(&mode) || meta.config.get("user") != Some(config) {
        return Err(bad(
            dir,
            "the cache was made with another configuration; use a new directory",
        ));
    }
    let mut pairs = Pairs::default();
    for c in &meta.chunks {
        read_chunk(&dir.join(&c.file), c, &meta, &mut pairs)?;
    }
    Ok((pairs.len() == meta.total).then_some(pairs))
}

fn read_chunk(path: &Path, c: &Chunk, meta: &Meta, pairs: &mut Pairs) -> Result<()> {
    let size = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
    let data = (c.count as u64).checked_mul(meta.row_bytes() as u64);
    if data.is_none_or(|d| size < d || size > d.saturating_add(MAX_HEADER)) {
        return Err(bad(path, "size mismatch: the chunk is corrupt or truncated"));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if format!("{:016x}", fnv1a64(&bytes)) != c.checksum {
        return Err(bad(path, "checksum mismatch: the chunk is corrupt"));
    }
    let parts = read_raw(path, &bytes, &meta.chunk_tensors(c.count))?;
    let ints = |b: &[u8]| -> Vec<i64> {
        b.chunks_exact(4)
            .map(|x| i32::from_le_bytes([x[0], x[1], x[2], x[3]]) as i64)
            .collect()
    };
    let floats = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|x| f32::from_le_bytes([x[0], x[1], x[2], x[3]]))
            .collect()
    };
    let (p, n, k) = (meta.prompt_len, meta.tokens, meta.top_k);
    pairs.prompts.extend(rows(parts[0], c.count, p).map(ints));
    pairs.generated.extend(rows(parts[1], c.count, n).map(ints));
    pairs.truth.extend(rows(parts[2], c.count, n).map(ints));
    pairs.log_prob.extend(rows(parts[3], c.count, n).map(floats));
    pairs.entropy.extend(rows(parts[4], c.count, n).map(floats));
    pairs.top.extend(rows(parts[5], c.count, n * k).map(ints));
    Ok(())
}

/// The `count` rows of `width` 4-byte values in `bytes` (whose length `read_raw` checked).
fn rows(bytes: &[u8], count: usize, width: usize) -> impl Iterator<Item = &[u8]> {
    (0..count).map(move |i| &bytes[4 * width * i..4 * width * (i + 1)])
}

/// An open cache (or none): what is done, and where the next chunk goes.
pub(super) struct Cache<'a> {
    dir: Option<&'a Path>,
    meta: Meta,
}

impl<'a> Cache<'a> {
    /// Opens `opts.cache` for `sentences` with `n` target tokens and loads the pairs that are
    /// already there (a cache made with another configuration is an error).
    pub(super) fn open(
        opts: &PairOptions<'a>,
        sentences: &[TokenSentence],
        n: usize,
    ) -> Result<(Pairs, Self)> {
        let total = sentences.len();
        let prompt_len = sentences.first().map_or(0, |s| s.prompt.len());
        if sentences.iter().any(|s| s.prompt.len() != prompt_len) {
            return Err(Error::Config(
                "pair generation needs prompts of equal length".into(),
            ));
        }
        let full_config =
            serde_json::json!({ "mode": opts.mode, "user": opts.config, "tokens": n, "total": total });
        let mut pairs = Pairs::default();
        let mut meta = Meta {
            format: FORMAT,
            config: full_config.clone(),
            total,
            tokens: n,
            prompt_len,
            top_k: 0,
            chunks: Vec::new(),
        };
        if let Some(dir) = opts.cache {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            if let Some(old) = read_meta(dir)? {
                if old.config != full_config || old.prompt_len != prompt_len {
                    return Err(bad(
                        dir,
                        "the cache was made with another configuration; use a new directory",
                    ));
                }
                for c in &old.chunks {
                    read_chunk(&dir.join(&c.file), c, &old, &mut pairs)?;
                }
                meta.chunks = old.chunks;
                meta.top_k = old.top_k;
            }
        }
        Ok((
            pairs,
            Self {
                dir: opts.cache,
                meta,
            },
        ))
    }

    /// Adds the backbone's output for `part` (the next sentences in order) to `pairs` and,
    /// with a cache directory, writes it as the next chunk and updates `meta.json`.
    pub(super) fn append(&mut self, part: &[TokenSentence], scored: Scored, pairs: &mut Pairs) -> Result<()> {
        let n = self.meta.tokens;
        let t = scored.top.first().map_or(0, |r| r.len() / n.max(1));
        if self.meta.chunks.is_empty() {
            self.meta.top_k = t;
        } else if t != self.meta.top_k {
            return Err(Error::Config(format!(
                "top codes per position changed from {} to {t} within one cache",
                self.meta.top_k
            )));
        }
        if let Some(dir) = self.dir {
            let file = format!("chunk-{:06}.safetensors", self.meta.chunks.len());
            let ints = |rows: &mut dyn Iterator<Item = &Vec<i64>>| -> Vec<u8> {
                rows.flatten().flat_map(|v| (*v as i32).to_le_bytes()).collect()
            };
            let floats = |rows: &[Vec<f32>]| -> Vec<u8> {
                rows.iter().flatten().flat_map(|v| v.to_le_bytes()).collect()
            };
            let data = [
                ints(&mut part.iter().map(|s| &s.prompt)),
                ints(&mut scored.generated.iter()),
                ints(&mut part.iter().map(|s| &s.target)),
                floats(&scored.log_prob),
                floats(&scored.entropy),
                ints(&mut scored.top.iter()),
            ];
            let layout = self.meta.chunk_tensors(part.len());
            let raw: Vec<RawTensor> = layout
                .iter()
                .zip(&data)
                .map(|((name, dtype, shape), bytes)| (*name, *dtype, shape.clone(), bytes.as_slice()))
                .collect();
            let path = dir.join(&file);
            let bytes = serialize_raw(&path, &raw, Default::default())?;
            write_atomic(&path, &bytes)?;
            self.meta.chunks.push(Chunk {
                file,
                count: part.len(),
                checksum: format!("{:016x}", fnv1a64(&bytes)),
            });
            let json = serde_json::to_vec_pretty(&self.meta)
                .map_err(|e| Error::json("the pair cache's meta.json", e))?;
            write_atomic(dir.join("meta.json"), &json)?;
        }
        pairs.push_batch(part, scored);
        Ok(())
    }
}
