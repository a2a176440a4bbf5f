//! The one-line progress of a job as `watch`, `submit --watch` and `local`
//! show it: state, bar, step/total, time left, loss, throughput, online
//! accuracies and the coordinator's message, fitted to the terminal's
//! width (parts that do not fit are left out, least useful first), so that
//! redrawing it in place never wraps and never leaves copies behind. Also
//! the terminal's width and the fitting of any line to it. Text only.

use super::client::{is_final, state_name};
use amdim_shared::proto::v1 as pb;

/// Columns of the terminal on stderr: its window size, else `$COLUMNS`,
/// else 80.
pub(crate) fn terminal_width() -> usize {
    // SAFETY: TIOCGWINSZ writes one `winsize` into the struct we pass and
    // reads nothing else; on failure it returns -1 and writes nothing.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 {
        return usize::from(ws.ws_col);
    }
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .filter(|&c| c > 0)
        .unwrap_or(80)
}

/// `line` cut to at most `width` characters, ending in `…` when cut.
pub(crate) fn fit(line: &str, width: usize) -> String {
    if line.chars().count() <= width {
        return line.to_string();
    }
    let mut out: String = line.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `h:mm:ss` for a number of seconds.
pub(crate) fn clock(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// The progress line of `j` in at most `width` characters (`usize::MAX`
/// for a log, where every part is written).
pub(crate) fn progress_line(j: &pb::Job, width: usize) -> String {
    let bar_len = if width >= 100 { 20 } else { 10 };
    let done = if j.total_steps > 0 {
        (j.step as f64 / j.total_steps as f64).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let filled = ((done * bar_len as f64).round() as usize).min(bar_len);
    // (position on the line, text), most important first.
    let mut parts: Vec<(u8, String)> = vec![
        (0, format!("{} {}", j.id, state_name(j.state))),
        (2, format!("{}/{} {:.0}%", j.step, j.total_steps, 100.0 * done)),
        (1, format!("[{}{}]", "#".repeat(filled), ".".repeat(bar_len - filled))),
    ];
    if let Some(t) = &j.stats {
        if !is_final(j.state) && t.step_seconds > 0.0 {
            let left = j.total_steps.saturating_sub(j.step) as f64 * t.step_seconds;
            parts.push((8, format!("ETA {}", clock(left))));
        }
        parts.push((4, format!("loss {:.3}", t.loss)));
        parts.push((3, format!("{:.0} img/s", t.samples_per_second)));
        if let (Some(lin), Some(mlp)) = (t.linear_accuracy, t.mlp_accuracy) {
            parts.push((6, format!("online lin {lin:.3} mlp {mlp:.3}")));
        }
        parts.push((5, format!("(1t5 {:.3} 1t7 {:.3} 5t5 {:.3})", t.loss_1t5, t.loss_1t7, t.loss_5t5)));
    }
    let mut chosen: Vec<(u8, String)> = Vec::new();
    let mut used = 0;
    for (pos, text) in parts {
        let len = text.chars().count() + if chosen.is_empty() { 0 } else { 2 };
        if used + len <= width {
            used += len;
            chosen.push((pos, text));
        }
    }
    if !j.message.is_empty() && used + 2 + 8 <= width {
        // The message takes what room is left (at least a few words).
        let room = width.saturating_sub(used + 2);
        chosen.push((9, fit(&j.message, room)));
    }
    chosen.sort_by_key(|(pos, _)| *pos);
    let line = chosen.into_iter().map(|(_, t)| t).collect::<Vec<_>>().join("  ");
    fit(&line, width)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> pb::Job {
        pb::Job {
            id: "job-000001".into(),
            state: pb::JobState::Running as i32,
            step: 30,
            total_steps: 120,
            message: "generation 1 on 2 worker(s)".into(),
            stats: Some(pb::TrainingStats {
                samples_per_second: 412.4,
                step_seconds: 0.5,
                loss: 19.5,
                loss_1t5: 5.5,
                loss_1t7: 7.25,
                loss_5t5: 6.75,
                linear_accuracy: Some(0.5),
                mlp_accuracy: Some(0.625),
            }),
            ..pb::Job::default()
        }
    }

    #[test]
    fn a_log_gets_every_part() {
        assert_eq!(
            progress_line(&job(), usize::MAX),
            "job-000001 RUNNING  [#####...............]  30/120 25%  412 img/s  loss 19.500  \
             (1t5 5.500 1t7 7.250 5t5 6.750)  online lin 0.500 mlp 0.625  ETA 0:00:45  generation 1 on 2 worker(s)"
        );
        assert_eq!(clock(3725.0), "1:02:05");
    }

    #[test]
    fn narrow_terminals_keep_the_most_useful_parts_within_the_width() {
        let j = job();
        for width in [20, 40, 60, 79, 80, 119, 120, 200] {
            let line = progress_line(&j, width);
            assert!(line.chars().count() <= width, "{width}: {line}");
            assert!(line.starts_with("job-000001 RUNNING"), "{width}: {line}");
        }
        let at80 = progress_line(&j, 79);
        assert!(
            at80.contains("30/120 25%") && at80.contains("ETA 0:00:45") && at80.contains("loss 19.500"),
            "{at80}"
        );
        let at120 = progress_line(&j, 119);
        assert!(
            at120.contains("online lin 0.500") && at120.contains("[#####..............."),
            "{at120}"
        );
        assert_eq!(fit("abcdef", 4), "abc…");
        assert_eq!(fit("abc", 4), "abc");
    }
}
