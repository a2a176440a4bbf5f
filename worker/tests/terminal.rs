//! `amdimctl local` in a real terminal: a detached tmux pane 80 and 120
//! columns wide, captured every half second while a 2-worker job runs. The
//! pane must show no line wider than itself, never more than one progress
//! line (a redraw that wrapped would leave a copy behind), none of the
//! workers' log lines, and at the end the summary with the log folder.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::coordinator_bin;
use support::small_job::SmallJob;

fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux")
        .args(args)
        .output()
        .expect("tmux (scripts/install-test-deps.sh installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A 40-step synthetic job on 1 or 2 workers with a long name, its
/// checkpoints (and so its logs) under `run/`.
fn spec(dir: &Path) -> std::path::PathBuf {
    SmallJob::new(
        "a-job-name-long-enough-to-matter-in-a-narrow-terminal",
        40,
        dir.join("run/checkpoints"),
    )
    .every_steps(20)
    .workers(1, 2)
    .write(&dir.join("job.toml"))
}

#[test]
fn local_fits_80_and_120_column_panes_without_debris() {
    let ctl = coordinator_bin("amdimctl");
    for width in [80usize, 120] {
        let tmp = tempfile::tempdir().unwrap();
        let session = format!("amdim-test-{}-{width}", std::process::id());
        let command = format!(
            "{} local -f {} --workers 2 --worker-bin {}; echo EXIT=$?; sleep 300",
            ctl.display(),
            spec(tmp.path()).display(),
            env!("CARGO_BIN_EXE_amdim-worker")
        );
        let (w, h) = (width.to_string(), "30".to_string());
        tmux(&["new-session", "-d", "-s", &session, "-x", &w, "-y", &h, &command]);
        let started = Instant::now();
        let mut captures = Vec::new();
        let last = loop {
            std::thread::sleep(Duration::from_millis(500));
            let pane = tmux(&["capture-pane", "-p", "-J", "-t", &session]);
            if pane.contains("EXIT=") || started.elapsed() > Duration::from_secs(240) {
                break pane;
            }
            captures.push(pane);
        };
        tmux(&["kill-session", "-t", &session]);
        captures.push(last.clone());
        for pane in &captures {
            for line in pane.lines() {
                assert!(
                    line.chars().count() <= width,
                    "{width} columns, a line of {}:\n{pane}",
                    line.chars().count()
                );
                assert!(!line.contains(" INFO "), "a worker's log line in the pane:\n{pane}");
            }
            let bars = pane.lines().filter(|l| l.contains("  [") && l.contains("]  ")).count();
            assert!(bars <= 1, "{bars} progress lines at {width} columns:\n{pane}");
        }
        assert!(last.contains("EXIT=0") && last.contains("SUCCEEDED"), "{last}");
        let logs = tmp.path().join("run/logs");
        assert!(last.contains("LOGS") && last.contains(&logs.display().to_string()), "{last}");
        let worker_log = std::fs::read_to_string(logs.join("worker-0.log")).unwrap();
        assert!(worker_log.contains("INFO"), "{worker_log}");
    }
}
