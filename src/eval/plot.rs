//! Line plots as SVG: axes with ticks and labels, a title and a legend; readable in a browser
//! or on a repository page, and diffable as text.

/// One line of a plot: a label, a colour (`#rrggbb`) and its points.
#[derive(Clone, Debug)]
pub(crate) struct Series {
    /// Legend text.
    pub label: String,
    /// Stroke colour, e.g. `#c03030`.
    pub colour: String,
    /// `(x, y)` points, drawn in order.
    pub points: Vec<(f64, f64)>,
}

/// Colours for successive series (colour-blind-safe palette of Wong, Nature Methods 2011).
pub(crate) const PALETTE: [&str; 8] = [
    "#000000", "#e69f00", "#56b4e9", "#009e73", "#d55e00", "#0072b2", "#cc79a7", "#999999",
];

/// A 720×420 SVG line plot of `series` with a title and axis labels.
pub(crate) fn line_plot_svg(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let (w, h) = (720.0, 420.0);
    let (left, right, top, bottom) = (70.0, 200.0, 40.0, 50.0);
    let pts = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts.filter(|(x, y)| x.is_finite() && y.is_finite()) {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    // a flat series still gets a readable axis
    let widen = |lo: f64, hi: f64| {
        if hi - lo < 1e-12 {
            let pad = (lo.abs() * 0.05).max(1e-3);
            (lo - pad, hi + pad)
        } else {
            (lo, hi)
        }
    };
    let ((x0, x1), (y0, y1)) = (widen(x0, x1), widen(y0, y1));
    let (xt, yt) = (ticks(x0, x1), ticks(y0, y1));
    let (x0, x1) = (xt[0].min(x0), xt[xt.len() - 1].max(x1));
    let (y0, y1) = (yt[0].min(y0), yt[yt.len() - 1].max(y1));
    let pw = w - left - right;
    let ph = h - top - bottom;
    let sx = |x: f64| left + pw * (x - x0) / (x1 - x0).max(1e-12);
    let sy = |y: f64| top + ph * (1.0 - (y - y0) / (y1 - y0).max(1e-12));
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"22\" font-size=\"14\">{}</text>\n",
        escape(title)
    );
    for &t in &xt {
        let x = sx(t);
        s += &format!(
            "<line x1=\"{x:.1}\" y1=\"{top}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#e8e8e8\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
            top + ph,
            top + ph + 16.0,
            fmt_tick(t)
        );
    }
    for &t in &yt {
        let y = sy(t);
        s += &format!(
            "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#e8e8e8\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
            left + pw,
            left - 6.0,
            y + 4.0,
            fmt_tick(t)
        );
    }
    s += &format!(
        "<rect x=\"{left}\" y=\"{top}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"black\"/>\n\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n\
         <text transform=\"translate(18 {:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>\n",
        left + pw / 2.0,
        h - 12.0,
        escape(x_label),
        top + ph / 2.0,
        escape(y_label)
    );
    for (i, ser) in series.iter().enumerate() {
        let path: Vec<String> = ser
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        s += &format!(
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.6\" points=\"{}\"/>\n",
            ser.colour,
            path.join(" ")
        );
        let ly = top + 14.0 + 20.0 * i as f64;
        let lx = left + pw + 12.0;
        s += &format!(
            "<line x1=\"{lx}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{}\" stroke-width=\"3\"/>\
             <text x=\"{}\" y=\"{}\">{}</text>\n",
            lx + 22.0,
            ser.colour,
            lx + 28.0,
            ly + 4.0,
            escape(&ser.label)
        );
    }
    s += "</svg>\n";
    s
}

/// About six round tick values covering `[lo, hi]`.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).abs().max(1e-9);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= 6.0)
        .unwrap_or(10.0 * mag);
    let start = (lo / step).floor() * step;
    let mut out = Vec::new();
    let mut t = start;
    while t <= hi + step * 0.999 && out.len() < 20 {
        out.push(t);
        t += step;
    }
    out
}

fn fmt_tick(t: f64) -> String {
    let s = format!("{t:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
