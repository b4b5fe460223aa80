//! Refiners: the built-in [`TransformerRefiner`] and its configuration.

mod block;
mod config;
mod position;
mod transformer;

pub use config::{PositionEncoding, TransformerRefinerConfig};
pub use transformer::TransformerRefiner;
