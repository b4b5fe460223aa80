//! Reports: JSON, a Markdown table, a comparison grid and the per-position error plot.

use std::path::{Path, PathBuf};

use burn::tensor::{backend::Backend, Tensor};
use image::{Rgb, RgbImage};
use serde::{Deserialize, Serialize};

use super::evaluate::{EvalImages, Evaluation};
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
    /// Refiner parameter count.
    pub refiner_params: usize,
    /// The measurements.
    pub evaluation: Evaluation,
}

/// Files written by [`write_report`].
#[derive(Clone, Debug)]
pub struct ReportFiles {
    /// `report.json` (all reports).
    pub json: PathBuf,
    /// `report.md`.
    pub markdown: PathBuf,
    /// `comparison.png`: query input | backbone | refined | reference, one row per sample.
    pub grid: PathBuf,
    /// `position_error.png`: mean cosine distance per position, backbone (red) vs refined (blue).
    pub plot: PathBuf,
}

/// Writes `reports` (e.g. one per K) to `dir`: JSON, Markdown, and for the first report the
/// comparison grid (with `queries`, the query input images of the kept samples) and the
/// per-position plot. All files are written atomically.
pub fn write_report<B: Backend>(
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
    let files = ReportFiles {
        json: dir.join("report.json"),
        markdown: dir.join("report.md"),
        grid: dir.join("comparison.png"),
        plot: dir.join("position_error.png"),
    };
    let json = serde_json::to_vec_pretty(reports).map_err(|e| Error::Config(e.to_string()))?;
    write_atomic(&files.json, &json)?;
    write_atomic(&files.markdown, markdown(reports).as_bytes())?;

    let m = images.backbone.dims()[0].min(queries.len());
    let [_, _, h, w] = images.backbone.dims();
    let device = images.backbone.device();
    let mut tiles: Vec<Tensor<B, 3>> = Vec::new();
    for (i, query) in queries.iter().enumerate().take(m) {
        let q = image::imageops::resize(query, w as u32, h as u32, image::imageops::FilterType::Triangle);
        tiles.push(rgb_to_tensor::<B>(&q, &device));
        for t in [&images.backbone, &images.refined, &images.truth] {
            tiles.push(t.clone().narrow(0, i, 1).squeeze_dim::<3>(0).clamp(0.0, 1.0));
        }
    }
    if !tiles.is_empty() {
        save_image_grid(tiles, 4, &files.grid)?;
    }
    let plot = line_plot(&[
        (&first.evaluation.curve_backbone, [200, 40, 40]),
        (&first.evaluation.curve_refined, [40, 70, 200]),
    ]);
    let mut bytes = Vec::new();
    plot.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|source| Error::Image {
            path: files.plot.clone(),
            source,
        })?;
    write_atomic(&files.plot, &bytes)?;
    Ok(files)
}

/// The Markdown table of `reports`.
pub fn markdown(reports: &[EvalReport]) -> String {
    let mut s = String::from("# Refinement evaluation\n\n");
    s.push_str("| task | K | samples | model | token acc | PSNR dB | SSIM | cos-dist area (all) | area (last third) |\n");
    s.push_str("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |\n");
    for r in reports {
        let e = &r.evaluation;
        for (name, m) in [("backbone", &e.backbone), ("+ refiner", &e.refined)] {
            s.push_str(&format!(
                "| {} | {} | {} | {name} | {:.4} | {:.2} | {:.4} | {:.2} | {:.2} |\n",
                r.task, r.k, e.samples, m.token_accuracy, m.psnr, m.ssim, m.cos_area, m.cos_area_last_third
            ));
        }
    }
    s.push_str("\nWhat the refiner changed (fractions of all tokens; distinct codes backbone / refined / truth):\n\n");
    for r in reports {
        let c = &r.evaluation.changes;
        s.push_str(&format!(
            "- {} K = {}: changed {:.4}, fixed {:.4}, broken {:.4}; distinct codes {} / {} / {}\n",
            r.task,
            r.k,
            c.changed,
            c.fixed,
            c.broken,
            c.distinct_backbone,
            c.distinct_refined,
            c.distinct_truth
        ));
    }
    if let Some(r) = reports.first() {
        s.push_str(&format!(
            "\nImages are compared with the {}. Refiner: {} parameters, {:.2} ms per sample \
             (embed + refine + nearest code). `position_error.png`: mean cosine distance per token \
             position (x: position 1..{}, y: 0..max), backbone red, refined blue. \
             `comparison.png` rows: query input | backbone | refined | reference.\n\nCommand: `{}`\n",
            r.evaluation.reference,
            r.refiner_params,
            r.evaluation.refine_ms_per_sample,
            r.evaluation.tokens,
            r.command
        ));
    }
    s
}

/// A 640×360 line plot of `series` (values ≥ 0) on shared axes; no text.
fn line_plot(series: &[(&Vec<f64>, [u8; 3])]) -> RgbImage {
    let (w, h, pad) = (640u32, 360u32, 24u32);
    let mut img = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    let black = Rgb([0, 0, 0]);
    for x in pad..w - pad {
        img.put_pixel(x, h - pad, black);
    }
    for y in pad..h - pad {
        img.put_pixel(pad, y, black);
    }
    let max = series
        .iter()
        .flat_map(|(v, _)| v.iter().copied())
        .fold(0.0f64, f64::max)
        .max(1e-9);
    for (v, colour) in series {
        let n = v.len().max(2);
        let pt = |i: usize| {
            let x = pad as f32 + (w - 2 * pad) as f32 * i as f32 / (n - 1) as f32;
            let y = (h - pad) as f32 - (h - 2 * pad) as f32 * (v[i] / max) as f32;
            (x, y)
        };
        for i in 1..v.len() {
            imageproc::drawing::draw_line_segment_mut(&mut img, pt(i - 1), pt(i), Rgb(*colour));
        }
    }
    img
}
