//! Replays the fuzz targets (`fuzz/targets.rs`) on every committed input: the inputs that once
//! crashed or exhausted memory (`fuzz/regressions/<target>/`), the hand-made seeds of formats
//! with no fixture (`fuzz/seeds/<target>/`) and the real files of `tests/fixtures` that seed
//! each target. Run by `.ci/run`; the libFuzzer campaigns themselves
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
        inputs.extend(files(&root.join("fuzz/seeds").join(name)));
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
fn the_hand_made_seeds_are_valid_files() {
    // A seed that the loader rejects would leave the fuzzer outside the format.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(format!("ar-refine-seeds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let seed = std::fs::read(root.join("fuzz/seeds/pair_cache/valid-2-pairs")).unwrap();
    let cut = seed.iter().position(|&b| b == 0).unwrap();
    std::fs::write(dir.join("meta.json"), &seed[..cut]).unwrap();
    std::fs::write(dir.join("chunk-000000.safetensors"), &seed[cut + 1..]).unwrap();
    let mode = ar_refine::train::PairMode::TeacherForced;
    let pairs = ar_refine::train::load_pairs(&dir, &mode, &targets::pair_cache_config())
        .unwrap()
        .expect("a complete cache");
    assert_eq!(
        (pairs.len(), pairs.prompts[0].len(), pairs.truth[1].clone()),
        (2, 3, vec![1, 3])
    );
    let grid = ar_refine::io::read_token_rows(root.join("fuzz/seeds/token_file/grid-2x4.txt")).unwrap();
    assert_eq!(grid, vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8]]);
    let state = std::fs::read(root.join("fuzz/seeds/checkpoint_state/state.json")).unwrap();
    assert!(targets::checkpoint_state_loads(&state));
    let weights = std::fs::read(root.join("fuzz/seeds/checkpoint_weights/model.safetensors")).unwrap();
    assert!(targets::checkpoint_weights_loads(&weights));
    // and the checks bite: a truncated model file fails
    assert!(!targets::checkpoint_weights_loads(&weights[..weights.len() / 2]));
    let _ = std::fs::remove_dir_all(&dir);
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
