//! Reports: JSON, Markdown tables, a comparison grid and SVG plots (per-position error,
//! accuracy against edit rate).

use crate::backend::ArBackend;
use std::path::{Path, PathBuf};

use burn::tensor::Tensor;
use image::RgbImage;
use serde::{Deserialize, Serialize};

use super::evaluate::{Comparison, EvalImages, Interval, Metrics};
use super::plot::{line_plot_svg, Series, PALETTE};
use crate::error::{Error, Result};
use crate::io::{rgb_to_tensor, save_image_grid, write_atomic};

/// One evaluation run with its context, as written to `report.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalReport {
    /// Task name.
    pub task: String,
    /// Demonstrations per prompt.
    pub k: usize,
    /// The command line (or description) that produced it.
    pub command: String,
    /// The measurements.
    pub comparison: Comparison,
}

/// Files written by [`write_report`].
#[derive(Clone, Debug)]
pub struct ReportFiles {
    /// `report.json` (all reports).
    pub json: PathBuf,
    /// `report.md`.
    pub markdown: PathBuf,
    /// `comparison.png`: query input | backbone | each method | reference, one row per sample.
    pub grid: PathBuf,
    /// `position_error.svg`: mean cosine distance per position, backbone and methods.
    pub plot: PathBuf,
    /// `gate.svg`: token accuracy against edit rate for methods with a gate curve.
    pub gate_plot: Option<PathBuf>,
}

/// Writes `reports` (e.g. one per K) to `dir`: JSON, Markdown, and for the first report the
/// comparison grid (with `queries`, the query input images of the kept samples) and the plots.
/// All files are written atomically.
pub fn write_report<B: ArBackend>(
    dir: impl AsRef<Path>,
    reports: &[EvalReport],
    images: &EvalImages<B>,
    queries: &[RgbImage],
) -> Result<ReportFiles> {
    let dir = dir.as_ref();
    let first = reports
        .first()
        .ok_or_else(|| Error::Config("no reports to write".into()))?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let has_gate = first.comparison.methods.iter().any(|m| !m.gate_curve.is_empty());
    let files = ReportFiles {
        json: dir.join("report.json"),
        markdown: dir.join("report.md"),
        grid: dir.join("comparison.png"),
        plot: dir.join("position_error.svg"),
        gate_plot: has_gate.then(|| dir.join("gate.svg")),
    };
    let json = serde_json::to_vec_pretty(reports).map_err(|e| Error::json("report.json", e))?;
    write_atomic(&files.json, &json)?;
    write_atomic(&files.markdown, markdown(reports).as_bytes())?;

    let m = images.backbone.dims()[0].min(queries.len());
    let [_, _, h, w] = images.backbone.dims();
    let device = images.backbone.device();
    let columns: Vec<&Tensor<B, 4>> = std::iter::once(&images.backbone)
        .chain(&images.methods)
        .chain(std::iter::once(&images.truth))
        .collect();
    let mut tiles: Vec<Tensor<B, 3>> = Vec::new();
    for (i, query) in queries.iter().enumerate().take(m) {
        let q = image::imageops::resize(query, w as u32, h as u32, image::imageops::FilterType::Triangle);
        tiles.push(rgb_to_tensor::<B>(&q, &device));
        for t in &columns {
            tiles.push((*t).clone().narrow(0, i, 1).squeeze_dim::<3>(0).clamp(0.0, 1.0));
        }
    }
    if !tiles.is_empty() {
        save_image_grid(tiles, columns.len() + 1, &files.grid)?;
    }
    let c = &first.comparison;
    let curve = |v: &[f64]| v.iter().enumerate().map(|(i, y)| ((i + 1) as f64, *y)).collect();
    let mut series = vec![Series {
        label: "backbone".into(),
        colour: PALETTE[0],
        points: curve(&c.backbone.curve),
    }];
    for (i, m) in c.methods.iter().enumerate() {
        series.push(Series {
            label: m.name.clone(),
            colour: PALETTE[(i + 1) % PALETTE.len()],
            points: curve(&m.curve),
        });
    }
    let title = format!(
        "{}, K = {}: error per position ({} samples)",
        first.task, first.k, c.samples
    );
    let svg = line_plot_svg(
        &title,
        "token position (raster order)",
        "mean cosine distance to the truth",
        &series,
    )?;
    write_atomic(&files.plot, svg.as_bytes())?;
    if let Some(path) = &files.gate_plot {
        let series: Vec<Series> = c
            .methods
            .iter()
            .enumerate()
            .filter(|(_, m)| !m.gate_curve.is_empty())
            .map(|(i, m)| Series {
                label: m.name.clone(),
                colour: PALETTE[(i + 1) % PALETTE.len()],
                points: m.gate_curve.iter().map(|p| (p.edit_rate, p.accuracy)).collect(),
            })
            .collect();
        let title = format!(
            "{}, K = {}: the gate's threshold from 1 (left) to 0 (backbone acc {:.3})",
            first.task, first.k, c.backbone.metrics.token_accuracy
        );
        let svg = line_plot_svg(
            &title,
            "edit rate (fraction of tokens changed)",
            "token accuracy",
            &series,
        )?;
        write_atomic(path, svg.as_bytes())?;
    }
    Ok(files)
}

