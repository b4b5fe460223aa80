//! End to end at tiny scale on the CPU: sentences from photos → pairs from a frozen backbone
//! (cached, resumable) → refiner training (resumable) → evaluation → report files. Uses the
//! fixture VQGAN (64 codes, 4×4 tokens per 64×64 image) and the fixture LLaMA paired with it.

use std::path::{Path, PathBuf};

use ar_refine::backbone::Llama;
use ar_refine::data::{build_sentences, tokenize_sentences, ImageSet};
use ar_refine::eval::{compare, write_report, CompareOptions, EvalReport, Method};
use ar_refine::io::StoreDtype;
use ar_refine::refiner::{load_refiner, save_refiner, Decision, Preset};
use ar_refine::tasks::{Colorization, EdgeDetection, Inpainting, Task};
use ar_refine::tokenizer::Vqgan;
use ar_refine::train::{
    calibrate_gate, generate_pairs, load_pairs, train_refiner, PairMode, PairOptions, RefinerData,
    RefinerTrainConfig,
};
use ar_refine::{Error, Refiner, Sampling, Tokenizer};
use burn::backend::{Autodiff, NdArray};
use burn::module::AutodiffModule;

type B = NdArray;
type A = Autodiff<NdArray>;

mod common;
use common::{fixture_vqgan, fixtures};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ar_refine_te_{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn photos() -> ImageSet {
    match common::shared_data_dir(None) {
        Some(d) => ImageSet::from_raw_u8(d.join("val.u8"), 64).unwrap().split(60).0,
        None => ImageSet::synthetic(60, 64, 5),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn pairs_training_evaluation_and_report() {
    let device = Default::default();
    let vq = fixture_vqgan::<B>(&device);
    let lm = Llama::<B>::from_pretrained(fixtures().join("llama/pair"), &device).unwrap();
    let (train_imgs, val_imgs) = photos().split(40);
    let train_s = build_sentences(&train_imgs, &Colorization, 1, 32, 1).unwrap();
    let val_s = build_sentences(&val_imgs, &Colorization, 1, 12, 2).unwrap();
    assert!(train_s.iter().all(|s| s.query < 40) && val_s.iter().all(|s| s.query < 20));
    let train_t = tokenize_sentences(&vq, &train_s, 16, &device).unwrap();
    let val_t = tokenize_sentences(&vq, &val_s, 16, &device).unwrap();
    assert_eq!((train_t[0].prompt.len(), train_t[0].target.len()), (48, 16));

    // Pair generation with a cache: a second call reads it; a lost chunk is regenerated;
    // a corrupt chunk or another configuration is an error.
    let cache = tmp("pairs");
    let opts = PairOptions {
        mode: PairMode::FreeRunning(Sampling::greedy()),
        batch: 8,
        cache: Some(&cache),
        config: serde_json::json!({"task": "colorization", "k": 1}),
    };
    let mut calls = 0;
    let pairs = generate_pairs(&lm, &train_t, &opts, &device, &mut |_, _| calls += 1).unwrap();
    assert_eq!((pairs.len(), pairs.tokens(), calls), (32, 16, 5));
    // the prompts and the backbone's confidence are recorded: greedy picks its most likely code
    assert_eq!((pairs.prompt_images(), pairs.prompts[0].len()), (3, 48));
    assert!(pairs.has_scores());
    for i in 0..pairs.len() {
        for p in 0..16 {
            let (lp, h) = (pairs.log_prob[i][p], pairs.entropy[i][p]);
            assert!(lp <= 1e-6 && h >= -1e-5 && h <= (64f32).ln() + 1e-4, "{lp} {h}");
            assert_eq!(
                pairs.top[i][p * 5],
                pairs.generated[i][p],
                "greedy = the top code"
            );
        }
    }
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cache.join("meta.json")).unwrap()).unwrap();
    meta["chunks"].as_array_mut().unwrap().pop();
    std::fs::write(cache.join("meta.json"), serde_json::to_vec(&meta).unwrap()).unwrap();
    let mut generated_batches = 0;
    let again = generate_pairs(&lm, &train_t, &opts, &device, &mut |done, _| {
        if done > 24 {
            generated_batches += 1
        }
    })
    .unwrap();
    assert_eq!(again, pairs);
    assert_eq!(generated_batches, 1, "only the lost chunk is regenerated");
    // a finished cache loads without models or sentences; an unfinished one is `None`
    let loaded = load_pairs(&cache, &opts.mode, &opts.config).unwrap();
    assert_eq!(loaded.as_ref(), Some(&pairs));
    assert!(matches!(
        load_pairs(&cache, &PairMode::TeacherForced, &opts.config),
        Err(Error::Checkpoint { .. })
    ));
    assert!(load_pairs(&tmp("no-pairs-here"), &opts.mode, &opts.config)
        .unwrap()
        .is_none());
    meta["total"] = serde_json::json!(40);
    let partial = tmp("pairs-partial");
    copy_dir(&cache, &partial);
    std::fs::write(partial.join("meta.json"), serde_json::to_vec(&meta).unwrap()).unwrap();
    assert!(load_pairs(&partial, &opts.mode, &opts.config).unwrap().is_none());
    std::fs::remove_dir_all(&partial).ok();
    // a cache of ar-refine 0.1's format is refused with a message that says why
    let old = tmp("pairs-v1");
    copy_dir(&cache, &old);
    let mut v1 = meta.clone();
    v1["format"] = serde_json::json!(1);
    std::fs::write(old.join("meta.json"), serde_json::to_vec(&v1).unwrap()).unwrap();
    let err = load_pairs(&old, &opts.mode, &opts.config)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("format 1") && err.contains("log-probabilities"),
        "{err}"
    );
    let old_opts = PairOptions {
        cache: Some(&old),
        ..opts.clone()
    };
    assert!(matches!(
        generate_pairs(&lm, &train_t, &old_opts, &device, &mut |_, _| {}),
        Err(Error::Checkpoint { .. })
    ));
    std::fs::remove_dir_all(&old).ok();
    std::fs::write(cache.join("chunk-000000.safetensors"), b"bad").unwrap();
    assert!(matches!(
        generate_pairs(&lm, &train_t, &opts, &device, &mut |_, _| {}),
        Err(Error::Checkpoint { .. })
    ));
    let other = PairOptions {
        config: serde_json::json!({"task": "edges"}),
        ..opts.clone()
    };
    assert!(generate_pairs(&lm, &train_t, &other, &device, &mut |_, _| {}).is_err());
    std::fs::remove_dir_all(&cache).ok();

    // Teacher forcing gives pairs of the same shape.
    let tf = PairOptions {
        mode: PairMode::TeacherForced,
        batch: 8,
        cache: None,
        config: serde_json::Value::Null,
    };
    let tf_pairs = generate_pairs(&lm, &val_t, &tf, &device, &mut |_, _| {}).unwrap();
    assert_eq!((tf_pairs.len(), tf_pairs.tokens()), (12, 16));
    let val_opts = PairOptions {
        cache: None,
        ..opts.clone()
    };
    let val_pairs = generate_pairs(&lm, &val_t, &val_opts, &device, &mut |_, _| {}).unwrap();

    // Training the corrector (query prefix, confidence, code logits, critic), resumable with the
    // same loss curve; the most accurate validation step's weights are kept.
    let preset = Preset::Corrector;
    let rcfg = preset
        .config(8)
        .with_d_model(32)
        .with_n_heads(4)
        .with_n_layers(2)
        .with_max_grid(4);
    let codes = burn::tensor::Tensor::<A, 2>::from_inner(vq.codebook().codes().clone());
    let book = ar_refine::Codebook::<A>::new(codes, vq.metric()).unwrap();
    let mut cfg = RefinerTrainConfig::new(40, 8, 3e-3);
    cfg.loss = preset.loss();
    cfg.checkpoint_every = 20;
    cfg.validate_every = 10;
    let ckpt = tmp("ckpt");
    let mut reports = 0;
    let data = RefinerData {
        codebook: &book,
        grid: vq_grid(&vq),
        train: &pairs,
        val: Some(&val_pairs),
        devices: &[],
        hidden: None,
    };
    let (refiner, state) = train_refiner(
        rcfg.init_with_codebook(&book, &device).unwrap(),
        data,
        &cfg,
        Some(&ckpt),
        &mut |r| {
            reports += 1;
            assert!(r.loss.is_finite());
        },
    )
    .unwrap();
    assert_eq!(reports, 40);
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
    assert!(
        mean(&state.losses[35..]) < mean(&state.losses[..5]),
        "{:?}",
        state.losses
    );
    let val = state.extra["val"].as_array().unwrap();
    assert_eq!(val.len(), 4);
    let best_acc = val
        .iter()
        .map(|v| v[2].as_f64().unwrap())
        .fold(f64::MIN, f64::max);
    assert_eq!(state.extra["best"]["accuracy"].as_f64().unwrap(), best_acc);
    assert!(ckpt.join("best.safetensors").exists());
    let part = tmp("ckpt_part");
    copy_dir(&ckpt.join("step-00000020"), &part.join("step-00000020"));
    std::fs::write(part.join("latest"), "step-00000020").unwrap();
    let (_, resumed) = train_refiner(
        rcfg.init_with_codebook(&book, &device).unwrap(),
        data,
        &cfg,
        Some(&part),
        &mut |_| {},
    )
    .unwrap();
    for (a, b) in state.losses.iter().zip(&resumed.losses) {
        assert!(
            (a - b).abs() <= 1e-5 * a.abs().max(1.0),
            "{:?} vs {:?}",
            state.losses,
            resumed.losses
        );
    }

    // The gate calibrated on the validation pairs, saved with the refiner (f16), loaded back.
    let refiner = refiner.valid();
    let (gate, point) = calibrate_gate(&refiner, vq.codebook(), vq_grid(&vq), &val_pairs, 8, None).unwrap();
    let backbone_val = accuracy(&val_pairs.generated, &val_pairs.truth);
    assert!(
        point.accuracy >= backbone_val - 1e-12,
        "{point:?} vs backbone {backbone_val}"
    );
    let rdir = tmp("refiner");
    save_refiner(
        &refiner,
        gate,
        serde_json::json!({"test": true}),
        &rdir,
        StoreDtype::F16,
    )
    .unwrap();
    let loaded = load_refiner::<B>(&rdir, &device).unwrap();
    assert_eq!(loaded.decision, gate);
    assert_eq!(loaded.refiner.needs(), refiner.needs());

    // Evaluate the corrector (gate and argmax) on the same outputs, write the report.
    let targets: Vec<_> = val_s.iter().map(|s| s.target.clone()).collect();
    let methods = vec![
        Method {
            name: "corrector".into(),
            runs: vec![(&loaded.refiner as &dyn Refiner<B>, Some(gate))],
            gate_curve: true,
        },
        Method {
            name: "corrector argmax".into(),
            runs: vec![
                (&loaded.refiner as &dyn Refiner<B>, Some(Decision::Argmax)),
                (&refiner as &dyn Refiner<B>, Some(Decision::Argmax)),
            ],
            gate_curve: false,
        },
    ];
    let opts = CompareOptions {
        batch: 8,
        keep: 3,
        bootstrap: 200,
        ..Default::default()
    };
    let (eval, images) = compare(&vq, &val_pairs, Some(&targets), &methods, &opts, &device).unwrap();
    assert_eq!(
        (
            eval.samples,
            eval.backbone.curve.len(),
            images.backbone.dims()[0],
            images.methods.len()
        ),
        (12, 16, 3, 2)
    );
    assert!((eval.backbone.metrics.token_accuracy - backbone_val).abs() < 1e-12);
    let k = vq.codebook_size();
    for m in std::iter::once(&eval.backbone.metrics).chain(eval.methods.iter().map(|m| &m.metrics)) {
        assert!(
            (0.0..=1.0).contains(&m.token_accuracy) && m.psnr > 0.0 && m.ssim <= 1.0 && m.cos_area >= 0.0
        );
        assert!(m.cos_area_last_third <= m.cos_area + 1e-9);
        assert!(m.top5_accuracy.unwrap() >= m.token_accuracy - 1e-12);
    }
    for m in &eval.methods {
        // the change counts account for the accuracy difference exactly, and so does the delta
        let c = &m.changes;
        let gain = m.metrics.token_accuracy - eval.backbone.metrics.token_accuracy;
        assert!((gain - (c.fixed - c.broken)).abs() < 1e-9, "{c:?} vs gain {gain}");
        assert!((gain - m.delta.token_accuracy.mean).abs() < 1e-9);
        let d = &m.delta.token_accuracy;
        assert!(d.lo <= d.mean + 1e-12 && d.mean <= d.hi + 1e-12, "{d:?}");
        assert!(
            c.fixed + c.broken <= c.changed + 1e-12 && c.changed <= 1.0,
            "{c:?}"
        );
        assert!((1..=k).contains(&c.distinct), "{c:?}");
    }
    // f16 weights and f32 weights give the same argmax on these pairs (two seeds here: equal)
    assert_eq!(eval.methods[1].std.token_accuracy, 0.0);
    // the gate curve starts at the backbone (threshold 1: no edits) and the calibrated gate is on it
    let curve = &eval.methods[0].gate_curve;
    assert_eq!(curve.last().unwrap().edit_rate, 0.0);
    assert!((curve.last().unwrap().accuracy - eval.backbone.metrics.token_accuracy).abs() < 1e-12);
    let out = tmp("report");
    let queries: Vec<_> = val_s.iter().map(|s| s.images.last().unwrap().clone()).collect();
    let report = EvalReport {
        task: "colorization".into(),
        k: 1,
        command: "cargo test --test train_eval".into(),
        comparison: eval,
    };
    let files = write_report(&out, &[report], &images, &queries).unwrap();
    let gate_plot = files.gate_plot.clone().unwrap();
    for f in [&files.json, &files.markdown, &files.grid, &files.plot, &gate_plot] {
        assert!(std::fs::metadata(f).unwrap().len() > 100, "{}", f.display());
    }
    let svg = std::fs::read_to_string(&files.plot).unwrap();
    assert!(
        svg.contains("token position") && svg.contains("corrector argmax"),
        "axis label and legend"
    );
    let grid = image::open(&files.grid).unwrap();
    assert_eq!(grid.width(), 5 * 64 + 6 * 2);
    for d in [ckpt, part, rdir, out] {
        std::fs::remove_dir_all(d).ok();
    }
}

