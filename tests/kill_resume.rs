//! Crash consistency (issue [reliability] item 4): the three training commands of the
//! `ar-refine` command line (`train-tokenizer` → `train_vqgan`, `pretrain` → `train_lm`,
//! `train-refiner` → pair generation and `train_refiner`) are killed with SIGKILL at random points — during
//! start-up, between steps and while a checkpoint is being written — and run again with the same
//! command until they finish. Each checkpoint left behind must load, the resumed loss curve must
//! equal an uninterrupted run's to 1e-5, the final weights must agree, and nothing a
//! killed run left may remain or break the next run.
//!
//! Drives the `ar-refine` example binary that `cargo test` builds beside this test
//! (`target/<profile>/examples/`). `AR_REFINE_KILL_SEED` repeats a run's kill times (the seed is
//! printed).
#![cfg(unix)]

mod common;

use std::path::{Path, PathBuf};

use common::example;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ar_refine::rng::SplitMix64;

fn fixture(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
        .to_string_lossy()
        .into_owned()
}

/// One training command; `--out` is added per run.
struct Job {
    name: &'static str,
    args: Vec<String>,
    /// The weights (safetensors) that must agree between the uninterrupted and the killed run.
    result: &'static str,
    kills: usize,
}

/// `(step, losses)` of the checkpoint `OUT/checkpoints/latest` names, after checking that it
/// is complete: `state.json` parses and both weight files exist with the checksums it records
/// (the check `resume` does before loading).
fn latest(out: &Path) -> Option<(usize, Vec<f64>)> {
    let dir = out.join("checkpoints");
    let name = std::fs::read_to_string(dir.join("latest")).ok()?;
    let ckpt = dir.join(name.trim());
    let text = std::fs::read(ckpt.join("state.json")).unwrap_or_else(|e| {
        panic!(
            "{} names {}, which has no state.json: {e}",
            dir.display(),
            ckpt.display()
        )
    });
    let v: serde_json::Value = serde_json::from_slice(&text)
        .unwrap_or_else(|e| panic!("{}/state.json does not parse: {e}", ckpt.display()));
    for (file, sum) in v["checksums"].as_object().expect("checksums") {
        let bytes =
            std::fs::read(ckpt.join(file)).unwrap_or_else(|e| panic!("{}/{file}: {e}", ckpt.display()));
        assert_eq!(
            format!("{:016x}", common::fnv1a64(&bytes)),
            sum.as_str().unwrap(),
            "{}/{file} does not match its checksum",
            ckpt.display()
        );
    }
    let state = &v["state"];
    let losses = state["losses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    Some((state["step"].as_u64().unwrap() as usize, losses))
}

fn command(job: &Job, out: &Path, log: &Path) -> Command {
    let mut c = Command::new(example("ar-refine"));
    c.arg(job.name)
        .args(&job.args)
        .arg("--out")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    c
}

/// Files and directories under `dir` whose names say they are temporaries of a write.
fn temporaries(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_name().to_string_lossy().contains(".tmp-") {
                found.push(p.clone());
            }
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    found
}

/// The tensors of two safetensors files agree: same names and shapes, values within 1e-3 of
/// each other (f16 storage of weights whose f32 values agree to a few ulps: training on the CPU
/// backend is not bitwise repeatable from run to run, killed or not).
fn assert_close(a: &Path, b: &Path) {
    let (ba, bb) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    let (ta, tb) = (
        safetensors::SafeTensors::deserialize(&ba).unwrap(),
        safetensors::SafeTensors::deserialize(&bb).unwrap(),
    );
    let mut names = ta.names();
    names.sort();
    let mut other = tb.names();
    other.sort();
    assert_eq!(
        names,
        other,
        "{} and {} hold other tensors",
        a.display(),
        b.display()
    );
    let values = |t: &safetensors::tensor::TensorView| -> Vec<f32> {
        match t.dtype() {
            safetensors::Dtype::F16 => t
                .data()
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            safetensors::Dtype::F32 => t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            d => panic!("unexpected dtype {d:?}"),
        }
    };
    for name in names {
        let (x, y) = (ta.tensor(name).unwrap(), tb.tensor(name).unwrap());
        assert_eq!(x.shape(), y.shape(), "{name}");
        for (p, q) in values(&x).iter().zip(values(&y)) {
            assert!(
                (p - q).abs() <= 1e-3 * (1.0 + p.abs()),
                "{name}: {p} vs {q} in {}",
                b.display()
            );
        }
    }
}

/// Runs `job` to the end once, then again in a fresh directory killing it `job.kills` times;
/// returns the number of kills.
fn survives_kills(job: &Job, root: &Path, rng: &mut SplitMix64) -> usize {
    let log = root.join(format!("{}.log", job.name));
    let show_log = || std::fs::read_to_string(&log).unwrap_or_default();
    // the reference: uninterrupted, with the times its checkpoints appear
    let reference = root.join(format!("{}-reference", job.name));
    let latest_name = |out: &Path| std::fs::read_to_string(out.join("checkpoints/latest")).ok();
    let mut child = command(job, &reference, &log).spawn().unwrap();
    let t0 = Instant::now();
    let (mut seen, mut times) = (None, Vec::new());
    while child.try_wait().unwrap().is_none() {
        let now = latest_name(&reference);
        if now != seen {
            times.push(t0.elapsed());
            seen = now;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "{} failed uninterrupted:\n{}",
        job.name,
        show_log()
    );
    let (steps, want) = latest(&reference).expect("the uninterrupted run wrote a checkpoint");
    assert_eq!(want.len(), steps);
    // start-up (data, pairs, model) until the first checkpoint, and the time between two
    let startup = times.first().copied().unwrap_or(t0.elapsed());
    let step_time = match times.len() {
        0 | 1 => t0.elapsed(),
        n => (times[n - 1] - times[0]) / (n as u32 - 1),
    };

    let out = root.join(format!("{}-killed", job.name));
    let mut kills = 0;
    let mut runs = 0;
    loop {
        runs += 1;
        assert!(runs <= 4 * job.kills + 4, "{} never finished", job.name);
        let before = latest(&out).map(|(s, _)| s);
        let mut child = command(job, &out, &log).spawn().unwrap();
        if kills < job.kills {
            // the first kill at a random moment from start-up on; later ones a random time
            // after the run has written a new checkpoint (so every run makes progress)
            let delay = if kills == 0 {
                startup.mul_f64(rng.next_f64())
            } else {
                let t = Instant::now();
                while child.try_wait().unwrap().is_none()
                    && latest(&out).map(|(s, _)| s) == before
                    && t.elapsed() < startup * 4 + step_time * 4
                {
                    std::thread::sleep(Duration::from_millis(2));
                }
                step_time.mul_f64(1.5 * rng.next_f64())
            };
            let t = Instant::now();
            while child.try_wait().unwrap().is_none() && t.elapsed() < delay {
                std::thread::sleep(Duration::from_millis(1));
            }
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                kills += 1;
                // whatever the kill interrupted, the newest checkpoint is complete
                if let Some((step, losses)) = latest(&out) {
                    assert_eq!(losses.len(), step);
                    assert!(
                        before.is_none_or(|b| step >= b),
                        "{}: checkpoint went back",
                        job.name
                    );
                }
                continue;
            }
        }
        let status = child.wait().unwrap();
        assert!(
            status.success(),
            "{} failed after {kills} kills:\n{}",
            job.name,
            show_log()
        );
        break;
    }
    let (step, got) = latest(&out).unwrap();
    assert_eq!(step, steps, "{}: the resumed run ended at another step", job.name);
    for (i, (a, b)) in want.iter().zip(&got).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5,
            "{}: loss of step {} is {b} after {kills} kills, {a} uninterrupted",
            job.name,
            i + 1
        );
    }
    assert_close(&reference.join(job.result), &out.join(job.result));
    let left = temporaries(&out);
    assert!(left.is_empty(), "{}: killed runs left {left:?}", job.name);
    kills
}

