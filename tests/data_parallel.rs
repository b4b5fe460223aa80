//! Multi-device runs on the CPU backend: several ndarray "devices" (replicas on the CPU, one
//! thread each, gradients summed through Burn's collective all-reduce) must reproduce the
//! one-device run with the same global batch (needs the `multi-device` feature); sharded pair
//! generation must write the cache a one-device run writes. Without the feature, several
//! devices are a configuration error.
#![cfg_attr(not(feature = "multi-device"), allow(dead_code, unused_imports))]

use std::path::{Path, PathBuf};

use ar_refine::backbone::Llama;
use ar_refine::data::{build_sentences, tokenize_sentences, ImageSet, TokenSentence};
use ar_refine::train::{
    generate_pairs, generate_pairs_sharded, train_refiner, PairMode, PairOptions, Pairs, RefinerData,
    RefinerTrainConfig, TrainState,
};
use ar_refine::{Codebook, Error, Metric, Sampling, TokenGrid, TransformerRefinerConfig};
use burn::backend::ndarray::NdArrayDevice;
use burn::backend::{Autodiff, NdArray};
use burn::module::Module;
use burn::tensor::{Distribution, Tensor};

mod common;
use common::{fixture_vqgan, fixtures};

type B = NdArray;
type A = Autodiff<NdArray>;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ar_refine_dp_{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Random pairs over a 32-code codebook: truth, and generated = truth with ~40 % codes replaced.
fn random_pairs(count: usize, n: usize, seed: u64) -> Pairs {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = |m: u64| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s % m) as i64
    };
    let mut p = Pairs::default();
    for _ in 0..count {
        let truth: Vec<i64> = (0..n).map(|_| next(32)).collect();
        let generated = truth
            .iter()
            .map(|&t| if next(10) < 4 { next(32) } else { t })
            .collect();
        p.truth.push(truth);
        p.generated.push(generated);
    }
    p
}

struct Setup {
    book: Codebook<A>,
    grid: TokenGrid,
    train: Pairs,
    val: Pairs,
    /// The initial refiner (materialised), cloned for every run.
    init: ar_refine::TransformerRefiner<A>,
}

fn setup() -> Setup {
    let device = Default::default();
    let codes = Tensor::<A, 2>::random([32, 8], Distribution::Normal(0.0, 1.0), &device);
    Setup {
        book: Codebook::new(codes, Metric::SquaredL2).unwrap(),
        grid: TokenGrid::new(4, 4),
        train: random_pairs(40, 16, 1),
        val: random_pairs(8, 16, 2),
        init: TransformerRefinerConfig::new(8)
            .with_d_model(16)
            .with_n_layers(1)
            .with_n_heads(2)
            .with_max_grid(4)
            .init::<A>(&device)
            .unwrap()
            // materialise the lazily initialised parameters: clones of a lazy parameter each
            // run their own initialiser
            .fork(&device),
    }
}

fn run(
    s: &Setup,
    devices: &[NdArrayDevice],
    cfg: &RefinerTrainConfig,
    ckpt: Option<&Path>,
) -> ar_refine::Result<TrainState> {
    let refiner = s.init.clone();
    let data = RefinerData {
        codebook: &s.book,
        grid: s.grid,
        train: &s.train,
        val: Some(&s.val),
        devices,
        hidden: None,
    };
    train_refiner(refiner, data, cfg, ckpt, &mut |_| {}).map(|(_, state)| state)
}

fn assert_close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= 1e-4 * x.abs().max(1.0), "{what}: {a:?} vs {b:?}");
    }
}

fn val_losses(s: &TrainState) -> Vec<f32> {
    s.extra["val"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v[1].as_f64().unwrap() as f32)
        .collect()
}

#[cfg(feature = "multi-device")]
#[test]
fn data_parallel_matches_one_device_and_resumes() {
    let s = setup();
    let mut cfg = RefinerTrainConfig::new(12, 8, 3e-3);
    cfg.validate_every = 4;
    cfg.checkpoint_every = 6;
    let one = run(&s, &[], &cfg, None).unwrap();
    let cpu = NdArrayDevice::Cpu;
    let ckpt = tmp("ckpt");
    let two = run(&s, &[cpu, cpu], &cfg, Some(&ckpt)).unwrap();
    assert_close(&one.losses, &two.losses, "2 devices, batch 8");
    assert_close(&val_losses(&one), &val_losses(&two), "validation, 2 devices");
    assert!(one.losses[11] < one.losses[0], "{:?}", one.losses);
    // uneven shards (3, 3, 2 of 8) are weighted by their share of the batch
    let three = run(&s, &[cpu, cpu, cpu], &cfg, None).unwrap();
    assert_close(&one.losses, &three.losses, "3 devices, batch 8");

    // the data-parallel checkpoint resumes on one device and continues the same curve
    let part = tmp("ckpt_part");
    std::fs::create_dir_all(part.join("step-00000006")).unwrap();
    for e in std::fs::read_dir(ckpt.join("step-00000006")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), part.join("step-00000006").join(e.file_name())).unwrap();
    }
    std::fs::write(part.join("latest"), "step-00000006").unwrap();
    let resumed = run(&s, &[], &cfg, Some(&part)).unwrap();
    assert_close(&two.losses, &resumed.losses, "resumed on one device");
    // and a one-device checkpoint resumes data-parallel
    let resumed2 = run(&s, &[cpu, cpu], &cfg, Some(&part)).unwrap();
    assert_close(
        &resumed.losses[6..],
        &resumed2.losses[6..],
        "resumed on two devices",
    );

    // more devices than pairs per batch cannot split the batch
    let mut small = cfg.clone();
    small.batch_size = 1;
    assert!(matches!(
        run(&s, &[cpu, cpu], &small, None),
        Err(Error::Config(_))
    ));
    // a corrupt checkpoint fails on every replica; the run returns the error instead of hanging
    let bad = tmp("ckpt_bad");
    std::fs::create_dir_all(bad.join("step-00000006")).unwrap();
    std::fs::write(bad.join("step-00000006/state.json"), b"{ not json").unwrap();
    std::fs::write(bad.join("latest"), "step-00000006").unwrap();
    assert!(run(&s, &[cpu, cpu], &cfg, Some(&bad)).is_err());
    // a failing checkpoint write on the first device mid-run stops every replica
    let blocked = tmp("ckpt_file");
    std::fs::write(&blocked, b"a file where the checkpoint directory should be").unwrap();
    assert!(run(&s, &[cpu, cpu], &cfg, Some(&blocked)).is_err());
    assert!(std::fs::read(&blocked).unwrap().starts_with(b"a file"));
    for d in [ckpt, part, bad, blocked] {
        let _ = std::fs::remove_dir_all(&d);
        let _ = std::fs::remove_file(&d);
    }
}

