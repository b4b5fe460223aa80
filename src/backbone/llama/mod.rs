//! The built-in LLaMA backbone (LVM's architecture): HF checkpoint loading, KV-cache
//! generation, next-token training and LoRA adapters.
//!
//! ```text
//! tokens [b,n] ─embed─▶ [b,n,hidden] ─(RMSNorm → RoPE GQA attention → RMSNorm → SwiGLU) × L─▶
//!   RMSNorm ─lm_head─▶ logits [b,n,vocab]
//! ```

mod cache;
#[cfg(feature = "cubecl")]
mod causal;
mod config;
#[cfg(feature = "cubecl")]
mod fused;
mod generate;
mod layers;
mod lora;
#[cfg(feature = "cubecl")]
mod mma;
mod model;
mod train;
#[cfg(feature = "cubecl")]
mod training;

pub use cache::KvCache;
#[cfg(feature = "cubecl")]
pub(crate) use causal::{
    default_chunks as causal_chunks, kernels as causal_attention_kernels, CausalAttention, CausalSaved,
};
pub use config::LlamaConfig;
#[cfg(feature = "cubecl")]
pub(crate) use fused::{decoder_kernels, DecoderKernels};
pub use generate::{GenerateOptions, Generation, TokenCallback, MAX_NEW_TOKENS};
pub use layers::linear_t;
pub use lora::{load_lora, save_lora, LoraConfig};
pub use model::{Llama, ProjName};
pub use train::{lm_loss, train_lm, LmTrainConfig, StepReport};
#[cfg(feature = "cubecl")]
pub(crate) use training::{kernels as training_kernels, TrainKernels, TrainOp, TrainSaved};
