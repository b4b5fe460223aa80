//! The on-disk pair cache: `meta.json` (format, the producing configuration, chunk list with
//! checksums) and `chunk-NNNNNN.bin` files of little-endian i32 codes (generated row, then truth
//! row, per pair), written atomically in prompt order.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{PairMode, PairOptions, Pairs};
use crate::data::TokenSentence;
use crate::error::{Error, Result};
use crate::io::{fnv1a64, write_atomic};

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

/// Loads a complete pair cache that [`generate_pairs`](super::generate_pairs) (or
/// [`generate_pairs_sharded`](super::generate_pairs_sharded)) wrote with the same `mode` and
/// `config` (the `PairOptions` fields), without the backbone, the tokenizer or the sentences:
/// e.g. pairs generated on a GPU machine, used for refiner training elsewhere. `Ok(None)` when `dir` has
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

/// An open cache (or none): what is done, and where the next chunk goes.
pub(super) struct Cache<'a> {
    dir: Option<&'a Path>,
    meta: Meta,
}

impl<'a> Cache<'a> {
    /// Opens `opts.cache` for `total` sentences of `n` target tokens and loads the pairs that are
    /// already there (a cache made with another configuration is an error).
    pub(super) fn open(opts: &PairOptions<'a>, total: usize, n: usize) -> Result<(Pairs, Self)> {
        let full_config =
            serde_json::json!({ "mode": opts.mode, "user": opts.config, "tokens": n, "total": total });
        let mut pairs = Pairs::default();
        let mut meta = Meta {
            format: FORMAT,
            config: full_config.clone(),
            total,
            tokens: n,
            chunks: Vec::new(),
        };
        if let Some(dir) = opts.cache {
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
        Ok((
            pairs,
            Self {
                dir: opts.cache,
                meta,
            },
        ))
    }

    /// Adds the backbone's `generated` codes for `part` (the next sentences in order) to `pairs`
    /// and, with a cache directory, writes them as the next chunk and updates `meta.json`.
    pub(super) fn append(
        &mut self,
        part: &[TokenSentence],
        generated: Vec<Vec<i64>>,
        pairs: &mut Pairs,
    ) -> Result<()> {
        let truth: Vec<Vec<i64>> = part.iter().map(|s| s.target.clone()).collect();
        if let Some(dir) = self.dir {
            let file = format!("chunk-{:06}.bin", self.meta.chunks.len());
            let bytes: Vec<u8> = generated
                .iter()
                .zip(&truth)
                .flat_map(|(g, t)| g.iter().chain(t.iter()).flat_map(|v| (*v as i32).to_le_bytes()))
                .collect();
            write_atomic(dir.join(&file), &bytes)?;
            self.meta.chunks.push(Chunk {
                file,
                count: part.len(),
                checksum: format!("{:016x}", fnv1a64(&bytes)),
            });
            let json = serde_json::to_vec_pretty(&self.meta).map_err(|e| Error::Config(e.to_string()))?;
            write_atomic(dir.join("meta.json"), &json)?;
        }
        pairs.generated.extend(generated);
        pairs.truth.extend(truth);
        Ok(())
    }
}
