//! Replays the fuzz targets (`fuzz/targets.rs`) on every committed input: the inputs that once
//! crashed or exhausted memory (`fuzz/regressions/<target>/`) and the real files of
//! `tests/fixtures` that seed each target. Run by `.ci/run`; the libFuzzer campaigns themselves
//! are in RELIABILITY.md.

#[path = "../fuzz/targets.rs"]
mod targets;

use std::path::{Path, PathBuf};

/// Every file under `dir`, recursively, in a stable order.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The fixtures that seed `target`, by file name.
fn seeds(target: &str, fixtures: &[PathBuf]) -> Vec<PathBuf> {
    let keep = |p: &&PathBuf| {
        let name = p.to_string_lossy();
        match target {
            "safetensors_open" => name.ends_with(".safetensors"),
            "pytorch_open" => name.ends_with(".bin") || name.ends_with(".ckpt"),
            "llama_config" => name.contains("/llama/") && name.ends_with("/config.json"),
            "vqgan_config" => name.contains("/vqgan/") && name.ends_with("/config.json"),
            "shard_index" => name.ends_with(".index.json"),
            "image_load" => name.ends_with(".png"),
            _ => false,
        }
    };
    fixtures.iter().filter(keep).cloned().collect()
}

#[test]
fn fuzz_targets_survive_their_regressions_and_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixtures = files(&root.join("tests/fixtures"));
    let mut replayed = 0;
    for (name, body) in targets::TARGETS {
        let mut inputs = files(&root.join("fuzz/regressions").join(name));
        inputs.extend(seeds(name, &fixtures));
        for input in inputs {
            let bytes = std::fs::read(&input).unwrap();
            body(&bytes);
            replayed += 1;
        }
    }
    assert!(replayed >= 20, "only {replayed} inputs replayed");
}

#[test]
fn a_pickle_claiming_4_gb_is_a_typed_error() {
    // Found by `pytorch_open`: an 11-byte file whose BINUNICODE opcode claims 4,294,967,115
    // bytes made burn-store allocate them.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("fuzz/regressions/pytorch_open/oom-0df1bc33-binunicode-4gb.bin");
    let dir = std::env::temp_dir().join(format!("ar-refine-pickle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.bin");
    std::fs::copy(&src, &path).unwrap();
    let err = match ar_refine::io::open_checkpoint(&path) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("an 11-byte pickle opened as a checkpoint"),
    };
    assert!(
        err.contains("claims 4294967115 bytes") && err.contains("model.bin"),
        "{err}"
    );
}
