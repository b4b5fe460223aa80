//! libFuzzer entry for `pair_cache` (the body is in `fuzz/targets.rs`).
#![no_main]

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::pair_cache(data));
