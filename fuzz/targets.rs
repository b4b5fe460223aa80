//! The bodies of the fuzz targets, shared by `fuzz/fuzz_targets/*.rs` (libFuzzer, under
//! `cargo fuzz`) and `tests/fuzz_replay.rs` (the committed corpus, replayed by `cargo test`).
//! Each takes arbitrary bytes as one outside file, runs the crate's loader on it and ignores
//! the result: the property is that the loader returns (`Ok` or a typed `Err`) without a
//! panic, a hang or an allocation the file does not back.

use std::path::{Path, PathBuf};

use std::sync::OnceLock;

use ar_refine::backbone::LlamaConfig;
use ar_refine::io::{load_image, open_checkpoint, read_token_rows, SafetensorsFile, TensorSource};
use ar_refine::tokenizer::VqganConfig;
use ar_refine::train::{load_checkpoint, load_pairs, save_checkpoint, FusedAdamW, PairMode, TrainState};
use burn::backend::{Autodiff, NdArray};
use burn::module::Module;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::Tensor;

/// A target's body: one input, any bytes.
pub type Body = fn(&[u8]);

/// Every target by name, in the order of `fuzz/Cargo.toml`.
pub const TARGETS: &[(&str, Body)] = &[
    ("safetensors_open", safetensors_open),
    ("pytorch_open", pytorch_open),
    ("llama_config", llama_config),
    ("vqgan_config", vqgan_config),
    ("shard_index", shard_index),
    ("image_load", image_load),
    ("refiner_load", refiner_load),
    ("token_file", token_file),
    ("pair_cache", pair_cache),
    ("checkpoint_state", checkpoint_state),
    ("checkpoint_weights", checkpoint_weights),
];

/// A fresh per-process, per-target directory for the input's files.
fn dir_for(target: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ar-refine-fuzz-{}-{target}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    dir
}

/// Writes `data` to `dir/name` and returns the path.
fn put(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, data).expect("temporary file");
    path
}

/// Every tensor of a checkpoint read as f32 (errors ignored).
fn read_all(src: &dyn TensorSource) {
    for key in src.keys() {
        let _ = src.read_f32(&key);
    }
}

/// The bytes as a `.safetensors` file: opened, every tensor read.
pub fn safetensors_open(data: &[u8]) {
    let path = put(&dir_for("safetensors_open"), "input.safetensors", data);
    if let Ok(file) = SafetensorsFile::open(&path) {
        read_all(&file);
    }
}

/// The bytes as a PyTorch checkpoint (zip, legacy or tar pickle): opened, every tensor read.
pub fn pytorch_open(data: &[u8]) {
    let path = put(&dir_for("pytorch_open"), "input.bin", data);
    if let Ok(src) = open_checkpoint(&path) {
        read_all(src.as_ref());
    }
}

/// The bytes as a LLaMA `config.json`.
pub fn llama_config(data: &[u8]) {
    let path = put(&dir_for("llama_config"), "config.json", data);
    let _ = LlamaConfig::from_file(&path);
}

/// The bytes as a VQGAN `config.json` (open-MUSE, diffusers or taming flavour).
pub fn vqgan_config(data: &[u8]) {
    let path = put(&dir_for("vqgan_config"), "config.json", data);
    let _ = VqganConfig::from_file(&path);
}

/// The bytes as a sharded checkpoint's `model.safetensors.index.json`, beside one small real
/// shard it may name: opened, every tensor read.
pub fn shard_index(data: &[u8]) {
    let dir = dir_for("shard_index");
    put(&dir, "model-00001-of-00001.safetensors", &tiny_safetensors());
    let path = put(&dir, "model.safetensors.index.json", data);
    if let Ok(src) = open_checkpoint(&path) {
        read_all(src.as_ref());
    }
}

/// A valid `.safetensors` file holding one f32 tensor `a [2]` = [1, 2].
fn tiny_safetensors() -> Vec<u8> {
    let header = br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(&1f32.to_le_bytes());
    out.extend_from_slice(&2f32.to_le_bytes());
    out
}

/// The bytes as an image file, decoded and resized to 16×16.
pub fn image_load(data: &[u8]) {
    let path = put(&dir_for("image_load"), "input.img", data);
    let _ = load_image::<NdArray>(&path, (16, 16), &Default::default());
}

/// The bytes as a saved refiner's `config.json`, beside no weights: loaded.
pub fn refiner_load(data: &[u8]) {
    let dir = dir_for("refiner_load");
    put(&dir, "config.json", data);
    let _ = ar_refine::refiner::load_refiner::<NdArray>(&dir, &Default::default());
}

/// The bytes as a token file (`read_token_rows`: `--prompt-tokens`, `--tokens-out`).
pub fn token_file(data: &[u8]) {
    let path = put(&dir_for("token_file"), "tokens.txt", data);
    let _ = read_token_rows(&path);
}

/// The configuration `pair_cache` loads with (its seed's `meta.json` has it).
pub fn pair_cache_config() -> serde_json::Value {
    serde_json::json!({ "fuzz": 1 })
}

