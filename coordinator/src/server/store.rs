//! The coordinator's durable store (docs/architecture.md §3): one SQLite file holding
//! jobs, workers, every job's events and the id counters, so a restarted
//! coordinator carries on. Jobs and workers are rows keyed by id (the
//! record itself as JSON, the job's state in a column of its own for
//! `sqlite3` users); events are rows numbered in the order they happened.
//! Each save writes only the rows the state's [`Changes`] name, in one
//! transaction, so a crash leaves the previous or the next state, never a
//! mix, and a heartbeat costs no write. When a save fails (a full disk),
//! [`Store::roll_back`] reads those rows back so that memory matches the
//! file again. The file runs in WAL mode with
//! `synchronous = NORMAL`: a killed process loses nothing committed; a
//! power cut may lose the last moments but never corrupts the file.
//! No rules here: what the state means is `state`'s.

use super::state::{Changes, Event, EventKind, Job, State, Worker};
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The layout this code writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, state TEXT NOT NULL, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS workers (id TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    job_id TEXT NOT NULL,
    unix INTEGER NOT NULL,
    kind TEXT NOT NULL,
    generation INTEGER NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id, seq);
";

#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("coordinator store {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("coordinator store {path}: {what}")]
    Corrupt { path: PathBuf, what: String },
}

