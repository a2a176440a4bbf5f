//! What the soak checks once every job has ended: each job's state, its
//! sample logs (`samples::judge`), its checkpoints in storage (every
//! registered one complete and verified, the last one registered) and the
//! time its restarts cost (from its events). Reads the coordinator over
//! gRPC and the bucket with its own client; changes nothing.

use super::cluster::Client;
use super::s3::{BUCKET, WeedServer};
use super::samples::{self, Expected, Verdict};
use amdim_shared::checkpoint as io;
use amdim_shared::proto::v1 as pb;
use amdim_shared::spec::JobSpec;
use anyhow::{Context, Result};
use std::collections::BTreeSet;
use std::path::Path;

/// One job as the soak found it at the end.
pub(crate) struct JobResult {
    pub(crate) id: String,
    pub(crate) state: pb::JobState,
    pub(crate) step: u64,
    pub(crate) total_steps: u64,
    pub(crate) restarts: u32,
    pub(crate) message: String,
    /// The end reason of every generation that ended early.
    pub(crate) end_reasons: Vec<String>,
    pub(crate) samples: Verdict,
    /// Complete checkpoints in storage, and how many of them verified.
    pub(crate) checkpoints: usize,
    pub(crate) checkpoints_verified: usize,
    /// Checkpoints the coordinator registered.
    pub(crate) registered: usize,
    pub(crate) checkpoint_problems: Vec<String>,
    /// Seconds between a generation's end and the next one's start.
    pub(crate) waiting_s: f64,
    /// Seconds generations ran.
    pub(crate) running_s: f64,
}

impl JobResult {
    /// Waiting between generations plus the steps trained again, at this
    /// job's mean step time.
    pub(crate) fn time_lost_s(&self) -> f64 {
        let per_step = if self.samples.steps_logged > 0 {
            self.running_s / self.samples.steps_logged as f64
        } else {
            0.0
        };
        self.waiting_s + self.samples.steps_redone as f64 * per_step
    }

    pub(crate) fn succeeded(&self) -> bool {
        self.state == pb::JobState::Succeeded && self.step == self.total_steps
    }
}

/// Checks every job the coordinator knows.
pub(crate) async fn examine(client: &Client, s3: &WeedServer, samples_dir: &Path) -> Result<Vec<JobResult>> {
    let jobs = client
        .clone()
        .list(pb::ListJobsRequest {})
        .await
        .context("listing the jobs at the end")?
        .into_inner()
        .jobs;
    let mut results = Vec::new();
    for j in jobs {
        results.push(examine_job(client, s3, samples_dir, j).await?);
    }
    Ok(results)
}

async fn examine_job(client: &Client, s3: &WeedServer, samples_dir: &Path, j: pb::Job) -> Result<JobResult> {
    let spec = JobSpec::from_toml_with_env(&j.spec_toml, &[]).map_err(|e| anyhow::anyhow!("job {}: its spec: {e}", j.id))?;
    let prefix = spec
        .checkpoint
        .uri
        .strip_prefix(&format!("s3://{BUCKET}/"))
        .with_context(|| format!("job {}: checkpoints at {}, not in the soak's bucket", j.id, spec.checkpoint.uri))?;
    let location = s3.location(prefix)?;
    let (complete, verified, mut checkpoint_problems) = verify_all(&location).await;
    let registered: Vec<(u32, u64)> = j.checkpoints.iter().map(|c| (c.generation, c.step)).collect();
    for (generation, step) in &registered {
        if !complete.contains(step) {
            checkpoint_problems.push(format!(
                "registered checkpoint step {step} (g{generation}) is not complete in storage"
            ));
        }
    }
    let state = pb::JobState::try_from(j.state).unwrap_or(pb::JobState::Unspecified);
    let total = spec.train.max_steps;
    if state == pb::JobState::Succeeded && !registered.iter().any(|(_, s)| *s == total) {
        checkpoint_problems.push(format!(
            "the final checkpoint (step {total}) was not registered (registered: {:?})",
            registered.iter().map(|(_, s)| s).collect::<Vec<_>>()
        ));
    }
    let logs = samples::read_job_logs(samples_dir, &j.id)?;
    let verdict = samples::judge(
        &logs,
        &Expected {
            total_steps: total,
            samples: spec.data.synthetic_samples,
            batch: spec.train.batch_size,
            complete: complete.clone(),
            registered: registered.clone(),
        },
    );
    let events = client
        .clone()
        .events(pb::EventsRequest { id: j.id.clone() })
        .await
        .with_context(|| format!("events of {}", j.id))?
        .into_inner()
        .events;
    let (waiting_s, running_s) = generation_times(&events);
    Ok(JobResult {
        id: j.id,
        state,
        step: j.step,
        total_steps: total,
        restarts: j.restarts,
        message: j.message,
        end_reasons: j
            .generations
            .iter()
            .filter_map(|g| Some(g.end_reason.clone()).filter(|r| r != "completed" && !r.is_empty()))
            .collect(),
        samples: verdict,
        checkpoints: complete.len(),
        checkpoints_verified: verified,
        registered: registered.len(),
        checkpoint_problems,
        waiting_s,
        running_s,
    })
}

/// Every complete checkpoint under `location`, each file read back and
/// checked against its manifest: (complete steps, how many verified, problems).
async fn verify_all(location: &amdim_shared::storage::Location) -> (BTreeSet<u64>, usize, Vec<String>) {
    let steps = match io::complete_steps(location).await {
        Ok(s) => s,
        Err(e) => return (BTreeSet::new(), 0, vec![format!("listing checkpoints: {e}")]),
    };
    let (mut verified, mut problems) = (0, Vec::new());
    for &step in &steps {
        let checked = async {
            let manifest = io::read_manifest(location, step).await?;
            for file in &manifest.files {
                io::read_verified(location, &manifest, &file.name).await?;
            }
            Ok::<_, io::CheckpointError>(())
        };
        match checked.await {
            Ok(()) => verified += 1,
            Err(e) => problems.push(format!("checkpoint step {step} does not verify: {e}")),
        }
    }
    (steps.into_iter().collect(), verified, problems)
}

/// From a job's events: seconds between generations (an end to the next
/// start) and seconds generations ran (a start to its end, or to the job's end).
fn generation_times(events: &[pb::Event]) -> (f64, f64) {
    use pb::EventKind as K;
    let (mut waiting, mut running) = (0i64, 0i64);
    let mut started: Option<i64> = None;
    let mut ended: Option<i64> = None;
    for e in events {
        match K::try_from(e.kind).unwrap_or(K::Unspecified) {
            K::GenerationStarted => {
                if let Some(end) = ended.take() {
                    waiting += e.unix - end;
                }
                started = Some(e.unix);
            }
            K::GenerationEnded | K::Succeeded | K::Failed | K::Cancelled => {
                if let Some(start) = started.take() {
                    running += e.unix - start;
                    ended = Some(e.unix);
                }
            }
            _ => {}
        }
    }
    (waiting as f64, running as f64)
}
