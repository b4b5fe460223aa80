//! Any bytes as a PyTorch checkpoint (zip + pickle): opening and reading every tensor either
//! works or is a typed error.
#![no_main]

#[path = "common.rs"]
mod common;

use ar_refine::io::open_checkpoint;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = common::file_with("input.bin", data);
    if let Ok(src) = open_checkpoint(&path) {
        for key in src.keys() {
            let _ = src.read_f32(&key);
        }
    }
});
