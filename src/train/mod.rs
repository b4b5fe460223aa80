//! Training the refiner: the loss (the training loop lives here too as it grows).

mod loss;

pub use loss::{cosine_loss, RefinementLoss};
