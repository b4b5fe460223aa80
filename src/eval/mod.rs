//! Evaluation: image and token metrics, side-by-side comparison of refiners on the same cached
//! backbone outputs (paired deltas with bootstrap intervals), and its reports and plots.

mod evaluate;
mod plot;
mod report;

pub use crate::metrics::{psnr, psnr_per_image, ssim, ssim_per_image, token_accuracy};
pub use evaluate::{
    bootstrap, compare, BackboneResult, Changes, CompareOptions, Comparison, Deltas, EvalImages, Interval,
    Method, MethodResult, Metrics,
};
pub use report::{markdown, write_report, EvalReport, ReportFiles};