fn interval(i: &Interval, digits: usize) -> String {
    format!("{:+.d$} [{:+.d$}, {:+.d$}]", i.mean, i.lo, i.hi, d = digits)
}

fn with_std(mean: f64, std: f64, digits: usize, seeds: usize) -> String {
    if seeds > 1 {
        format!("{mean:.d$} ± {std:.d$}", d = digits)
    } else {
        format!("{mean:.d$}", d = digits)
    }
}

/// The Markdown tables of `reports`: one per report, a row per method.
pub fn markdown(reports: &[EvalReport]) -> String {
    let mut s = String::from("# Refinement evaluation\n");
    for r in reports {
        let c = &r.comparison;
        s.push_str(&format!(
            "\n## {} K = {} ({} samples; images compared with the {}; intervals: 95 % bootstrap over images, {} resamples)\n\n",
            r.task, r.k, c.samples, c.reference, c.bootstrap
        ));
        s.push_str("| method | rule | token acc | Δ acc [95 % CI] | PSNR dB | Δ PSNR [95 % CI] | PSNR vs decoded truth | SSIM | top-5 | changed / fixed / broken | distinct codes | refine ms/sample |\n");
        s.push_str("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
        let top5 = |m: &Metrics| m.top5_accuracy.map_or("–".into(), |v| format!("{v:.4}"));
        let b = &c.backbone.metrics;
        s.push_str(&format!(
            "| backbone | – | {:.4} | – | {:.2} | – | {:.2} | {:.4} | {} | – | {} / truth {} | – |\n",
            b.token_accuracy,
            b.psnr,
            b.psnr_decoded,
            b.ssim,
            top5(b),
            c.backbone.distinct,
            c.distinct_truth
        ));
        for m in &c.methods {
            let seeds = m.per_seed.len();
            s.push_str(&format!(
                "| {}{} | {} | {} | {} | {} | {} | {:.2} | {:.4} | {} | {:.4} / {:.4} / {:.4} | {} | {:.2} |\n",
                m.name,
                if seeds > 1 { format!(" ({seeds} seeds)") } else { String::new() },
                m.decision,
                with_std(m.metrics.token_accuracy, m.std.token_accuracy, 4, seeds),
                interval(&m.delta.token_accuracy, 4),
                with_std(m.metrics.psnr, m.std.psnr, 2, seeds),
                interval(&m.delta.psnr, 3),
                m.metrics.psnr_decoded,
                m.metrics.ssim,
                top5(&m.metrics),
                m.changes.changed,
                m.changes.fixed,
                m.changes.broken,
                m.changes.distinct,
                m.refine_ms_per_sample
            ));
        }
    }
    if let Some(r) = reports.first() {
        s.push_str(&format!(
            "\nΔ: method − backbone on the same cached backbone outputs, per image, averaged over seeds. \
             `comparison.png` rows: {} | reference. \
             `position_error.svg`: mean cosine distance per token position.\n\nCommand: `{}`\n",
            ["query input", "backbone"]
                .into_iter()
                .chain(r.comparison.methods.iter().map(|m| m.name.as_str()))
                .collect::<Vec<_>>()
                .join(" | "),
            r.command
        ));
    }
    s
}
