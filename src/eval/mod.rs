//! Evaluation: image and token metrics, the backbone-vs-refined evaluation and its reports.

mod evaluate;
mod metrics;
mod report;
mod ssim;

pub use evaluate::{evaluate, Changes, EvalImages, Evaluation, Metrics};
pub use metrics::{psnr, token_accuracy};
pub use report::{markdown, write_report, EvalReport, ReportFiles};
pub use ssim::ssim;
