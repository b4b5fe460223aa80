//! Image and token metrics: PSNR, SSIM, token accuracy. Used by training loops (validation) and
//! by [`crate::eval`], which re-exports them.

mod pixels;
mod ssim;

pub use pixels::{psnr, psnr_per_image, token_accuracy};
pub use ssim::{ssim, ssim_per_image};
