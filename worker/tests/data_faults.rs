//! Training data read from a real S3 server (SeaweedFS) that goes down:
//! a short outage is retried and changes nothing (the same parameters, to
//! the bit, as training from the local folder, and only the undecodable
//! files skipped), while an outage beyond the retry budget stops the run
//! with an error naming the object. The dataset is an ImageFolder of
//! generated PNGs plus two files that are not images.

#[path = "../../shared/testsupport/seaweed.rs"]
mod seaweed;

use object_store::ObjectStore;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_amdim-worker");
const STEPS: u64 = 14;

/// `root/train/<class>/<n>.png`: 2 classes × 10 images, and 2 undecodable files.
fn write_photos(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for (c, class) in ["ants", "bees"].iter().enumerate() {
        for n in 0..10u32 {
            let img = image::RgbImage::from_fn(40 + n, 48, |x, y| {
                image::Rgb([(x * 5 + n * 20) as u8, (y * 4 + c as u32 * 90) as u8, ((x ^ y) * 3) as u8])
            });
            let mut png = std::io::Cursor::new(Vec::new());
            img.write_to(&mut png, image::ImageFormat::Png).unwrap();
            files.push((format!("train/{class}/{n:02}.png"), png.into_inner()));
        }
        files.push((format!("train/{class}/broken.png"), b"not a png at all".to_vec()));
    }
    for (name, bytes) in &files {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    files
}

fn job(dir: &Path, data: &str, ckpt: &Path) -> PathBuf {
    let spec = dir.join(format!("{}.toml", ckpt.file_name().unwrap().to_string_lossy()));
    std::fs::write(
        &spec,
        format!(
            "[job]\nname = \"data-faults\"\nseed = 9\n[data]\nformat = \"image_folder\"\npath = \"{data}\"\nworkers = 1\n\
             [model]\nimage_size = 64\nndf = 8\nn_rkhs = 64\ndepth = 1\n\
             [train]\nbatch_size = 4\nmax_steps = {STEPS}\nlog_every = 1\n[eval]\nenabled = false\n\
             [checkpoint]\nuri = \"{}\"\nevery_steps = 0\nkeep = 0\n",
            ckpt.display()
        ),
    )
    .unwrap();
    spec
}

fn start(spec: &Path, env: &[(&'static str, String)], log: &Path) -> Child {
    Command::new(BIN)
        .args(["train", "--config"])
        .arg(spec)
        .envs(env.iter().cloned())
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// Waits until the log says training has started (the dataset is listed).
fn await_training(child: &mut Child, log: &Path) {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains("training data-faults") {
            return;
        }
        assert!(child.try_wait().unwrap().is_none(), "ended before training:\n{text}");
        assert!(started.elapsed() < Duration::from_secs(120), "training never started:\n{text}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The run's summary line and the final weights.
fn finish(child: Child, log: &Path, ckpt: &Path) -> (serde_json::Value, Vec<u8>) {
    let out = child.wait_with_output().unwrap();
    let text = std::fs::read_to_string(log).unwrap();
    assert!(out.status.success(), "{text}");
    let summary = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    let weights = std::fs::read(ckpt.join(format!("step-{STEPS:010}/model.safetensors"))).unwrap();
    (summary, weights)
}

#[test]
fn s3_outages_during_data_reads_are_retried_within_the_budget_and_fail_the_run_beyond_it() {
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("photos");
    let files = write_photos(&local);
    let mut s3 = seaweed::SeaweedS3::start("data");
    let env = s3.env();
    let bucket = s3.client();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for (name, bytes) in files {
        rt.block_on(bucket.put(&format!("photos/{name}").into(), bytes.into())).unwrap();
    }

    // Reference: the local folder. The two broken files are skipped and counted.
    let (ckpt, log) = (tmp.path().join("local"), tmp.path().join("local.log"));
    let spec = job(tmp.path(), local.to_str().unwrap(), &ckpt);
    let (reference, reference_weights) = finish(start(&spec, &[], &log), &log, &ckpt);
    let skipped = reference["skipped_samples"].as_u64().unwrap();
    assert!(skipped >= 2, "{reference}");
    assert_eq!(reference["data_read_retries"], 0, "{reference}");

    // S3 killed as training starts and back after 2 s: reads wait and retry;
    // nothing more is skipped and the parameters are the same to the bit.
    let (ckpt, log) = (tmp.path().join("outage"), tmp.path().join("outage.log"));
    let spec = job(tmp.path(), &s3.uri("photos"), &ckpt);
    let mut child = start(&spec, &env, &log);
    await_training(&mut child, &log);
    s3.kill();
    std::thread::sleep(Duration::from_secs(2));
    s3.restart();
    let (summary, weights) = finish(child, &log, &ckpt);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        summary["data_read_retries"].as_u64().unwrap() > 0,
        "no read retried:\n{summary}\n{text}"
    );
    assert_eq!(summary["skipped_samples"].as_u64(), Some(skipped), "{summary}\n{text}");
    assert!(weights == reference_weights, "an S3 outage changed training:\n{text}");
    assert!(text.contains("undecodable sample(s) skipped"), "{text}");

    // S3 down for longer than AMDIM_STORAGE_RETRY_S: the run fails, naming
    // the object it could not read, instead of training on replacements.
    let (ckpt, log) = (tmp.path().join("down"), tmp.path().join("down.log"));
    let spec = job(tmp.path(), &s3.uri("photos"), &ckpt);
    let budget = [("AMDIM_STORAGE_RETRY_S", "3".to_string())];
    let env: Vec<_> = env.iter().cloned().chain(budget).collect();
    let mut child = start(&spec, &env, &log);
    await_training(&mut child, &log);
    s3.kill();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "still running 120 s into an outage with a 3 s budget:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "trained through an outage:\n{text}");
    assert!(
        text.contains("dataset object photos/train/") && text.contains("unreachable after"),
        "{text}"
    );
    assert!(!ckpt.join(format!("step-{STEPS:010}")).exists(), "{text}");
}
