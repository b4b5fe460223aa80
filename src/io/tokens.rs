//! Token files: a table of code ids as text, one row per line, ids separated by whitespace —
//! what `ar-refine tokenize --tokens-out` writes (one image's grid, a row per line) and
//! `ar-refine generate --prompt-tokens` reads (one prompt per line).

use std::path::Path;

use super::write_atomic;
use crate::error::{Error, Result};

/// Rows of ids `[rows, cols]` read from a token file: blank lines are skipped; every other line
/// must hold the same number of non-negative integer ids. An empty file, a token that is not an
/// id, or a ragged table is an [`Error::Io`] (`InvalidData`) naming the file and the line.
///
/// ```
/// let path = std::env::temp_dir().join("ar_refine_doc_tokens.txt");
/// ar_refine::io::write_token_rows(&path, &[vec![1, 2, 3], vec![4, 5, 6]]).unwrap();
/// assert_eq!(ar_refine::io::read_token_rows(&path).unwrap(), vec![vec![1, 2, 3], vec![4, 5, 6]]);
/// ```
pub fn read_token_rows(path: impl AsRef<Path>) -> Result<Vec<Vec<i64>>> {
    let path = path.as_ref();
    let invalid =
        |reason: String| Error::io(path, std::io::Error::new(std::io::ErrorKind::InvalidData, reason));
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = std::str::from_utf8(&bytes).map_err(|e| invalid(format!("not UTF-8 text: {e}")))?;
    let mut rows: Vec<Vec<i64>> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row = line
            .split_whitespace()
            .map(|t| match t.parse::<i64>() {
                Ok(id) if id >= 0 => Ok(id),
                _ => {
                    let shown: String = t.chars().take(24).collect();
                    Err(invalid(format!("line {}: {shown:?} is not a token id", i + 1)))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        if let Some(first) = rows.first() {
            if first.len() != row.len() {
                return Err(invalid(format!(
                    "line {} has {} ids, the first row {} (every row must have as many)",
                    i + 1,
                    row.len(),
                    first.len()
                )));
            }
        }
        rows.push(row);
    }
    if rows.is_empty() {
        return Err(invalid("no token ids".into()));
    }
    Ok(rows)
}

/// Writes `rows` `[rows, cols]` as a token file ([`read_token_rows`] reads it back), atomically.
pub fn write_token_rows(path: impl AsRef<Path>, rows: &[Vec<i64>]) -> Result<()> {
    let text: String = rows
        .iter()
        .map(|r| r.iter().map(i64::to_string).collect::<Vec<_>>().join(" ") + "\n")
        .collect();
    write_atomic(path, text.as_bytes())
}
