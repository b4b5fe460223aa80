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
mod lora;
mod model;
mod train;

pub use cache::KvCache;
pub use config::LlamaConfig;
pub use generate::{GenerateOptions, Generation, TokenCallback, MAX_NEW_TOKENS};
pub use layers::linear_t;
pub use lora::{load_lora, save_lora, LoraConfig};
pub use model::{Llama, ProjName};
pub use train::{lm_loss, train_lm, LmTrainConfig, StepReport};
