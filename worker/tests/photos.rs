//! The photo pipeline on real files: the foolbox 3.3.4 wheel's ImageNet JPEGs
//! (512×512) and CIFAR PNGs arranged as ImageFolder trees by
//! `tests/fixtures/photos.py`, Pillow/torchvision as the reference for
//! decoding and bicubic crops (`tests/parity/pil_reference.py`, Debian's
//! python3-pil and python3-torchvision), a generated torture set, and short
//! training runs at 64 and 128 px through the CLI.

use amdim_shared::spec::{AugmentSpec, DataFormat, DataSpec};
use amdim_worker::data::Split;
use amdim_worker::data::photo::{self, CropBox, Rgb};
use amdim_worker::data::pipeline::{Pipeline, Source};
use std::path::{Path, PathBuf};
use std::process::Command;

mod support;
use support::{run_amdimctl, testdata};

const SYSTEM_PYTHON: &str = "/usr/bin/python3";

fn imagenet_jpeg() -> PathBuf {
    testdata().join("imagenet20/train/0022/imagenet_17_22.jpg")
}

fn check_pillow() {
    let ok = Command::new(SYSTEM_PYTHON)
        .args(["-c", "import PIL, torchvision"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "Pillow/torchvision missing: `apt-get install python3-torchvision` (.ci/run installs it)"
    );
}

/// Pillow's reference images for `image` and the crop box `bx`.
fn pillow_reference(image: &Path, bx: [u32; 4], out: &Path) -> (Rgb, Vec<u8>, Vec<u8>, Vec<u8>) {
    check_pillow();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/parity/pil_reference.py");
    let status = Command::new(SYSTEM_PYTHON)
        .arg(script)
        .arg(image)
        .arg(out)
        .args(bx.map(|v| v.to_string()))
        .status()
        .unwrap();
    assert!(status.success());
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("meta.json")).unwrap()).unwrap();
    let decoded = Rgb {
        width: meta["width"].as_u64().unwrap() as u32,
        height: meta["height"].as_u64().unwrap() as u32,
        pixels: std::fs::read(out.join("decoded.rgb")).unwrap(),
    };
    let read = |name: &str| std::fs::read(out.join(name)).unwrap();
    (decoded, read("crop.rgb"), read("eval128.rgb"), read("eval64.rgb"))
}

/// (max, mean) absolute difference of two u8 buffers.
fn diff(a: &[u8], b: &[u8]) -> (u8, f64) {
    assert_eq!(a.len(), b.len());
    let max = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap_or(0);
    let mean = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y) as f64).sum::<f64>() / a.len() as f64;
    (max, mean)
}

#[test]
fn bicubic_crops_and_eval_transforms_match_pillow_and_torchvision() {
    let tmp = tempfile::tempdir().unwrap();
    let bx = [37, 50, 300, 260];
    let (decoded, crop, eval128, eval64) = pillow_reference(&imagenet_jpeg(), bx, tmp.path());
    // Same input pixels on both sides: only the resampling is compared.
    let ours = photo::resample(
        &decoded,
        CropBox {
            left: bx[0] as f64,
            top: bx[1] as f64,
            width: bx[2] as f64,
            height: bx[3] as f64,
        },
        128,
    );
    let (max, mean) = diff(&ours, &crop);
    // Both use fixed-point two-pass convolution; rounding differs by a level at most twice.
    assert!(
        max <= 2 && mean < 0.15,
        "RandomResizedCrop resampling vs Pillow: max {max}, mean {mean}"
    );
    for (size, resize, reference) in [(128, 146, &eval128), (64, 70, &eval64)] {
        let ours = photo::resample(
            &decoded,
            photo::resize_center_crop(decoded.width, decoded.height, resize, size),
            size,
        );
        let (max, mean) = diff(&ours, reference);
        assert!(
            max <= 2 && mean < 0.1,
            "eval transform {size} px vs torchvision: max {max}, mean {mean}"
        );
    }
}

