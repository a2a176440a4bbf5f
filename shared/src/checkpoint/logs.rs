//! The log objects of a job under its checkpoint URI: each rank of each
//! generation writes its whole part's log, once, when the part ends, to
//! `logs/gen-<generation>/rank-<rank>.log` (one object per part, so a
//! restarted job never overwrites an earlier generation's log). Writing,
//! listing and reading them; what goes into a line is the worker's business.

use super::store::{CheckpointError, retried};
use crate::storage::Location;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::PutPayload;

/// The folder under a checkpoint URI that holds the log objects.
pub const LOGS_FOLDER: &str = "logs";

/// One stored log object: whose it is.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogObject {
    /// The generation of the part.
    pub generation: u32,
    /// The rank.
    pub rank: u32,
}

impl LogObject {
    fn parts(&self) -> [String; 3] {
        [
            LOGS_FOLDER.to_string(),
            format!("gen-{}", self.generation),
            format!("rank-{}.log", self.rank),
        ]
    }

    /// Inverse of the object's path below the location (`logs/gen-G/rank-R.log`).
    fn parse(parts: &[&str]) -> Option<Self> {
        let [LOGS_FOLDER, generation, rank] = parts else { return None };
        let generation = generation.strip_prefix("gen-")?.parse().ok()?;
        let rank = rank.strip_prefix("rank-")?.strip_suffix(".log")?.parse().ok()?;
        Some(Self { generation, rank })
    }
}

/// Writes the log of `object`'s part (replacing one written before).
pub async fn put_log(location: &Location, object: &LogObject, text: Bytes) -> Result<(), CheckpointError> {
    let parts = object.parts();
    let path = location.path(&parts.each_ref().map(String::as_str));
    retried(&path, || location.store.put(&path, PutPayload::from(text.clone()))).await?;
    Ok(())
}

/// The log objects under `location`, by generation, then rank.
pub async fn list_logs(location: &Location) -> Result<Vec<LogObject>, CheckpointError> {
    let folder = location.path(&[LOGS_FOLDER]);
    let objects: Vec<_> = retried(&folder, || location.store.list(Some(&folder)).try_collect()).await?;
    let depth = location.prefix.parts().count();
    let mut out: Vec<LogObject> = objects
        .iter()
        .filter_map(|o| {
            let parts: Vec<_> = o.location.parts().skip(depth).collect();
            let names: Vec<&str> = parts.iter().map(|p| p.as_ref()).collect();
            LogObject::parse(&names)
        })
        .collect();
    out.sort();
    Ok(out)
}

/// The text of one log object.
pub async fn read_log(location: &Location, object: &LogObject) -> Result<Bytes, CheckpointError> {
    let parts = object.parts();
    let path = location.path(&parts.each_ref().map(String::as_str));
    retried(&path, || async { location.store.get(&path).await?.bytes().await }).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_objects_are_written_listed_in_order_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let uri = dir.path().join("run");
        let location = crate::storage::open(uri.to_str().unwrap(), "checkpoint.uri", true).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            for (generation, rank) in [(2, 0), (1, 1), (1, 0), (10, 0)] {
                let object = LogObject { generation, rank };
                put_log(&location, &object, Bytes::from(format!("g{generation} r{rank}\n")))
                    .await
                    .unwrap();
            }
            // Other objects under logs/ are not log objects.
            std::fs::write(uri.join("logs/notes.txt"), "x").unwrap();
            let listed: Vec<(u32, u32)> = list_logs(&location).await.unwrap().iter().map(|o| (o.generation, o.rank)).collect();
            assert_eq!(listed, [(1, 0), (1, 1), (2, 0), (10, 0)]);
            let text = read_log(&location, &LogObject { generation: 1, rank: 1 }).await.unwrap();
            assert_eq!(&text[..], b"g1 r1\n");
        });
        assert!(uri.join("logs/gen-2/rank-0.log").exists());
    }
}
