//! What the commands that need no coordinator print: `validate` (a one-line
//! summary of the effective spec, or the spec as a document),
//! `checkpoints` (a table of complete checkpoints), `dataset pack` and
//! `dataset inspect` (a table per split). Printing only: the work is
//! `spec_args`', `checkpoints`' and `dataset`'s.

use super::checkpoints::{self, human_age};
use super::dataset::{self, human_bytes};
use super::output::utc_time;
use super::table::{Format, Table};
use amdim_shared::spec::JobSpec;
use anyhow::Result;
use std::path::Path;

/// `amdimctl validate`: the effective spec, summarised or as a document.
pub fn validate(file: &Path, spec: &JobSpec, format: Format) -> Result<()> {
    match format.document(&serde_json::to_value(spec)?) {
        Some(doc) => println!("{doc}"),
        None => println!(
            "{}: valid: {} px encoder (ndf {}, D {}, depth {}), global batch {}, {} epochs, checkpoints at {}",
            file.display(),
            spec.model.image_size,
            spec.model.ndf,
            spec.model.n_rkhs,
            spec.model.depth,
            spec.train.batch_size,
            spec.train.epochs,
            spec.checkpoint.uri
        ),
    }
    Ok(())
}

/// `amdimctl checkpoints`: the complete checkpoints under `uri`.
pub async fn checkpoints(uri: &str, format: Format) -> Result<()> {
    let list = checkpoints::list(uri).await?;
    if let Some(doc) = format.document(&serde_json::to_value(&list)?) {
        println!("{doc}");
        return Ok(());
    }
    let mut t = Table::new(&["step", "epoch", "ranks", "size", "age", "+created"]);
    for c in list {
        t.row(vec![
            c.step.to_string(),
            c.epoch.to_string(),
            c.world_size.to_string(),
            human_bytes(c.bytes),
            human_age(c.age_s).replace(' ', ""),
            utc_time(i64::try_from(c.created_unix).unwrap_or(0)),
        ]);
    }
    t.print(format);
    Ok(())
}

/// `amdimctl dataset pack`: packs `src` into `dst`, then one row per split.
pub async fn pack(src: &Path, dst: &str, shard_size: u64, format: Format) -> Result<()> {
    let packed = dataset::pack(src, dst, shard_size).await?;
    if let Some(doc) = format.document(&serde_json::to_value(&packed)?) {
        println!("{doc}");
        return Ok(());
    }
    let mut t = Table::new(&["location", "samples", "classes", "shards", "size"]);
    for p in packed {
        t.row(vec![
            format!("{dst}/{}", p.split),
            p.samples.to_string(),
            p.classes.to_string(),
            p.shards.to_string(),
            human_bytes(p.bytes),
        ]);
    }
    t.print(format);
    Ok(())
}

/// `amdimctl dataset inspect`: one row per split of the dataset at `uri`.
pub async fn inspect(uri: &str, format: Format) -> Result<()> {
    let reports = dataset::inspect(uri).await?;
    if let Some(doc) = format.document(&serde_json::to_value(&reports)?) {
        println!("{doc}");
        return Ok(());
    }
    let mut t = Table::new(&["split", "samples", "classes", "shards", "size", "samples/class", "class names"]);
    for r in reports {
        let more = if r.classes > r.class_names.len() { ", …" } else { "" };
        t.row(vec![
            r.split.clone(),
            r.samples.to_string(),
            r.classes.to_string(),
            r.shards.to_string(),
            human_bytes(r.bytes),
            format!("{}-{}", r.class_samples_min, r.class_samples_max),
            format!("{}{more}", r.class_names.join(", ")),
        ]);
    }
    t.print(format);
    Ok(())
}
