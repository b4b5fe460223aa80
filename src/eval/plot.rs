//! Line plots as SVG, drawn with plotters: axes with ticks and labels, a title and a legend;
//! readable in a browser or on a repository page, and diffable as text.

use plotters::prelude::*;

use crate::error::{Error, Result};

/// One line of a plot: a label, a colour and its points.
#[derive(Clone, Debug)]
pub(crate) struct Series {
    /// Legend text.
    pub label: String,
    /// Stroke colour (RGB).
    pub colour: (u8, u8, u8),
    /// `(x, y)` points, drawn in order; non-finite points are left out.
    pub points: Vec<(f64, f64)>,
}

/// Colours for successive series (colour-blind-safe palette of Wong, Nature Methods 2011).
pub(crate) const PALETTE: [(u8, u8, u8); 8] = [
    (0x00, 0x00, 0x00),
    (0xe6, 0x9f, 0x00),
    (0x56, 0xb4, 0xe9),
    (0x00, 0x9e, 0x73),
    (0xd5, 0x5e, 0x00),
    (0x00, 0x72, 0xb2),
    (0xcc, 0x79, 0xa7),
    (0x99, 0x99, 0x99),
];

/// The axis range of `values` (all finite), padded so that a flat series still gets a readable
/// axis; `0..1` when there are none.
fn range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return 0.0..1.0;
    }
    let pad = match hi - lo < 1e-12 {
        true => (lo.abs() * 0.05).max(1e-3),
        false => (hi - lo) * 0.03,
    };
    lo - pad..hi + pad
}

/// A 760×440 SVG line plot of `series` with a title, axis labels and a legend.
pub(crate) fn line_plot_svg(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Result<String> {
    let finite: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| {
            s.points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect()
        })
        .collect();
    let xs = range(finite.iter().flatten().map(|p| p.0));
    let ys = range(finite.iter().flatten().map(|p| p.1));
    let mut svg = String::new();
    let failed = |e: &dyn std::fmt::Display| Error::Config(format!("drawing the plot {title:?}: {e}"));
    {
        let root = SVGBackend::with_string(&mut svg, (760, 440)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| failed(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .margin_right(36)
            .x_label_area_size(40)
            .y_label_area_size(84)
            .build_cartesian_2d(xs, ys)
            .map_err(|e| failed(&e))?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 16))
            .light_line_style(RGBColor(0xee, 0xee, 0xee))
            .draw()
            .map_err(|e| failed(&e))?;
        for (s, points) in series.iter().zip(finite) {
            let (r, g, b) = s.colour;
            let colour = RGBColor(r, g, b);
            // a few points (a gate curve, a single point) are marked, so they show on their own
            if points.len() <= 64 {
                let marks = points.iter().map(|&p| Circle::new(p, 3, colour.filled()));
                chart.draw_series(marks).map_err(|e| failed(&e))?;
            }
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))
                .map_err(|e| failed(&e))?
                .label(s.label.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2)));
        }
        if !series.is_empty() {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 15))
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(|e| failed(&e))?;
        }
        root.present().map_err(|e| failed(&e))?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plot_has_axes_labels_legend_and_every_series() {
        let series = [
            Series {
                label: "backbone".into(),
                colour: PALETTE[0],
                points: (1..=16).map(|i| (i as f64, 0.5 - 0.01 * i as f64)).collect(),
            },
            Series {
                label: "corrector <gate>".into(),
                colour: PALETTE[1],
                points: vec![(1.0, 0.3), (2.0, f64::NAN), (16.0, 0.2)],
            },
        ];
        let svg = line_plot_svg("error & position", "token position", "cosine distance", &series).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        for text in [
            "token position",
            "cosine distance",
            "backbone",
            "error &amp; position",
        ] {
            assert!(svg.contains(text), "{text:?} missing");
        }
        // the legend's text is escaped, and both series are drawn as lines
        assert!(svg.contains("corrector &lt;gate&gt;"));
        let lines = svg.matches("<polyline").count();
        assert!(lines > 4, "grid lines and series");
        let wide = svg.matches(r#"stroke-width="2""#).count();
        assert_eq!(wide, 2 + 2, "two series lines and their two legend marks");
        assert!(svg.contains("#E69F00"), "the second series' colour");
        assert_eq!(svg.matches("<circle").count(), 16 + 2, "the points are marked");
        // tick labels on both axes
        let texts: Vec<&str> = svg
            .split("<text")
            .skip(1)
            .filter_map(|t| t.split_once('>'))
            .map(|(_, rest)| rest.split("</text>").next().unwrap_or("").trim())
            .collect();
        let numbers = texts.iter().filter(|t| t.parse::<f64>().is_ok()).count();
        assert!(numbers >= 8, "tick labels on both axes: {texts:?}");
        // a flat or empty plot still draws
        let flat = [Series {
            label: "flat".into(),
            colour: PALETTE[2],
            points: vec![(0.0, 1.0), (1.0, 1.0)],
        }];
        assert!(line_plot_svg("flat", "x", "y", &flat).is_ok());
        assert!(line_plot_svg("empty", "x", "y", &[]).is_ok());
    }
}
