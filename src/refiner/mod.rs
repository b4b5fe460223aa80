//! Refiners: the built-in [`TransformerRefiner`], its configuration and its files.

mod block;
mod config;
mod position;
mod store;
mod transformer;

pub use config::{PositionEncoding, TransformerRefinerConfig};
pub use store::{load_refiner, save_refiner};
pub use transformer::TransformerRefiner;
