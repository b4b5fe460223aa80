//! The command line (`ar-refine`) and the quickstart answer bad arguments and bad files with a non-zero exit and an error that
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

/// The command line (`examples/ar-refine/`).
const CLI: &str = "ar-refine";

/// Its subcommands.
const SUBCOMMANDS: [&str; 9] = [
    "tokenize",
    "generate",
    "train-refiner",
    "evaluate",
    "refine",
    "train-lora",
    "train-tokenizer",
    "pretrain",
    "task-tokens",
];

/// Every subcommand's help is its documentation: the long description and every flag.
#[test]
fn help_is_the_documentation() {
    let help = |args: &[&str]| {
        let o = Command::new(example(CLI)).args(args).output().unwrap();
        assert!(o.status.success(), "{args:?}: exit {:?}", o.status.code());
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let top = help(&["--help"]);
    for sub in SUBCOMMANDS {
        assert!(top.contains(sub), "--help does not list {sub}:\n{top}");
    }
    let help = help(&["train-refiner", "--help"]);
    for needle in [
        "OUT/checkpoints",
        "--preset",
        "corrector",
        "--soft-neighbours",
        "[default: 1000]",
        "--devices",
    ] {
        assert!(
            help.contains(needle),
            "train-refiner --help lacks {needle:?}:\n{help}"
        );
    }
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

    for sub in SUBCOMMANDS {
        fails_cleanly(
            CLI,
            &[sub, "--no-such-flag", "1", "--out", o],
            "no-such-flag",
            &out,
        );
        fails_cleanly(CLI, &[sub, "stray"], "stray", &out);
    }
    fails_cleanly(CLI, &["frobnicate"], "frobnicate", &out);
    fails_cleanly(CLI, &[], "Usage", &out);
    fails_cleanly(
        "quickstart",
        &["--no-such-flag", "1", "--out", o],
        "no-such-flag",
        &out,
    );
    fails_cleanly("quickstart", &["stray"], "stray", &out);
    // values clap checks before anything runs
    fails_cleanly(CLI, &["train-refiner", "--preset", "nonsense"], "nonsense", &out);
    fails_cleanly(CLI, &["evaluate", "--train-images", "9..3"], "9..3", &out);
    fails_cleanly(
        CLI,
        &["train-tokenizer", "--steps", "many", "--out", o],
        "many",
        &out,
    );
    fails_cleanly(
        CLI,
        &["tokenize", "--checkpoint", g, "--image", img, "--out", o],
        "garbage.bin",
        &out,
    );
    fails_cleanly(
        CLI,
        &["tokenize", "--checkpoint", m, "--image", img, "--out", o],
        "missing.bin",
        &out,
    );
    fails_cleanly(
        CLI,
        &["tokenize", "--checkpoint", vq, "--image", g, "--out", o],
        "garbage.bin",
        &out,
    );
    fails_cleanly(
        CLI,
        &[
            "generate",
            "--model",
            g,
            "--prompt-tokens",
            g,
            "--max-new-tokens",
            "4",
            "--out",
            o,
        ],
        "garbage.bin",
        &out,
    );
    let tok = ["--backbone", pair, "--train-images", "8", "--out", o];
    for sub in ["train-refiner", "evaluate", "train-lora"] {
        let mut a = vec![sub, "--refiners", "x=y", "--tokenizer", g];
        if sub != "evaluate" {
            a.drain(1..3);
        }
        a.extend_from_slice(&tok);
        fails_cleanly(CLI, &a, "garbage.bin", &out);
        let i = a.iter().position(|x| *x == g).unwrap();
        a[i] = m;
        fails_cleanly(CLI, &a, "missing.bin", &out);
    }
    // a refiner folder that does not exist; two images where a prompt needs an odd count
    let both = format!("{img},{img}");
    let refine = [
        "refine",
        "--tokenizer",
        vq,
        "--backbone",
        pair,
        "--refiner",
        m,
        "--images",
    ];
    for (images, needle) in [(img, "missing.bin"), (both.as_str(), "odd count")] {
        let mut a = refine.to_vec();
        a.extend_from_slice(&[images, "--out", o]);
        fails_cleanly(CLI, &a, needle, &out);
    }
    fails_cleanly(
        CLI,
        &["pretrain", "--tokenizer", g, "--out", o],
        "garbage.bin",
        &out,
    );
    fails_cleanly(
        CLI,
        &["train-tokenizer", "--data", m, "--steps", "1", "--out", o],
        "missing.bin",
        &out,
    );
    fails_cleanly("quickstart", &["--models", m, "--out", o], "missing.bin", &out);
}
