//! The rules of the state, driven with explicit times: scheduling, ranks,
//! restarts, lost workers and events.

use super::scheduling::gang_size;
use super::workers::Assignment;
use super::*;

const SPEC: &str =
    "[job]\nname = \"t\"\n[data]\nformat = \"synthetic\"\n[train]\nbatch_size = 8\n[scheduling]\nmin_workers = 1\nmax_workers = 2\n";

fn assignment(c: Command) -> Assignment {
    match c {
        Command::Assign(a) => a,
        other => panic!("expected an assignment, got {other:?}"),
    }
}

#[test]
fn gang_sizes_divide_the_batch_and_fit_the_free_workers() {
    assert_eq!(gang_size(1, 4, 3, 8, 1), Some(2));
    assert_eq!(gang_size(2, 4, 4, 12, 1), Some(4));
    assert_eq!(gang_size(3, 3, 2, 12, 1), None);
    assert_eq!(gang_size(3, 3, 3, 8, 1), None);
    // With 4 devices per worker, 3 workers would be 12 ranks: not a divisor of 16.
    assert_eq!(gang_size(1, 4, 3, 16, 4), Some(2));
    assert_eq!(gang_size(1, 4, 4, 16, 4), Some(4));
}

#[test]
fn workers_with_several_devices_take_consecutive_ranks_and_small_ones_wait() {
    let mut s = State::default();
    let spec = format!("{SPEC}devices_per_worker = 2\n");
    let job = s.submit(&spec, 2, 2, 0).unwrap();
    assert_eq!(job.devices_per_worker, 2);
    let small = s.register("one-gpu", 1, "h:1", 0).id;
    let a = s.register("a", 2, "h:2", 0).id;
    s.tick(0, 5);
    assert_eq!(s.jobs[&job.id].state, JobState::Pending, "a 1-device worker does not count");
    let b = s.register("b", 4, "h:3", 0).id;
    s.tick(1, 5);
    let (ra, rb) = (
        assignment(s.heartbeat(&a, None, 1).unwrap()),
        assignment(s.heartbeat(&b, None, 1).unwrap()),
    );
    assert_eq!((ra.rank, ra.local_ranks, ra.world_size), (0, 2, 4));
    assert_eq!((rb.rank, rb.local_ranks, rb.world_size), (2, 2, 4));
    assert_eq!(ra.rendezvous, "h:2");
    assert_eq!(s.heartbeat(&small, None, 1).unwrap(), Command::Idle);
    let e = s
        .submit(&format!("{SPEC}devices_per_worker = 3\n"), 1, 1, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("train.batch_size = 8") && e.contains("3 device(s)"), "{e}");
}

#[test]
fn a_job_runs_on_two_workers_and_succeeds_when_both_finish() {
    let mut s = State::default();
    let job = s.submit(SPEC, 2, 2, 0).unwrap();
    let a = s.register("a", 1, "10.0.0.1:5000", 0).id;
    s.tick(1, 10);
    assert_eq!(s.jobs[&job.id].state, JobState::Pending, "a gang of 2 needs 2 free workers");
    let b = s.register("b", 1, "10.0.0.2:5000", 1).id;
    s.tick(2, 10);
    let (ra, rb) = (
        assignment(s.heartbeat(&a, None, 2).unwrap()),
        assignment(s.heartbeat(&b, None, 2).unwrap()),
    );
    assert_eq!((ra.rank, rb.rank, ra.world_size), (0, 1, 2));
    assert_eq!(ra.rendezvous, "10.0.0.1:5000");
    assert!(!ra.resume);
    assert_eq!(
        s.heartbeat(
            &a,
            Some(Report {
                job_id: job.id.clone(),
                generation: 1,
                step: 3,
                total: 10,
                stats: None
            }),
            3
        )
        .unwrap(),
        Command::Continue
    );
    assert_eq!(s.jobs[&job.id].step, 3, "rank 0 reports progress");
    assert!(s.commit_checkpoint(&a, &job.id, 1, 3, 100, 3).unwrap(), "rank 0 commits");
    assert!(!s.commit_checkpoint(&b, &job.id, 1, 3, 100, 3).unwrap(), "rank 1 does not");
    assert!(!s.commit_checkpoint(&a, &job.id, 1, 3, 100, 3).unwrap(), "once per step");
    assert_eq!(s.jobs[&job.id].checkpoints.len(), 1);
    s.finish(&a, &job.id, 1, (true, 10), "", 4).unwrap();
    assert_eq!(s.jobs[&job.id].state, JobState::Running);
    s.finish(&b, &job.id, 1, (true, 10), "", 4).unwrap();
    assert_eq!(s.jobs[&job.id].state, JobState::Succeeded);
    assert_eq!(s.heartbeat(&a, None, 5).unwrap(), Command::Idle);
}

