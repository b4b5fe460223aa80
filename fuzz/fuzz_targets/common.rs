//! Shared by the fuzz targets: the loaders take paths, so each input is written to a file of
//! its own in a per-process temporary directory first.

use std::path::PathBuf;

/// Writes `data` to `<tmp>/ar-refine-fuzz-<pid>/<name>` and returns the path.
pub fn file_with(name: &str, data: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ar-refine-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let path = dir.join(name);
    std::fs::write(&path, data).expect("temporary file");
    path
}
