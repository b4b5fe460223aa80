//! Autoregressive backbones: the built-in LLaMA decoder (LVM's architecture), its LoRA adapters
//! and its pre-training loop. Sampling settings and the generation and scoring helpers every
//! [`crate::traits::ArBackbone`] shares live beside the trait ([`crate::traits`]) and are re-exported
//! here.

mod llama;

pub use crate::traits::{generate_by_forward, score_answers, AnswerScores, Sampling};
pub use llama::{
    linear_t, lm_loss, load_lora, save_lora, train_lm, GenerateOptions, Generation, KvCache, Llama,
    LlamaConfig, LmTrainConfig, LoraConfig, ProjName, StepReport, TokenCallback, MAX_NEW_TOKENS,
};