/// An open store file.
pub(crate) struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) the store at `path`.
    pub(crate) fn open(path: &Path) -> Result<Self, StoreError> {
        let sqlite = |source| StoreError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(sqlite)?;
        let store = Self {
            conn,
            path: path.to_path_buf(),
        };
        let version: i64 = store
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| store.sqlite(e))?;
        if version > SCHEMA_VERSION {
            return Err(store.corrupt(format!(
                "written by a newer coordinator (layout {version}; this one knows up to {SCHEMA_VERSION})"
            )));
        }
        store
            .conn
            .execute_batch(&format!(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;\n{SCHEMA}\nPRAGMA user_version = {SCHEMA_VERSION};"
            ))
            .map_err(|e| store.sqlite(e))?;
        Ok(store)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn sqlite(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn corrupt(&self, what: String) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            what,
        }
    }

    /// A counter of the `meta` table (0 when absent).
    fn meta(&self, key: &str) -> Result<u64, StoreError> {
        let v: Option<i64> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| self.sqlite(e))?;
        Ok(v.unwrap_or(0).max(0) as u64)
    }

    /// Everything stored, as a state with no pending changes.
    pub(crate) fn load(&self) -> Result<State, StoreError> {
        let mut state = State {
            last_job: self.meta("last_job")?,
            last_worker: self.meta("last_worker")?,
            jobs: self.records::<Job>("jobs", "job")?,
            workers: self.records::<Worker>("workers", "worker")?,
            ..State::default()
        };
        let mut rows = self
            .conn
            .prepare("SELECT seq, job_id, unix, kind, generation, message FROM events ORDER BY seq")
            .map_err(|e| self.sqlite(e))?;
        let events = rows
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, String>(5)?,
                ))
            })
            .map_err(|e| self.sqlite(e))?;
        for row in events {
            let (seq, job_id, unix, kind, generation, message) = row.map_err(|e| self.sqlite(e))?;
            let kind = EventKind::from_name(&kind).ok_or_else(|| self.corrupt(format!("event {seq}: unknown kind {kind:?}")))?;
            let event = Event {
                seq: seq as u64,
                job_id,
                unix,
                kind,
                generation: generation as u32,
                message,
            };
            state.last_event = state.last_event.max(event.seq);
            if let Some(job) = state.jobs.get_mut(&event.job_id) {
                job.events.push(event);
            }
        }
        Ok(state)
    }

    /// The (id, record) rows of `table`, each record read from its JSON;
    /// `what` names a row in errors.
    fn records<T: serde::de::DeserializeOwned>(&self, table: &str, what: &str) -> Result<BTreeMap<String, T>, StoreError> {
        let mut rows = self
            .conn
            .prepare(&format!("SELECT id, record FROM {table}"))
            .map_err(|e| self.sqlite(e))?;
        let rows = rows
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(|e| self.sqlite(e))?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (id, record) = row.map_err(|e| self.sqlite(e))?;
            let value = serde_json::from_str(&record).map_err(|e| self.corrupt(format!("{what} {id}: {e}")))?;
            out.insert(id, value);
        }
        Ok(out)
    }

    /// Writes the rows `changes` names, as they are in `state`, in one
    /// transaction (nothing is written when it fails).
    pub(crate) fn save(&mut self, state: &State, changes: &Changes) -> Result<(), StoreError> {
        let path = self.path.clone();
        let sqlite = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let corrupt = |what: String| StoreError::Corrupt { path: path.clone(), what };
        let tx = self.conn.transaction().map_err(sqlite)?;
        {
            let mut put_job = tx
                .prepare_cached("INSERT OR REPLACE INTO jobs (id, state, record) VALUES (?1, ?2, ?3)")
                .map_err(sqlite)?;
            let mut del_job = tx.prepare_cached("DELETE FROM jobs WHERE id = ?1").map_err(sqlite)?;
            let mut del_events = tx.prepare_cached("DELETE FROM events WHERE job_id = ?1").map_err(sqlite)?;
            for id in &changes.jobs {
                match state.jobs.get(id) {
                    Some(job) => {
                        let record = serde_json::to_string(job).map_err(|e| corrupt(format!("job {id}: {e}")))?;
                        put_job.execute(params![id, format!("{:?}", job.state), record]).map_err(sqlite)?;
                    }
                    None => {
                        del_job.execute([id]).map_err(sqlite)?;
                        del_events.execute([id]).map_err(sqlite)?;
                    }
                }
            }
            let mut put_worker = tx
                .prepare_cached("INSERT OR REPLACE INTO workers (id, record) VALUES (?1, ?2)")
                .map_err(sqlite)?;
            let mut del_worker = tx.prepare_cached("DELETE FROM workers WHERE id = ?1").map_err(sqlite)?;
            for id in &changes.workers {
                match state.workers.get(id) {
                    Some(w) => {
                        let record = serde_json::to_string(w).map_err(|e| corrupt(format!("worker {id}: {e}")))?;
                        put_worker.execute(params![id, record]).map_err(sqlite)?;
                    }
                    None => {
                        del_worker.execute([id]).map_err(sqlite)?;
                    }
                }
            }
            let mut put_event = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO events (seq, job_id, unix, kind, generation, message) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(sqlite)?;
            for e in &changes.events {
                put_event
                    .execute(params![e.seq as i64, e.job_id, e.unix, e.kind.name(), e.generation, e.message])
                    .map_err(sqlite)?;
            }
            let mut put_meta = tx
                .prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")
                .map_err(sqlite)?;
            put_meta.execute(params!["last_job", state.last_job as i64]).map_err(sqlite)?;
            put_meta.execute(params!["last_worker", state.last_worker as i64]).map_err(sqlite)?;
        }
        tx.commit().map_err(sqlite)
    }

    /// Puts back into `state` what the store holds for the rows `changes`
    /// names (after a save of them failed), so that memory is never ahead
    /// of the file: those jobs with their events, those workers (keeping
    /// what is not durable: when each was last seen, its heartbeat stream)
    /// and the id counters. Reading needs no free space, so this works on
    /// a full disk.
    pub(crate) fn roll_back(&self, state: &mut State, changes: &Changes) -> Result<(), StoreError> {
        for id in &changes.jobs {
            let record: Option<String> = self
                .conn
                .query_row("SELECT record FROM jobs WHERE id = ?1", [id], |r| r.get(0))
                .optional()
                .map_err(|e| self.sqlite(e))?;
            let Some(record) = record else {
                state.jobs.remove(id);
                continue;
            };
            let mut job: Job = serde_json::from_str(&record).map_err(|e| self.corrupt(format!("job {id}: {e}")))?;
            job.events = self.events_of(id)?;
            state.jobs.insert(id.clone(), job);
        }
        for id in &changes.workers {
            let record: Option<String> = self
                .conn
                .query_row("SELECT record FROM workers WHERE id = ?1", [id], |r| r.get(0))
                .optional()
                .map_err(|e| self.sqlite(e))?;
            let stored: Option<Worker> = match record {
                Some(r) => Some(serde_json::from_str(&r).map_err(|e| self.corrupt(format!("worker {id}: {e}")))?),
                None => None,
            };
            match (stored, state.workers.get(id)) {
                (Some(mut w), Some(now)) => {
                    w.last_seen_unix = w.last_seen_unix.max(now.last_seen_unix);
                    w.session = now.session;
                    state.workers.insert(id.clone(), w);
                }
                (Some(w), None) => {
                    state.workers.insert(id.clone(), w);
                }
                (None, _) => {
                    state.workers.remove(id);
                }
            }
        }
        state.last_job = self.meta("last_job")?;
        state.last_worker = self.meta("last_worker")?;
        let last_event: Option<i64> = self
            .conn
            .query_row("SELECT MAX(seq) FROM events", [], |r| r.get(0))
            .map_err(|e| self.sqlite(e))?;
        state.last_event = last_event.unwrap_or(0).max(0) as u64;
        Ok(())
    }

    fn events_of(&self, job_id: &str) -> Result<Vec<Event>, StoreError> {
        let mut rows = self
            .conn
            .prepare_cached("SELECT seq, unix, kind, generation, message FROM events WHERE job_id = ?1 ORDER BY seq")
            .map_err(|e| self.sqlite(e))?;
        let rows = rows
            .query_map([job_id], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })
            .map_err(|e| self.sqlite(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, unix, kind, generation, message) = row.map_err(|e| self.sqlite(e))?;
            let kind = EventKind::from_name(&kind).ok_or_else(|| self.corrupt(format!("event {seq}: unknown kind {kind:?}")))?;
            out.push(Event {
                seq: seq as u64,
                job_id: job_id.to_string(),
                unix,
                kind,
                generation: generation as u32,
                message,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