#[test]
fn a_lost_worker_restarts_the_job_on_the_survivor_from_its_checkpoint() {
    let mut s = State::default();
    let job = s.submit(SPEC, 0, 0, 0).unwrap();
    let a = s.register("a", 1, "h:1", 0).id;
    let b = s.register("b", 1, "h:2", 0).id;
    s.tick(0, 5);
    assert_eq!(assignment(s.heartbeat(&a, None, 1).unwrap()).world_size, 2);
    assignment(s.heartbeat(&b, None, 1).unwrap());
    // b dies; a's collective fails first and a reports it.
    s.finish(&a, &job.id, 1, (false, 0), "all_reduce: lost rank 1", 2).unwrap();
    assert_eq!(s.jobs[&job.id].state, JobState::Restarting);
    s.tick(3, 5);
    assert_eq!(
        s.heartbeat(&a, None, 3).unwrap(),
        Command::Idle,
        "waits until b is finished or lost"
    );
    assert_eq!(s.heartbeat(&a, None, 9).unwrap(), Command::Idle);
    s.tick(10, 5);
    assert!(s.workers[&b].lost && !s.workers[&a].lost);
    let r = assignment(s.heartbeat(&a, None, 10).unwrap());
    assert_eq!((r.generation, r.world_size, r.resume), (2, 1, true));
    let j = &s.jobs[&job.id];
    assert_eq!(j.restarts, 1);
    assert!(j.generations[0].end_reason.as_deref().unwrap().contains("lost rank 1"));
    // A late message from generation 1 changes nothing.
    s.finish(&b, &job.id, 1, (false, 0), "late", 11).unwrap();
    assert_eq!(s.jobs[&job.id].state, JobState::Running);
    s.finish(&a, &job.id, 2, (true, 10), "", 12).unwrap();
    assert_eq!(s.jobs[&job.id].state, JobState::Succeeded);
    let events: Vec<(&str, u32)> = s.jobs[&job.id].events.iter().map(|e| (e.kind.name(), e.generation)).collect();
    assert_eq!(
        events,
        [
            ("submitted", 0),
            ("generation_started", 1),
            ("generation_ended", 1),
            ("restarting", 1),
            ("generation_started", 2),
            ("succeeded", 2)
        ]
    );
    let seqs: Vec<u64> = s.jobs[&job.id].events.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(s.jobs[&job.id].events[2].message.contains("lost rank 1"));
    assert!(s.jobs[&job.id].events[4].message.contains("1 worker(s)"));
}

