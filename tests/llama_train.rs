//! LLaMA training: the loss falls, resume continues the same loss curve, LoRA trains only
//! the adapters and round-trips through PEFT-layout files.

mod common;

use std::path::{Path, PathBuf};

use ar_refine::backbone::{
    load_lora, save_lora, train_lm, Llama, LlamaConfig, LmTrainConfig, LoraConfig, ProjName,
};
use ar_refine::io::{SafetensorsFile, StoreDtype, TensorSource};
use ar_refine::{ArBackbone, Error};
use burn::backend::{Autodiff, NdArray};
use burn::module::AutodiffModule;
use burn::tensor::{Int, Tensor, TensorData};
use common::{to_vec, SplitMix64};

type B = Autodiff<NdArray>;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ar_refine_{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Arithmetic sequences mod 24 with random start and stride: learnable from context.
fn sequences(n: usize, len: usize, seed: u64) -> Vec<Vec<i64>> {
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let (a, s) = (rng.below(24) as i64, 1 + rng.below(3) as i64);
            (0..len as i64).map(|i| (a + i * s) % 24).collect()
        })
        .collect()
}

fn tiny() -> LlamaConfig {
    LlamaConfig::new(24, 32, 64, 2, 4)
        .with_kv_heads(2)
        .with_context(64)
}

fn mean(v: &[f32]) -> f32 {
    v.iter().sum::<f32>() / v.len() as f32
}

#[test]
fn next_token_training_lowers_the_loss() {
    let device = Default::default();
    let model = Llama::<B>::new(tiny(), &device).unwrap();
    let data = sequences(64, 24, 1);
    let cfg = LmTrainConfig::new(80, 16, 3e-3);
    let mut seen = 0;
    let (_, state) = train_lm(model, &data, &cfg, None, &mut |r| {
        assert!(r.loss.is_finite() && r.lr > 0.0);
        seen += 1;
    })
    .unwrap();
    assert_eq!(seen, 80);
    let (first, last) = (mean(&state.losses[..5]), mean(&state.losses[75..]));
    println!("loss {first:.3} -> {last:.3}");
    assert!(last < 0.5 * first, "loss {first} -> {last}");
}

