//! The progress bar of one run on a terminal: step/total, images/s, the
//! current loss and the time left, laid out for the terminal's width when
//! the bar is made (the message part is cut, never wrapped, if the terminal
//! narrows later). A [`RunObserver`]; it draws through `logging::bars()`,
//! so log lines print above it. It must not log or decide anything.

use crate::logging;
use crate::train::observer::{RunObserver, StepReport};
use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Mutex;

/// `name` cut to at most `max` characters (an ellipsis marks the cut).
fn fit(name: &str, max: usize) -> String {
    if name.chars().count() <= max {
        return name.to_string();
    }
    let mut out: String = name.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The bar's template for a terminal `width` columns wide and a run of
/// `total` steps: every fixed part fits, and the message takes what is left.
fn template(width: usize, total: u64) -> String {
    let pos = 2 * total.max(1).to_string().len() + 1;
    // "{prefix} " + "{bar} " + "{pos}/{len} " + "ETA hh:mm:ss " before the message.
    let fixed = 13 + pos + 1 + 13;
    if width >= fixed + 10 + 26 {
        let bar = (width - fixed - 26).clamp(10, 40);
        format!(
            "{{prefix:12}} {{bar:{bar}}} {{pos:>{digits}}}/{{len}} ETA {{eta_precise}} {{wide_msg}}",
            digits = pos / 2
        )
    } else if width >= pos + 14 + 8 {
        "{pos}/{len} ETA {eta_precise} {wide_msg}".to_string()
    } else {
        "{pos}/{len} {wide_msg}".to_string()
    }
}

/// One run's bar; hidden (and free) when stderr is not a terminal.
pub struct RunProgress {
    bar: ProgressBar,
    /// Images per second, smoothed over steps.
    rate: Mutex<Option<f64>>,
}

impl RunProgress {
    /// A bar for run `name` (rank `rank` when the process trains several).
    pub fn new(name: &str, rank: Option<usize>) -> Self {
        let bars = logging::bars();
        let bar = if bars.shown() {
            bars.multi().add(ProgressBar::new(0))
        } else {
            ProgressBar::hidden()
        };
        let label = match rank {
            Some(r) => format!("{} r{r}", fit(name, 9)),
            None => fit(name, 12),
        };
        bar.set_prefix(label);
        Self {
            bar,
            rate: Mutex::new(None),
        }
    }

    /// Leaves the bar drawn at its last state.
    pub fn finish(&self) {
        self.bar.finish();
    }
}

impl RunObserver for RunProgress {
    fn on_start(&self, step: u64, total: u64) -> Result<()> {
        let width = logging::terminal_width().unwrap_or(80);
        if let Ok(style) = ProgressStyle::with_template(&template(width, total)) {
            self.bar.set_style(style.progress_chars("=> "));
        }
        self.bar.set_length(total);
        self.bar.set_position(step);
        self.bar.reset_eta();
        Ok(())
    }

    fn on_step(&self, report: &StepReport<'_>) {
        let images = (report.timing.samples * report.world) as f64;
        let now = images / report.timing.total_s.max(1e-9);
        let rate = match self.rate.lock() {
            Ok(mut r) => {
                let smoothed = r.map_or(now, |old| 0.9 * old + 0.1 * now);
                *r = Some(smoothed);
                smoothed
            }
            Err(_) => now,
        };
        self.bar.set_message(format!("loss {:.4}  {rate:.0} img/s", report.metrics.loss));
        self.bar.set_position(report.metrics.step);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_parts_leave_room_for_the_message_at_every_width() {
        for width in [30, 40, 60, 80, 120, 200] {
            let t = template(width, 12_000);
            let fixed = if t.starts_with("{prefix") {
                let bar: usize = t.split("{bar:").nth(1).and_then(|s| s.split('}').next()?.parse().ok()).unwrap_or(0);
                13 + bar + 1 + 11 + 1 + 13
            } else if t.contains("ETA") {
                11 + 1 + 13
            } else {
                12
            };
            assert!(
                fixed + 8 <= width,
                "width {width}: {t} leaves {} columns",
                width.saturating_sub(fixed)
            );
        }
        assert_eq!(fit("a-very-long-job-name", 9), "a-very-l…");
    }
}
