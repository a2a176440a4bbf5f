//! The rules that keep a job from hanging or failing for the wrong reason,
//! driven with explicit times: a worker and the coordinator that disagree
//! about the part it runs, a preempted worker, and a finish that arrives
//! after the coordinator restarted.

use super::*;

const SPEC: &str = "[job]\nname = \"t\"\n[data]\nformat = \"synthetic\"\n[train]\nbatch_size = 8\n\
                    [scheduling]\nmin_workers = 1\nmax_workers = 1\nmax_restarts = 0\n";

fn part(job: &str, generation: u32) -> Option<Report> {
    Some(Report {
        job_id: job.into(),
        generation,
        ..Report::default()
    })
}

/// A state with one job assigned to worker `a` (its generation 1 running).
fn running() -> (State, String, String) {
    let mut s = State::default();
    let job = s.submit(SPEC, 0, 0, 0).unwrap().id;
    let a = s.register("a", 1, "h:1", 0).id;
    s.tick(0, 60);
    assert!(matches!(s.heartbeat(&a, None, 1).unwrap(), Command::Assign(_)));
    (s, job, a)
}

#[test]
fn a_part_the_coordinator_does_not_know_is_stopped_never_continued() {
    let (mut s, job, a) = running();
    assert_eq!(s.heartbeat(&a, part(&job, 1), 2).unwrap(), Command::Continue);
    for (j, g) in [("job-999999", 1), (job.as_str(), 7)] {
        match s.heartbeat(&a, part(j, g), 3).unwrap() {
            Command::Stop(why) => assert!(why.contains("drop") && why.contains(j), "{why}"),
            other => panic!("a part it does not know: expected Stop, got {other:?}"),
        }
    }
    let idle = s.register("b", 1, "h:2", 3).id;
    match s.heartbeat(&idle, part(&job, 1), 4).unwrap() {
        Command::Stop(why) => assert!(why.contains("does not know"), "{why}"),
        other => panic!("a free worker reporting a part: expected Stop, got {other:?}"),
    }
    assert_eq!(s.jobs[&job].state, JobState::Running, "none of that ends the real part");
}

#[test]
fn a_worker_that_trains_nothing_ends_the_generation_it_belongs_to() {
    let (mut s, job, a) = running();
    s.take_changes();
    // Its assignment (or the report of its end) was lost: it heartbeats with no part.
    assert_eq!(s.heartbeat(&a, None, 2).unwrap(), Command::Idle);
    let j = &s.jobs[&job];
    assert_eq!(j.state, JobState::Failed, "max_restarts = 0: {}", j.message);
    assert!(j.message.contains("not training its part"), "{}", j.message);
    assert_eq!(s.workers[&a].job, None, "the worker is free again");
    assert!(
        s.changes.workers.contains(&a) && s.changes.jobs.contains(&job),
        "and that is written"
    );
}

#[test]
fn a_preempted_generation_resumes_without_spending_a_restart() {
    let (mut s, job, a) = running();
    s.commit_checkpoint(&a, &job, 1, 10, 100, 2).unwrap();
    s.preempt(&a, &job, 1, 3).unwrap();
    s.preempt(&a, &job, 1, 3).unwrap();
    let j = &s.jobs[&job];
    assert_eq!((j.state, j.restarts, j.preemptions), (JobState::Restarting, 0, 1));
    // The part's final checkpoint still counts, and its stopped end is no failure.
    assert!(s.commit_checkpoint(&a, &job, 1, 12, 100, 4).unwrap());
    s.finish(&a, &job, 1, (false, 0), "stopped", 4).unwrap();
    assert_eq!(s.jobs[&job].state, JobState::Restarting);
    let b = s.register("b", 1, "h:2", 5).id;
    s.tick(5, 60);
    let Command::Assign(next) = s.heartbeat(&a, None, 5).unwrap() else {
        panic!("the job resumes on a free worker")
    };
    assert!(next.resume && next.generation == 2);
    s.finish(&a, &job, 2, (true, 10), "", 6).unwrap();
    let j = &s.jobs[&job];
    assert_eq!((j.state, j.restarts, j.preemptions), (JobState::Succeeded, 0, 1));
    let kinds: Vec<&str> = j.events.iter().map(|e| e.kind.name()).collect();
    assert!(kinds.contains(&"preempted") && !kinds.contains(&"restarting"), "{kinds:?}");
    let started = j.events.iter().rfind(|e| e.kind == EventKind::GenerationStarted).unwrap();
    assert!(started.message.contains("checkpoint of step 12"), "{}", started.message);
    assert!(s.preempt(&b, "job-999999", 1, 7).is_err());
}

