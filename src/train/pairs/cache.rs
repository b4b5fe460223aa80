//! The on-disk pair cache: `meta.json` (format, the producing configuration, chunk list with
//! checksums) and `chunk-NNNNNN.bin` files, written atomically in prompt order. Format 2 stores
//! per pair, little-endian: the prompt's codes (`prompt_len` i32), the backbone's codes (`n`
//! i32), the true codes (`n` i32), the backbone's log-probabilities and entropies (`n` f32 each)
//! and its top codes (`n · top_k` i32).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{PairMode, PairOptions, Pairs, Scored};
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
    #[serde(default)]
    prompt_len: usize,
    #[serde(default)]
    top_k: usize,
    chunks: Vec<Chunk>,
}

impl Meta {
    /// Bytes of one pair in a chunk.
    fn row_bytes(&self) -> usize {
        4 * (self.prompt_len + 2 * self.tokens + 2 * self.tokens + self.tokens * self.top_k)
    }
}

const FORMAT: u32 = 2;

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
    if old.format == 1 {
        return Err(bad(
            &meta_path,
            "pair cache format 1 (ar-refine 0.1) lacks the prompts and the backbone's per-token \
             log-probabilities and entropies that refiners read now; generate the pairs again in a new directory",
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
    if size != (c.count * meta.row_bytes()) as u64 {
        return Err(bad(path, "size mismatch: the chunk is corrupt or truncated"));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if format!("{:016x}", fnv1a64(&bytes)) != c.checksum {
        return Err(bad(path, "checksum mismatch: the chunk is corrupt"));
    }
    let (p, n) = (meta.prompt_len, meta.tokens);
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
    for row in bytes.chunks_exact(meta.row_bytes()) {
        let (prompt, rest) = row.split_at(4 * p);
        let (gen, rest) = rest.split_at(4 * n);
        let (truth, rest) = rest.split_at(4 * n);
        let (lp, rest) = rest.split_at(4 * n);
        let (ent, top) = rest.split_at(4 * n);
        pairs.prompts.push(ints(prompt));
        pairs.generated.push(ints(gen));
        pairs.truth.push(ints(truth));
        pairs.log_prob.push(floats(lp));
        pairs.entropy.push(floats(ent));
        pairs.top.push(ints(top));
    }
    Ok(())
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
            let file = format!("chunk-{:06}.bin", self.meta.chunks.len());
            let mut bytes = Vec::with_capacity(part.len() * self.meta.row_bytes());
            for (i, s) in part.iter().enumerate() {
                let ints = s.prompt.iter().chain(&scored.generated[i]).chain(&s.target);
                bytes.extend(ints.flat_map(|v| (*v as i32).to_le_bytes()));
                let floats = scored.log_prob[i].iter().chain(&scored.entropy[i]);
                bytes.extend(floats.flat_map(|v| v.to_le_bytes()));
                bytes.extend(scored.top[i].iter().flat_map(|v| (*v as i32).to_le_bytes()));
            }
            write_atomic(dir.join(&file), &bytes)?;
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
