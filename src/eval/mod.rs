//! Evaluation: metrics on images and tokens.

mod metrics;

pub use metrics::{psnr, token_accuracy};
