//! Any bytes as a VQGAN `config.json` (open-MUSE, diffusers or taming flavour).
#![no_main]

#[path = "common.rs"]
mod common;

use ar_refine::tokenizer::VqganConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = common::file_with("config.json", data);
    let _ = VqganConfig::from_file(&path);
});
