//! Where the worker's log lines and progress bars go. On a terminal, runs
//! draw progress bars (one per run, `train::progress`) and every log line is
//! printed above them through [`Bars::suspend`], so the two never interleave;
//! off a terminal there are no bars and the lines go straight to stderr.
//! The format is `--log-format text|json` (`AMDIM_LOG_FORMAT`; the older
//! `--log-json` / `AMDIM_LOG_JSON` still mean json), the filter `AMDIM_LOG`
//! (default `info`).
//!
//! This module owns the subscriber set-up only: one [`init`] that builds
//! the layers (a further layer — e.g. one that ships lines elsewhere — is
//! one more `.with(...)` there). It must not decide what is logged.

use indicatif::{MultiProgress, ProgressDrawTarget};
use std::io::{IsTerminal, Write};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable `level target: message key=value` lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The progress bars of this process: drawn on stderr when it is a
/// terminal, hidden otherwise.
pub struct Bars {
    multi: MultiProgress,
    shown: bool,
}

impl Bars {
    /// Whether bars are drawn (stderr is a terminal).
    pub fn shown(&self) -> bool {
        self.shown
    }

    /// The bars, to add one to.
    pub fn multi(&self) -> &MultiProgress {
        &self.multi
    }

    /// Runs `f` with the bars cleared, then draws them again below
    /// whatever `f` printed.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        if self.shown { self.multi.suspend(f) } else { f() }
    }
}

static BARS: OnceLock<Bars> = OnceLock::new();
static STEP_LINES: AtomicBool = AtomicBool::new(true);

/// This process's progress bars (hidden until [`init`] finds a terminal).
pub fn bars() -> &'static Bars {
    BARS.get_or_init(|| Bars {
        multi: MultiProgress::with_draw_target(ProgressDrawTarget::hidden()),
        shown: false,
    })
}

/// Whether the per-step log line is wanted: not when a bar shows the same
/// on a terminal and no format was asked for (the detail is in the run's
/// history file and metrics).
pub fn step_lines() -> bool {
    STEP_LINES.load(Ordering::Relaxed)
}

/// Writes each log line to stderr in one piece, with the bars cleared.
#[derive(Clone, Copy)]
struct AboveBars;

/// One log line being formatted; printed when tracing drops it.
struct LineBuffer(Vec<u8>);

impl Write for LineBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        let line = std::mem::take(&mut self.0);
        bars().suspend(|| {
            let mut err = std::io::stderr().lock();
            // A log line that cannot reach stderr has nowhere else to go.
            let _ = err.write_all(&line);
            let _ = err.flush();
        });
    }
}

impl<'a> MakeWriter<'a> for AboveBars {
    type Writer = LineBuffer;
    fn make_writer(&'a self) -> LineBuffer {
        LineBuffer(Vec::with_capacity(256))
    }
}

/// Sets up logging for this process: `format` as asked (None: text), bars
/// on a terminal. Call once, before any log line.
pub fn init(format: Option<LogFormat>) {
    let terminal = std::io::stderr().is_terminal();
    if terminal {
        let _ = BARS.set(Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4)),
            shown: true,
        });
        STEP_LINES.store(format.is_some(), Ordering::Relaxed);
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("AMDIM_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let lines = tracing_subscriber::fmt::layer().with_writer(AboveBars).with_ansi(terminal);
    let lines = match format.unwrap_or(LogFormat::Text) {
        LogFormat::Text => lines.boxed(),
        LogFormat::Json => lines.json().boxed(),
    };
    tracing_subscriber::registry().with(lines).with(filter).init();
}
