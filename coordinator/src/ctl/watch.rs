//! Following a job: `amdimctl watch` (the progress line and events until
//! the job ends), `events` (a job's events, `-f` to follow them) and the
//! loop both ride, the coordinator's Watch stream, picked up again from
//! the last event seen when the coordinator restarts. On a terminal the
//! progress line is redrawn in place within the terminal's width (never
//! wrapping, so it leaves no copies) and event lines are cut to the width;
//! in a log, lines are written when something changes. No job control:
//! `jobs` submits and cancels.

use super::client::{Client, is_final, refused, state_name};
use super::exit::{Exit, tagged};
use super::output::{Output, utc_time};
use super::progress::{fit, progress_line, terminal_width};
use super::table::{Format, Table};
use amdim_shared::proto::v1 as pb;
use anyhow::Result;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// The kind's proto name without its prefix, in lower case
/// (`EVENT_KIND_GENERATION_STARTED` → `generation_started`).
fn event_kind_name(kind: i32) -> String {
    match pb::EventKind::try_from(kind) {
        Ok(k) if k != pb::EventKind::Unspecified => k.as_str_name().trim_start_matches("EVENT_KIND_").to_ascii_lowercase(),
        _ => "unknown".into(),
    }
}

/// An event as JSON (the kind by name).
pub(crate) fn event_json(e: &pb::Event) -> serde_json::Value {
    serde_json::json!({
        "seq": e.seq,
        "job_id": e.job_id,
        "unix": e.unix,
        "time": utc_time(e.unix),
        "kind": event_kind_name(e.kind),
        "generation": e.generation,
        "message": e.message,
    })
}

fn generation(e: &pb::Event) -> String {
    if e.generation > 0 {
        format!("g{}", e.generation)
    } else {
        "-".into()
    }
}

/// One event as a log line: time, job, generation, kind, what happened.
pub(crate) fn event_line(e: &pb::Event) -> String {
    format!(
        "{} {} {:<3} {:<20} {}",
        utc_time(e.unix),
        e.job_id,
        generation(e),
        event_kind_name(e.kind),
        e.message
    )
}

/// An event as a terminal shows it above the progress line: time of day,
/// generation, kind, message (the job is the one being watched).
fn event_line_short(e: &pb::Event) -> String {
    let time = utc_time(e.unix);
    format!(
        "{} {:<3} {:<20} {}",
        time.get(11..19).unwrap_or(&time),
        generation(e),
        event_kind_name(e.kind),
        e.message
    )
}

/// `amdimctl events`: a job's events as a table (or one document); with
/// `follow`, as lines while they happen, until the job ends.
pub async fn events(mut c: Client, id: &str, follow: bool, format: Format) -> Result<()> {
    if follow {
        follow_job(c, id, Shown::Events(format.output), None).await?;
        return Ok(());
    }
    let events = c
        .events(pb::EventsRequest { id: id.into() })
        .await
        .map_err(refused)?
        .into_inner()
        .events;
    if let Some(doc) = format.document(&serde_json::Value::Array(events.iter().map(event_json).collect())) {
        println!("{doc}");
        return Ok(());
    }
    let mut t = Table::new(&["time", "+seq", "generation", "kind", "message"]);
    for e in &events {
        t.row(vec![
            utc_time(e.unix),
            e.seq.to_string(),
            generation(e),
            event_kind_name(e.kind),
            e.message.clone(),
        ]);
    }
    t.print(format);
    Ok(())
}

/// `amdimctl watch`: the job's progress line and events until it ends; an
/// error with exit 1 unless it succeeded.
pub async fn watch(c: Client, id: &str) -> Result<()> {
    let job = follow_job(c, id, Shown::Progress, None).await?;
    succeeded(&job)
}

/// Ok when `job` succeeded, else an error (exit 1) saying how it ended.
pub(crate) fn succeeded(job: &pb::Job) -> Result<()> {
    if state_name(job.state) == "SUCCEEDED" {
        return Ok(());
    }
    Err(tagged(
        Exit::Failed,
        anyhow::anyhow!("job {} ended {}: {}", job.id, state_name(job.state), job.message),
    ))
}

/// What `follow_job` prints.
#[derive(Clone, Copy)]
pub(crate) enum Shown {
    /// Events as log lines and the progress line (redrawn on a terminal),
    /// both on stderr.
    Progress,
    /// Only events, on stdout, as lines or one JSON/YAML document each.
    Events(Output),
}

/// A broken connection or a coordinator going away (worth asking again),
/// as opposed to a refusal.
fn is_transient(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::Cancelled
    )
}

/// How long `watch` keeps trying to reach a coordinator that went away.
const RECONNECT_FOR: Duration = Duration::from_secs(120);

/// How the progress line reaches stderr.
struct Progress {
    terminal: bool,
    /// Something is drawn on the current line (to be cleared first).
    drawn: bool,
    last: (String, i32),
    written: Instant,
}

impl Progress {
    fn new() -> Self {
        Self {
            terminal: std::io::stderr().is_terminal(),
            drawn: false,
            last: (String::new(), i32::MIN),
            written: Instant::now(),
        }
    }

