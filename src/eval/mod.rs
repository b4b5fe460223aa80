//! Evaluation: image and token metrics, side-by-side comparison of refiners on the same cached
//! backbone outputs (paired deltas with bootstrap intervals), and its reports and plots.

mod evaluate;
mod metrics;
mod plot;
mod report;
mod ssim;

pub use evaluate::{
    bootstrap, compare, BackboneResult, Changes, CompareOptions, Comparison, Deltas, EvalImages, Interval,
    Method, MethodResult, Metrics,
};
pub use metrics::{psnr, psnr_per_image, token_accuracy};
pub use plot::{line_plot_svg, Series, PALETTE};
pub use report::{markdown, write_report, EvalReport, ReportFiles};
pub use ssim::{ssim, ssim_per_image};
