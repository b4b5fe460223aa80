//! Refiners: the built-in [`TransformerRefiner`], its configuration and presets, the decision
//! rules that turn its output into codes, and its files.

mod block;
mod config;
mod decision;
mod loss;
mod position;
mod preset;
mod store;
mod transformer;

pub use config::{CodeHead, PositionEncoding, RefinerHeads, RefinerInputs, TransformerRefinerConfig};
pub use decision::{Decision, GatePoint, GateScores, GateTable, GATE_MARGINS};
pub use loss::{cosine_loss, PreparedLoss, RefinementLoss};
pub use preset::Preset;
pub use store::{load_refiner, save_refiner, LoadedRefiner, REFINER_FORMAT};
pub use transformer::TransformerRefiner;
