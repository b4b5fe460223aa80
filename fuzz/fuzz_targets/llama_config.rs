//! Any bytes as a LLaMA `config.json`: parsed and validated, or a typed error.
#![no_main]

#[path = "common.rs"]
mod common;

use ar_refine::backbone::LlamaConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = common::file_with("config.json", data);
    let _ = LlamaConfig::from_file(&path);
});