#[test]
fn resume_continues_the_same_loss_curve() {
    let device = Default::default();
    let data = sequences(32, 16, 2);
    let mut cfg = LmTrainConfig::new(10, 4, 2e-3);
    cfg.checkpoint_every = 5;
    let full_dir = tmp("resume_full");
    let model = Llama::<B>::new(tiny(), &device).unwrap();
    let (_, full) = train_lm(model.clone(), &data, &cfg, Some(&full_dir), &mut |_| {}).unwrap();

    // "Crash" after step 5: a directory holding only the step-5 checkpoint.
    let part = tmp("resume_part");
    std::fs::create_dir_all(&part).unwrap();
    copy_dir(&full_dir.join("step-00000005"), &part.join("step-00000005"));
    std::fs::write(part.join("latest"), "step-00000005").unwrap();
    let fresh = Llama::<B>::new(tiny(), &device).unwrap();
    let (_, resumed) = train_lm(fresh, &data, &cfg, Some(&part), &mut |_| {}).unwrap();
    assert_eq!(resumed.step, 10);
    for (a, b) in full.losses.iter().zip(&resumed.losses) {
        assert!(
            (a - b).abs() <= 1e-5 * a.abs().max(1.0),
            "{:?} vs {:?}",
            full.losses,
            resumed.losses
        );
    }

    // A corrupt checkpoint is an error, and so is another config in the same directory.
    let bytes = std::fs::read(part.join("step-00000010/model.safetensors")).unwrap();
    std::fs::write(
        part.join("step-00000010/model.safetensors"),
        &bytes[..bytes.len() - 9],
    )
    .unwrap();
    let m = Llama::<B>::new(tiny(), &device).unwrap();
    let err = train_lm(m.clone(), &data, &cfg, Some(&part), &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
    let mut other = cfg.clone();
    other.seed = 9;
    assert!(train_lm(m, &data, &other, Some(&full_dir), &mut |_| {}).is_err());
    std::fs::remove_dir_all(full_dir).ok();
    std::fs::remove_dir_all(part).ok();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Tensors of two safetensors files that differ (by name).
fn changed(a: &Path, b: &Path) -> (usize, usize) {
    let (fa, fb) = (
        SafetensorsFile::open(a).unwrap(),
        SafetensorsFile::open(b).unwrap(),
    );
    let keys = fa.keys();
    let n = keys
        .iter()
        .filter(|k| fa.read_f32(k).unwrap() != fb.read_f32(k).unwrap())
        .count();
    (n, keys.len())
}

#[test]
fn lora_trains_only_the_adapters_and_round_trips() {
    let device = Default::default();
    let base = Llama::<B>::new(tiny(), &device).unwrap();
    let before = tmp("lora_base");
    base.save_pretrained(&before, StoreDtype::F32).unwrap();

    let lora = LoraConfig::new(4, 8.0).with_targets(&[ProjName::Q, ProjName::V, ProjName::Down]);
    let model = base.with_lora(&lora, &device).unwrap();
    // 2 layers × (q: 32·4 + 4·32, v: 32·4 + 4·16, down: 64·4 + 4·32)
    assert_eq!(model.lora_param_count(), 2 * (256 + 192 + 384));
    let init_dir = tmp("lora_init");
    save_lora(&model, &lora, &init_dir).unwrap();

    let data = sequences(64, 24, 3);
    let cfg = LmTrainConfig::new(30, 8, 1e-2);
    let (trained, state) = train_lm(model, &data, &cfg, None, &mut |_| {}).unwrap();
    assert!(
        mean(&state.losses[25..]) < mean(&state.losses[..5]),
        "{:?}",
        state.losses
    );

    // Base weights: none changed. Adapters: every matrix changed.
    let after = tmp("lora_after");
    trained.save_pretrained(&after, StoreDtype::F32).unwrap();
    let (base_changed, base_total) = changed(
        &before.join("model.safetensors"),
        &after.join("model.safetensors"),
    );
    assert_eq!(
        base_changed, 0,
        "{base_changed} of {base_total} base tensors changed"
    );
    let adapters = tmp("lora_trained");
    save_lora(&trained, &lora, &adapters).unwrap();
    let f = init_dir.join("adapter_model.safetensors");
    let (ad_changed, ad_total) = changed(&f, &adapters.join("adapter_model.safetensors"));
    assert_eq!((ad_changed, ad_total), (12, 12));
    assert!(SafetensorsFile::open(&f)
        .unwrap()
        .contains("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"));

    // Base + loaded adapters = the trained model; merging keeps the function.
    let x = Tensor::<NdArray, 2, Int>::from_data(TensorData::new(data[0].clone(), [1, 24]), &device);
    let want = to_vec(trained.valid().forward(x.clone(), false).unwrap().logits);
    let reloaded = Llama::<NdArray>::from_pretrained(&before, &device).unwrap();
    let (reloaded, cfg_back) = load_lora(reloaded, &adapters, &device).unwrap();
    assert_eq!(cfg_back, lora);
    let got = to_vec(reloaded.forward(x.clone(), false).unwrap().logits);
    let merged = to_vec(reloaded.merge_lora().forward(x, false).unwrap().logits);
    for ((w, g), m) in want.iter().zip(&got).zip(&merged) {
        assert!((w - g).abs() < 1e-5 && (w - m).abs() < 1e-4, "{w} {g} {m}");
    }
    // Adapters for another model shape are a checkpoint error naming the keys.
    let other = Llama::<NdArray>::new(LlamaConfig::new(24, 16, 64, 2, 4).with_context(64), &device).unwrap();
    let err = load_lora(other, &adapters, &device).unwrap_err().to_string();
    assert!(err.contains("shape mismatches"), "{err}");
    for d in [before, after, init_dir, adapters] {
        std::fs::remove_dir_all(d).ok();
    }
}

/// Sequences of different lengths train together (each batch one length), a time budget ends
/// the run early with the schedule moved, and unusable data is a typed error.
#[test]
fn mixed_lengths_time_budget_and_bad_data() {
    let device = Default::default();
    let mut data = sequences(32, 12, 5);
    data.extend(sequences(32, 20, 6));
    let mut cfg = LmTrainConfig::new(10_000, 4, 3e-3);
    cfg.time_budget = Some(ar_refine::train::TimeBudget {
        limit: std::time::Duration::from_millis(1),
        calibrate: 3,
        skip: 1,
    });
    let mut totals = Vec::new();
    let model = Llama::<B>::new(tiny(), &device).unwrap();
    let (_, state) = train_lm(model, &data, &cfg, None, &mut |r| totals.push(r.steps)).unwrap();
    // the budget is spent by the time it is planned: the run stops right after planning
    assert_eq!(state.step, 4, "{totals:?}");
    assert_eq!(state.extra["planned_steps"], 4);
    assert!(state.losses.iter().all(|l| l.is_finite()));

    let m = Llama::<B>::new(tiny(), &device).unwrap();
    let short = vec![vec![1i64, 2, 3], vec![4]];
    assert!(matches!(
        train_lm(
            m.clone(),
            &short,
            &LmTrainConfig::new(2, 2, 1e-3),
            None,
            &mut |_| {}
        ),
        Err(Error::Shape { .. })
    ));
    let out_of_range = vec![vec![1i64, 2, 99]];
    assert!(matches!(
        train_lm(
            m,
            &out_of_range,
            &LmTrainConfig::new(2, 2, 1e-3),
            None,
            &mut |_| {}
        ),
        Err(Error::TokenOutOfRange { .. })
    ));
}

/// Every tracked parameter's gradient, flattened, in visiting order.
#[cfg(feature = "wgpu")]
struct AllGrads<'a, A: burn::tensor::backend::AutodiffBackend> {
    grads: &'a A::Gradients,
    out: Vec<Vec<f32>>,
}

#[cfg(feature = "wgpu")]
impl<A: burn::tensor::backend::AutodiffBackend> burn::module::ModuleVisitor<A> for AllGrads<'_, A> {
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<A, D>>) {
        if let Some(g) = param.val().grad(self.grads) {
            self.out.push(g.into_data().iter::<f32>().collect());
        }
    }
}

