//! libFuzzer entry for `llama_config` (the body is in `fuzz/targets.rs`).
#![no_main]

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::llama_config(data));