fn accuracy(a: &[Vec<i64>], b: &[Vec<i64>]) -> f64 {
    let right: usize = a
        .iter()
        .zip(b)
        .map(|(x, y)| x.iter().zip(y).filter(|(p, q)| p == q).count())
        .sum();
    right as f64 / a.iter().map(Vec::len).sum::<usize>() as f64
}

fn vq_grid(vq: &Vqgan<B>) -> ar_refine::TokenGrid {
    vq.grid()
}

#[test]
fn tasks_make_the_documented_pairs() {
    let set = photos();
    let img = image::RgbImage::from_raw(64, 64, set.pixels(0).unwrap().to_vec()).unwrap();
    let mut rng = ar_refine::rng::SplitMix64::new(1);
    let (x, y) = Colorization.pair(&img, &mut rng).unwrap();
    let p = img.get_pixel(10, 20);
    let l = (0.2989 * p[0] as f32 + 0.5870 * p[1] as f32 + 0.1140 * p[2] as f32).round() as u8;
    assert_eq!((x.get_pixel(10, 20)[0], x.get_pixel(10, 20)[1], &y), (l, l, &img));

    // Inpainting: both modes occur, masked pixels hold the fill value, the output is the image.
    let task = Inpainting::default();
    let (mut holes, mut patches) = (0, 0);
    for _ in 0..40 {
        let (x, y) = task.pair(&img, &mut rng).unwrap();
        assert_eq!(y, img);
        assert!(x
            .pixels()
            .zip(img.pixels())
            .all(|(a, b)| a == b || a.0 == [127; 3]));
        // One filled square of side 6..=32 is the hole mode; anything else is patch masking.
        let changed: Vec<(u32, u32)> = x
            .enumerate_pixels()
            .filter(|(px, py, p)| *p != img.get_pixel(*px, *py))
            .map(|(px, py, _)| (px, py))
            .collect();
        let bbox = changed.iter().fold((64, 64, 0, 0), |(a, b, c, d), &(px, py)| {
            (a.min(px), b.min(py), c.max(px), d.max(py))
        });
        let (side_x, side_y) = (
            bbox.2.saturating_sub(bbox.0) + 1,
            bbox.3.saturating_sub(bbox.1) + 1,
        );
        let square = side_x == side_y && (6..=33).contains(&side_x);
        if !changed.is_empty() && square && changed.len() as f64 >= 0.9 * (side_x * side_x) as f64 {
            holes += 1;
        } else {
            patches += 1;
        }
    }
    assert!(holes > 0 && patches > 0, "{holes} {patches}");
    assert!(Inpainting { patch: 0, ..task }.pair(&img, &mut rng).is_err());

    // Edges: a binary map with some but not all pixels set; bad thresholds are errors.
    let (x, y) = EdgeDetection::default().pair(&img, &mut rng).unwrap();
    assert_eq!(x, img);
    let on = y.pixels().filter(|p| p.0 == [255; 3]).count();
    assert!(y.pixels().all(|p| p.0 == [0; 3] || p.0 == [255; 3]) && on > 0 && on < 64 * 64);
    assert!(EdgeDetection { low: 10.0, high: 5.0 }
        .pair(&img, &mut rng)
        .is_err());
    assert!(ar_refine::tasks::task_by_name("nope").is_err());
}

