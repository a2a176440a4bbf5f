//! The end of `amdim-worker train` for people: a short table per run
//! (steps, wall time, the final loss terms, the online heads' accuracies —
//! labelled as the live signal they are, with the probe named as the real
//! figure — and where the checkpoints and the history are), and who gets
//! which form: the table on a terminal, the JSON line for programs. Only
//! formats; the numbers are `train::run`'s `RunSummary`.

use crate::train::run::RunSummary;
use std::fmt::Write;
use std::io::IsTerminal;

/// (table on stderr, JSON line on stdout): the table when stderr is a
/// terminal, the JSON line unless both stdout and stderr are terminals
/// (then a person reads the table and no program reads stdout).
pub fn audiences() -> (bool, bool) {
    let (err, out) = (std::io::stderr().is_terminal(), std::io::stdout().is_terminal());
    (err, !(err && out))
}

/// The summary table of run `name`, lines of at most ~76 columns (paths
/// and URIs excepted, which are printed whole so they can be copied).
pub fn table(name: &str, s: &RunSummary) -> String {
    let mut out = String::new();
    let state = if s.stopped_early {
        "stopped (resume with --resume)"
    } else {
        "finished"
    };
    let _ = writeln!(out, "\n{name}: {state}");
    let mut row = |label: &str, value: String| {
        let _ = writeln!(out, "  {label:<14} {value}");
    };
    row("steps", s.steps.to_string());
    row("wall time", amdim_shared::duration::human(s.wall_s));
    if let Some(l) = &s.last_step {
        row("loss", format!("{:.4} (step {})", l.loss, l.step));
        row("  nce", format!("1t5 {:.4}  1t7 {:.4}  5t5 {:.4}", l.nce_1t5, l.nce_1t7, l.nce_5t5));
        row(
            "  reg, heads",
            format!("{:.4}, lin {:.4}  mlp {:.4}", l.reg, l.class_lin, l.class_mlp),
        );
        row("throughput", format!("{:.0} images/s", l.images_per_s));
    }
    if let Some(e) = &s.last_eval {
        row(
            "online head",
            format!(
                "linear {:.1} %  mlp {:.1} %  ({} test images)",
                100.0 * e.linear,
                100.0 * e.mlp,
                e.samples
            ),
        );
        let _ = writeln!(
            out,
            "  {:<14} (live signal during training; the linear probe is the real\n  {:<14}  figure: `amdim-worker probe`)",
            "", ""
        );
    }
    let _ = writeln!(out, "  {:<14} {}", "checkpoints", s.checkpoint_uri);
    if let Some(h) = &s.history_uri {
        let _ = writeln!(out, "  {:<14} {h}", "history");
    }
    out
}
