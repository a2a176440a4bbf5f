//! `amdimctl dataset pack` and `inspect` as real processes: against a local
//! folder and a real S3 server (SeaweedFS), with the shards read back by the
//! system `tar` to prove they are ordinary WebDataset tars.

#[path = "../../shared/testsupport/seaweed.rs"]
mod seaweed;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// An ImageFolder tree with `train` (3 classes, uneven) and `val`; the
/// "images" are distinct byte strings of varied sizes (packing copies bytes,
/// it never decodes them), one of them a `.png`.
fn image_folder(root: &Path) -> Vec<(PathBuf, u32)> {
    let mut files = Vec::new();
    for (split, per_class) in [("train", [5usize, 3, 7]), ("val", [2, 2, 1])] {
        for (label, (class, count)) in ["n01440764", "n02102040", "n03000684"].iter().zip(per_class).enumerate() {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..count {
                let ext = if label == 1 && i == 0 { "png" } else { "JPEG" };
                let path = dir.join(format!("img_{i:03}.{ext}"));
                let len = 3000 + 977 * i + 5000 * label;
                let bytes: Vec<u8> = (0..len).map(|k| ((k * 31 + i * 7 + label * 13) % 251) as u8).collect();
                std::fs::write(&path, bytes).unwrap();
                if split == "train" {
                    files.push((path, label as u32));
                }
            }
        }
    }
    // Not images: ignored by the listing.
    std::fs::write(root.join("train/n01440764/notes.txt"), "x").unwrap();
    files
}

fn amdimctl(args: &[&str], env: &[(&'static str, String)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_amdimctl"))
        .args(args)
        .envs(env.iter().cloned())
        .output()
        .unwrap()
}

fn ok_json(out: Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn stderr(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn pack_writes_plain_tars_that_hold_every_image_and_label_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let train = image_folder(&src);
    let dst = dir.path().join("packed");
    let dst_s = dst.to_str().unwrap();

    let packed = ok_json(amdimctl(
        &[
            "dataset",
            "pack",
            src.to_str().unwrap(),
            dst_s,
            "--shard-size",
            "20KiB",
            "-o",
            "json",
        ],
        &[],
    ));
    assert_eq!(packed[0]["split"], "train");
    assert_eq!(packed[0]["samples"], 15);
    assert_eq!(packed[0]["classes"], 3);
    assert_eq!(packed[1]["split"], "val");
    assert_eq!(packed[1]["samples"], 5);
    let shards = packed[0]["shards"].as_u64().unwrap();
    assert!(shards >= 4, "20 KiB shards of ~3-16 KB images: {packed}");

    // Each shard is a tar that `tar` itself reads; the members, in order,
    // are the images of the sorted listing with their labels.
    let mut members = Vec::new();
    for s in 0..shards {
        let out_dir = dir.path().join(format!("x{s}"));
        std::fs::create_dir_all(&out_dir).unwrap();
        let tar = dst.join("train").join(format!("shard-{s:06}.tar"));
        let listed = Command::new("tar").arg("-tf").arg(&tar).output().unwrap();
        assert!(
            listed.status.success(),
            "tar -tf {}: {}",
            tar.display(),
            String::from_utf8_lossy(&listed.stderr)
        );
        let status = Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(&out_dir).status().unwrap();
        assert!(status.success());
        for name in String::from_utf8(listed.stdout).unwrap().lines() {
            members.push(out_dir.join(name));
        }
    }
    assert_eq!(members.len(), 2 * train.len(), "{members:?}");
    for (k, (file, label)) in train.iter().enumerate() {
        let (image, cls) = (&members[2 * k], &members[2 * k + 1]);
        let ext = if file.extension().unwrap() == "png" { "png" } else { "jpg" };
        assert_eq!(image.file_name().unwrap().to_str().unwrap(), format!("{k:09}.{ext}"));
        assert_eq!(std::fs::read(image).unwrap(), std::fs::read(file).unwrap(), "{}", file.display());
        assert_eq!(std::fs::read_to_string(cls).unwrap(), label.to_string());
    }

    let report = ok_json(amdimctl(&["dataset", "inspect", dst_s, "-o", "json"], &[]));
    assert_eq!(report[0]["samples"], 15);
    assert_eq!(report[0]["shards"], shards);
    assert_eq!(report[0]["class_samples_min"], 3);
    assert_eq!(report[0]["class_samples_max"], 7);
    assert_eq!(report[0]["class_names"][2], "n03000684");
    assert_eq!(report[1]["samples"], 5);
    let table = amdimctl(&["dataset", "inspect", dst_s], &[]);
    assert!(table.status.success());
    assert!(String::from_utf8_lossy(&table.stdout).contains("n01440764, n02102040, n03000684"));

    // A second pack to the same place is refused and changes nothing.
    let before = std::fs::read(dst.join("train/manifest.json")).unwrap();
    let again = amdimctl(&["dataset", "pack", src.to_str().unwrap(), dst_s], &[]);
    assert!(stderr(&again).contains("already exists"));
    assert_eq!(std::fs::read(dst.join("train/manifest.json")).unwrap(), before);

    // A damaged shard is named by inspect.
    let victim = dst.join("train/shard-000001.tar");
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() / 2]).unwrap();
    let err = stderr(&amdimctl(&["dataset", "inspect", dst_s], &[]));
    assert!(err.contains("shard-000001.tar") && err.contains("the manifest says"), "{err}");
}

#[test]
fn bad_sources_and_destinations_get_errors_that_name_them() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(empty.join("train/cls")).unwrap();
    let err = stderr(&amdimctl(
        &["dataset", "pack", dir.path().to_str().unwrap(), "/tmp/unused-dst"],
        &[],
    ));
    assert!(err.contains("no `train` folder"), "{err}");
    let err = stderr(&amdimctl(
        &["dataset", "pack", empty.to_str().unwrap(), dir.path().join("d").to_str().unwrap()],
        &[],
    ));
    assert!(err.contains("train"), "{err}");
    let err = stderr(&amdimctl(
        &["dataset", "pack", empty.to_str().unwrap(), "d", "--shard-size", "12XB"],
        &[],
    ));
    assert!(err.contains("12XB"), "{err}");
    let err = stderr(&amdimctl(&["dataset", "inspect", dir.path().to_str().unwrap()], &[]));
    assert!(err.contains("no packed dataset"), "{err}");
    let err = stderr(&amdimctl(&["dataset", "inspect", "gs://bucket/x"], &[]));
    assert!(err.contains("gs://bucket/x"), "{err}");
}