#[test]
fn jpeg_decoding_is_close_to_pillows() {
    let tmp = tempfile::tempdir().unwrap();
    let jpeg = imagenet_jpeg();
    let (decoded, ..) = pillow_reference(&jpeg, [0, 0, 64, 64], tmp.path());
    let ours = photo::decode(&std::fs::read(&jpeg).unwrap(), 1 << 26).unwrap();
    assert_eq!((ours.width, ours.height), (decoded.width, decoded.height));
    // Different IDCT and chroma upsampling code: close, not identical.
    let (max, mean) = diff(&ours.pixels, &decoded.pixels);
    assert!(mean < 1.0 && max < 48, "decoded pixels vs Pillow: max {max}, mean {mean}");
}

#[test]
fn torture_set_is_skipped_counted_and_replaced_deterministically() {
    check_pillow();
    let tmp = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/torture.py");
    let out = Command::new(SYSTEM_PYTHON)
        .arg(script)
        .arg(imagenet_jpeg())
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bad: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect();
    let spec = amdim_shared::spec::DataSpec {
        format: amdim_shared::spec::DataFormat::ImageFolder,
        path: tmp.path().display().to_string(),
        ..Default::default()
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let source = Source::open(&spec, Split::Train, runtime.handle()).unwrap();
    let Source::Encoded(folder) = &source else {
        panic!("not a photo source")
    };
    let names: Vec<String> = (0..folder.len())
        .map(|i| Path::new(&folder.name(i)).file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 12);
    let aug = AugmentSpec::default();
    let pipeline = Pipeline::new(source, 128, aug.clone(), 7, spec.max_pixels, 2).unwrap();
    let all: Vec<u32> = (0..12).collect();
    let batch = pipeline.train_batch(&all, 0).unwrap();
    assert_eq!(pipeline.health.skipped(), bad.len() as u64, "skipped: {bad:?}");
    assert!(batch.view1.iter().chain(&batch.view2).all(|v| v.is_finite()));
    assert_eq!(batch.labels.as_deref(), Some(&[0u32, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1][..]));
    // A bad sample i is replaced by the next readable file, with i's own random stream.
    let per = 3 * 128 * 128;
    let Source::Encoded(folder) = &pipeline.source else {
        unreachable!()
    };
    let first_good_after = |i: usize| (i..12).find(|&j| !bad.contains(&names[j])).unwrap();
    for (i, name) in names.iter().enumerate() {
        let j = if bad.contains(name) { first_good_after(i) } else { i };
        let img = photo::decode(&folder.read(j).unwrap(), spec.max_pixels).unwrap_or_else(|e| panic!("{}: {e}", names[j]));
        let (v1, v2) = photo::two_views(&img, 128, &aug, 7, 0, i as u64);
        assert_eq!(&batch.view1[i * per..(i + 1) * per], &v1[..], "{name}");
        assert_eq!(&batch.view2[i * per..(i + 1) * per], &v2[..], "{name}");
    }
    // The same batch again: identical, and each bad file counted again but logged once.
    let again = pipeline.train_batch(&all, 0).unwrap();
    assert_eq!(again.view1, batch.view1);
    assert_eq!(pipeline.health.skipped(), 2 * bad.len() as u64);
}

fn write_job(dir: &Path, data: &Path, size: usize, extra: &str) -> PathBuf {
    let spec = dir.join("job.toml");
    std::fs::write(
        &spec,
        format!(
            "[job]\nname = \"photos-{size}\"\n[data]\nformat = \"image_folder\"\npath = \"{}\"\n\
             [model]\nimage_size = {size}\nndf = 8\nn_rkhs = 64\ndepth = 1\n\
             [train]\nbatch_size = 4\nmax_steps = 3\nlog_every = 1\n\
             [eval]\nbn_refresh_batches = 1\n\
             [checkpoint]\nuri = \"{}\"\n{extra}",
            data.display(),
            dir.join("ckpt").display()
        ),
    )
    .unwrap();
    spec
}

#[test]
fn trains_on_an_image_folder_at_64_and_128_px() {
    let data = testdata().join("imagenet20");
    for size in [64, 128] {
        let tmp = tempfile::tempdir().unwrap();
        let spec = write_job(tmp.path(), &data, size, "");
        let out = Command::new(env!("CARGO_BIN_EXE_amdim-worker"))
            .args(["train", "--config"])
            .arg(&spec)
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{size} px: {log}");
        assert!(log.contains("step=3"), "{size} px: no third step in {log}");
        assert!(log.contains("test accuracy"), "{size} px: no evaluation in {log}");
        assert!(tmp.path().join("ckpt/step-0000000003/manifest.json").exists());
        // The per-step detail (the data pipeline's wait among it) is in the history.
        let history = std::fs::read_to_string(tmp.path().join("ckpt/history.jsonl")).unwrap();
        assert!(history.contains("\"data_wait_s\""), "{size} px: {history}");
    }
}

#[test]
fn a_missing_or_empty_dataset_fails_at_start_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-dataset");
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(empty.join("train/some-class")).unwrap();
    for (data, expect) in [(&missing, "no-such-dataset/train"), (&empty, "no .jpg, .jpeg or .png files")] {
        let spec = write_job(tmp.path(), data, 64, "");
        let out = Command::new(env!("CARGO_BIN_EXE_amdim-worker"))
            .args(["train", "--config"])
            .arg(&spec)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(expect), "{err}");
    }
}

