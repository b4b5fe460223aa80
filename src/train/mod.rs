//! Training: the refinement loss, the learning-rate schedule and checkpoints shared by every
//! training loop in the crate.

mod adamw;
mod budget;
mod checkpoint;
mod clip;
mod data_parallel;
mod pairs;
mod refiner_loop;
mod schedule;

pub use crate::refiner::{cosine_loss, PreparedLoss, RefinementLoss};
#[cfg(feature = "cubecl")]
pub(crate) use adamw::cube_update as cube_adamw_update;
#[cfg(feature = "cubecl")]
#[doc(hidden)]
pub use adamw::AdamwScalars;
pub use adamw::FusedAdamW;
pub(crate) use budget::Planner;
pub use budget::TimeBudget;
pub use checkpoint::{
    checkpoint_due, latest_checkpoint, load_checkpoint, resume, save_checkpoint, TrainState,
};
pub use clip::clip_grad_norm;
pub use pairs::{
    generate_pairs, generate_pairs_sharded, load_pairs, BackboneHidden, HiddenSource, PairMode, PairOptions,
    Pairs, TOP_K,
};
pub(crate) use refiner_loop::pair_input;
pub use refiner_loop::{
    calibrate_gate, train_refiner, validate_refiner, RefinerData, RefinerStepReport, RefinerTrainConfig,
    Validation,
};
pub use schedule::WarmupCosine;
