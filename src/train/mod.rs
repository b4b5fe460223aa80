//! The refiner workflow: (backbone output, truth) pairs from a frozen backbone, the refiner's
//! training loop, validation and gate calibration. The infrastructure it shares with the
//! LLaMA and VQGAN loops (optimizer, schedule, checkpoints, time budget) is
//! [`crate::training`], re-exported here.

mod pairs;
mod refiner_loop;

pub use crate::refiner::{cosine_loss, PreparedLoss, RefinementLoss};
pub use crate::training::{
    checkpoint_due, clip_grad_norm, latest_checkpoint, load_checkpoint, resume, save_checkpoint, FusedAdamW,
    TimeBudget, TrainState, WarmupCosine,
};
pub use pairs::{
    generate_pairs, generate_pairs_sharded, load_pairs, BackboneHidden, HiddenSource, PairMode, PairOptions,
    Pairs, TOP_K,
};
pub(crate) use refiner_loop::pair_input;
pub use refiner_loop::{
    calibrate_gate, train_refiner, validate_refiner, RefinerData, RefinerStepReport, RefinerTrainConfig,
    Validation,
};
