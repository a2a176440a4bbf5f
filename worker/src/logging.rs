//! Where the worker's log lines and progress bars go. On a terminal, runs
//! draw progress bars (one per run, `train::progress`) and every log line is
//! printed above them through [`Bars::suspend`], so the two never interleave;
//! off a terminal there are no bars and the lines go straight to stderr.
//! On a terminal, text lines are broken at its width. The format is
//! `--log-format text|json` (`AMDIM_LOG_FORMAT`; the older
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
/// Text lines on a terminal are broken at its width (JSON lines never).
static WRAP: AtomicBool = AtomicBool::new(false);

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
        let mut line = std::mem::take(&mut self.0);
        if WRAP.load(Ordering::Relaxed)
            && let Some(width) = terminal_width()
        {
            line = wrap(&String::from_utf8_lossy(&line), width).into_bytes();
        }
        bars().suspend(|| {
            let mut err = std::io::stderr().lock();
            // A log line that cannot reach stderr has nowhere else to go.
            let _ = err.write_all(&line);
            let _ = err.flush();
        });
    }
}

/// Columns of the terminal on stderr, when it is one.
pub fn terminal_width() -> Option<usize> {
    // SAFETY: TIOCGWINSZ only fills the winsize struct it is given.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    (ok && ws.ws_col > 0).then_some(usize::from(ws.ws_col))
}

/// `text` with every line broken before it passes `width` columns, the
/// continuations indented by two spaces; ANSI escape sequences take no
/// room. On a terminal a log line then never runs past the right edge.
fn wrap(text: &str, width: usize) -> String {
    let width = width.max(8);
    let mut out = String::with_capacity(text.len() + 16);
    let mut column = 0;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            out.push(c);
            if chars.peek() == Some(&'[') {
                // CSI: parameters, then one final byte in @..~.
                for next in chars.by_ref() {
                    out.push(next);
                    if next != '[' && ('@'..='~').contains(&next) {
                        break;
                    }
                }
            }
            continue;
        }
        if c == '\n' {
            out.push(c);
            column = 0;
            continue;
        }
        if column == width {
            out.push_str("\n  ");
            column = 2;
        }
        out.push(c);
        column += 1;
    }
    out
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
        WRAP.store(format != Some(LogFormat::Json), Ordering::Relaxed);
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("AMDIM_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // On a terminal without an asked-for format, lines for people: no
    // module path, broken at the terminal's width.
    let people = terminal && format.is_none();
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(AboveBars)
        .with_ansi(terminal)
        .with_target(!people);
    let lines = match format.unwrap_or(LogFormat::Text) {
        LogFormat::Text => lines.boxed(),
        LogFormat::Json => lines.json().boxed(),
    };
    tracing_subscriber::registry()
        .with(lines)
        .with(filter)
        .with(crate::agent::PartLogLayer)
        .init();
}

#[cfg(test)]
mod tests {
    use super::wrap;

    #[test]
    fn long_lines_break_at_the_width_and_escapes_take_no_room() {
        let line = format!("\x1b[32mINFO\x1b[0m {}\n", "x".repeat(30));
        let wrapped = wrap(&line, 20);
        let visible: Vec<String> = wrapped.lines().map(|l| l.replace("\x1b[32m", "").replace("\x1b[0m", "")).collect();
        assert_eq!(visible, vec![format!("INFO {}", "x".repeat(15)), format!("  {}", "x".repeat(15))]);
        assert!(wrapped.ends_with('\n'));
        assert_eq!(wrap("short\n", 20), "short\n");
    }
}
