//! Training against a real S3 server (SeaweedFS): a packed dataset and an
//! ImageFolder tree read from a bucket, checkpoints written to and resumed
//! from a bucket. Every run is compared bitwise with the same run on local
//! files: where the bytes come from must not change a single parameter.
//! Faults: the server killed once mid-upload, and killed and restarted at
//! random moments all through a run; every checkpoint listed afterwards
//! must verify and the newest must resume.

#[path = "../../shared/testsupport/seaweed.rs"]
mod seaweed;
mod support;

use amdim_shared::rng::{KeyedRng, Stream};
use object_store::ObjectStore;
use std::path::Path;
use std::process::{Command, Output};
use support::ranks::train_command;
use support::{run_amdimctl, testdata};

fn job(dir: &Path, name: &str, format: &str, data: &str, ckpt: &str) -> std::path::PathBuf {
    let spec = dir.join(format!("{name}.toml"));
    std::fs::write(
        &spec,
        format!(
            "[job]\nname = \"{name}\"\nseed = 11\n[data]\nformat = \"{format}\"\npath = \"{data}\"\n\
             [model]\nimage_size = 64\nndf = 8\nn_rkhs = 64\ndepth = 1\n\
             [train]\nbatch_size = 4\nmax_steps = 4\nlog_every = 1\n\
             [eval]\nbn_refresh_batches = 1\n\
             [checkpoint]\nuri = \"{ckpt}\"\nevery_steps = 2\nkeep = 0\n"
        ),
    )
    .unwrap();
    spec
}

