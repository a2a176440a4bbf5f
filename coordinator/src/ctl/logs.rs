//! `amdimctl logs JOB [--rank R] [-f]`: a job's log lines, from the
//! coordinator's Logs stream (each rank's recent lines, then with `-f` new
//! ones until the job ends, picked up again when the coordinator restarts),
//! or, for a finished job the coordinator holds no lines of (e.g. after a
//! restart), from the log objects its workers stored under its checkpoint
//! URI. Lines are prefixed with `[rank R]` when several ranks are shown.
//! Reading only; the objects' layout is `amdim_shared::checkpoint`'s.

use super::jobs::{Client, refused};
use amdim_shared::checkpoint::{list_logs, read_log};
use amdim_shared::proto::v1 as pb;
use amdim_shared::spec::JobSpec;
use anyhow::{Context, Result};
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// How long `-f` keeps trying to reach a coordinator that went away.
const RECONNECT_FOR: Duration = Duration::from_secs(120);

fn is_final(j: &pb::Job) -> bool {
    matches!(
        pb::JobState::try_from(j.state),
        Ok(pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Cancelled)
    )
}

/// A broken connection or a coordinator going away, as opposed to a refusal.
fn is_transient(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::Cancelled
    )
}

/// How lines are printed: with their rank in front, or bare.
struct Printer {
    prefix: bool,
    out: std::io::StdoutLock<'static>,
}

impl Printer {
    fn print(&mut self, rank: u32, lines: &[String]) -> Result<()> {
        for line in lines {
            if self.prefix {
                writeln!(self.out, "[rank {rank}] {line}")?;
            } else {
                writeln!(self.out, "{line}")?;
            }
        }
        self.out.flush()?;
        Ok(())
    }
}

/// The most ranks any generation of `j` had.
fn world_size(j: &pb::Job) -> u32 {
    let per_worker = j.devices_per_worker.max(1);
    j.generations.iter().map(|g| g.workers.len() as u32 * per_worker).max().unwrap_or(0)
}

/// `amdimctl logs`: prints job `id`'s lines (one rank's with `rank`);
/// with `follow`, keeps printing new ones until the job ends.
pub async fn logs(mut c: Client, id: &str, rank: Option<u32>, follow: bool) -> Result<ExitCode> {
    let job = c.get(pb::GetJobRequest { id: id.into() }).await.map_err(refused)?.into_inner();
    let mut printer = Printer {
        prefix: rank.is_none() && world_size(&job) > 1,
        out: std::io::stdout().lock(),
    };
    let mut printed = 0usize;
    let mut lost_since: Option<Instant> = None;
    loop {
        let request = pb::LogsRequest {
            id: id.into(),
            rank,
            follow,
        };
        let ended = match c.logs(request).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(m)) => {
                            lost_since = None;
                            printed += m.lines.len();
                            printer.print(m.rank, &m.lines)?;
                        }
                        Ok(None) => break true,
                        Err(s) if follow && is_transient(&s) => break false,
                        Err(s) => return Err(refused(s)),
                    }
                }
            }
            Err(s) if follow && is_transient(&s) => false,
            Err(s) => return Err(refused(s)),
        };
        if ended {
            break;
        }
        let since = *lost_since.get_or_insert_with(Instant::now);
        if since.elapsed() > RECONNECT_FOR {
            anyhow::bail!("lost the coordinator for {} s", RECONNECT_FOR.as_secs());
        }
        eprintln!("lost the coordinator; reconnecting");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if printed == 0 {
        let job = c.get(pb::GetJobRequest { id: id.into() }).await.map_err(refused)?.into_inner();
        if is_final(&job) {
            stored(&job, rank, &mut printer).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the log objects of job `j` (one rank's with `rank`), generation
/// after generation, each led by a header line.
async fn stored(j: &pb::Job, rank: Option<u32>, printer: &mut Printer) -> Result<()> {
    let spec = JobSpec::from_toml_with_env(&j.spec_toml, &[]).map_err(|e| anyhow::anyhow!("job {}: its spec: {e}", j.id))?;
    let uri = spec.checkpoint.uri;
    let location = amdim_shared::storage::open(&uri, "checkpoint.uri", false)?;
    let objects = list_logs(&location)
        .await
        .with_context(|| format!("job {}: its log objects", j.id))?;
    let objects: Vec<_> = objects.into_iter().filter(|o| rank.is_none_or(|r| r == o.rank)).collect();
    if objects.is_empty() {
        eprintln!(
            "job {}: the coordinator holds no log lines and none are stored under {uri}/logs",
            j.id
        );
    }
    let several_generations = objects
        .first()
        .zip(objects.last())
        .is_some_and(|(a, b)| a.generation != b.generation);
    for o in objects {
        let text = read_log(&location, &o)
            .await
            .with_context(|| format!("job {}: its log objects", j.id))?;
        let lines: Vec<String> = String::from_utf8_lossy(&text).lines().map(str::to_string).collect();
        if several_generations {
            printer.print(o.rank, &[format!("— generation {} —", o.generation)])?;
        }
        printer.print(o.rank, &lines)?;
    }
    Ok(())
}