#[test]
fn pack_and_inspect_through_a_real_s3_server() {
    let s3 = seaweed::SeaweedS3::start("datasets");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    image_folder(&src);
    let local = dir.path().join("packed");
    let uri = s3.uri("fashion/v1");

    let packed = ok_json(amdimctl(
        &[
            "dataset",
            "pack",
            src.to_str().unwrap(),
            &uri,
            "--shard-size",
            "20KiB",
            "-o",
            "json",
        ],
        &s3.env(),
    ));
    ok_json(amdimctl(
        &[
            "dataset",
            "pack",
            src.to_str().unwrap(),
            local.to_str().unwrap(),
            "--shard-size",
            "20KiB",
            "-o",
            "json",
        ],
        &[],
    ));
    let remote = ok_json(amdimctl(&["dataset", "inspect", &uri, "-o", "json"], &s3.env()));
    let on_disk = ok_json(amdimctl(&["dataset", "inspect", local.to_str().unwrap(), "-o", "json"], &[]));
    assert_eq!(remote, on_disk, "S3 and local packs of the same tree agree");
    assert_eq!(remote[0]["samples"], packed[0]["samples"]);

    // The objects are the same bytes as the local pack's files.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let store = s3.client();
    for name in ["train/shard-000000.tar", "train/index.bin", "val/manifest.json"] {
        let got = runtime.block_on(async {
            use object_store::ObjectStore;
            store.get(&format!("fashion/v1/{name}").into()).await?.bytes().await
        });
        assert_eq!(got.unwrap().as_ref(), std::fs::read(local.join(name)).unwrap(), "{name}");
    }

    // Overwrite refused on S3 too; wrong credentials name the URI.
    let again = amdimctl(&["dataset", "pack", src.to_str().unwrap(), &uri], &s3.env());
    assert!(stderr(&again).contains("already exists"));
    let mut bad = s3.env();
    bad[1].1 = "wrong-secret".into();
    let err = stderr(&amdimctl(&["dataset", "inspect", &uri], &bad));
    assert!(err.contains("s3://datasets/fashion/v1"), "{err}");
}
