//! libFuzzer entry for `checkpoint_weights` (the body is in `fuzz/targets.rs`).
#![no_main]

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::checkpoint_weights(data));
