//! The built-in VQGAN tokenizer: LVM's open-MUSE VQGAN and its taming / diffusers relatives,
//! loadable from their checkpoints and trainable from scratch.
//!
//! ```text
//! image [b,3,H,W] ─encoder─▶ z [b,D,H/f,W/f] ─nearest code (squared L2)─▶ ids [b,(H/f)(W/f)]
//! ids ─codebook─▶ z_q ─decoder─▶ image [b,3,H,W]
//! ```

mod blocks;
mod config;
mod model;
mod train;
mod vqgan;

pub use blocks::{apply_conv, apply_conv_padded, ConvPath};
pub use config::{PixelRange, VqganConfig};
pub use model::{Layout, VqganModel};
pub use train::{
    reconstruction_psnr, train_vqgan, valid, vq_losses, Recon, VqLosses, VqStepReport, VqTrainConfig,
};
pub use vqgan::Vqgan;
