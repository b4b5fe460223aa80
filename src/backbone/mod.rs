//! Autoregressive backbones: sampling settings and generation helpers shared by every
//! [`crate::ArBackbone`].

mod generate;
mod sampling;

pub use generate::generate_by_forward;
pub use sampling::Sampling;
