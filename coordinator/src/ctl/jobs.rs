//! The job commands of `amdimctl` that ask the coordinator once: submit,
//! list (filtered by state, limited), get, cancel, workers; their tables
//! (`-o table|wide`) and JSON/YAML records. Connecting and the words of
//! refusals are `client`'s (re-exported here for the other commands);
//! following a job is `watch`'s.

use super::checkpoints::human_age;
use super::client::state_name;
pub use super::client::{Client, checkpoint_uri, connect, is_job_id, refused};
use super::output::utc_time;
use super::table::{Format, Table};
use super::watch;
use amdim_shared::proto::v1 as pb;
use amdim_shared::spec::JobSpec;
use anyhow::Result;
use std::path::Path;

/// A job state `list --state` accepts.
#[allow(missing_docs, reason = "clap would print variant docs in --help, which the names already say")]
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StateFilter {
    Pending,
    Running,
    Restarting,
    Succeeded,
    Failed,
    Cancelled,
}

impl StateFilter {
    fn matches(self, state: i32) -> bool {
        state_name(state).eq_ignore_ascii_case(&format!("{self:?}"))
    }
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

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn age(unix: i64) -> String {
    if unix <= 0 {
        return String::new();
    }
    human_age(u64::try_from(now_unix() - unix).unwrap_or(0)).replace(' ', "")
}

/// The job table: one row per job, wide columns marked `+`.
fn job_table(jobs: &[pb::Job]) -> Table {
    let mut t = Table::new(&[
        "id",
        "name",
        "state",
        "step",
        "+workers",
        "+restarts",
        "+loss",
        "+img/s",
        "age",
        "message",
    ]);
    for j in jobs {
        let stats = j.stats.as_ref();
        t.row(vec![
            j.id.clone(),
            j.name.clone(),
            state_name(j.state).into(),
            format!("{}/{}", j.step, j.total_steps),
            format!("{}..{}", j.min_workers, j.max_workers),
            format!("{}/{}", j.restarts, j.max_restarts),
            stats.map(|s| format!("{:.3}", s.loss)).unwrap_or_default(),
            stats.map(|s| format!("{:.0}", s.samples_per_second)).unwrap_or_default(),
            age(j.created_unix),
            j.message.clone(),
        ]);
    }
    t
}

/// Submits `spec`, the effective spec read from `file` (its overrides
/// applied, validated), so what runs is what was checked here.
pub(crate) async fn submit_spec(c: &mut Client, file: &Path, spec: &JobSpec, (min, max): (Option<u32>, Option<u32>)) -> Result<pb::Job> {
    let spec_toml = spec.to_toml().map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    Ok(c.submit(pb::SubmitRequest {
        spec_toml,
        min_workers: min.unwrap_or(0),
        max_workers: max.unwrap_or(0),
    })
    .await
    .map_err(|s| refused(s).context(file.display().to_string()))?
    .into_inner())
}

/// `amdimctl submit`: submits `spec` (see `submit_spec`) and prints the
/// new job's id (or record). With `watch_it`, follows it: an error (exit
/// 1) unless it succeeded.
pub async fn submit(
    mut c: Client,
    file: &Path,
    spec: &JobSpec,
    workers: (Option<u32>, Option<u32>),
    watch_it: bool,
    format: Format,
) -> Result<()> {
    let job = submit_spec(&mut c, file, spec, workers).await?;
    match format.document(&job_json(&job)) {
        Some(doc) => println!("{doc}"),
        None => println!("{}", job.id),
    }
    if watch_it {
        return watch::watch(c, &job.id).await;
    }
    Ok(())
}

/// `amdimctl list`: the jobs in any of `states` (all when empty), the
/// `limit` newest, oldest first.
pub async fn list(mut c: Client, states: &[StateFilter], limit: Option<usize>, format: Format) -> Result<()> {
    let mut jobs = c.list(pb::ListJobsRequest {}).await.map_err(refused)?.into_inner().jobs;
    jobs.retain(|j| states.is_empty() || states.iter().any(|s| s.matches(j.state)));
    jobs.sort_by(|a, b| (a.created_unix, &a.id).cmp(&(b.created_unix, &b.id)));
    if let Some(n) = limit {
        jobs.drain(..jobs.len().saturating_sub(n));
    }
    match format.document(&serde_json::Value::Array(jobs.iter().map(job_json).collect())) {
        Some(doc) => println!("{doc}"),
        None => job_table(&jobs).print(format),
    }
    Ok(())
}

/// `amdimctl get`: one job, then its generations and checkpoints.
pub async fn get(mut c: Client, id: &str, format: Format) -> Result<()> {
    let j = c.get(pb::GetJobRequest { id: id.into() }).await.map_err(refused)?.into_inner();
    if let Some(doc) = format.document(&job_json(&j)) {
        println!("{doc}");
        return Ok(());
    }
    job_table(std::slice::from_ref(&j)).print(format);
    if format.no_headers {
        return Ok(());
    }
    println!(
        "\nworkers {}..{} x {} device(s), priority {}, restarts {}/{}, preemptions {}",
        j.min_workers,
        j.max_workers,
        j.devices_per_worker.max(1),
        j.priority,
        j.restarts,
        j.max_restarts,
        j.preemptions
    );
    if !j.generations.is_empty() {
        println!();
        let mut t = Table::new(&["generation", "workers", "started", "+worker ids", "ended"]);
        for g in &j.generations {
            t.row(vec![
                g.number.to_string(),
                g.workers.len().to_string(),
                utc_time(g.started_unix),
                g.workers.join(","),
                if g.end_reason.is_empty() {
                    "running".into()
                } else {
                    g.end_reason.clone()
                },
            ]);
        }
        t.print(format);
    }
    if !j.checkpoints.is_empty() {
        println!();
        let mut t = Table::new(&["checkpoint step", "size", "generation", "+created"]);
        for c in &j.checkpoints {
            t.row(vec![
                c.step.to_string(),
                super::dataset::human_bytes(c.bytes),
                c.generation.to_string(),
                utc_time(c.created_unix),
            ]);
        }
        t.print(format);
    }
    Ok(())
}

/// `amdimctl cancel`: cancels a job and prints its row.
pub async fn cancel(mut c: Client, id: &str, format: Format) -> Result<()> {
    let j = c
        .cancel(pb::CancelJobRequest { id: id.into() })
        .await
        .map_err(refused)?
        .into_inner();
    match format.document(&job_json(&j)) {
        Some(doc) => println!("{doc}"),
        None => job_table(std::slice::from_ref(&j)).print(format),
    }
    Ok(())
}

/// `amdimctl workers`: the registered workers.
pub async fn workers(mut c: Client, format: Format) -> Result<()> {
    let ws = c.workers(pb::ListWorkersRequest {}).await.map_err(refused)?.into_inner().workers;
    let v: Vec<_> = ws
        .iter()
        .map(|w| {
            serde_json::json!({"id": w.id, "name": w.name, "devices": w.devices, "rendezvous_addr": w.rendezvous_addr,
                "job_id": w.job_id, "last_seen_unix": w.last_seen_unix, "lost": w.lost})
        })
        .collect();
    if let Some(doc) = format.document(&serde_json::Value::Array(v)) {
        println!("{doc}");
        return Ok(());
    }
    let mut t = Table::new(&["id", "name", "devices", "state", "job", "+rendezvous", "+last seen"]);
    for w in ws {
        let state = if w.lost {
            "lost"
        } else if w.job_id.is_empty() {
            "idle"
        } else {
            "busy"
        };
        t.row(vec![
            w.id,
            w.name,
            w.devices.to_string(),
            state.into(),
            w.job_id,
            w.rendezvous_addr,
            age(w.last_seen_unix),
        ]);
    }
    t.print(format);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_widen_their_column_and_wide_adds_columns() {
        let job = |id: &str, name: &str, state: pb::JobState| pb::Job {
            id: id.into(),
            name: name.into(),
            state: state as i32,
            step: 3,
            total_steps: 10,
            min_workers: 1,
            max_workers: 2,
            message: "ok".into(),
            ..pb::Job::default()
        };
        let jobs = [
            job("job-000001", "short", pb::JobState::Running),
            job("job-000002", "a-job-name-longer-than-twenty-characters", pb::JobState::Failed),
        ];
        let plain = Format {
            output: super::super::output::Output::Table,
            no_headers: false,
        };
        let text = job_table(&jobs).render(plain);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("ID           NAME "), "{text}");
        // STATE starts in the same column on every line.
        let col = lines[0].find("STATE").unwrap();
        assert_eq!(&lines[1][col..col + 7], "RUNNING", "{text}");
        assert_eq!(&lines[2][col..col + 6], "FAILED", "{text}");
        assert!(!lines[0].contains("WORKERS"), "{text}");
        let wide = Format {
            output: super::super::output::Output::Wide,
            no_headers: true,
        };
        let text = job_table(&jobs).render(wide);
        assert!(
            !text.contains("STATE") && text.contains("1..2") && text.lines().count() == 2,
            "{text}"
        );
        assert!(StateFilter::Failed.matches(pb::JobState::Failed as i32));
        assert!(!StateFilter::Running.matches(pb::JobState::Failed as i32));
    }
}
