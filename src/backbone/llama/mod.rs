//! The built-in LLaMA backbone (LVM's architecture): HF checkpoint loading, KV-cache
//! generation, next-token training and LoRA adapters.
//!
//! ```text
//! tokens [b,n] ─embed─▶ [b,n,hidden] ─(RMSNorm → RoPE GQA attention → RMSNorm → SwiGLU) × L─▶
//!   RMSNorm ─lm_head─▶ logits [b,n,vocab]
//! ```

mod cache;
mod config;
mod generate;
mod layers;
mod model;

pub use cache::KvCache;
pub use config::LlamaConfig;
pub use generate::{GenerateOptions, Generation};
pub use model::{Llama, ProjName};
