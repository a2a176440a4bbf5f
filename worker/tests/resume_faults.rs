//! Resuming and pruning when storage misbehaves, with real processes: a
//! real S3 server (SeaweedFS) that refuses reads or is down while a run
//! resumes, two ranks of which one cannot read the checkpoint rank 0
//! chose, and an old checkpoint that cannot be deleted. In every case the
//! run either resumes from the newest checkpoint or fails naming the
//! object; it never starts from step 0 or an older checkpoint on its own.

#[path = "../../shared/testsupport/seaweed.rs"]
mod seaweed;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use support::ranks::{run_ranks, train_command};

fn job(dir: &Path, uri: &str) -> PathBuf {
    let spec = dir.join("job.toml");
    std::fs::write(
        &spec,
        format!(
            "[job]\nname = \"resume-faults\"\nseed = 3\n[data]\nformat = \"synthetic\"\nsynthetic_samples = 48\n\
             [model]\nndf = 8\nn_rkhs = 32\ndepth = 1\n[train]\nbatch_size = 8\nlog_every = 1\n\
             [eval]\nenabled = false\n[dist]\nsync_bn = true\ntimeout_s = 30\n\
             [checkpoint]\nuri = \"{uri}\"\nevery_steps = 2\nkeep = 0\n"
        ),
    )
    .unwrap();
    spec
}

fn log(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(out: Output) -> String {
    let text = log(&out);
    assert!(out.status.success(), "{text}");
    text
}

#[test]
fn resume_from_s3_fails_on_refused_reads_and_waits_out_an_outage_but_never_starts_elsewhere() {
    let mut s3 = seaweed::SeaweedS3::start("resume");
    let env = s3.env();
    let tmp = tempfile::tempdir().unwrap();
    let uri = s3.uri("runs/resume");
    let spec = job(tmp.path(), &uri);
    ok(train_command(&spec, false, 4, &env).output().unwrap());

    // A store that lists the checkpoints but refuses to read them: not "no
    // checkpoint" (which would start at step 0), an error naming the manifest.
    let mut lister = env.clone();
    lister[0].1 = seaweed::LIST_ONLY_KEY.into();
    lister[1].1 = seaweed::LIST_ONLY_SECRET.into();
    let out = train_command(&spec, true, 6, &lister).output().unwrap();
    let text = log(&out);
    assert!(!out.status.success(), "resumed with a store that refuses reads:\n{text}");
    assert!(
        text.contains("runs/resume/step-00000000") && text.contains("/manifest.json"),
        "{text}"
    );
    assert!(
        !text.contains("starting at step 0") && !text.contains("skipping checkpoint"),
        "{text}"
    );

    // S3 down when the run starts, back 3 s later: the run waits (retrying)
    // and resumes from the newest checkpoint.
    s3.kill();
    let child = train_command(&spec, true, 6, &env)
        .env("AMDIM_STORAGE_RETRY_S", "90")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    s3.restart();
    let text = ok(child.wait_with_output().unwrap());
    assert!(
        text.contains("storage request failed; retrying"),
        "S3 was down, nothing retried:\n{text}"
    );
    assert!(text.contains("resumed from checkpoint step=4"), "{text}");
}

/// Starts two ranks of `spec`; rank r's `checkpoint.uri` is `uris[r]`.
fn two_ranks(spec: &Path, max_steps: u64, uris: [&Path; 2]) -> Vec<Output> {
    run_ranks(2, |rank| {
        let mut c = train_command(spec, true, max_steps, &[]);
        c.env("AMDIM_CHECKPOINT__URI", uris[rank]);
        c
    })
}

#[test]
fn a_rank_that_cannot_read_the_checkpoint_rank_0_chose_fails_the_generation() {
    let tmp = tempfile::tempdir().unwrap();
    let (good, bad) = (tmp.path().join("good"), tmp.path().join("bad"));
    let spec = job(tmp.path(), good.to_str().unwrap());
    for out in two_ranks(&spec, 4, [&good, &good]) {
        ok(out);
    }
    // Rank 1 sees a copy whose newest weights are corrupt (same size).
    std::fs::create_dir_all(&bad).unwrap();
    for step in ["step-0000000002", "step-0000000004"] {
        std::fs::create_dir_all(bad.join(step)).unwrap();
        for f in std::fs::read_dir(good.join(step)).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), bad.join(step).join(f.file_name())).unwrap();
        }
    }
    let weights = bad.join("step-0000000004/model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&weights, bytes).unwrap();

    let outs = two_ranks(&spec, 6, [&good, &bad]);
    let (rank0, rank1) = (log(&outs[0]), log(&outs[1]));
    assert!(
        !outs[0].status.success() && !outs[1].status.success(),
        "a generation whose ranks cannot agree went on:\n--- rank 0\n{rank0}\n--- rank 1\n{rank1}"
    );
    assert!(
        rank1.contains("rank 1 cannot read step-0000000004") && rank1.contains("step-0000000004/model.safetensors"),
        "{rank1}"
    );
    assert!(rank0.contains("rank(s) [1] could not read"), "{rank0}");
    for text in [&rank0, &rank1] {
        assert!(
            !text.contains("resumed from checkpoint") && !text.contains("skipping checkpoint"),
            "{text}"
        );
    }
    // Both ranks reading the good copy resume together.
    for out in two_ranks(&spec, 6, [&good, &good]) {
        assert!(ok(out).contains("resumed from checkpoint step=4"));
    }
}

/// Makes a file undeletable (even by root) until dropped.
struct Immutable(PathBuf);

impl Immutable {
    fn new(path: PathBuf) -> Self {
        let out = Command::new("chattr").arg("+i").arg(&path).output().unwrap();
        assert!(out.status.success(), "chattr +i: {}", String::from_utf8_lossy(&out.stderr));
        Self(path)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[test]
fn a_checkpoint_is_complete_even_when_pruning_fails_and_pruning_is_retried() {
    // On the target folder's file system: chattr needs ext4-like support.
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let ckpt = tmp.path().join("ckpt");
    let spec = job(tmp.path(), ckpt.to_str().unwrap());
    ok(train_command(&spec, false, 2, &[]).output().unwrap());
    let manifest = |step: u64| ckpt.join(format!("step-{step:010}/manifest.json"));
    let keep_one = [("AMDIM_CHECKPOINT__KEEP", "1".to_string())];
    {
        let _stuck = Immutable::new(manifest(2));
        let text = ok(train_command(&spec, true, 6, &keep_one).output().unwrap());
        // Checkpoints 4 and 6 are written; step 2 cannot be deleted, which
        // is logged with the object after each of them.
        assert_eq!(text.matches("pruning failed").count(), 2, "{text}");
        assert!(text.contains("step-0000000002/manifest.json"), "{text}");
        assert!(!text.contains("checkpoint abandoned"), "{text}");
        assert!(manifest(6).exists() && !manifest(4).exists() && manifest(2).exists());
    }
    // Deletable again: the next checkpoint's pruning removes it.
    let text = ok(train_command(&spec, true, 7, &keep_one).output().unwrap());
    assert!(text.contains("resumed from checkpoint step=6"), "{text}");
    assert!(!manifest(2).exists() && !manifest(6).exists() && manifest(7).exists(), "{text}");
}