#[test]
fn parts_that_trained_to_the_end_while_the_coordinator_restarted_finish_the_job() {
    let (mut s, job, a) = running();
    s.recover(3);
    assert_eq!(s.jobs[&job].state, JobState::Restarting);
    // The part ended while the coordinator was down; its finish is retried until it lands.
    s.finish(&a, &job, 1, (true, 10), "", 4).unwrap();
    let j = &s.jobs[&job];
    assert_eq!(j.state, JobState::Succeeded, "{}", j.message);
    assert_eq!((j.step, j.total_steps), (10, 10), "its last step, though no heartbeat carried it");
    assert_eq!(j.generations.len(), 1, "no second generation trains it again");
    assert_eq!(j.events.last().unwrap().kind, EventKind::Succeeded);

    // A part that did not train to the end does not.
    let (mut s, job, a) = running();
    s.recover(3);
    s.finish(&a, &job, 1, (false, 0), "stopped", 4).unwrap();
    assert_eq!(s.jobs[&job].state, JobState::Restarting);
}

#[test]
fn a_part_resumed_from_the_final_checkpoint_ends_the_job_at_its_last_step() {
    // It trains nothing and ends before any heartbeat carries its progress
    // (the job's progress is what rank 0's heartbeats said, here nothing):
    // its finish says where it ended.
    let (mut s, job, a) = running();
    s.finish(&a, &job, 1, (true, 253), "", 2).unwrap();
    let j = &s.jobs[&job];
    assert_eq!(j.state, JobState::Succeeded, "{}", j.message);
    assert_eq!((j.step, j.total_steps), (253, 253));
    assert!(
        j.events.last().unwrap().message.contains("trained 253 steps"),
        "{:?}",
        j.events.last()
    );
    // A part that failed says nothing about the job's progress.
    let (mut s, job, a) = running();
    s.finish(&a, &job, 1, (false, 7), "boom", 2).unwrap();
    assert_eq!(s.jobs[&job].step, 0);
}

#[test]
fn after_a_restart_a_job_waits_for_its_old_worker_whose_stale_part_is_stopped() {
    let (mut s, job, a) = running();
    assert_eq!(s.heartbeat(&a, part(&job, 1), 2).unwrap(), Command::Continue);
    s.recover(10);
    let b = s.register("b", 1, "h:2", 10).id;
    s.tick(11, 60);
    assert_eq!(
        s.jobs[&job].generations.len(),
        1,
        "no generation 2 while a may still train generation 1"
    );
    assert_eq!(s.heartbeat(&b, None, 11).unwrap(), Command::Idle);
    // a heartbeats again with the part it still trains: that part is over.
    match s.heartbeat(&a, part(&job, 1), 12).unwrap() {
        Command::Stop(why) => assert!(why.contains("coordinator restarted"), "{why}"),
        other => panic!("a stale part: expected Stop, got {other:?}"),
    }
    s.tick(13, 60);
    assert_eq!(s.jobs[&job].generations.len(), 1, "its part is still stopping");
    // It wrote its final checkpoint and ended: now the job resumes from it.
    assert!(s.commit_checkpoint(&a, &job, 1, 5, 100, 14).unwrap());
    s.finish(&a, &job, 1, (false, 5), "stopped", 14).unwrap();
    s.tick(14, 60);
    let j = &s.jobs[&job];
    assert_eq!((j.generations.len(), j.restarts, j.state), (2, 0, JobState::Running));
    let started = j.events.iter().rfind(|e| e.kind == EventKind::GenerationStarted).unwrap();
    assert!(started.message.contains("checkpoint of step 5"), "{}", started.message);
}

#[test]
fn after_a_restart_an_old_worker_silent_for_a_lease_is_lost_and_the_job_moves_on() {
    let (mut s, job, a) = running();
    s.recover(10);
    let b = s.register("b", 1, "h:2", 10).id;
    s.tick(69, 60);
    assert_eq!(s.jobs[&job].generations.len(), 1, "a's lease runs from the restart");
    assert_eq!(s.heartbeat(&b, None, 70).unwrap(), Command::Idle);
    s.tick(71, 60);
    assert!(s.workers[&a].lost);
    let j = &s.jobs[&job];
    assert_eq!((j.generations.len(), j.restarts), (2, 0), "the restart was not the job's failure");
    assert!(s.heartbeat(&a, part(&job, 1), 72).is_err(), "too late: it registers again");
}

#[test]
fn after_a_restart_an_idle_worker_gets_work_only_once_it_heartbeats() {
    let mut s = State::default();
    let c = s.register("c", 1, "h:3", 0).id;
    s.recover(5);
    let job = s.submit(SPEC, 0, 0, 5).unwrap().id;
    s.tick(6, 60);
    assert!(
        s.jobs[&job].generations.is_empty(),
        "c may have died while the coordinator was down"
    );
    assert_eq!(s.heartbeat(&c, None, 7).unwrap(), Command::Idle);
    s.tick(8, 60);
    assert!(matches!(s.heartbeat(&c, None, 9).unwrap(), Command::Assign(a) if a.job_id == job));
}
