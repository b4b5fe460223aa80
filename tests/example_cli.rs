//! Every example CLI answers bad arguments and bad files with a non-zero exit and an error that
//! names the problem — no panic (exit 101, "panicked at"), no partial output file (issue
//! [reliability] item 5). Drives the example binaries that `cargo test` builds beside this test
//! (`target/<profile>/examples/`); run it through `cargo test`, which builds them first.

mod common;

use std::path::{Path, PathBuf};

use common::example;
use std::process::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Runs `name args`, expecting a clean failure whose stderr mentions `needle`; `out` must not
/// exist afterwards.
fn fails_cleanly(name: &str, args: &[&str], needle: &str, out: &Path) {
    let o = Command::new(example(name)).args(args).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    let code = o.status.code();
    assert!(
        code.is_some_and(|c| c != 0 && c != 101) && !err.contains("panicked"),
        "{name} {args:?}: exit {code:?}, stderr:\n{err}"
    );
    assert!(
        err.contains(needle),
        "{name} {args:?}: stderr does not name {needle:?}:\n{err}"
    );
    assert!(!out.exists(), "{name} {args:?} left {}", out.display());
}

#[test]
fn examples_refuse_bad_arguments_and_bad_files() {
    let tmp = std::env::temp_dir().join(format!("ar-refine-cli-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let out = tmp.join("out");
    let o = out.to_str().unwrap();
    // A text file where a checkpoint is expected, and a path that does not exist.
    let garbage = tmp.join("garbage.bin");
    std::fs::write(&garbage, b"this is not a checkpoint\n").unwrap();
    let g = garbage.to_str().unwrap();
    let missing = tmp.join("missing.bin");
    let m = missing.to_str().unwrap();
    let f = fixtures();
    let vq = f.join("vqgan/open_muse/pytorch_model.bin");
    let vq = vq.to_str().unwrap();
    let img = f.join("images/scene-0.png");
    let img = img.to_str().unwrap();
    let pair = f.join("llama/pair");
    let pair = pair.to_str().unwrap();

    for name in [
        "tokenize",
        "generate",
        "train_refiner",
        "evaluate",
        "train_lora",
        "train_tokenizer",
        "pretrain_backbone",
        "quickstart",
    ] {
        fails_cleanly(name, &["--no-such-flag", "1", "--out", o], "no-such-flag", &out);
        fails_cleanly(name, &["stray"], "stray", &out);
    }
    fails_cleanly(
        "tokenize",
        &["--checkpoint", g, "--image", img, "--out", o],
        "garbage.bin",
        &out,
    );
    fails_cleanly(
        "tokenize",
        &["--checkpoint", m, "--image", img, "--out", o],
        "missing.bin",
        &out,
    );
    fails_cleanly(
        "tokenize",
        &["--checkpoint", vq, "--image", g, "--out", o],
        "garbage.bin",
        &out,
    );
    fails_cleanly(
        "generate",
        &["--model", g, "--max-new-tokens", "4", "--out", o],
        "garbage.bin",
        &out,
    );
    let tok = ["--backbone", pair, "--train-images", "8", "--out", o];
    for name in ["train_refiner", "evaluate", "train_lora"] {
        let mut a = vec!["--tokenizer", g];
        a.extend_from_slice(&tok);
        fails_cleanly(name, &a, "garbage.bin", &out);
        let mut a = vec!["--tokenizer", m];
        a.extend_from_slice(&tok);
        fails_cleanly(name, &a, "missing.bin", &out);
    }
    fails_cleanly(
        "pretrain_backbone",
        &["--tokenizer", g, "--out", o],
        "garbage.bin",
        &out,
    );
    fails_cleanly(
        "train_tokenizer",
        &["--data", m, "--steps", "1", "--out", o],
        "missing.bin",
        &out,
    );
    fails_cleanly("quickstart", &["--models", m, "--out", o], "missing.bin", &out);
}
