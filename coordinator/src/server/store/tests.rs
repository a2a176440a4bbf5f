//! The store against real SQLite files: what a reopened store gives back,
//! what a heartbeat writes, forgetting old rows, and refusing bad files.

use super::*;
use crate::server::state::{JobState, Report};

const SPEC: &str =
    "[job]\nname = \"t\"\n[data]\nformat = \"synthetic\"\n[train]\nbatch_size = 8\n[scheduling]\nmin_workers = 1\nmax_workers = 2\n";

fn save(store: &mut Store, state: &mut State) {
    let changes = state.take_changes();
    store.save(state, &changes).unwrap();
}

#[test]
fn a_reopened_store_gives_back_jobs_workers_events_and_counters() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("coordinator.db");
    let mut store = Store::open(&path).unwrap();
    let mut s = State::default();
    let job = s.submit(SPEC, 1, 1, 10).unwrap();
    let a = s.register("a", 1, "h:1", 10).id;
    s.tick(11, 5);
    save(&mut store, &mut s);
    s.heartbeat(&a, None, 12).unwrap();
    s.heartbeat(
        &a,
        Some(Report {
            job_id: job.id.clone(),
            generation: 1,
            step: 7,
            total: 40,
            stats: None,
        }),
        13,
    )
    .unwrap();
    s.commit_checkpoint(&a, &job.id, 1, 5, 1234, 13).unwrap();
    save(&mut store, &mut s);
    drop(store);

    let back = Store::open(&path).unwrap().load().unwrap();
    assert_eq!(back.jobs, s.jobs, "jobs with their events");
    assert_eq!((back.last_job, back.last_worker), (1, 1), "job and worker ids count apart");
    assert_eq!(back.last_event, s.last_event);
    assert_eq!(back.workers[&a].job, s.workers[&a].job);
    let kinds: Vec<&str> = back.jobs[&job.id].events.iter().map(|e| e.kind.name()).collect();
    assert_eq!(kinds, ["submitted", "generation_started", "checkpoint_committed"]);
    assert_eq!(back.jobs[&job.id].step, 7);
    assert!(back.changes.is_empty());
}

#[test]
fn liveness_heartbeats_write_nothing_and_forgotten_workers_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let mut store = Store::open(&path).unwrap();
    let mut s = State::default();
    let a = s.register("a", 1, "h:1", 0).id;
    let b = s.register("b", 1, "h:2", 0).id;
    save(&mut store, &mut s);
    s.heartbeat(&a, None, 1).unwrap();
    assert!(s.changes.is_empty(), "an idle worker's heartbeat is not durable");
    s.tick(20, 5);
    assert!(s.workers[&a].lost && s.changes.workers.contains(&a));
    save(&mut store, &mut s);
    s.tick(20 + crate::server::state::FORGET_LOST_WORKERS_S + 1, 5);
    save(&mut store, &mut s);
    let back = Store::open(&path).unwrap().load().unwrap();
    assert!(back.workers.is_empty(), "{:?}", back.workers.keys().collect::<Vec<_>>());
    assert!(!s.workers.contains_key(&b));
}

#[test]
fn jobs_that_ended_long_ago_leave_the_store_with_their_events() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let mut store = Store::open(&path).unwrap();
    let mut s = State::default();
    let old = s.submit(SPEC, 1, 1, 0).unwrap();
    let young = s.submit(SPEC, 1, 1, 0).unwrap();
    s.cancel(&old.id, 10).unwrap();
    s.cancel(&young.id, 500).unwrap();
    let running = s.submit(SPEC, 1, 1, 0).unwrap();
    save(&mut store, &mut s);
    s.forget_finished_jobs(1000, 600);
    save(&mut store, &mut s);
    let back = Store::open(&path).unwrap().load().unwrap();
    let ids: Vec<&String> = back.jobs.keys().collect();
    assert_eq!(ids, [&young.id, &running.id]);
    let events: i64 = store
        .conn
        .query_row("SELECT COUNT(*) FROM events WHERE job_id = ?1", [&old.id], |r| r.get(0))
        .unwrap();
    assert_eq!(events, 0);
    assert_eq!(back.last_job, 3, "ids are never reused");
}

#[test]
fn a_store_from_a_newer_coordinator_or_with_a_bad_row_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let mut store = Store::open(&path).unwrap();
    let mut s = State::default();
    let job = s.submit(SPEC, 1, 1, 0).unwrap();
    save(&mut store, &mut s);
    store
        .conn
        .execute("UPDATE jobs SET record = '{\"id\": 3}' WHERE id = ?1", [&job.id])
        .unwrap();
    let e = store.load().unwrap_err().to_string();
    assert!(e.contains("c.db") && e.contains(&format!("job {}", job.id)), "{e}");
    store.conn.execute_batch("PRAGMA user_version = 99").unwrap();
    drop(store);
    let e = Store::open(&path).err().unwrap().to_string();
    assert!(e.contains("newer coordinator"), "{e}");
    assert_eq!(s.jobs[&job.id].state, JobState::Pending);
}

#[test]
fn a_failed_save_is_taken_back_so_memory_matches_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let mut store = Store::open(&path).unwrap();
    let mut s = State::default();
    let kept = s.submit(SPEC, 1, 1, 0).unwrap();
    let a = s.register("a", 1, "h:1", 0).id;
    save(&mut store, &mut s);
    // Writes now fail (as on a full disk); reads still work.
    store.conn.execute_batch("PRAGMA query_only = ON").unwrap();
    let lost = s.submit(SPEC, 1, 1, 5).unwrap();
    s.cancel(&kept.id, 5).unwrap();
    s.tick(6, 60);
    s.heartbeat(&a, None, 7).unwrap();
    let changes = s.take_changes();
    let e = store.save(&s, &changes).unwrap_err().to_string();
    assert!(e.contains("c.db"), "{e}");
    store.roll_back(&mut s, &changes).unwrap();
    let disk = store.load().unwrap();
    assert!(!s.jobs.contains_key(&lost.id), "the job the failed save held is gone");
    assert_eq!(s.jobs, disk.jobs, "jobs and their events as on disk");
    assert_eq!(s.workers[&a].job, None, "the assignment is taken back too");
    assert_eq!(s.workers[&a].last_seen_unix, 7, "liveness is not durable and is kept");
    assert_eq!(
        (s.last_job, s.last_worker, s.last_event),
        (disk.last_job, disk.last_worker, disk.last_event)
    );
    // Writable again: the next change is saved whole, with the id the failed one did not keep.
    store.conn.execute_batch("PRAGMA query_only = OFF").unwrap();
    let again = s.submit(SPEC, 1, 1, 8).unwrap();
    assert_eq!(again.id, lost.id);
    save(&mut store, &mut s);
    assert_eq!(store.load().unwrap().jobs, s.jobs);
}
