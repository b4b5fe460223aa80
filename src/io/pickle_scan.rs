//! A bounds check of PyTorch checkpoints before `burn-store` reads them (issue [reliability]).
//!
//! `burn-store` 0.21's pickle reader allocates the lengths a pickle claims (a `BINUNICODE`
//! string of 4 GB in an 11-byte file allocates 4 GB) and its zip reader sizes buffers by the
//! entry sizes the archive claims. This module walks the opcodes of every pickle the reader
//! would parse, without building any object, and checks that each length field, each zip
//! entry and each frame fits in the bytes that are really there; a checkpoint that claims more
//! is a typed error naming the claim. The opcode table is the one documented in CPython's
//! `pickletools` (protocols 0–5).

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// How an opcode's argument is laid out in the stream.
enum Arg {
    /// No argument.
    None,
    /// A fixed number of bytes.
    Fixed(usize),
    /// A little-endian length of this many bytes, then that many bytes.
    Counted(usize),
    /// This many newline-terminated lines.
    Lines(usize),
    /// `FRAME`: an 8-byte length of the opcodes that follow (not skipped).
    Frame,
}

/// The argument layout of pickle opcode `op`, or `None` for a byte that is no opcode.
fn arg_of(op: u8) -> Option<Arg> {
    Some(match op {
        // MARK STOP POP POP_MARK DUP NONE EMPTY_DICT EMPTY_LIST EMPTY_TUPLE TUPLE APPEND
        // APPENDS DICT LIST SETITEM SETITEMS BUILD REDUCE BINPERSID OBJ
        b'(' | b'.' | b'0' | b'1' | b'2' | b'N' | b'}' | b']' | b')' | b't' | b'a' | b'e' | b'd' | b'l'
        | b's' | b'u' | b'b' | b'R' | b'Q' | b'o' => Arg::None,
        // NEWOBJ TUPLE1..3 NEWTRUE NEWFALSE EMPTY_SET ADDITEMS FROZENSET NEWOBJ_EX
        // STACK_GLOBAL MEMOIZE NEXT_BUFFER READONLY_BUFFER
        0x81 | 0x85 | 0x86 | 0x87 | 0x88 | 0x89 | 0x8f | 0x90 | 0x91 | 0x92 | 0x93 | 0x94 | 0x97 | 0x98 => {
            Arg::None
        }
        // BININT1 BINGET BINPUT PROTO EXT1
        b'K' | b'h' | b'q' | 0x80 | 0x82 => Arg::Fixed(1),
        // BININT2 EXT2
        b'M' | 0x83 => Arg::Fixed(2),
        // BININT LONG_BINGET LONG_BINPUT EXT4
        b'J' | b'j' | b'r' | 0x84 => Arg::Fixed(4),
        // BINFLOAT
        b'G' => Arg::Fixed(8),
        // SHORT_BINSTRING SHORT_BINBYTES SHORT_BINUNICODE LONG1
        b'U' | b'C' | 0x8c | 0x8a => Arg::Counted(1),
        // BINSTRING BINBYTES BINUNICODE LONG4
        b'T' | b'B' | b'X' | 0x8b => Arg::Counted(4),
        // BINUNICODE8 BINBYTES8 BYTEARRAY8
        0x8d | 0x8e | 0x96 => Arg::Counted(8),
        // INT LONG FLOAT STRING UNICODE GET PUT PERSID
        b'I' | b'L' | b'F' | b'S' | b'V' | b'g' | b'p' | b'P' => Arg::Lines(1),
        // GLOBAL INST
        b'c' | b'i' => Arg::Lines(2),
        0x95 => Arg::Frame,
        _ => return None,
    })
}

