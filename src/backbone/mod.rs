//! Autoregressive backbones: sampling settings and generation helpers shared by every
//! [`crate::ArBackbone`].

mod generate;
mod llama;
mod sampling;

pub use generate::generate_by_forward;
pub use llama::{GenerateOptions, Generation, KvCache, Llama, LlamaConfig, ProjName};
pub use sampling::Sampling;
