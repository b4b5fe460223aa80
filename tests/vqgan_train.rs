//! Training a small VQGAN: the reconstruction loss falls on real photos (generated scenes when
//! the shared data is absent) and dead codes are restarted.

mod common;

use ar_refine::data::ImageSet;
use ar_refine::tokenizer::{
    reconstruction_psnr, train_vqgan, valid, PixelRange, VqTrainConfig, Vqgan, VqganConfig,
};
use burn::backend::{Autodiff, NdArray};

fn photos() -> ImageSet {
    match common::shared_data_dir(None) {
        Some(dir) => {
            let set = ImageSet::from_raw_u8(dir.join("val.u8"), 64).unwrap();
            println!("data: {} photos from {}", set.len(), dir.display());
            set.split(96).0
        }
        None => {
            println!("data: shared photos not found; generated scenes");
            ImageSet::synthetic(96, 64, 3)
        }
    }
}

#[test]
fn reconstruction_loss_falls_and_dead_codes_restart() {
    let device = Default::default();
    let config = VqganConfig {
        in_channels: 3,
        out_channels: 3,
        hidden_channels: 8,
        channel_mult: vec![1, 2],
        num_res_blocks: 1,
        attn_resolutions: vec![8],
        mid_attention: true,
        z_channels: 8,
        embed_dim: 8,
        num_embeddings: 64,
        resolution: 16,
        num_groups: 4,
        commitment_cost: 0.25,
        pixel_range: PixelRange::ZeroOne,
    };
    let images = photos().resized(16).unwrap();
    let (train, val) = images.split(80);
    let vq = Vqgan::<Autodiff<NdArray>>::new(config, &device).unwrap();
    let before = reconstruction_psnr(&valid(vq.clone()).unwrap(), &val, 16, &device).unwrap();
    // Small on purpose: Burn's NdArray convolution backward is slow (~1 s a step at batch 8,
    // width 16 on 2 cores), and this runs in CI.
    let mut cfg = VqTrainConfig::new(60, 4, 3e-3);
    cfg.restart_dead_every = Some(15);
    let mut restarted = 0;
    let mut recon = Vec::new();
    let (vq, _) = train_vqgan(vq, &train, &cfg, None, &mut |r| {
        restarted += r.restarted;
        recon.push(r.recon);
    })
    .unwrap();
    let after = reconstruction_psnr(&valid(vq).unwrap(), &val, 16, &device).unwrap();
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
    let (first, last) = (mean(&recon[..5]), mean(&recon[50..]));
    println!("recon L1 {first:.4} -> {last:.4}; held-out PSNR {before:.2} -> {after:.2} dB; {restarted} codes restarted");
    assert!(last < 0.7 * first, "reconstruction loss {first} -> {last}");
    assert!(after > before + 2.0, "held-out PSNR {before} -> {after}");
    assert!(restarted > 0);
}