/// Walks one pickle of `bytes` from `start` to its `STOP`: `Ok(end)` (the offset after `STOP`),
/// or the reason, with its offset, that a length or opcode is impossible. `what` names the
/// stream in messages.
pub(crate) fn walk_pickle(bytes: &[u8], start: usize, what: &str) -> std::result::Result<usize, String> {
    let mut pos = start;
    let take = |pos: usize, n: u64, field: &str| -> std::result::Result<usize, String> {
        let left = (bytes.len() - pos) as u64;
        if n > left {
            Err(format!(
                "{what}: {field} at byte {pos} claims {n} bytes, but only {left} remain"
            ))
        } else {
            Ok(pos + n as usize)
        }
    };
    loop {
        let Some(&op) = bytes.get(pos) else {
            return Err(format!("{what}: the pickle ends at byte {pos} without STOP"));
        };
        let at = pos;
        pos += 1;
        match arg_of(op) {
            None => return Err(format!("{what}: byte {at} (0x{op:02x}) is not a pickle opcode")),
            Some(Arg::None) => {
                if op == b'.' {
                    return Ok(pos);
                }
            }
            Some(Arg::Fixed(n)) => pos = take(pos, n as u64, "an argument")?,
            Some(Arg::Counted(w)) => {
                let end = take(pos, w as u64, "a length field")?;
                let mut len = [0u8; 8];
                len[..w].copy_from_slice(&bytes[pos..end]);
                let n = u64::from_le_bytes(len);
                // BINSTRING and LONG4 lengths are signed: a negative one is as impossible.
                let n = if w == 4 && (op == b'T' || op == 0x8b) && n >= 1 << 31 {
                    u64::MAX
                } else {
                    n
                };
                pos = take(end, n, "a length")?;
            }
            Some(Arg::Lines(k)) => {
                for _ in 0..k {
                    match bytes[pos..].iter().position(|&b| b == b'\n') {
                        Some(i) => pos += i + 1,
                        None => return Err(format!("{what}: the line at byte {pos} never ends")),
                    }
                }
            }
            Some(Arg::Frame) => {
                let end = take(pos, 8, "a frame length")?;
                let n = u64::from_le_bytes(bytes[pos..end].try_into().expect("8 bytes"));
                take(end, n, "a frame")?;
                pos = end;
            }
        }
    }
}

/// Checks the checkpoint at `path` (of `len` bytes) before `burn-store` parses it: a zip's
/// entries must fit in the file and its `data.pkl` must walk cleanly; any other file must start
/// with pickles (up to the five of PyTorch's legacy format, each followed by another pickle or
/// by raw storage bytes) whose lengths fit in the file.
pub(crate) fn check_checkpoint(path: &Path) -> Result<()> {
    let bad = |reason: String| Error::Checkpoint {
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut head = [0u8; 4];
    let n = (&file).take(4).read(&mut head).map_err(|e| Error::io(path, e))?;
    if n == 4 && head == *b"PK\x03\x04" {
        let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file))
            .map_err(|e| bad(format!("not a readable zip archive: {e}")))?;
        let mut pickle = None;
        for i in 0..archive.len() {
            let entry = archive
                .by_index(i)
                .map_err(|e| bad(format!("zip entry {i} is unreadable: {e}")))?;
            // PyTorch stores entries uncompressed; a larger claim is a damaged file or a
            // compression bomb, and `burn-store` would allocate it.
            if entry.size() > len {
                return Err(bad(format!(
                    "zip entry {} claims {} bytes, more than the file's {len}",
                    entry.name(),
                    entry.size()
                )));
            }
            if pickle.is_none() && entry.name().ends_with("data.pkl") {
                pickle = Some(i);
            }
        }
        if let Some(i) = pickle {
            let mut entry = archive
                .by_index(i)
                .map_err(|e| bad(format!("zip entry {i} is unreadable: {e}")))?;
            let name = entry.name().to_string();
            let mut bytes = Vec::with_capacity(entry.size() as usize);
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| bad(format!("cannot read {name}: {e}")))?;
            walk_pickle(&bytes, 0, &name).map_err(bad)?;
        }
        return Ok(());
    }
    // Mapped, not read: a legacy checkpoint's pickles are followed by all its storages, and
    // only the pickles are walked (pages of the storages are never touched).
    let map;
    let bytes: &[u8] = if len == 0 {
        &[]
    } else {
        // SAFETY: the file is opened read-only and the map lives only for this check; as with
        // every memory-mapped loader, another process truncating the file meanwhile is not
        // defended against.
        map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        &map
    };
    if bytes.get(257..262) == Some(b"ustar".as_slice()) {
        return check_tar(bytes).map_err(bad);
    }
    let mut pos = 0;
    for _ in 0..5 {
        pos = walk_pickle(bytes, pos, "pickle stream").map_err(bad)?;
        // The legacy format's last pickle is followed by raw storage bytes, which need not
        // look like a pickle: stop at the first byte that cannot start one.
        if bytes.get(pos).is_none_or(|&b| b != 0x80) {
            break;
        }
    }
    Ok(())
}

