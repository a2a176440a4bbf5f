//! The job commands of `amdimctl` (submit, list, get, watch, events,
//! cancel, workers) as gRPC calls to the coordinator, with table, JSON or
//! YAML output. Each returns the process exit code: 0 ok, 1 when a watched
//! job did not succeed. Errors name the server. `watch` and `events
//! --follow` ride the coordinator's Watch stream and pick it up again,
//! missing nothing, when the coordinator restarts.

use super::output::{Output, utc_time};
use amdim_shared::auth::BearerToken;
use amdim_shared::proto::v1 as pb;
use amdim_shared::spec::JobSpec;
use anyhow::{Context, Result};
use pb::job_service_client::JobServiceClient;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A job-service client presenting the client token.
pub type Client = JobServiceClient<InterceptedService<Channel, BearerToken>>;

/// A client of the coordinator at `server` (https:// verified against
/// `tls_ca_file`, or the system's roots) presenting `token`, or an error
/// naming the server.
pub async fn connect(server: &str, token: Option<&str>, tls_ca_file: Option<&Path>) -> Result<Client> {
    let channel = amdim_shared::tls::endpoint("--server", server, tls_ca_file)?
        .connect()
        .await
        .with_context(|| format!("cannot reach the coordinator at {server} (--server or AMDIM_SERVER)"))?;
    let token = BearerToken::new(token).map_err(|e| anyhow::anyhow!("--token: {e}"))?;
    Ok(JobServiceClient::with_interceptor(channel, token))
}

/// The message of a refused call; a refused token says how to pass one.
pub fn refused(s: tonic::Status) -> anyhow::Error {
    if s.code() == tonic::Code::Unauthenticated {
        anyhow::anyhow!(
            "the coordinator refused the request: {} (--token, --token-file or AMDIM_TOKEN)",
            s.message()
        )
    } else {
        anyhow::anyhow!("{}", s.message())
    }
}

fn state_name(state: i32) -> &'static str {
    match pb::JobState::try_from(state).unwrap_or(pb::JobState::Unspecified) {
        pb::JobState::Unspecified => "UNKNOWN",
        pb::JobState::Pending => "PENDING",
        pb::JobState::Running => "RUNNING",
        pb::JobState::Restarting => "RESTARTING",
        pb::JobState::Succeeded => "SUCCEEDED",
        pb::JobState::Failed => "FAILED",
        pb::JobState::Cancelled => "CANCELLED",
    }
}

fn is_final(state: i32) -> bool {
    matches!(state_name(state), "SUCCEEDED" | "FAILED" | "CANCELLED")
}

/// A job as JSON (the proto message's fields, the state by name).
pub(crate) fn job_json(j: &pb::Job) -> serde_json::Value {
    serde_json::json!({
        "id": j.id,
        "name": j.name,
        "state": state_name(j.state),
        "min_workers": j.min_workers,
        "max_workers": j.max_workers,
        "priority": j.priority,
        "devices_per_worker": j.devices_per_worker,
        "restarts": j.restarts,
        "max_restarts": j.max_restarts,
        "preemptions": j.preemptions,
        "step": j.step,
        "total_steps": j.total_steps,
        "message": j.message,
        "created_unix": j.created_unix,
        "updated_unix": j.updated_unix,
        "stats": j.stats,
        "checkpoints": j.checkpoints.iter().map(|c| serde_json::json!({
            "step": c.step, "bytes": c.bytes, "generation": c.generation, "created_unix": c.created_unix,
        })).collect::<Vec<_>>(),
        "generations": j.generations.iter().map(|g| serde_json::json!({
            "number": g.number,
            "workers": g.workers,
            "rendezvous": g.rendezvous,
            "started_unix": g.started_unix,
            "end_reason": g.end_reason,
        })).collect::<Vec<_>>(),
    })
}

fn line(j: &pb::Job) -> String {
    format!(
        "{:<12} {:<20} {:<11} {:>8}/{:<8} {}",
        j.id,
        j.name,
        state_name(j.state),
        j.step,
        j.total_steps,
        j.message
    )
}