#[test]
fn training_examples_resume_exactly_after_sigkill() {
    let seed = std::env::var("AR_REFINE_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("AR_REFINE_KILL_SEED={seed}");
    let mut rng = SplitMix64::new(seed);
    let root = std::env::temp_dir().join(format!("ar-refine-kill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let vq = fixture("vqgan/open_muse/pytorch_model.bin");
    let jobs = [
        Job {
            name: "train-tokenizer",
            // restarts every 3 steps: the dead-code tracker must survive a resume
            args: s(&[
                "--train-images",
                "32",
                "--val-images",
                "8",
                "--resolution",
                "16",
                "--hidden",
                "32",
                "--mult",
                "1,2",
                "--codebook",
                "16",
                "--dim",
                "4",
                "--steps",
                "16",
                "--batch",
                "4",
                "--restart-every",
                "3",
                "--conv",
                "gemm",
                "--checkpoint-every",
                "1",
                "--seed",
                "5",
            ]),
            result: "tokenizer/model.safetensors",
            kills: 8,
        },
        Job {
            name: "pretrain",
            args: s(&[
                "--tokenizer",
                &vq,
                "--train-images",
                "32",
                "--val-images",
                "4",
                "--k",
                "1",
                "--sentences",
                "4",
                "--hidden",
                "32",
                "--intermediate",
                "64",
                "--layers",
                "1",
                "--heads",
                "2",
                "--steps",
                "30",
                "--batch",
                "2",
                "--checkpoint-every",
                "1",
                "--seed",
                "5",
            ]),
            result: "backbone/model.safetensors",
            kills: 8,
        },
        Job {
            name: "train-refiner",
            args: s(&[
                "--tokenizer",
                &vq,
                "--backbone",
                &fixture("llama/pair"),
                "--train-images",
                "64",
                "--k",
                "1",
                "--train-count",
                "32",
                "--val-count",
                "8",
                "--steps",
                "30",
                "--batch",
                "8",
                "--d-model",
                "32",
                "--layers",
                "1",
                "--heads",
                "4",
                "--checkpoint-every",
                "1",
                "--refiner-seed",
                "5",
            ]),
            result: "refiner/model.safetensors",
            kills: 8,
        },
    ];
    let mut total = 0;
    for job in &jobs {
        let n = survives_kills(job, &root, &mut rng);
        eprintln!("{}: {n} kills survived", job.name);
        total += n;
    }
    assert!(total >= 20, "only {total} kills");
    let _ = std::fs::remove_dir_all(&root);
}
