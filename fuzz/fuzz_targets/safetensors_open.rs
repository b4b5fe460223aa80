//! Any bytes as a `.safetensors` file: opening and reading every tensor either works or is a
//! typed error — no panic, no allocation beyond what the file holds.
#![no_main]

#[path = "common.rs"]
mod common;

use ar_refine::io::{SafetensorsFile, TensorSource};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = common::file_with("input.safetensors", data);
    if let Ok(file) = SafetensorsFile::open(&path) {
        for key in file.keys() {
            let _ = file.read_f32(&key);
        }
    }
});