/// The next-token loss of a transformers fixture and every parameter's gradient on `A`.
#[cfg(feature = "wgpu")]
fn loss_and_grads<A: ar_refine::ArAutodiffBackend>(
    name: &str,
    tokens: &[i64],
    device: &A::Device,
) -> (f32, Vec<Vec<f32>>) {
    use burn::module::Module;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/llama")
        .join(name);
    let model = Llama::<A>::from_pretrained(dir, device).unwrap();
    let ids = Tensor::<A, 2, Int>::from_data(TensorData::new(tokens.to_vec(), [2, tokens.len() / 2]), device);
    let loss = ar_refine::backbone::lm_loss(&model, ids, 1).unwrap();
    let grads = loss.backward();
    let mut all = AllGrads::<A> {
        grads: &grads,
        out: Vec::new(),
    };
    model.visit(&mut all);
    (to_vec(loss.inner())[0], all.out)
}

/// Under `Autodiff<Wgpu>` the layers take the crate's training kernels (causal attention,
/// RMSNorm, `silu(gate) · up`, RoPE, each with its own backward pass); under
/// `Autodiff<NdArray>` Burn's tensor operations. Same checkpoint, same tokens: same loss and
/// the same gradient for every parameter.
#[cfg(feature = "wgpu")]
#[test]
fn training_kernels_match_the_tensor_op_path_wgpu() {
    let mut rng = SplitMix64::new(7);
    let tokens: Vec<i64> = (0..2 * 48).map(|_| rng.below(64) as i64).collect();
    for name in ["gqa", "tied"] {
        let (lw, gw) = loss_and_grads::<Autodiff<burn::backend::Wgpu>>(name, &tokens, &Default::default());
        let (ln, gn) = loss_and_grads::<B>(name, &tokens, &Default::default());
        assert!((lw - ln).abs() <= 1e-5 * ln.abs(), "{name}: loss {lw} vs {ln}");
        assert_eq!(gw.len(), gn.len(), "{name}: parameters with gradients");
        for (i, (a, e)) in gw.iter().zip(&gn).enumerate() {
            let scale = e.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = a.iter().zip(e).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                scale > 0.0 && diff <= 1e-4 * scale,
                "{name}: parameter {i}: {diff} of {scale}"
            );
        }
    }
}
