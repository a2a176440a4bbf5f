//! Checkpoints the store's write-ahead log from a thread of its own, on a
//! second SQLite connection, so that copying the log into the database and
//! its fsyncs never happen inside a state change: without it SQLite
//! checkpoints from the committing connection once the log passes 1,000
//! pages, holding the state lock (and every heartbeat behind it) for the
//! fsync. A passive checkpoint never blocks the writer; the writer then
//! starts the log over from its beginning, so it stays small. Owns no
//! state and writes no rows: the store (`store`) is the only writer.

use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One passive checkpoint of the store at `path`: (log frames, frames
/// copied into the database).
fn checkpoint(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get(1)?, r.get(2)?)))
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(1))?;
    Ok(conn)
}

/// Starts the checkpointer of the store at `path`, every `every`, for as
/// long as the process lives. A failure is logged and tried again.
pub fn spawn_wal_checkpointer(path: PathBuf, every: Duration) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("wal-checkpoint".into()).spawn(move || {
        let mut conn: Option<Connection> = None;
        loop {
            std::thread::sleep(every);
            let result = match &conn {
                Some(c) => checkpoint(c),
                None => open(&path).and_then(|c| checkpoint(conn.insert(c))),
            };
            if let Err(e) = result {
                tracing::warn!(store = %path.display(), reason = %e, "cannot checkpoint the store's write-ahead log; trying again");
                conn = None;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_connection_checkpoints_the_log_of_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let writer = Connection::open(&path).unwrap();
        writer
            .execute_batch("PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0; CREATE TABLE t (v TEXT);")
            .unwrap();
        for i in 0..50 {
            writer
                .execute("INSERT INTO t (v) VALUES (?1)", [format!("row {i} {}", "x".repeat(4000))])
                .unwrap();
        }
        let (frames, copied) = checkpoint(&open(&path).unwrap()).unwrap();
        assert!(frames >= 50 && copied == frames, "{frames} {copied}");
        let rows: i64 = open(&path).unwrap().query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 50);
    }
}