/// The bytes as a pair cache: `meta.json`, a zero byte, then `chunk-000000.safetensors`; loaded by
/// `load_pairs` (teacher-forced mode, [`pair_cache_config`]).
pub fn pair_cache(data: &[u8]) {
    let dir = dir_for("pair_cache");
    let (meta, chunk) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    put(&dir, "meta.json", meta);
    put(&dir, "chunk-000000.safetensors", chunk);
    let _ = load_pairs(&dir, &PairMode::TeacherForced, &pair_cache_config());
}

type Ad = Autodiff<NdArray>;

/// A `Linear 4 → 3` with constant weights (the template's bytes are the same in every process).
fn tiny_linear(device: &burn::tensor::Device<Ad>) -> Linear<Ad> {
    LinearConfig::new(4, 3)
        .with_initializer(Initializer::Constant { value: 0.25 })
        .init::<Ad>(device)
}

/// A training checkpoint of a `Linear 4 → 3` and AdamW after one step, written once per
/// process: the directory `save_checkpoint` made.
fn checkpoint_template() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = dir_for("checkpoint_template");
        let device = Default::default();
        let model = tiny_linear(&device);
        let mut optim = FusedAdamW::init::<Ad, Linear<Ad>>(0.9, 0.999, 0.0);
        let loss = model.forward(Tensor::<Ad, 2>::ones([2, 4], &device)).sum();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let model = optim.step(1e-3, model, grads);
        let state = TrainState {
            step: 1,
            losses: vec![0.5],
            ..TrainState::start(serde_json::json!({ "fuzz": 1 }), 7)
        };
        save_checkpoint::<Ad, _>(&root, &model, &optim, &state).expect("template checkpoint")
    })
}

/// A copy of the template checkpoint with `file` replaced by `data`; when `rechecksum`, the
/// copy's `state.json` records `data`'s checksum (so the bytes reach the decoder).
fn checkpoint_with(target: &str, file: &str, data: &[u8], rechecksum: bool) -> PathBuf {
    let template = checkpoint_template();
    let dir = dir_for(target).join("step-00000001");
    std::fs::create_dir_all(&dir).expect("temporary directory");
    for f in ["model.safetensors", "optim.safetensors", "state.json"] {
        std::fs::copy(template.join(f), dir.join(f)).expect("template file");
    }
    put(&dir, file, data);
    if rechecksum {
        let text = std::fs::read(template.join("state.json")).expect("template state");
        let mut v: serde_json::Value = serde_json::from_slice(&text).expect("template json");
        v["checksums"][file] = serde_json::json!(format!("{:016x}", fnv1a64(data)));
        put(&dir, "state.json", &serde_json::to_vec(&v).expect("json"));
    }
    dir
}

/// Loads a checkpoint directory into a fresh `Linear 4 → 3` and the training loops' AdamW;
/// whether it loaded. The property is "no panic out of the loader": a panic reaches libFuzzer.
fn load_tiny_checkpoint(dir: &Path) -> bool {
    let device = Default::default();
    let model = tiny_linear(&device);
    let optim = FusedAdamW::init::<Ad, Linear<Ad>>(0.9, 0.999, 0.0);
    let loaded = load_checkpoint::<Ad, _>(dir, model, optim, &device);
    loaded.is_ok_and(|(m, _, _)| m.num_params() == 15)
}

/// The bytes as a training checkpoint's `state.json` beside valid weight files;
/// `@model.safetensors@` and `@optim.safetensors@` in the input stand for their checksums (so
/// that an input stays valid when the template's files change).
pub fn checkpoint_state(data: &[u8]) {
    let _ = checkpoint_state_loads(data);
}

/// [`checkpoint_state`], telling whether the checkpoint loaded.
pub fn checkpoint_state_loads(data: &[u8]) -> bool {
    let mut text = data.to_vec();
    for file in ["model.safetensors", "optim.safetensors"] {
        let bytes = std::fs::read(checkpoint_template().join(file)).expect("template file");
        let sum = format!("{:016x}", fnv1a64(&bytes));
        text = replace(&text, format!("@{file}@").as_bytes(), sum.as_bytes());
    }
    load_tiny_checkpoint(&checkpoint_with("checkpoint_state", "state.json", &text, false))
}

/// `data` with every `from` replaced by `to`.
fn replace(data: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(data[i]);
            i += 1;
        }
    }
    out
}

/// The bytes as a training checkpoint's `model.safetensors`, its checksum recorded in
/// `state.json`.
pub fn checkpoint_weights(data: &[u8]) {
    let _ = checkpoint_weights_loads(data);
}

/// [`checkpoint_weights`], telling whether the checkpoint loaded.
pub fn checkpoint_weights_loads(data: &[u8]) -> bool {
    load_tiny_checkpoint(&checkpoint_with(
        "checkpoint_weights",
        "model.safetensors",
        data,
        true,
    ))
}

/// FNV-1a, 64 bit: the checksum the crate's checkpoint and cache files record for each file
/// (`state.json`'s `checksums`), written out here as the file format's specification.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