/// PyTorch's oldest format, a tar archive (entries `sys_info`, `pickle`, `storages`,
/// `tensors`): every entry must fit in the file, and the pickles `burn-store` parses from it
/// (all of `sys_info` and `pickle`, the first of `storages`) must walk cleanly.
fn check_tar(bytes: &[u8]) -> std::result::Result<(), String> {
    let mut pos = 0;
    while pos + 512 <= bytes.len() {
        let header = &bytes[pos..pos + 512];
        if header.iter().all(|&b| b == 0) {
            break;
        }
        let name_end = header[..100].iter().position(|&b| b == 0).unwrap_or(100);
        let name = String::from_utf8_lossy(&header[..name_end]).into_owned();
        let size_field = String::from_utf8_lossy(&header[124..136]).into_owned();
        let size_text = size_field.trim_matches(|c: char| c == '\0' || c == ' ');
        let size = if size_text.is_empty() {
            0
        } else {
            u64::from_str_radix(size_text, 8).map_err(|_| {
                format!("tar entry {name:?} has a size field {size_field:?} that is no octal number")
            })?
        };
        let start = pos + 512;
        let left = (bytes.len() - start) as u64;
        if size > left {
            return Err(format!(
                "tar entry {name:?} claims {size} bytes, but only {left} remain"
            ));
        }
        let data = &bytes[start..start + size as usize];
        match name.trim_start_matches("./") {
            "sys_info" | "pickle" | "storages" => {
                walk_pickle(data, 0, &format!("tar entry {name}"))?;
            }
            _ => {}
        }
        pos = start + (size as usize).div_ceil(512) * 512;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::walk_pickle;

    #[test]
    fn walks_a_protocol_2_dict() {
        // pickle.dumps({"a": 1, "bc": [2.5]}, protocol=2)
        let p = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01K\x01X\x02\x00\x00\x00bcq\x02]q\x03G@\x04\x00\x00\x00\x00\x00\x00au.";
        assert_eq!(walk_pickle(p, 0, "t"), Ok(p.len()));
    }

    #[test]
    fn rejects_lengths_beyond_the_bytes() {
        // The fuzzer's 11-byte file: BINUNICODE claiming 4,294,967,115 bytes.
        let p = b"XK\xff\xff\xff\xff\xff\xff\xff+\xff";
        let e = walk_pickle(p, 0, "t").unwrap_err();
        assert!(e.contains("claims 4294967115 bytes"), "{e}");
        let e = walk_pickle(b"\x80\x02\x95\xff\xff\xff\xff\x00\x00\x00\x00.", 0, "t").unwrap_err();
        assert!(e.contains("a frame"), "{e}");
        let e = walk_pickle(b"T\xff\xff\xff\xff.", 0, "t").unwrap_err();
        assert!(e.contains("claims"), "{e}");
        assert!(walk_pickle(b"\x80\x02", 0, "t")
            .unwrap_err()
            .contains("without STOP"));
        assert!(walk_pickle(b"\xff.", 0, "t")
            .unwrap_err()
            .contains("not a pickle opcode"));
    }
}
