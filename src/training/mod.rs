//! Training infrastructure shared by every training loop of the crate (refiner, LLaMA, VQGAN):
//! the optimizer, the learning-rate schedule, gradient clipping, the time budget and step
//! planner, checkpoints and resumption, and data-parallel gradient all-reduce.
//!
//! The loops themselves live with their models ([`crate::backbone::train_lm`],
//! [`crate::tokenizer::train_vqgan`]) and with the refiner workflow
//! ([`crate::train::train_refiner`]); all three run on one loop skeleton (ARCHITECTURE.md, "Training loops").

mod adamw;
mod budget;
mod checkpoint;
mod clip;
pub(crate) mod data_parallel;
mod run;
mod schedule;

pub use adamw::FusedAdamW;
pub use budget::TimeBudget;
pub use checkpoint::{
    checkpoint_due, latest_checkpoint, load_checkpoint, resume, save_checkpoint, TrainOptimizer, TrainState,
};
pub use clip::clip_grad_norm;
pub(crate) use run::{run_loop, LoopBody, LoopSettings, StepDone};
pub use schedule::WarmupCosine;