/// Submits `spec`, the effective spec read from `file` (its
/// AMDIM_SECTION__FIELD overrides applied, validated), so what runs is what
/// was checked here.
pub async fn submit(
    mut c: Client,
    file: &Path,
    spec: &JobSpec,
    min: Option<u32>,
    max: Option<u32>,
    watch_it: bool,
    output: Output,
) -> Result<ExitCode> {
    let spec_toml = spec.to_toml().map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let job = c
        .submit(pb::SubmitRequest {
            spec_toml,
            min_workers: min.unwrap_or(0),
            max_workers: max.unwrap_or(0),
        })
        .await
        .map_err(|s| refused(s).context(file.display().to_string()))?
        .into_inner();
    match output.document(&job_json(&job)) {
        Some(doc) => println!("{doc}"),
        None => println!("{}", job.id),
    }
    if watch_it {
        return watch(c, &job.id).await;
    }
    Ok(ExitCode::SUCCESS)
}

/// `amdimctl list`: every job, one line each (or one document).
pub async fn list(mut c: Client, output: Output) -> Result<ExitCode> {
    let jobs = c.list(pb::ListJobsRequest {}).await.map_err(refused)?.into_inner().jobs;
    if let Some(doc) = output.document(&serde_json::Value::Array(jobs.iter().map(job_json).collect())) {
        println!("{doc}");
    } else {
        println!("{:<12} {:<20} {:<11} {:>17} message", "id", "name", "state", "step/total");
        jobs.iter().for_each(|j| println!("{}", line(j)));
    }
    Ok(ExitCode::SUCCESS)
}