/// Pipelines over one split of `spec`'s dataset (2 data threads).
fn pipeline_for(format: DataFormat, path: &Path, runtime: &tokio::runtime::Runtime) -> Pipeline {
    let spec = DataSpec {
        format,
        path: path.display().to_string(),
        ..Default::default()
    };
    let source = Source::open(&spec, Split::Train, runtime.handle()).unwrap_or_else(|e| panic!("{format:?}: {e}"));
    Pipeline::new(source, 64, AugmentSpec::default(), 3, spec.max_pixels, 2).unwrap()
}

#[test]
fn packed_shards_give_the_same_samples_labels_and_views_as_the_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = testdata().join("imagenet20");
    let packed = tmp.path().join("packed");
    // Small shards: the 20 JPEGs spread over several tar files.
    let out = run_amdimctl(
        &[
            "dataset",
            "pack",
            folder.to_str().unwrap(),
            packed.to_str().unwrap(),
            "--shard-size",
            "300KiB",
            "-o",
            "json",
        ],
        &[],
    );
    let packed_splits: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(packed_splits[0]["shards"].as_u64().unwrap() >= 4, "{out}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let a = pipeline_for(DataFormat::ImageFolder, &folder, &runtime);
    let b = pipeline_for(DataFormat::Shards, &packed, &runtime);
    assert_eq!(a.source.len(), b.source.len());
    assert_eq!(a.source.n_classes(), b.source.n_classes());
    let all: Vec<u32> = (0..a.source.len() as u32).rev().collect();
    let (x, y) = (a.train_batch(&all, 1).unwrap(), b.train_batch(&all, 1).unwrap());
    assert_eq!(x.labels, y.labels);
    assert!(x.view1 == y.view1 && x.view2 == y.view2, "views differ");
    assert_eq!(a.eval_batch(3..11).unwrap(), b.eval_batch(3..11).unwrap());
    assert_eq!(b.health.skipped(), 0);
    // Truncating a shard makes its samples unreadable: skipped and replaced, never a crash.
    let shard = packed.join("train/shard-000001.tar");
    let len = std::fs::metadata(&shard).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap()
        .set_len(len / 3)
        .unwrap();
    let c = pipeline_for(DataFormat::Shards, &packed, &runtime);
    let z = c.train_batch(&all, 1).unwrap();
    assert!(c.health.skipped() > 0);
    assert!(z.view1.iter().all(|v| v.is_finite()));
    // A folder that is not a packed dataset is refused at start, naming the file.
    let spec = DataSpec {
        format: DataFormat::Shards,
        path: folder.display().to_string(),
        ..Default::default()
    };
    let err = Source::open(&spec, Split::Train, runtime.handle()).err().unwrap().to_string();
    assert!(err.contains("imagenet20/train") && err.contains("no manifest.json"), "{err}");
}

