//! A progress bar on stderr for feature extraction: redrawn in place at
//! most five times a second on a terminal; elsewhere (logs, pipes) one line
//! when the work is done. Output only; it never changes what is computed.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

const WIDTH: usize = 30;
const REDRAW: Duration = Duration::from_millis(200);

pub(crate) struct Progress {
    label: String,
    total: usize,
    done: usize,
    started: Instant,
    drawn: Option<Instant>,
    terminal: bool,
}

/// `[#####.....]`-style bar of `done` out of `total`.
pub(crate) fn bar(done: usize, total: usize, width: usize) -> String {
    let filled = (done.min(total) * width).checked_div(total).unwrap_or(width);
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

impl Progress {
    pub(crate) fn new(label: impl Into<String>, total: usize) -> Self {
        Self {
            label: label.into(),
            total,
            done: 0,
            started: Instant::now(),
            drawn: None,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    pub(crate) fn advance(&mut self, n: usize) {
        self.done += n;
        if self.terminal && self.drawn.is_none_or(|t| t.elapsed() >= REDRAW) {
            self.draw("\r");
            self.drawn = Some(Instant::now());
        }
    }

    pub(crate) fn finish(self) {
        self.draw(if self.terminal { "\r" } else { "" });
        eprintln!();
    }

    fn draw(&self, prefix: &str) {
        let secs = self.started.elapsed().as_secs_f64();
        let rate = self.done as f64 / secs.max(1e-9);
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "{prefix}{:<24} {} {}/{} images  {:.1} s  {:.0} images/s",
            self.label,
            bar(self.done, self.total, WIDTH),
            self.done,
            self.total,
            secs,
            rate
        );
        let _ = err.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_in_proportion() {
        assert_eq!(bar(0, 10, 4), "[....]");
        assert_eq!(bar(5, 10, 4), "[##..]");
        assert_eq!(bar(10, 10, 4), "[####]");
        assert_eq!(bar(0, 0, 4), "[####]", "nothing to do is done");
    }
}