#[test]
fn a_closed_heartbeat_stream_loses_its_worker_at_once_but_an_old_one_does_not() {
    let mut s = State::default();
    let job = s.submit(SPEC, 2, 2, 0).unwrap();
    let a = s.register("a", 1, "h:1", 0).id;
    let b = s.register("b", 1, "h:2", 0).id;
    s.connected(&a, 1).unwrap();
    s.connected(&b, 2).unwrap();
    s.tick(0, 60);
    assignment(s.heartbeat(&a, None, 1).unwrap());
    assignment(s.heartbeat(&b, None, 1).unwrap());
    // b reconnected on a new stream: its old one closing changes nothing.
    s.connected(&b, 3).unwrap();
    s.disconnected(&b, 2, 2);
    assert!(!s.workers[&b].lost && s.jobs[&job.id].state == JobState::Running);
    // a's process dies: its stream closes long before any deadline.
    s.disconnected(&a, 1, 2);
    assert!(s.workers[&a].lost);
    let j = &s.jobs[&job.id];
    assert_eq!(j.state, JobState::Restarting);
    assert!(j.generations[0].end_reason.as_deref().unwrap().contains("heartbeat stream closed"));
    assert_eq!(j.events.iter().filter(|e| e.kind == EventKind::WorkerLost).count(), 1);
    assert!(
        matches!(s.connected(&a, 4), Err(StateError::NoWorker(_))),
        "a lost worker registers again"
    );
}

#[test]
fn restarts_are_bounded_and_cancel_stops_the_workers() {
    let mut s = State::default();
    let spec = format!("{SPEC}max_restarts = 0\n");
    let job = s.submit(&spec, 1, 1, 0).unwrap();
    let a = s.register("a", 1, "h:1", 0).id;
    s.tick(0, 5);
    assignment(s.heartbeat(&a, None, 0).unwrap());
    s.finish(&a, &job.id, 1, (false, 0), "boom", 1).unwrap();
    assert_eq!(s.jobs[&job.id].state, JobState::Failed);
    assert!(s.jobs[&job.id].message.contains("boom"));

    let job = s.submit(SPEC, 1, 1, 2).unwrap();
    s.tick(2, 5);
    assignment(s.heartbeat(&a, None, 2).unwrap());
    s.cancel(&job.id, 3).unwrap();
    let part = Report {
        job_id: job.id.clone(),
        generation: 1,
        ..Report::default()
    };
    assert_eq!(s.heartbeat(&a, Some(part), 3).unwrap(), Command::Stop("cancelled".into()));
    assert!(matches!(s.cancel(&job.id, 4), Err(StateError::Final { .. })));
}

#[test]
fn bad_specs_are_refused_naming_the_field_and_priority_goes_first() {
    let mut s = State::default();
    let e = s.submit("[optim]\nlr = -1\n", 0, 0, 0).unwrap_err().to_string();
    assert!(e.contains("optim.lr"), "{e}");
    let low = s.submit(SPEC, 1, 1, 0).unwrap();
    let high = s.submit(&format!("{SPEC}priority = 5\n"), 1, 1, 0).unwrap();
    let a = s.register("a", 1, "h:1", 0).id;
    s.tick(1, 5);
    assert_eq!(assignment(s.heartbeat(&a, None, 1).unwrap()).job_id, high.id);
    assert_eq!(s.jobs[&low.id].state, JobState::Pending);
}

#[test]
fn rank_0_progress_is_written_with_the_next_tick_not_with_each_heartbeat() {
    let mut s = State::default();
    let job = s.submit(SPEC, 1, 1, 0).unwrap();
    let a = s.register("a", 1, "h:1", 0).id;
    s.tick(1, 10);
    let part = assignment(s.heartbeat(&a, None, 1).unwrap());
    s.take_changes();
    for step in 1..=3 {
        let report = Report {
            job_id: part.job_id.clone(),
            generation: part.generation,
            step,
            total: 10,
            ..Default::default()
        };
        assert_eq!(s.heartbeat(&a, Some(report), 2).unwrap(), Command::Continue);
        assert!(s.changes.is_empty(), "step {step}: a progress heartbeat writes nothing at once");
    }
    assert_eq!(s.jobs[&job.id].step, 3, "but is seen at once");
    s.tick(2, 10);
    assert!(s.changes.jobs.contains(&job.id), "the tick writes the job with its progress");
    assert!(s.progress.is_empty());
    s.take_changes();
    s.tick(3, 10);
    assert!(s.changes.is_empty(), "and only once");
}
