//! # ar-refine
//!
//! Visual self-refinement for autoregressive (AR) image models, after Wang et al.,
//! *Visual Self-Refinement for Autoregressive Models* (EMNLP 2025 Findings, arXiv 2510.00993).
//!
//! An AR model such as LVM generates an image's VQ tokens one by one, so early mistakes
//! accumulate. Keeping the backbone frozen, a small bidirectional transformer (the refiner)
//! maps the code embeddings of all generated tokens `[b, n, D]` to refined embeddings, trained
//! with a cosine-distance loss against the ground truth's embeddings; at inference each refined
//! embedding snaps to its nearest codebook entry and the tokenizer decodes the image.
//!
//! ```text
//! prompt images ──Tokenizer::encode──▶ visual sentence ──ArBackbone::generate──▶ tokens [b,n]
//!   tokens ──Tokenizer::embed──▶ e [b,n,D] ──Refiner::refine──▶ e' [b,n,D]
//!   e' ──nearest_codes(codebook [K,D])──▶ tokens' [b,n] ──Tokenizer::decode──▶ image [b,3,H,W]
//! ```
//!
//! - Plug-in traits: [`Tokenizer`], [`ArBackbone`], [`Refiner`] (in [`traits`]).
//! - Built-ins: [`TransformerRefiner`], [`cosine_loss`], [`nearest_codes`] / [`Codebook`],
//!   [`SelfRefinement`].
//! - Every public function returns [`Result`] with the one [`Error`] type.
//!
//! Backends: generic items take `B: `[`ArBackend`] (Burn's `Backend` plus the routes to the
//! crate's fused CubeCL kernels), implemented for Burn's `NdArray`, wgpu and CUDA backends and
//! their `Autodiff` wrappers; any other Burn 0.21 backend opts in with an empty impl and runs
//! on tensor operations. The crate's features `ndarray` (default), `wgpu`, `cuda` enable Burn's
//! backends of the same names.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod backbone;
pub mod backend;
pub(crate) mod checks;
pub mod data;
pub mod decode;
mod device_watch;
pub mod error;
pub mod eval;
pub mod interop;
pub mod io;
pub mod metrics;
pub mod pipeline;
pub mod refiner;
pub mod rng;
pub mod tasks;
pub mod tokenizer;
pub mod train;
pub mod training;
pub mod traits;

pub use backend::{ArAutodiffBackend, ArBackend};
pub use decode::{nearest_codes, Codebook, KernelPrecision, Metric, DEFAULT_MEMORY_BUDGET};
pub use device_watch::{check_device, device_panics, watch_device_panics};
pub use error::{Error, Result};
pub use pipeline::{RefinementOutput, SelfRefinement};
pub use refiner::{
    cosine_loss, Decision, PositionEncoding, Preset, RefinementLoss, TransformerRefiner,
    TransformerRefinerConfig,
};
pub use traits::{generate_by_forward, Sampling};
pub use traits::{
    ArBackbone, Confidence, ForwardOutput, PromptContext, RefineInput, RefineOutput, Refiner, RefinerNeeds,
    TokenGrid, Tokenizer,
};