/// The r1 rows of an `embed` output, by file (relative path, as its `files` metadata names them).
fn rows_by_name(features: &Path, dim: usize) -> std::collections::HashMap<String, Vec<f32>> {
    let bytes = std::fs::read(features).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let names: Vec<String> = serde_json::from_str(&meta.metadata().as_ref().unwrap()["files"]).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let r1: Vec<f32> = st
        .tensor("r1")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(r1.len(), names.len() * dim);
    names.into_iter().zip(r1.chunks_exact(dim).map(<[f32]>::to_vec)).collect()
}

#[test]
fn embed_of_a_folder_equals_the_online_evaluation_features() {
    use amdim_shared::checkpoint::WeightsInfo;
    use amdim_worker::backend::Cpu;
    use amdim_worker::checkpoint::format::{HostState, described_model_bytes};
    use amdim_worker::model::encoder::Forward;
    use amdim_worker::model::params::to_vec;
    use amdim_worker::model::{BnMode, ParamStore};
    use amdim_worker::train::step::images;

    let runtime = tokio::runtime::Runtime::new().unwrap();
    for (tree, size) in [("imagenet20", 64), ("cifar10", 32)] {
        let tmp = tempfile::tempdir().unwrap();
        let data = testdata().join(tree);
        let spec = amdim_shared::spec::JobSpec {
            data: DataSpec {
                format: DataFormat::ImageFolder,
                path: data.display().to_string(),
                ..Default::default()
            },
            model: amdim_shared::spec::ModelSpec {
                image_size: size,
                ndf: 8,
                n_rkhs: 64,
                depth: 1,
                ..Default::default()
            },
            ..Default::default()
        };
        // Weights as training writes them (describing their model), at their initial values.
        let device = Default::default();
        let plan = amdim_worker::model::plan(&spec.model, &spec.loss, None);
        let params = ParamStore::<Cpu>::init(&plan, 5, &device);
        let state = HostState {
            values: params.to_host(),
            counters: params.counters.clone(),
        };
        let weights = tmp.path().join("model.safetensors");
        std::fs::write(
            &weights,
            described_model_bytes(&plan, &state, &WeightsInfo::new(&spec, None)).unwrap(),
        )
        .unwrap();
        // `embed` of the validation folder, no --config.
        let features = tmp.path().join("features.safetensors");
        let out = Command::new(env!("CARGO_BIN_EXE_amdim-worker"))
            .args(["embed", "--batch-size", "64", "--weights"])
            .arg(&weights)
            .arg("--input")
            .arg(data.join("val"))
            .arg("--output")
            .arg(&features)
            .output()
            .unwrap();
        assert!(out.status.success(), "{tree}: {}", String::from_utf8_lossy(&out.stderr));
        let embedded = rows_by_name(&features, 64);
        // The online evaluation path: the pipeline's evaluation views, the encoder in eval mode.
        let source = Source::open(&spec.data, Split::Test, runtime.handle()).unwrap();
        let pipeline = Pipeline::for_job(source, &spec).unwrap();
        let n = pipeline.source.len();
        assert_eq!(embedded.len(), n, "{tree}: one row per image");
        let x = images::<Cpu>(&pipeline.eval_batch(0..n).unwrap(), n, size, &device);
        let r1 = to_vec(Forward::new(&params.values, BnMode::Eval).encode(&plan.encoder, x).r1);
        let Source::Encoded(folder) = &pipeline.source else {
            panic!("{tree}: not a photo source")
        };
        for (i, online) in r1.chunks_exact(64).enumerate() {
            let name = folder.name(i);
            let rel = Path::new(&name)
                .strip_prefix(data.join("val"))
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let ours = embedded.get(&rel).unwrap_or_else(|| panic!("{tree}: {rel} not embedded"));
            let worst = ours.iter().zip(online).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            let scale = online.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!(
                worst <= 1e-5 * scale.max(1.0),
                "{tree} {rel}: embed differs from the online path by {worst}"
            );
        }
    }
}
