//! Progress of long jobs: an indicatif bar with rate and ETA on a terminal, plain lines in a
//! log file (where a bar would be invisible).

use std::cell::Cell;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar over `total` steps.
pub struct Progress {
    bar: ProgressBar,
    /// Without a terminal: one line per this many steps (and the last).
    every: u64,
    /// Time and position of the last line printed.
    last: Cell<(Duration, usize)>,
}

impl Progress {
    /// A bar named `what` over `total` units (`unit`: "steps", "prompts", "tokens"); without a
    /// terminal, a line every `every` units.
    pub fn new(what: &str, total: usize, unit: &str, every: usize) -> Self {
        let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
        let template =
            format!("{{prefix}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{per_sec}} ETA {{eta}} {{msg}}");
        let style = ProgressStyle::with_template(&template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("#>-");
        bar.set_style(style);
        bar.set_prefix(what.to_string());
        bar.enable_steady_tick(Duration::from_millis(250));
        Self {
            bar,
            every: every.max(1) as u64,
            last: Cell::new((Duration::ZERO, 0)),
        }
    }

    /// Moves to `pos` of `total` (a planned total may change, e.g. under a time budget) with a
    /// status `msg` (loss, throughput); without a terminal, `line` is printed every `every`
    /// units and at the end.
    pub fn set(&self, pos: usize, total: usize, msg: impl FnOnce() -> String, line: impl FnOnce() -> String) {
        let (pos, total) = (pos as u64, total as u64);
        self.bar.set_length(total);
        self.bar.set_position(pos);
        if self.bar.is_hidden() {
            if pos > 0 && (pos.is_multiple_of(self.every) || pos == total) {
                eprintln!("{}", line());
            }
        } else {
            self.bar.set_message(msg());
        }
    }

    /// A training step: `status` (loss, throughput) beside the bar; without a terminal, a line
    /// with the step, `status`, the time per step since the last line and the time so far.
    pub fn step(&self, step: usize, total: usize, status: &str) {
        self.set(
            step,
            total,
            || status.to_string(),
            || {
                let now = self.bar.elapsed();
                let (then, before) = self.last.replace((now, step));
                let per_step =
                    now.saturating_sub(then).as_secs_f64() * 1e3 / step.saturating_sub(before).max(1) as f64;
                format!(
                    "step {step}/{total} {status}, {per_step:.1} ms/step lately, {:.1} s",
                    now.as_secs_f64()
                )
            },
        );
    }

    /// Prints a line above the bar (or plainly without a terminal).
    pub fn println(&self, line: impl AsRef<str>) {
        match self.bar.is_hidden() {
            true => eprintln!("{}", line.as_ref()),
            false => self.bar.println(line),
        }
    }

    /// Leaves the finished bar on the terminal.
    pub fn finish(&self) {
        self.bar.finish();
        if !self.bar.is_hidden() {
            // below the bar, not over it
            eprintln!();
        }
    }
}
