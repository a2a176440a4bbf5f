//! The exactly-once judge on hand-made histories: a clean restart passes;
//! a doubled sample, a gap, ranks that disagree, a start without a
//! checkpoint or before a registered one each fail, naming what is wrong.

use super::*;

const SAMPLES: usize = 16;
const BATCH: usize = 4;

/// Sample `i` of step `step` (a fixed permutation per epoch), split over `world` ranks.
fn rank_lines(from: u64, to: u64, rank: u32, world: u32) -> Vec<Logged> {
    let per_epoch = (SAMPLES / BATCH) as u64;
    (from..to)
        .map(|step| {
            let epoch = step / per_epoch;
            let first = (step % per_epoch) as usize * BATCH;
            let batch: Vec<u32> = (first..first + BATCH)
                .map(|i| ((i * 5 + epoch as usize) % SAMPLES) as u32)
                .collect();
            let share = BATCH / world as usize;
            let mine = batch[rank as usize * share..(rank as usize + 1) * share].to_vec();
            Logged {
                step,
                epoch,
                indices: mine,
            }
        })
        .collect()
}

fn generation(from: u64, to: u64, world: u32) -> BTreeMap<u32, Vec<Logged>> {
    (0..world).map(|r| (r, rank_lines(from, to, r, world))).collect()
}

fn expected(total: u64, complete: &[u64], registered: &[(u32, u64)]) -> Expected {
    Expected {
        total_steps: total,
        samples: SAMPLES,
        batch: BATCH,
        complete: complete.iter().copied().collect(),
        registered: registered.to_vec(),
    }
}

/// Two ranks train to step 7 (checkpoints 5 and 8 would follow), the job
/// restarts from 5 on one rank and finishes at 10.
fn restarted() -> JobLogs {
    let mut logs = JobLogs::new();
    logs.insert(1, generation(0, 7, 2));
    logs.insert(2, generation(5, 10, 1));
    logs
}

#[test]
fn a_restart_from_a_checkpoint_trains_every_sample_once() {
    let v = judge(&restarted(), &expected(10, &[5, 10], &[(1, 5), (2, 10)]));
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    assert_eq!((v.steps_logged, v.steps_redone), (12, 2));
    assert_eq!(v.starts, vec![(1, 0), (2, 5)]);
}

#[test]
fn a_step_that_only_some_ranks_trained_fails() {
    let mut logs = restarted();
    logs.insert(2, generation(6, 10, 1));
    if let Some(rank1) = logs.get_mut(&1).and_then(|g| g.get_mut(&1)) {
        rank1.truncate(5);
    }
    let v = judge(&logs, &expected(10, &[5, 6, 10], &[(1, 5)]));
    assert!(
        v.problems.iter().any(|p| p.contains("step 5: 2 samples trained")),
        "{:?}",
        v.problems
    );
    assert!(v.problems.iter().any(|p| p.contains("epoch 1: 14 of 16")), "{:?}", v.problems);
}

#[test]
fn a_sample_trained_twice_is_named() {
    let mut logs = restarted();
    if let Some(line) = logs.get_mut(&2).and_then(|g| g.get_mut(&0)).and_then(|l| l.last_mut()) {
        line.indices[0] = line.indices[1];
    }
    let v = judge(&logs, &expected(10, &[5, 10], &[]));
    assert!(v.problems.iter().any(|p| p.contains("trained twice")), "{:?}", v.problems);
}

#[test]
fn a_missing_step_is_named() {
    let mut logs = JobLogs::new();
    logs.insert(1, generation(0, 9, 1));
    let v = judge(&logs, &expected(10, &[], &[]));
    assert!(v.problems.iter().any(|p| p.contains("9 steps, not 0..10")), "{:?}", v.problems);
}

#[test]
fn ranks_that_resume_from_different_steps_fail() {
    let mut logs = restarted();
    let mut g2 = generation(5, 10, 2);
    g2.insert(1, rank_lines(0, 10, 1, 2));
    logs.insert(2, g2);
    let v = judge(&logs, &expected(10, &[5, 10], &[]));
    assert!(v.problems.iter().any(|p| p.contains("different steps")), "{:?}", v.problems);
}

#[test]
fn a_start_without_a_checkpoint_or_before_a_registered_one_fails() {
    let v = judge(&restarted(), &expected(10, &[10], &[]));
    assert!(v.problems.iter().any(|p| p.contains("no complete checkpoint")), "{:?}", v.problems);
    let v = judge(&restarted(), &expected(10, &[5, 6, 10], &[(1, 6)]));
    assert!(
        v.problems
            .iter()
            .any(|p| p.contains("before the newest checkpoint registered earlier (step 6)")),
        "{:?}",
        v.problems
    );
}

#[test]
fn logs_are_read_by_job_generation_and_rank_and_a_cut_line_is_dropped() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap_or_else(|e| panic!("{e}"));
    write("job-000001-g1-r0.log", "0 0 1 2\n1 0 3 4\n2 0 5");
    write("job-000001-g2-r1.log", "1 0 3 4\n");
    write("job-000011-g1-r0.log", "0 0 9 9\n");
    let logs = read_job_logs(dir.path(), "job-000001").unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(logs.len(), 2);
    assert_eq!(logs[&1][&0].len(), 2, "the cut line is dropped");
    assert_eq!(logs[&2][&1][0].indices, vec![3, 4]);
    write("job-000001-g3-r0.log", "x\n");
    assert!(read_job_logs(dir.path(), "job-000001").is_err());
}
