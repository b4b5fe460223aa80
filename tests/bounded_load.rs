//! A config that does not belong to its checkpoint fails before anything is allocated
//! (issue [reliability] item 2): both loaders compare the parameters the config describes with
//! the values the checkpoint holds first. Before the check, the VQGAN case aborted on a 144 TB
//! allocation and the LLaMA case ran for minutes.

use std::path::{Path, PathBuf};

use ar_refine::backbone::{Llama, LlamaConfig};
use ar_refine::io::SafetensorsFile;
use ar_refine::tokenizer::Vqgan;
use ar_refine::Error;
use burn::backend::NdArray;
use burn::module::Module;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[test]
fn a_llama_config_with_fifty_million_layers_is_refused_at_once() {
    let dir = fixtures().join("llama/gqa");
    let mut config = LlamaConfig::from_file(&dir).unwrap();
    config.num_hidden_layers = 50_000_000;
    let file = SafetensorsFile::open(&dir).unwrap();
    match Llama::<NdArray>::from_checkpoint(config, &file, &Default::default()) {
        Err(Error::Checkpoint { reason, .. }) => {
            assert!(reason.contains("do not belong together"), "{reason}")
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("loaded a 50M-layer model from a 2-layer checkpoint"),
    }
    // The real config still loads.
    let config = LlamaConfig::from_file(&dir).unwrap();
    assert_eq!(
        Llama::<NdArray>::from_checkpoint(config.clone(), &file, &Default::default())
            .unwrap()
            .num_params() as u128,
        config.param_count().unwrap()
    );
}

#[test]
fn a_vqgan_config_two_million_channels_wide_is_refused_at_once() {
    let root = fixtures().join("vqgan/diffusers");
    let text = std::fs::read_to_string(root.join("config.json")).unwrap();
    assert!(
        text.contains("    24\n"),
        "fixture changed: widest level no longer 24"
    );
    let dir = std::env::temp_dir().join(format!("ar-refine-wide-vq-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), text.replace("    24\n", "    2000000\n")).unwrap();
    let ckpt = root.join("diffusion_pytorch_model.safetensors");
    match Vqgan::<NdArray>::load(&ckpt, Some(&dir.join("config.json")), &Default::default()) {
        Err(Error::Checkpoint { reason, .. }) => {
            assert!(reason.contains("do not belong together"), "{reason}")
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("loaded a 2M-channel VQGAN from a 24-channel checkpoint"),
    }
    assert!(Vqgan::<NdArray>::load(&ckpt, None, &Default::default()).is_ok());
}

#[test]
fn generate_refuses_more_new_tokens_than_anyone_means() {
    let dir = fixtures().join("llama/gqa");
    let model = Llama::<NdArray>::from_pretrained(&dir, &Default::default()).unwrap();
    let prompt = burn::tensor::Tensor::<NdArray, 2, burn::tensor::Int>::zeros([1, 4], &Default::default());
    let n_new = ar_refine::backbone::MAX_NEW_TOKENS + 1;
    let sampling = ar_refine::Sampling::greedy();
    match model.generate_with(prompt, n_new, &sampling, Default::default()) {
        Err(Error::Config(m)) => assert!(m.contains("n_new"), "{m}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("generated {n_new} tokens"),
    }
}
