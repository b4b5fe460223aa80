//! Autoregressive backbones: sampling settings and generation helpers shared by every
//! [`crate::ArBackbone`].

mod generate;
mod llama;
mod sampling;
mod score;

pub use generate::generate_by_forward;
#[cfg(feature = "cubecl")]
pub(crate) use llama::{
    causal_attention_kernels, causal_chunks, decoder_kernels, training_kernels, CausalAttention, CausalSaved,
    DecoderKernels, TrainKernels, TrainOp, TrainSaved,
};
pub use llama::{
    linear_t, lm_loss, load_lora, save_lora, train_lm, GenerateOptions, Generation, KvCache, Llama,
    LlamaConfig, LmTrainConfig, LoraConfig, ProjName, StepReport, TokenCallback, MAX_NEW_TOKENS,
};
pub use sampling::Sampling;
pub(crate) use score::token_scores;
pub use score::{score_answers, AnswerScores};
