//! End-to-end tests of the `amdim-worker` binary on real files: Fashion-MNIST
//! from Debian's `dataset-fashion-mnist`, checkpoints on the local
//! filesystem through object_store, real signals.

mod support;

use amdim_worker::data::npy::{self, NpyArray};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use support::fashion::{TinyFashionJob, require_dataset};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_amdim-worker"));
    c.env("AMDIM_LOG", "info");
    c
}

/// A tiny job on real Fashion-MNIST samples (LR milestone after step 1),
/// `extra` TOML at its end.
fn write_spec(dir: &Path, name: &str, ckpt: &Path, extra: &str) -> PathBuf {
    TinyFashionJob::new(name, ckpt.to_path_buf())
        .milestones("[1]")
        .bn_refresh_batches(2)
        .extra(extra)
        .write(&dir.join(format!("{name}.toml")))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run amdim-worker");
    if !out.status.success() {
        panic!(
            "amdim-worker failed: {}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

fn read(ckpt: &Path, step: u64, file: &str) -> Vec<u8> {
    std::fs::read(ckpt.join(format!("step-{step:010}")).join(file)).unwrap()
}

#[test]
fn interrupted_and_resumed_run_is_bitwise_identical_to_uninterrupted_run() {
    require_dataset();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let spec_a = write_spec(tmp.path(), "a", &a, "");
    let spec_b = write_spec(tmp.path(), "b", &b, "");
    // Uninterrupted: 10 steps (crosses an epoch boundary at 8 and the LR milestone).
    run(bin().args(["train", "--config"]).arg(&spec_a).env("AMDIM_TRAIN__MAX_STEPS", "10"));
    // Interrupted after 3 steps, then resumed to 10.
    run(bin().args(["train", "--config"]).arg(&spec_b).env("AMDIM_TRAIN__MAX_STEPS", "3"));
    let out = run(bin()
        .args(["train", "--resume", "--config"])
        .arg(&spec_b)
        .env("AMDIM_TRAIN__MAX_STEPS", "10"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("resumed from checkpoint"));
    for file in ["model.safetensors", "optimizer.safetensors"] {
        assert!(
            read(&a, 3, file) == read(&b, 3, file),
            "{file} at step 3 differs between two identical runs"
        );
        assert!(read(&a, 10, file) == read(&b, 10, file), "{file} at step 10 differs after resume");
    }
    // The run trained: parameters at step 10 differ from step 3.
    assert_ne!(read(&a, 3, "model.safetensors"), read(&a, 10, "model.safetensors"));
    let manifest: serde_json::Value = serde_json::from_slice(&read(&a, 10, "manifest.json")).unwrap();
    assert_eq!(manifest["step"], 10);
    assert_eq!(manifest["epoch"], 1);
    assert_eq!(manifest["global_batch"], 8);
    assert_eq!(manifest["files"].as_array().unwrap().len(), 2);

    // A corrupt newest checkpoint is skipped with a reason; resume falls back to the previous one.
    let victim = b.join("step-0000000010").join("model.safetensors");
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&victim, bytes).unwrap();
    let out = run(bin()
        .args(["train", "--resume", "--config"])
        .arg(&spec_b)
        .env("AMDIM_TRAIN__MAX_STEPS", "10"));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("skipping checkpoint") && log.contains("SHA-256"), "{log}");
    assert!(
        log.contains("resumed from checkpoint step=9"),
        "resumed from the previous checkpoint: {log}"
    );
    assert_eq!(read(&a, 10, "model.safetensors"), read(&b, 10, "model.safetensors"));
}

#[test]
fn interrupt_writes_a_checkpoint_and_exits_cleanly() {
    require_dataset();
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("ck");
    let spec = write_spec(tmp.path(), "sig", &ckpt, "");
    let mut child = bin()
        .args(["train", "--config"])
        .arg(&spec)
        .env("AMDIM_CHECKPOINT__EVERY_STEPS", "0")
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first logged step, then send SIGINT as Ctrl-C would.
    use std::io::{BufRead, BufReader};
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut log = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        log.push_str(&line);
        log.push('\n');
        if line.contains(" step ") || line.contains("step=2") {
            break;
        }
    }
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    for line in lines {
        log.push_str(&line.unwrap());
        log.push('\n');
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "exit {status}: {log}");
    assert!(log.contains("stopped on request"), "{log}");
    let folders: Vec<String> = std::fs::read_dir(&ckpt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("step-"))
        .collect();
    assert_eq!(folders.len(), 1, "{folders:?}");
    assert!(ckpt.join(&folders[0]).join("manifest.json").exists());
    assert_ne!(folders[0], "step-0000000024", "stopped before the end");
}

#[test]
fn invalid_spec_and_unavailable_cuda_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "[model]\nimage_size = 48\n").unwrap();
    let out = bin().args(["train", "--config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("model.image_size") && err.contains("bad.toml"), "{err}");

    let cuda = write_spec(
        tmp.path(),
        "cuda",
        &tmp.path().join("ck"),
        "[runtime]\nbackend = \"cuda\"\ndevice = 0\n",
    );
    let out = bin().args(["train", "--config"]).arg(&cuda).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("runtime.backend") || err.contains("runtime.device"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let out = bin()
        .args(["train", "--config"])
        .arg(tmp.path().join("missing.toml"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

/// Writes `array` to `path` as a .npy file.
fn write_npy(path: &Path, array: &NpyArray) {
    std::fs::write(path, npy::to_bytes(array)).unwrap();
}

fn npy_f32(path: &Path, shape: &[usize], data: &[f32]) {
    let array = NpyArray::F32 {
        shape: shape.to_vec(),
        data: data.to_vec(),
    };
    write_npy(path, &array);
}

fn pseudo_images(n: usize, seed: u32) -> Vec<f32> {
    (0..n * 3 * 32 * 32)
        .map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 16) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

/// Writes spec `name` under `dir`, trains it for 3 steps, and returns the
/// spec and the step-3 `model.safetensors` (Fashion-MNIST must be there).
fn train_three_steps(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    require_dataset();
    let ckpt = dir.join(format!("{name}-ck"));
    let spec = write_spec(dir, name, &ckpt, "");
    run(bin().args(["train", "--config"]).arg(&spec).env("AMDIM_TRAIN__MAX_STEPS", "3"));
    (spec, ckpt.join("step-0000000003").join("model.safetensors"))
}

#[test]
fn score_and_embed_use_trained_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let (spec, weights) = train_three_steps(tmp.path(), "w");
    let n = 6;
    let (v1, v2) = (tmp.path().join("v1.npy"), tmp.path().join("v2.npy"));
    npy_f32(&v1, &[n, 3, 32, 32], &pseudo_images(n, 1));
    npy_f32(&v2, &[n, 3, 32, 32], &pseudo_images(n, 2));
    let locs = tmp.path().join("locs.npy");
    let loc_values: Vec<i64> = vec![0, 24, 12, 3, 7, 19, 5, 5, 6, 20, 1, 13];
    let loc_array = NpyArray::I64 {
        shape: vec![2, n],
        data: loc_values,
    };
    write_npy(&locs, &loc_array);
    let score = |extra: &[&str]| score_json(&weights, Some(&spec), [&v1, &v2], extra);
    let locs_arg = locs.to_string_lossy().into_owned();
    let s1 = score(&["--r5-locations", &locs_arg]);
    let s2 = score(&["--r5-locations", &locs_arg]);
    assert_eq!(s1, s2, "score is deterministic");
    assert_eq!(s1["r5_locations"][0][1], 24);
    assert_eq!(s1["r5_locations"][1][0], 5);
    let t = |k: &str| s1[k].as_f64().unwrap();
    assert!(t("loss_1t5") > 0.0 && t("loss_1t7") > 0.0 && t("loss_5t5") > 0.0 && t("reg") >= 0.0);
    assert!((t("loss_total") - (t("loss_1t5") + t("loss_1t7") + t("loss_5t5") + t("reg"))).abs() < 1e-4);
    let other = score(&[]);
    assert_eq!(other["loss_1t5"], s1["loss_1t5"], "the 1→5 term does not depend on locations");

    // embed from .npy, and from an image folder of PNGs
    let feats = tmp.path().join("f.safetensors");
    run(bin()
        .args(["embed", "--r5", "--weights"])
        .arg(&weights)
        .arg("--config")
        .arg(&spec)
        .arg("--input")
        .arg(&v1)
        .arg("--output")
        .arg(&feats));
    let bytes = std::fs::read(&feats).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("r1").unwrap().shape(), &[n, 16]);
    assert_eq!(st.tensor("r5").unwrap().shape(), &[n, 16, 5, 5]);
    assert!(st.tensor("r7").is_err());

    let folder = tmp.path().join("imgs");
    std::fs::create_dir(&folder).unwrap();
    for i in 0..3u8 {
        let img = image::RgbImage::from_fn(40, 36, |x, y| image::Rgb([x as u8 * 6, y as u8 * 7, i * 80]));
        img.save(folder.join(format!("img{i}.png"))).unwrap();
    }
    std::fs::write(folder.join("notes.txt"), "not an image").unwrap();
    let feats2 = tmp.path().join("g.safetensors");
    run(bin()
        .args(["embed", "--weights"])
        .arg(&weights)
        .arg("--config")
        .arg(&spec)
        .arg("--input")
        .arg(&folder)
        .arg("--output")
        .arg(&feats2));
    let bytes = std::fs::read(&feats2).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("r1").unwrap().shape(), &[3, 16]);
    assert!(meta.metadata().as_ref().unwrap()["files"].contains("img2.png"));

    // Wrong input shape is named.
    let out = bin()
        .args(["score", "--weights"])
        .arg(&weights)
        .arg("--config")
        .arg(&spec)
        .arg("--view1")
        .arg(&v1)
        .arg("--view2")
        .arg(&locs)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("locs.npy"));
}

/// The `__metadata__` of a safetensors file, read by Python's json and struct.
fn python_metadata(weights: &Path) -> serde_json::Value {
    let script = "import json, struct, sys\n\
                  raw = open(sys.argv[1], 'rb').read()\n\
                  (n,) = struct.unpack('<Q', raw[:8])\n\
                  print(json.dumps(json.loads(raw[8:8 + n]).get('__metadata__', {})))";
    let out = run(Command::new("/usr/bin/python3").args(["-c", script]).arg(weights));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `score --json` of the two `views` with `weights` (and `config`, if
/// any) and `extra` flags: its report.
fn score_json(weights: &Path, config: Option<&Path>, views: [&Path; 2], extra: &[&str]) -> serde_json::Value {
    let mut c = bin();
    c.args(["score", "--json", "--weights"]).arg(weights);
    if let Some(config) = config {
        c.arg("--config").arg(config);
    }
    c.arg("--view1").arg(views[0]).arg("--view2").arg(views[1]).args(extra);
    serde_json::from_slice(&run(&mut c).stdout).unwrap()
}

/// `embed` of `input` with `weights` (and `config`, if any): its r1 values, or its stderr on failure.
fn embed_r1(weights: &Path, config: Option<&Path>, input: &Path, out: &Path) -> Result<Vec<f32>, String> {
    let mut c = bin();
    c.args(["embed", "--weights"])
        .arg(weights)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(out);
    if let Some(config) = config {
        c.arg("--config").arg(config);
    }
    let o = c.output().unwrap();
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).into_owned());
    }
    let bytes = std::fs::read(out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let r1 = st.tensor("r1").unwrap();
    Ok(r1
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

#[test]
fn trained_weights_describe_themselves_so_embed_and_score_need_no_config() {
    let tmp = tempfile::tempdir().unwrap();
    let (spec, weights) = train_three_steps(tmp.path(), "selfdesc");

    // The metadata, read back by Python: format, version, model section, what using it needs.
    let meta = python_metadata(&weights);
    assert_eq!(
        (meta["format"].as_str(), meta["format_version"].as_str()),
        (Some("amdim-model"), Some("1"))
    );
    let model: serde_json::Value = serde_json::from_str(meta["model"].as_str().unwrap()).unwrap();
    assert_eq!(
        model,
        serde_json::json!({"image_size": 32, "ndf": 4, "n_rkhs": 16, "depth": 2, "use_bn": false, "init_scale": 1.0})
    );
    assert_eq!((meta["n_classes"].as_str(), meta["seed"].as_str()), (Some("10"), Some("7")));
    let loss: serde_json::Value = serde_json::from_str(meta["loss"].as_str().unwrap()).unwrap();
    assert_eq!(loss["mixture"]["k"], 1);
    // The manifest carries the whole effective spec.
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(weights.with_file_name("manifest.json")).unwrap()).unwrap();
    let stored = &manifest["spec"];
    assert_eq!(
        (stored["job"]["name"].as_str(), stored["train"]["batch_size"].as_u64()),
        (Some("selfdesc"), Some(8))
    );
    assert_eq!(stored["model"], model);

    // embed and score without --config give what they give with it.
    let n = 4;
    let (v1, v2) = (tmp.path().join("v1.npy"), tmp.path().join("v2.npy"));
    npy_f32(&v1, &[n, 3, 32, 32], &pseudo_images(n, 3));
    npy_f32(&v2, &[n, 3, 32, 32], &pseudo_images(n, 4));
    let with = embed_r1(&weights, Some(&spec), &v1, &tmp.path().join("a.safetensors")).unwrap();
    let without = embed_r1(&weights, None, &v1, &tmp.path().join("b.safetensors")).unwrap();
    assert_eq!(with.len(), n * 16);
    assert_eq!(with, without);
    let score = |config: Option<&Path>| score_json(&weights, config, [&v1, &v2], &[]);
    let scored = score(None);
    assert!(scored["loss_1t5"].as_f64().unwrap() > 0.0, "{scored}");
    assert_eq!(scored, score(Some(&spec)), "the stored spec gives the same loss and locations");

    // A config that contradicts the weights is refused, naming the field.
    let wrong = tmp.path().join("wrong.toml");
    std::fs::write(&wrong, std::fs::read_to_string(&spec).unwrap().replace("ndf = 4", "ndf = 2")).unwrap();
    let e = embed_r1(&weights, Some(&wrong), &v1, &tmp.path().join("c.safetensors")).unwrap_err();
    assert!(
        e.contains("model.ndf: the config says 2 but the weights were trained with 4"),
        "{e}"
    );

    // Weights without metadata (as converted from PyTorch) need the config, and load with it.
    let bytes = std::fs::read(&weights).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let bare = tmp.path().join("bare.safetensors");
    std::fs::write(&bare, safetensors::serialize(st.tensors(), None).unwrap()).unwrap();
    assert!(python_metadata(&bare).as_object().unwrap().is_empty());
    let e = embed_r1(&bare, None, &v1, &tmp.path().join("d.safetensors")).unwrap_err();
    assert!(e.contains("bare.safetensors") && e.contains("pass --config"), "{e}");
    assert_eq!(embed_r1(&bare, Some(&spec), &v1, &tmp.path().join("e.safetensors")).unwrap(), with);
}

#[test]
fn uint8_nhwc_images_get_the_evaluation_transform() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, weights) = train_three_steps(tmp.path(), "u8");
    let n = 3;
    let hwc: Vec<u8> = (0..n * 32 * 32 * 3).map(|i| ((i * 7919) % 256) as u8).collect();
    let u8_npy = tmp.path().join("u8.npy");
    let nhwc = NpyArray::U8 {
        shape: vec![n, 32, 32, 3],
        data: hwc.clone(),
    };
    write_npy(&u8_npy, &nhwc);
    // The same images as float32 NCHW, scaled and normalised by hand (CIFAR mean and std).
    use amdim_worker::data::augment::{CIFAR_MEAN, CIFAR_STD};
    let mut nchw = vec![0.0f32; n * 3 * 32 * 32];
    for (i, &v) in hwc.iter().enumerate() {
        let (img, px, c) = (i / (32 * 32 * 3), (i / 3) % (32 * 32), i % 3);
        nchw[img * 3 * 1024 + c * 1024 + px] = (v as f32 / 255.0 - CIFAR_MEAN[c]) / CIFAR_STD[c];
    }
    let f32_npy = tmp.path().join("f32.npy");
    npy_f32(&f32_npy, &[n, 3, 32, 32], &nchw);
    let from_u8 = embed_r1(&weights, None, &u8_npy, &tmp.path().join("a.safetensors")).unwrap();
    let from_f32 = embed_r1(&weights, None, &f32_npy, &tmp.path().join("b.safetensors")).unwrap();
    assert_eq!(from_u8.len(), n * 16);
    let worst = from_u8.iter().zip(&from_f32).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst < 1e-5, "uint8 vs float32 input: max difference {worst}");
    // uint8 NCHW is not guessed at.
    let nchw_u8 = tmp.path().join("nchw.npy");
    let nchw_array = NpyArray::U8 {
        shape: vec![n, 3, 32, 32],
        data: hwc,
    };
    write_npy(&nchw_u8, &nchw_array);
    let e = embed_r1(&weights, None, &nchw_u8, &tmp.path().join("c.safetensors")).unwrap_err();
    assert!(e.contains("nchw.npy") && e.contains("[N, H, W, 3]"), "{e}");
}