/// `amdimctl get`: one job with its generations and checkpoints.
pub async fn get(mut c: Client, id: &str, output: Output) -> Result<ExitCode> {
    let j = c.get(pb::GetJobRequest { id: id.into() }).await.map_err(refused)?.into_inner();
    if let Some(doc) = output.document(&job_json(&j)) {
        println!("{doc}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{}", line(&j));
    println!(
        "workers {}..{} × {} device(s), priority {}, restarts {}/{}, preemptions {}",
        j.min_workers,
        j.max_workers,
        j.devices_per_worker.max(1),
        j.priority,
        j.restarts,
        j.max_restarts,
        j.preemptions
    );
    for g in &j.generations {
        let end = if g.end_reason.is_empty() { "running" } else { &g.end_reason };
        println!("  generation {}: {} worker(s) {:?} — {end}", g.number, g.workers.len(), g.workers);
    }
    for c in &j.checkpoints {
        println!("  checkpoint step {} ({} bytes, generation {})", c.step, c.bytes, c.generation);
    }
    Ok(ExitCode::SUCCESS)
}

/// `h:mm:ss` for a number of seconds.
fn clock(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// The watch line of a job: state, a progress bar, step/total, throughput,
/// the loss terms, the last test accuracy and the time left.
pub(crate) fn progress_line(j: &pb::Job) -> String {
    const BAR: usize = 20;
    let done = if j.total_steps > 0 {
        j.step as f64 / j.total_steps as f64
    } else {
        0.0
    };
    let filled = ((done * BAR as f64).round() as usize).min(BAR);
    let mut out = format!(
        "{} {:<11} [{}{}] {}/{} {:>3.0}%",
        j.id,
        state_name(j.state),
        "#".repeat(filled),
        ".".repeat(BAR - filled),
        j.step,
        j.total_steps,
        100.0 * done
    );
    if let Some(t) = &j.stats {
        out.push_str(&format!(
            "  {:.0} samples/s  loss {:.3} (1t5 {:.3} 1t7 {:.3} 5t5 {:.3})",
            t.samples_per_second, t.loss, t.loss_1t5, t.loss_1t7, t.loss_5t5
        ));
        if let (Some(lin), Some(mlp)) = (t.linear_accuracy, t.mlp_accuracy) {
            out.push_str(&format!("  acc lin {lin:.3} mlp {mlp:.3}"));
        }
        if !is_final(j.state) && t.step_seconds > 0.0 {
            let left = j.total_steps.saturating_sub(j.step) as f64 * t.step_seconds;
            out.push_str(&format!("  ETA {}", clock(left)));
        }
    }
    if !j.message.is_empty() {
        out.push_str(&format!("  {}", j.message));
    }
    out
}

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

/// One event as a log line: time, job, generation, kind, what happened.
pub(crate) fn event_line(e: &pb::Event) -> String {
    let generation = if e.generation > 0 {
        format!("g{}", e.generation)
    } else {
        "-".into()
    };
    format!(
        "{} {} {:<3} {:<20} {}",
        utc_time(e.unix),
        e.job_id,
        generation,
        event_kind_name(e.kind),
        e.message
    )
}

/// `amdimctl events`: a job's events; with `follow`, new ones as they
/// happen until the job ends.
pub async fn events(mut c: Client, id: &str, follow: bool, output: Output) -> Result<ExitCode> {
    if follow {
        return follow_job(c, id, Shown::Events(output)).await;
    }
    let events = c
        .events(pb::EventsRequest { id: id.into() })
        .await
        .map_err(refused)?
        .into_inner()
        .events;
    match output.document(&serde_json::Value::Array(events.iter().map(event_json).collect())) {
        Some(doc) => println!("{doc}"),
        None => events.iter().for_each(|e| println!("{}", event_line(e))),
    }
    Ok(ExitCode::SUCCESS)
}

/// Shows the job's progress line and its events until it ends; exit 0
/// only when it succeeded.
pub async fn watch(c: Client, id: &str) -> Result<ExitCode> {
    follow_job(c, id, Shown::Progress).await
}

/// What `follow_job` prints.
#[derive(Clone, Copy)]
enum Shown {
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

/// Follows the job on the coordinator's Watch stream until it ends. A lost
/// stream (the coordinator restarting) is asked for again from the last
/// event seen, for up to `RECONNECT_FOR`.
async fn follow_job(mut c: Client, id: &str, shown: Shown) -> Result<ExitCode> {
    use std::io::IsTerminal;
    // On a terminal the line is redrawn in place; in a log, a line is
    // written when the state or message changes, and every 10 s.
    let terminal = std::io::stderr().is_terminal();
    let mut last_line = (String::new(), i32::MIN);
    let mut written = std::time::Instant::now();
    let mut after_seq = 0u64;
    let mut lost_since: Option<std::time::Instant> = None;
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
        let mut final_state = None;
        if let Some(mut stream) = stream {
            lost_since = None;
            loop {
                let update = match stream.message().await {
                    Ok(Some(u)) => u.update,
                    Ok(None) => break,
                    Err(s) if is_transient(&s) => break,
                    Err(s) => return Err(refused(s)),
                };
                match update {
                    Some(pb::watch_update::Update::Event(e)) => {
                        after_seq = e.seq;
                        match shown {
                            Shown::Progress if terminal => eprint!("\r\x1b[2K{}\n", event_line(&e)),
                            Shown::Progress => eprintln!("{}", event_line(&e)),
                            Shown::Events(output) => match output.document(&event_json(&e)) {
                                Some(doc) if output == Output::Yaml => println!("---\n{doc}"),
                                Some(doc) => println!("{doc}"),
                                None => println!("{}", event_line(&e)),
                            },
                        }
                    }
                    Some(pb::watch_update::Update::Job(j)) => {
                        if matches!(shown, Shown::Progress) {
                            let now = progress_line(&j);
                            if terminal {
                                eprint!("\r\x1b[2K{now}");
                                if is_final(j.state) {
                                    eprintln!();
                                }
                            } else if (j.message.clone(), j.state) != last_line
                                || written.elapsed() >= Duration::from_secs(10)
                                || is_final(j.state)
                            {
                                eprintln!("{now}");
                                last_line = (j.message.clone(), j.state);
                                written = std::time::Instant::now();
                            }
                        }
                        if is_final(j.state) {
                            final_state = Some(j.state);
                        }
                    }
                    None => {}
                }
            }
        }
        if let Some(state) = final_state {
            return Ok(if state_name(state) == "SUCCEEDED" {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        match lost_since {
            None => {
                lost_since = Some(std::time::Instant::now());
                if matches!(shown, Shown::Progress) {
                    eprintln!(
                        "\nwatch: lost the coordinator; trying again for up to {} s",
                        RECONNECT_FOR.as_secs()
                    );
                }
            }
            Some(since) if since.elapsed() > RECONNECT_FOR => {
                anyhow::bail!(
                    "lost the coordinator while watching {id} and could not reach it again for {} s",
                    RECONNECT_FOR.as_secs()
                );
            }
            Some(_) => {}
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Whether `s` is a job id as the coordinator makes them (`job-000042`).
pub fn is_job_id(s: &str) -> bool {
    s.strip_prefix("job-")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The checkpoint URI of job `id`, from the spec the coordinator holds.
pub async fn checkpoint_uri(mut c: Client, id: &str) -> Result<String> {
    let j = c.get(pb::GetJobRequest { id: id.into() }).await.map_err(refused)?.into_inner();
    let spec = JobSpec::from_toml_with_env(&j.spec_toml, &[]).map_err(|e| anyhow::anyhow!("job {id}: its spec: {e}"))?;
    Ok(spec.checkpoint.uri)
}

/// `amdimctl cancel`: cancels a job and prints its line.
pub async fn cancel(mut c: Client, id: &str) -> Result<ExitCode> {
    let j = c
        .cancel(pb::CancelJobRequest { id: id.into() })
        .await
        .map_err(refused)?
        .into_inner();
    println!("{}", line(&j));
    Ok(ExitCode::SUCCESS)
}

/// `amdimctl workers`: the registered workers.
pub async fn workers(mut c: Client, output: Output) -> Result<ExitCode> {
    let ws = c.workers(pb::ListWorkersRequest {}).await.map_err(refused)?.into_inner().workers;
    let v: Vec<_> = ws
        .iter()
        .map(|w| {
            serde_json::json!({"id": w.id, "name": w.name, "devices": w.devices, "rendezvous_addr": w.rendezvous_addr,
                "job_id": w.job_id, "last_seen_unix": w.last_seen_unix, "lost": w.lost})
        })
        .collect();
    if let Some(doc) = output.document(&serde_json::Value::Array(v)) {
        println!("{doc}");
    } else {
        println!(
            "{:<14} {:<16} {:>7} {:<22} {:<12} state",
            "id", "name", "devices", "rendezvous", "job"
        );
        for w in ws {
            let state = if w.lost {
                "lost"
            } else if w.job_id.is_empty() {
                "idle"
            } else {
                "busy"
            };
            println!(
                "{:<14} {:<16} {:>7} {:<22} {:<12} {state}",
                w.id, w.name, w.devices, w.rendezvous_addr, w.job_id
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watch_line_shows_progress_numbers_and_time_left() {
        let mut j = pb::Job {
            id: "job-000001".into(),
            state: pb::JobState::Running as i32,
            step: 30,
            total_steps: 120,
            ..pb::Job::default()
        };
        assert_eq!(progress_line(&j), "job-000001 RUNNING     [#####...............] 30/120  25%");
        j.stats = Some(pb::TrainingStats {
            samples_per_second: 412.4,
            step_seconds: 0.5,
            loss: 19.5,
            loss_1t5: 5.5,
            loss_1t7: 7.25,
            loss_5t5: 6.75,
            linear_accuracy: Some(0.5),
            mlp_accuracy: Some(0.625),
        });
        assert_eq!(
            progress_line(&j),
            "job-000001 RUNNING     [#####...............] 30/120  25%  412 samples/s  loss 19.500 (1t5 5.500 1t7 7.250 5t5 6.750)  acc lin 0.500 mlp 0.625  ETA 0:00:45"
        );
        assert_eq!(clock(3725.0), "1:02:05");
    }

    #[test]
    fn event_kinds_read_as_the_coordinator_names_them() {
        for kind in crate::server::EventKind::ALL {
            assert_eq!(event_kind_name(crate::server::event_kind(kind) as i32), kind.name());
        }
        assert_eq!(event_kind_name(0), "unknown");
        assert_eq!(event_kind_name(99), "unknown");
    }

    #[test]
    fn job_ids_are_told_apart_from_checkpoint_uris() {
        assert!(is_job_id("job-000042"));
        for not_an_id in ["job-", "job-12a", "s3://b/job-000001", "runs/job-000001", "job"] {
            assert!(!is_job_id(not_an_id), "{not_an_id}");
        }
    }
}