fn train(spec: &Path, env: &[(&'static str, String)], extra: &[&str], max_steps: u64) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_amdim-worker"))
        .arg("train")
        .args(extra)
        .arg("--config")
        .arg(spec)
        .envs(env.iter().cloned())
        .env("AMDIM_TRAIN__MAX_STEPS", max_steps.to_string())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}: {}", spec.display(), String::from_utf8_lossy(&out.stderr));
    out
}

struct Bucket {
    store: object_store::aws::AmazonS3,
    runtime: tokio::runtime::Runtime,
}

impl Bucket {
    fn new(s3: &seaweed::SeaweedS3) -> Self {
        let store = s3.client();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        Self { store, runtime }
    }

    fn get(&self, key: &str) -> Vec<u8> {
        self.runtime
            .block_on(async { self.store.get(&key.into()).await?.bytes().await })
            .unwrap_or_else(|e| panic!("{key}: {e}"))
            .to_vec()
    }

    /// Uploads the files under `dir` to `prefix/<relative path>`.
    fn upload_tree(&self, dir: &Path, prefix: &str) {
        for entry in walk(dir) {
            let rel = entry.strip_prefix(dir).unwrap().to_str().unwrap().replace('\\', "/");
            let bytes = std::fs::read(&entry).unwrap();
            self.runtime
                .block_on(self.store.put(&format!("{prefix}/{rel}").into(), bytes.into()))
                .unwrap();
        }
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn trains_from_s3_shards_and_folders_and_resumes_from_s3_checkpoints_bitwise() {
    let s3 = seaweed::SeaweedS3::start("amdim");
    let env = s3.env();
    let bucket = Bucket::new(&s3);
    let photos = testdata().join("imagenet20");
    run_amdimctl(
        &[
            "dataset",
            "pack",
            photos.to_str().unwrap(),
            &s3.uri("packed/imagenet20"),
            "--shard-size",
            "1MiB",
        ],
        &env,
    );
    bucket.upload_tree(&photos, "folders/imagenet20");
    let tmp = tempfile::tempdir().unwrap();
    let local_ckpt = tmp.path().join("local-ckpt");

    // Reference: the local ImageFolder, local checkpoints.
    let local = job(
        tmp.path(),
        "local",
        "image_folder",
        photos.to_str().unwrap(),
        local_ckpt.to_str().unwrap(),
    );
    train(&local, &[], &[], 4);
    let reference = std::fs::read(local_ckpt.join("step-0000000004/model.safetensors")).unwrap();
    let at_step_2 = std::fs::read(local_ckpt.join("step-0000000002/model.safetensors")).unwrap();
    assert!(reference != at_step_2, "steps 3 and 4 changed the parameters");

    // Shards on S3, checkpoints on S3.
    let shards = job(tmp.path(), "shards", "shards", &s3.uri("packed/imagenet20"), &s3.uri("runs/shards"));
    let out = train(&shards, &env, &[], 4);
    assert!(String::from_utf8_lossy(&out.stderr).contains("test accuracy"));
    assert!(
        bucket.get("runs/shards/step-0000000004/model.safetensors") == reference,
        "training on S3 shards differs from training on the local folder"
    );

    // An ImageFolder on S3, interrupted at step 2 and resumed from the S3 checkpoint.
    let folder = job(
        tmp.path(),
        "folder",
        "image_folder",
        &s3.uri("folders/imagenet20"),
        &s3.uri("runs/folder"),
    );
    train(&folder, &env, &[], 2);
    let out = train(&folder, &env, &["--resume"], 4);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("resumed from checkpoint step=2"), "{log}");
    assert!(
        bucket.get("runs/folder/step-0000000004/model.safetensors") == reference,
        "an S3 ImageFolder resumed from S3 differs from the uninterrupted local run"
    );
    let manifest: serde_json::Value = serde_json::from_slice(&bucket.get("runs/folder/step-0000000004/manifest.json")).unwrap();
    assert_eq!(manifest["step"], 4);

    // Wrong credentials: a clear error naming the dataset, before any step.
    let mut bad = env.clone();
    bad[1].1 = "wrong-secret".into();
    let out = Command::new(env!("CARGO_BIN_EXE_amdim-worker"))
        .args(["train", "--config"])
        .arg(&shards)
        .envs(bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("s3://amdim/packed/imagenet20"), "{err}");
}

/// Complete checkpoints under `uri`, via `amdimctl checkpoints -o json`.
fn complete_steps(uri: &str, env: &[(&'static str, String)]) -> Vec<u64> {
    let listed: serde_json::Value = serde_json::from_str(&run_amdimctl(&["checkpoints", uri, "-o", "json"], env)).unwrap();
    listed.as_array().unwrap().iter().map(|c| c["step"].as_u64().unwrap()).collect()
}

/// A job whose wide RKHS head makes ~240 MB checkpoints (multipart uploads
/// of both files) from cheap steps, written to `uri`.
fn big_checkpoints_job(dir: &Path, uri: &str, max_steps: u64, every_steps: u64, keep: usize) -> std::path::PathBuf {
    let spec = dir.join("job.toml");
    std::fs::write(
        &spec,
        format!(
            "[job]\nname = \"faults\"\n[data]\nformat = \"synthetic\"\nsynthetic_samples = 64\n\
             [model]\nndf = 8\nn_rkhs = 2048\ndepth = 1\n[train]\nbatch_size = 4\nmax_steps = {max_steps}\nlog_every = 1\n\
             [eval]\nenabled = false\n[checkpoint]\nuri = \"{uri}\"\nevery_steps = {every_steps}\nkeep = {keep}\n"
        ),
    )
    .unwrap();
    spec
}

/// `amdim-worker train` on `spec` in the background, its log in `log` and
/// its summary line in `stdout`.
fn start_training(spec: &Path, env: &[(&'static str, String)], log: &Path, stdout: std::process::Stdio) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_amdim-worker"))
        .args(["train", "--config"])
        .arg(spec)
        .envs(env.iter().cloned())
        .env("NO_COLOR", "1")
        .stdout(stdout)
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// Exports every checkpoint in `steps` from `uri` to `dir/export-<step>`
/// (amdimctl verifies sizes and SHA-256); each holds the wide model.
fn export_each(uri: &str, steps: &[u64], env: &[(&'static str, String)], dir: &Path) {
    for step in steps {
        let out = dir.join(format!("export-{step}"));
        run_amdimctl(&["export", uri, "--step", &step.to_string(), "--out", out.to_str().unwrap()], env);
        assert!(out.join("model.safetensors").metadata().unwrap().len() > 50 << 20);
    }
}

#[test]
fn checkpoints_survive_the_s3_server_being_killed_mid_upload() {
    let mut s3 = seaweed::SeaweedS3::start("faults");
    let env = s3.env();
    let tmp = tempfile::tempdir().unwrap();
    let uri = s3.uri("runs/faulty");
    let spec = big_checkpoints_job(tmp.path(), &uri, 16, 4, 2);
    let log = tmp.path().join("train.log");
    let mut child = start_training(&spec, &env, &log, std::process::Stdio::null());
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let started = std::time::Instant::now();
    while !read_log().contains("checkpoint snapshot taken") {
        assert!(started.elapsed().as_secs() < 120, "no checkpoint started:\n{}", read_log());
        assert!(child.try_wait().unwrap().is_none(), "training ended early:\n{}", read_log());
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // The first upload is in flight: kill the server under it.
    s3.kill();
    let steps_at_kill = read_log().matches(" step ").count();
    std::thread::sleep(std::time::Duration::from_secs(3));
    let steps_during_outage = read_log().matches(" step ").count() - steps_at_kill;
    s3.restart();
    let status = child.wait().unwrap();
    let text = read_log();
    assert!(status.success(), "training failed:\n{text}");
    assert!(steps_during_outage > 0, "training stalled while S3 was down:\n{text}");
    // Whatever happened to the interrupted upload, every listed checkpoint is
    // complete and verifies, and the last one is there.
    let steps = complete_steps(&uri, &env);
    assert_eq!(steps.last(), Some(&16), "{steps:?}\n{text}");
    assert!(steps.len() <= 2, "retention keeps 2: {steps:?}");
    export_each(&uri, &steps, &env, tmp.path());
    // The exported weights load into the authors' PyTorch encoder with
    // safetensors.torch.load_file and a strict load_state_dict.
    let weights = tmp.path().join("export-16/model.safetensors");
    let out = Command::new("/usr/bin/python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/load_export.py"))
        .arg(&weights)
        .args(["32", "8", "2048", "1", "0"])
        .output()
        .unwrap();
    let loaded = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let loaded: serde_json::Value = serde_json::from_str(loaded.trim()).unwrap();
    assert_eq!(loaded["r1"], serde_json::json!([2, 2048, 1, 1]));
    assert_eq!(loaded["finite"], true);
    // Resuming from the bucket works, with the keys from a mounted
    // credentials file instead of the environment.
    let creds = tmp.path().join("credentials");
    std::fs::write(
        &creds,
        format!(
            "[default]\naws_access_key_id = nobody\naws_secret_access_key = nothing\n[amdim]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            seaweed::ACCESS_KEY,
            seaweed::SECRET_KEY
        ),
    )
    .unwrap();
    let file_env: Vec<(&'static str, String)> = env
        .iter()
        .filter(|(k, _)| !k.starts_with("AWS_ACCESS_KEY_ID") && !k.starts_with("AWS_SECRET"))
        .cloned()
        .chain([
            ("AWS_SHARED_CREDENTIALS_FILE", creds.display().to_string()),
            ("AWS_PROFILE", "amdim".to_string()),
        ])
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_amdim-worker"))
        .args(["train", "--resume", "--config"])
        .arg(&spec)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .envs(file_env)
        .env("AMDIM_TRAIN__MAX_STEPS", "17")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("resumed from checkpoint step=16"), "{err}");

    // Wrong credentials: the job stops at start, naming checkpoint.uri.
    let mut bad = env.clone();
    bad[1].1 = "wrong-secret".into();
    let out = Command::new(env!("CARGO_BIN_EXE_amdim-worker"))
        .args(["train", "--config"])
        .arg(&spec)
        .envs(bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("checkpoint.uri") && err.contains("runs/faulty"),
        "{err}"
    );
}

#[test]
fn a_two_rank_job_resumes_from_its_s3_checkpoint() {
    let s3 = seaweed::SeaweedS3::start("ranks");
    let env = s3.env();
    let tmp = tempfile::tempdir().unwrap();
    let uri = s3.uri("runs/two-ranks");
    let spec = tmp.path().join("job.toml");
    std::fs::write(
        &spec,
        format!(
            "[job]\nname = \"two-ranks\"\n[data]\nformat = \"synthetic\"\nsynthetic_samples = 48\n\
             [model]\nndf = 8\nn_rkhs = 32\ndepth = 1\n[train]\nbatch_size = 8\nlog_every = 1\n\
             [dist]\nsync_bn = true\ntimeout_s = 30\n[checkpoint]\nuri = \"{uri}\"\nevery_steps = 2\nkeep = 0\n"
        ),
    )
    .unwrap();
    let run_ranks = |max_steps: u64, resume: bool| -> Vec<String> {
        support::ranks::run_ranks(2, |_| train_command(&spec, resume, max_steps, &env))
            .into_iter()
            .map(|out| {
                let log = String::from_utf8_lossy(&out.stderr).into_owned();
                assert!(out.status.success(), "{log}");
                log
            })
            .collect()
    };
    run_ranks(4, false);
    let logs = run_ranks(6, true);
    let checksum = |log: &str| {
        log.lines()
            .rev()
            .find(|l| l.contains(" step "))
            .and_then(|l| l.split("param_checksum=").nth(1))
            .map(str::to_string)
    };
    for log in &logs {
        assert!(log.contains("resumed from checkpoint step=4"), "{log}");
    }
    assert_eq!(checksum(&logs[0]), checksum(&logs[1]), "ranks differ after the resume");
    assert_eq!(complete_steps(&uri, &env), vec![2, 4, 6]);
}

#[test]
fn checkpoints_stay_whole_while_the_s3_server_is_killed_at_random_moments() {
    let mut s3 = seaweed::SeaweedS3::start("chaos");
    let env = s3.env();
    let tmp = tempfile::tempdir().unwrap();
    let uri = s3.uri("runs/chaos");
    let spec = big_checkpoints_job(tmp.path(), &uri, 60, 5, 3);
    let (log, summary) = (tmp.path().join("train.log"), tmp.path().join("summary.json"));
    let mut child = start_training(&spec, &env, &log, std::fs::File::create(&summary).unwrap().into());
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let steps_logged = || read_log().matches(" step ").count();
    // The fault schedule: seeded from the clock and printed, so that a
    // failing one can be replayed by hand.
    let schedule = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut rng = KeyedRng::new(Stream::Synthetic, &[schedule]);
    let mut between = |lo: f64, hi: f64| std::time::Duration::from_secs_f64(rng.uniform(lo, hi));
    let (mut kills, mut steps_while_down) = (0, 0);
    let started = std::time::Instant::now();
    // Kill the server at random moments until training is near its end,
    // then leave it up so that the last checkpoint can be written.
    'chaos: while steps_logged() < 50 {
        let calm = std::time::Instant::now() + between(0.3, 2.5);
        while std::time::Instant::now() < calm {
            if child.try_wait().unwrap().is_some() || steps_logged() >= 50 {
                break 'chaos;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(
            started.elapsed().as_secs() < 600,
            "schedule {schedule}: training too slow:\n{}",
            read_log()
        );
        s3.kill();
        kills += 1;
        let before = steps_logged();
        std::thread::sleep(between(0.2, 1.5));
        steps_while_down += steps_logged() - before;
        s3.restart();
    }
    let status = child.wait().unwrap();
    let text = read_log();
    assert!(status.success(), "schedule {schedule}, {kills} kills: training failed:\n{text}");
    assert!(kills >= 2, "schedule {schedule}: only {kills} kill(s); training ended too soon");
    // Every checkpoint listed is complete and verifies (sizes and SHA-256 on
    // export); the last one is there; retention kept at most 3.
    let steps = complete_steps(&uri, &env);
    assert_eq!(steps.last(), Some(&60), "schedule {schedule}, {kills} kills: {steps:?}\n{text}");
    assert!(steps.len() <= 3, "retention keeps 3: {steps:?}");
    export_each(&uri, &steps, &env, tmp.path());
    let report: serde_json::Value = serde_json::from_str(std::fs::read_to_string(&summary).unwrap().trim()).unwrap();
    let abandoned = text.matches("checkpoint abandoned").count();
    eprintln!(
        "schedule {schedule}: {kills} kills, {steps_while_down} steps trained while S3 was down, {abandoned} checkpoint(s) abandoned, \
         training blocked by checkpoints {:.2} s of {:.1} s",
        report["checkpoint_blocked_s"].as_f64().unwrap(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(report["steps"], 60, "{report}");
    // The newest checkpoint resumes.
    let out = Command::new(env!("CARGO_BIN_EXE_amdim-worker"))
        .args(["train", "--resume", "--config"])
        .arg(&spec)
        .envs(env.iter().cloned())
        .env("AMDIM_TRAIN__MAX_STEPS", "61")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("resumed from checkpoint step=60"), "{err}");
}
