//! The bodies of the fuzz targets, shared by `fuzz/fuzz_targets/*.rs` (libFuzzer, under
//! `cargo fuzz`) and `tests/fuzz_replay.rs` (the committed corpus, replayed by `cargo test`).
//! Each takes arbitrary bytes as one outside file, runs the crate's loader on it and ignores
//! the result: the property is that the loader returns (`Ok` or a typed `Err`) without a
//! panic, a hang or an allocation the file does not back.

use std::path::{Path, PathBuf};

use ar_refine::backbone::LlamaConfig;
use ar_refine::io::{load_image, open_checkpoint, SafetensorsFile, TensorSource};
use ar_refine::tokenizer::VqganConfig;
use burn::backend::NdArray;

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