    /// Writes a lasting line above the progress line: on a terminal
    /// `short`, cut to the width; in a log `full`.
    fn line(&mut self, full: &str, short: &str) {
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let width = terminal_width().saturating_sub(1);
            let _ = writeln!(err, "\r\x1b[2K{}", fit(short, width));
            self.drawn = false;
        } else {
            let _ = writeln!(err, "{full}");
        }
    }

    /// Shows `j`'s progress: redrawn in place on a terminal; in a log, when
    /// the state or message changes, every 10 s and at the end.
    fn job(&mut self, j: &pb::Job) {
        let mut err = std::io::stderr().lock();
        if self.terminal {
            // One column spare: a line as wide as the terminal would wrap
            // in some terminals before the next redraw clears it.
            let now = progress_line(j, terminal_width().saturating_sub(1));
            let _ = write!(err, "\r\x1b[2K{now}");
            self.drawn = true;
            if is_final(j.state) {
                let _ = writeln!(err);
                self.drawn = false;
            }
            let _ = err.flush();
        } else if (j.message.clone(), j.state) != self.last || self.written.elapsed() >= Duration::from_secs(10) || is_final(j.state) {
            let _ = writeln!(err, "{}", progress_line(j, usize::MAX));
            self.last = (j.message.clone(), j.state);
            self.written = Instant::now();
        }
    }

    /// Ends a drawn progress line so that what follows starts on its own.
    fn finish(&mut self) {
        if self.drawn {
            eprintln!();
            self.drawn = false;
        }
    }
}

/// Follows the job on the coordinator's Watch stream until it ends and
/// returns it as it ended; every event also goes to `events_log` when
/// given (as JSON lines). A lost stream (the coordinator restarting) is
/// asked for again from the last event seen, for up to `RECONNECT_FOR`.
pub(crate) async fn follow_job(mut c: Client, id: &str, shown: Shown, mut events_log: Option<&mut std::fs::File>) -> Result<pb::Job> {
    let mut progress = Progress::new();
    let mut after_seq = 0u64;
    let mut lost_since: Option<Instant> = None;
    loop {
        let request = pb::WatchRequest {
            id: id.into(),
            after_seq,
            min_interval_ms: 250,
        };
        let stream = match c.watch(request).await {
            Ok(s) => Some(s.into_inner()),
            Err(s) if is_transient(&s) => None,
            Err(s) => return Err(refused(s)),
        };
        let mut ended = None;
        if let Some(mut stream) = stream {
            lost_since = None;
            loop {
                let update = match stream.message().await {
                    Ok(Some(u)) => u.update,
                    Ok(None) => break,
                    Err(s) if is_transient(&s) => break,
                    Err(s) => {
                        progress.finish();
                        return Err(refused(s));
                    }
                };
                match update {
                    Some(pb::watch_update::Update::Event(e)) => {
                        after_seq = e.seq;
                        if let Some(log) = events_log.as_deref_mut() {
                            let _ = writeln!(log, "{}", event_json(&e));
                        }
                        match shown {
                            Shown::Progress => progress.line(&event_line(&e), &event_line_short(&e)),
                            Shown::Events(output) => match output.document(&event_json(&e)) {
                                Some(doc) if output == Output::Yaml => println!("---\n{doc}"),
                                Some(doc) => println!("{doc}"),
                                None => println!("{}", event_line(&e)),
                            },
                        }
                    }
                    Some(pb::watch_update::Update::Job(j)) => {
                        if matches!(shown, Shown::Progress) {
                            progress.job(&j);
                        }
                        if is_final(j.state) {
                            ended = Some(j);
                        }
                    }
                    None => {}
                }
            }
        }
        if let Some(job) = ended {
            progress.finish();
            return Ok(job);
        }
        match lost_since {
            None => {
                lost_since = Some(Instant::now());
                if matches!(shown, Shown::Progress) {
                    progress.finish();
                    let text = format!("watch: lost the coordinator; trying again for up to {} s", RECONNECT_FOR.as_secs());
                    progress.line(&text, &text);
                }
            }
            Some(since) if since.elapsed() > RECONNECT_FOR => {
                progress.finish();
                return Err(tagged(
                    Exit::Unreachable,
                    anyhow::anyhow!(
                        "lost the coordinator while watching {id} and could not reach it again for {} s",
                        RECONNECT_FOR.as_secs()
                    ),
                ));
            }
            Some(_) => {}
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_kinds_read_as_the_coordinator_names_them() {
        for kind in crate::server::EventKind::ALL {
            assert_eq!(event_kind_name(crate::server::event_kind(kind) as i32), kind.name());
        }
        assert_eq!(event_kind_name(0), "unknown");
        assert_eq!(event_kind_name(99), "unknown");
        let e = pb::Event {
            seq: 2,
            job_id: "job-000001".into(),
            unix: 1_796_000_000,
            kind: pb::EventKind::GenerationStarted as i32,
            generation: 1,
            message: "2 worker(s)".into(),
        };
        assert_eq!(
            event_line(&e),
            "2026-11-30T00:53:20Z job-000001 g1  generation_started   2 worker(s)"
        );
        assert_eq!(event_line_short(&e), "00:53:20 g1  generation_started   2 worker(s)");
    }
}