#[test]
fn bad_setups_are_typed_errors() {
    let device = Default::default();
    let set = ImageSet::synthetic(3, 64, 1);
    // K too large for the images.
    assert!(matches!(
        build_sentences(&set, &Colorization, 3, 2, 0),
        Err(Error::Config(_))
    ));
    // K too large for the context: 2·20 + 1 images × 16 tokens > 256 positions.
    let vq = fixture_vqgan::<B>(&device);
    let lm = Llama::<B>::from_pretrained(fixtures().join("llama/pair"), &device).unwrap();
    let big = ImageSet::synthetic(24, 64, 2);
    let s = build_sentences(&big, &Colorization, 20, 1, 0).unwrap();
    let t = tokenize_sentences(&vq, &s, 16, &device).unwrap();
    let tf = PairOptions {
        mode: PairMode::TeacherForced,
        batch: 1,
        cache: None,
        config: serde_json::Value::Null,
    };
    assert!(matches!(
        generate_pairs(&lm, &t, &tf, &device, &mut |_, _| {}),
        Err(Error::Config(_))
    ));
    // A backbone whose image vocabulary is smaller than the tokenizer's codebook.
    let lvm_small = Llama::<B>::from_pretrained(fixtures().join("llama/gqa"), &device).unwrap();
    let mut t2 = tokenize_sentences(
        &vq,
        &build_sentences(&set, &Colorization, 1, 1, 0).unwrap(),
        4,
        &device,
    )
    .unwrap();
    t2[0].prompt[0] = 200;
    let free = PairOptions {
        mode: PairMode::FreeRunning(Sampling::greedy()),
        ..tf
    };
    assert!(matches!(
        generate_pairs(&lvm_small, &t2, &free, &device, &mut |_, _| {}),
        Err(Error::TokenOutOfRange { .. })
    ));
}
