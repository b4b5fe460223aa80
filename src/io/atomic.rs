//! Atomic file writes: a uniquely named temporary sibling, flushed to disk, renamed over the
//! target, and the directory entry flushed too.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Temporary names already handed out by this process (with the process id: unique per write).
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so
/// that readers see either the old file or the complete new one, never a partial write. The
/// temporary name is unique per call (process id and a counter), so threads or processes
/// writing the same target never share one; the file is synced before the rename and, on Unix,
/// the directory after it, so a crash leaves the old or the new file on disk. After a panic of
/// the GPU runtime ([`crate::device_watch::check_device`]) it writes nothing and returns that error.
///
/// ```
/// let dir = std::env::temp_dir().join("ar_refine_doc_atomic");
/// std::fs::create_dir_all(&dir).unwrap();
/// ar_refine::io::write_atomic(dir.join("a.txt"), b"hello").unwrap();
/// assert_eq!(std::fs::read(dir.join("a.txt")).unwrap(), b"hello");
/// ```
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let path = path.as_ref();
    // Nothing computed after a GPU runtime failure reaches disk (see `check_device`).
    crate::device_watch::check_device()?;
    let name = path
        .file_name()
        .ok_or_else(|| Error::io(path, std::io::Error::other("path has no file name")))?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let write = || -> std::io::Result<()> {
        // create_new: never write through a file someone else left or is writing
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })?;
    sync_dir(dir).map_err(|e| Error::io(dir, e))
}

/// Flushes a directory's entries (the rename) to disk; a no-op where directories cannot be
/// opened as files.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}
