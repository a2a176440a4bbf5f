//! The progress of one feature extraction: an indicatif bar on a terminal
//! (drawn through `logging::bars()`, so log lines print above it; shared
//! by the lanes that extract at once), and one line with the count, time
//! and rate when the work is done, on a terminal or not (logs, pipes).
//! Output only; it never changes what is computed.

use crate::logging;
use indicatif::{ProgressBar, ProgressStyle};
use std::time::Instant;

const TEMPLATE: &str = "{prefix:24} [{bar:30}] {pos}/{len} images  {elapsed}  {per_sec}";

pub(crate) struct Progress {
    label: String,
    bar: ProgressBar,
    started: Instant,
}

/// The line printed when `done` images took `secs` seconds.
fn summary(label: &str, done: u64, secs: f64) -> String {
    let rate = done as f64 / secs.max(1e-9);
    format!("{label:<24} {done} images  {secs:.1} s  {rate:.0} images/s")
}

impl Progress {
    pub(crate) fn new(label: impl Into<String>, total: usize) -> Self {
        let label = label.into();
        let bars = logging::bars();
        let bar = if bars.shown() {
            bars.multi().add(ProgressBar::new(total as u64))
        } else {
            ProgressBar::hidden()
        };
        bar.set_length(total as u64);
        if let Ok(style) = ProgressStyle::with_template(TEMPLATE) {
            bar.set_style(style.progress_chars("#>."));
        }
        bar.set_prefix(label.clone());
        Self {
            label,
            bar,
            started: Instant::now(),
        }
    }

    /// Counts `n` more images done; callable from any lane.
    pub(crate) fn advance(&self, n: usize) {
        self.bar.inc(n as u64);
    }

    /// Removes the bar and prints the summary line.
    pub(crate) fn finish(self) {
        let line = summary(&self.label, self.bar.position(), self.started.elapsed().as_secs_f64());
        self.bar.finish_and_clear();
        logging::bars().suspend(|| eprintln!("{line}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_gives_count_time_and_rate() {
        assert_eq!(
            summary("pixels: test split", 1000, 2.0),
            "pixels: test split       1000 images  2.0 s  500 images/s"
        );
        assert!(summary("x", 0, 0.0).ends_with(" 0 images/s"), "nothing done in no time");
    }

    #[test]
    fn every_lane_counts_into_one_bar() {
        let p = Progress::new("test", 10);
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| p.advance(5));
            }
        });
        assert_eq!(p.bar.position(), 10);
        p.finish();
    }
}
