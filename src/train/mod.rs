//! Training: the refinement loss, the learning-rate schedule and checkpoints shared by every
//! training loop in the crate.

mod budget;
mod checkpoint;
mod clip;
mod data_parallel;
mod loss;
mod pairs;
mod refiner_loop;
mod schedule;

pub(crate) use budget::Planner;
pub use budget::TimeBudget;
pub use checkpoint::{
    checkpoint_due, latest_checkpoint, load_checkpoint, resume, save_checkpoint, TrainState,
};
pub use clip::clip_grad_norm;
pub use loss::{cosine_loss, RefinementLoss};
pub use pairs::{generate_pairs, generate_pairs_sharded, load_pairs, PairMode, PairOptions, Pairs};
pub use refiner_loop::{refiner_loss, train_refiner, RefinerData, RefinerStepReport, RefinerTrainConfig};
pub use schedule::WarmupCosine;