#[cfg(not(feature = "multi-device"))]
#[test]
fn several_devices_need_the_feature() {
    let s = setup();
    let cfg = RefinerTrainConfig::new(2, 4, 1e-3);
    let cpu = NdArrayDevice::Cpu;
    let err = run(&s, &[cpu, cpu], &cfg, None).unwrap_err();
    assert!(err.to_string().contains("multi-device"), "{err}");
    assert!(run(&s, &[cpu], &cfg, None).is_ok());
}

fn sentences() -> Vec<TokenSentence> {
    let device = Default::default();
    let vq = fixture_vqgan::<B>(&device);
    let imgs = ImageSet::synthetic(30, 64, 3);
    let s = build_sentences(&imgs, &ar_refine::tasks::Colorization, 1, 20, 4).unwrap();
    tokenize_sentences(&vq, &s, 16, &device).unwrap()
}

fn read_dir_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn sharded_pairs_write_the_one_device_cache() {
    let tokens = sentences();
    let model = fixtures().join("llama/pair");
    let cpu = NdArrayDevice::Cpu;
    let lm = Llama::<B>::from_pretrained(&model, &cpu).unwrap();
    let (one_dir, two_dir) = (tmp("pairs1"), tmp("pairs2"));
    let opts = |dir| PairOptions {
        mode: PairMode::FreeRunning(Sampling::temperature(1.0).with_seed(5)),
        batch: 3,
        cache: Some(dir),
        config: serde_json::json!({ "task": "colorization" }),
    };
    let one = generate_pairs(&lm, &tokens, &opts(&one_dir), &cpu, &mut |_, _| {}).unwrap();
    let mut calls = Vec::new();
    let load = |d: &NdArrayDevice| Llama::<B>::from_pretrained(&model, d);
    let two = generate_pairs_sharded::<B, _, _>(
        &[cpu, cpu, cpu],
        load,
        &tokens,
        &opts(&two_dir),
        &mut |done, _| calls.push(done),
    )
    .unwrap();
    assert_eq!(one, two);
    assert_eq!(calls.first(), Some(&0));
    assert_eq!(calls.last(), Some(&20));
    assert!(calls.windows(2).all(|w| w[0] < w[1]), "{calls:?}");
    assert_eq!(read_dir_bytes(&one_dir), read_dir_bytes(&two_dir));

    // an interrupted one-device cache is finished by the sharded run
    let part = tmp("pairs_part");
    let few: Vec<_> = tokens[..9].to_vec();
    // the cache records the total: make the first chunks with a run over all 20 that stops early
    std::fs::create_dir_all(&part).unwrap();
    for (name, bytes) in read_dir_bytes(&one_dir) {
        if name == "chunk-000000.safetensors" || name == "chunk-000001.safetensors" {
            std::fs::write(part.join(name), bytes).unwrap();
        }
    }
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(one_dir.join("meta.json")).unwrap()).unwrap();
    meta["chunks"].as_array_mut().unwrap().truncate(2);
    std::fs::write(part.join("meta.json"), serde_json::to_vec(&meta).unwrap()).unwrap();
    let done =
        generate_pairs_sharded::<B, _, _>(&[cpu, cpu], load, &tokens, &opts(&part), &mut |_, _| {}).unwrap();
    assert_eq!(done, one);
    assert_eq!(read_dir_bytes(&part), read_dir_bytes(&one_dir));
    assert_eq!(few.len(), 9);

    // a replica that cannot load is an error naming its device; nothing is lost
    let failing = |d: &NdArrayDevice| -> ar_refine::Result<Llama<B>> {
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        if CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            return Llama::<B>::from_pretrained(fixtures().join("does-not-exist"), d);
        }
        Llama::<B>::from_pretrained(&model, d)
    };
    let fresh = tmp("pairs_fail");
    let err = generate_pairs_sharded::<B, _, _>(&[cpu, cpu], failing, &tokens, &opts(&fresh), &mut |_, _| {});
    assert!(matches!(err, Err(Error::Parallel { .. })), "{err:?}");
    assert!(generate_pairs_sharded::<B, _, _>(&[], load, &tokens, &opts(&fresh), &mut |_, _| {}).is_err());
    for d in [one_dir, two_dir, part, fresh] {
        let _ = std::fs::remove_dir_all(d);
    }
}
