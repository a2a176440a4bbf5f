//! The log lines of the parts an agent runs, for `amdimctl logs`: a
//! tracing layer ([`PartLogLayer`]) copies every INFO-or-above event of a
//! thread that [`PartLog::capture`]s a rank into that rank's bounded buffer
//! (oldest dropped past [`MAX_BYTES`], with a count: a slow or unreachable
//! coordinator never blocks training or grows the worker); a background
//! task ([`spawn_shipper`]) sends each rank's new lines to the coordinator
//! in numbered batches (`PushLogs`: a resent batch never duplicates), and
//! [`end_part`] sends the rest and writes the part's whole log as an object
//! next to the run's checkpoints (`logs/gen-G/rank-R.log`). Lines logged by
//! threads a rank starts itself are not captured. Deciding what is logged,
//! and the agent's control loop, are not this module's.

use amdim_shared::checkpoint::{LogObject, put_log};
use amdim_shared::proto::v1 as pb;
use amdim_shared::session::WorkerClient;
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;

/// Bytes of lines kept per rank (for sending and for the stored object).
const MAX_BYTES: usize = 16 << 20;
/// Most lines and bytes in one `PushLogs`.
const BATCH_LINES: usize = 1000;
const BATCH_BYTES: usize = 512 << 10;
/// How often the shipper sends new lines.
const SHIP_EVERY: Duration = Duration::from_millis(500);
/// One `PushLogs` call may take this long.
const PUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// The end of a part waits this long at most for its last lines to be
/// sent, and as long again for its object to be written.
const END_TIMEOUT: Duration = Duration::from_secs(20);
/// A part no thread captures any more and that [`end_part`] never ended
/// (e.g. the coordinator forgot the worker) is dropped after this.
const ORPHAN_AFTER: Duration = Duration::from_secs(120);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One rank's lines: `lines[i]` has sequence number `first_seq + i`.
#[derive(Default)]
struct RankLines {
    lines: VecDeque<String>,
    first_seq: u64,
    bytes: usize,
    /// The coordinator holds every line below this.
    acked: u64,
}

impl RankLines {
    fn push(&mut self, mut line: String) {
        amdim_shared::log_line::cap_log_line(&mut line);
        self.bytes += line.len();
        self.lines.push_back(line);
        while self.bytes > MAX_BYTES
            && let Some(old) = self.lines.pop_front()
        {
            self.bytes -= old.len();
            self.first_seq += 1;
        }
    }

    fn end(&self) -> u64 {
        self.first_seq + self.lines.len() as u64
    }

    /// The next batch not yet acknowledged: its first number and lines.
    fn batch(&self) -> Option<(u64, Vec<String>)> {
        let from = self.acked.max(self.first_seq);
        if from >= self.end() {
            return None;
        }
        let mut bytes = 0;
        let lines: Vec<String> = self
            .lines
            .iter()
            .skip((from - self.first_seq) as usize)
            .take(BATCH_LINES)
            .take_while(|l| {
                bytes += l.len();
                bytes <= BATCH_BYTES || bytes == l.len()
            })
            .cloned()
            .collect();
        Some((from, lines))
    }

    /// The whole log as the stored object holds it.
    fn text(&self) -> String {
        let mut out = String::with_capacity(self.bytes + self.lines.len() + 64);
        if self.first_seq > 0 {
            let _ = writeln!(out, "… {} earlier lines dropped (worker buffer full)", self.first_seq);
        }
        for l in &self.lines {
            out.push_str(l);
            out.push('\n');
        }
        out
    }
}

/// The log of one part (a job's generation on this agent): its ranks' lines.
pub(crate) struct PartLog {
    job_id: String,
    generation: u32,
    checkpoint_uri: String,
    ranks: Mutex<BTreeMap<u32, Arc<Mutex<RankLines>>>>,
    /// Threads capturing into it now, and when the last one stopped.
    capturing: AtomicUsize,
    idle_since: Mutex<Option<Instant>>,
}

/// The parts whose lines the shipper sends.
static PARTS: Mutex<Vec<Arc<PartLog>>> = Mutex::new(Vec::new());

thread_local! {
    /// The rank whose log this thread's events go to.
    static CURRENT: RefCell<Option<Arc<Mutex<RankLines>>>> = const { RefCell::new(None) };
}

/// While alive, the events of this thread go to one rank's log.
pub(crate) struct Capture {
    part: Arc<PartLog>,
    previous: Option<Arc<Mutex<RankLines>>>,
}

impl Drop for Capture {
    fn drop(&mut self) {
        CURRENT.with(|c| *c.borrow_mut() = self.previous.take());
        if self.part.capturing.fetch_sub(1, Ordering::SeqCst) == 1 {
            *lock(&self.part.idle_since) = Some(Instant::now());
        }
    }
}

impl PartLog {
    /// The log of generation `generation` of `job_id`, whose object goes
    /// under `checkpoint_uri`; registered with the shipper.
    pub(crate) fn start(job_id: &str, generation: u32, checkpoint_uri: &str) -> Arc<Self> {
        let part = Arc::new(Self {
            job_id: job_id.to_string(),
            generation,
            checkpoint_uri: checkpoint_uri.to_string(),
            ranks: Mutex::new(BTreeMap::new()),
            capturing: AtomicUsize::new(0),
            idle_since: Mutex::new(Some(Instant::now())),
        });
        lock(&PARTS).push(part.clone());
        part
    }

    fn rank(&self, rank: u32) -> Arc<Mutex<RankLines>> {
        lock(&self.ranks).entry(rank).or_default().clone()
    }

    /// Sends this thread's events to rank `rank`'s log until the guard drops.
    pub(crate) fn capture(self: &Arc<Self>, rank: usize) -> Capture {
        let lines = self.rank(rank as u32);
        self.capturing.fetch_add(1, Ordering::SeqCst);
        *lock(&self.idle_since) = None;
        let previous = CURRENT.with(|c| c.borrow_mut().replace(lines));
        Capture {
            part: self.clone(),
            previous,
        }
    }

    /// Sends every rank's unacknowledged lines, batch by batch, until all
    /// are acknowledged or a call fails; true when all were.
    async fn ship(&self, client: &mut WorkerClient) -> bool {
        let ranks: Vec<(u32, Arc<Mutex<RankLines>>)> = lock(&self.ranks).iter().map(|(r, l)| (*r, l.clone())).collect();
        for (rank, lines) in ranks {
            loop {
                let Some((first_seq, batch)) = lock(&lines).batch() else { break };
                let request = pb::PushLogsRequest {
                    job_id: self.job_id.clone(),
                    generation: self.generation,
                    rank,
                    first_seq,
                    lines: batch,
                };
                match tokio::time::timeout(PUSH_TIMEOUT, client.push_logs(request)).await {
                    Ok(Ok(reply)) => {
                        let next = reply.into_inner().next_seq;
                        let mut l = lock(&lines);
                        l.acked = l.acked.max(next);
                        if next <= first_seq {
                            return false; // no progress: try again later
                        }
                    }
                    Ok(Err(e)) if permanent(e.code()) => {
                        // Refused for good (no such job, a coordinator without
                        // PushLogs): these lines are only stored, not sent.
                        tracing::debug!(job = %self.job_id, rank, reason = %e.message(), "log lines refused");
                        let mut l = lock(&lines);
                        l.acked = l.end();
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(job = %self.job_id, rank, reason = %e.message(), "could not send log lines; retrying");
                        return false;
                    }
                    Err(_) => return false,
                }
            }
        }
        true
    }

    /// Writes each rank's whole log as its object under the checkpoint URI.
    async fn store(&self) -> anyhow::Result<()> {
        let location = amdim_shared::storage::open(&self.checkpoint_uri, "checkpoint.uri", true)?;
        let ranks: Vec<(u32, String)> = lock(&self.ranks).iter().map(|(r, l)| (*r, lock(l).text())).collect();
        for (rank, text) in ranks {
            let object = LogObject {
                generation: self.generation,
                rank,
            };
            put_log(&location, &object, text.into()).await?;
        }
        Ok(())
    }
}

/// A refusal that asking again will not change.
fn permanent(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        NotFound | Unimplemented | InvalidArgument | PermissionDenied | Unauthenticated
    )
}

/// Sends the registered parts' new lines every [`SHIP_EVERY`], for as long
/// as the agent runs; parts nobody ends are dropped after [`ORPHAN_AFTER`].
pub(crate) fn spawn_shipper(mut client: WorkerClient) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(SHIP_EVERY).await;
            let parts: Vec<Arc<PartLog>> = lock(&PARTS).clone();
            for part in parts {
                part.ship(&mut client).await;
                if lock(&part.idle_since).is_some_and(|t| t.elapsed() > ORPHAN_AFTER) {
                    lock(&PARTS).retain(|p| !Arc::ptr_eq(p, &part));
                }
            }
        }
    })
}

/// The end of generation `generation` of `job_id` on this agent: one last
/// line per rank saying how it ended, the lines not yet sent, and the
/// stored objects (each bounded by [`END_TIMEOUT`]; failures are logged).
pub(crate) async fn end_part(client: &WorkerClient, job_id: &str, generation: u32, ok: bool, message: &str) {
    let part = {
        let mut parts = lock(&PARTS);
        let Some(at) = parts.iter().position(|p| p.job_id == job_id && p.generation == generation) else {
            return;
        };
        parts.remove(at)
    };
    let how = if ok {
        "trained to the end".to_string()
    } else {
        message.to_string()
    };
    let last = format!("{} part ended: {how}", timestamp());
    for lines in lock(&part.ranks).values() {
        let mut lines = lock(lines);
        for piece in last.split('\n') {
            lines.push(piece.to_string());
        }
    }
    let mut client = client.clone();
    let deadline = Instant::now() + END_TIMEOUT;
    while !part.ship(&mut client).await && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    match tokio::time::timeout(END_TIMEOUT, part.store()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(job = %job_id, generation, reason = %format!("{e:#}"), "could not store the part's log"),
        Err(_) => tracing::warn!(job = %job_id, generation, "storing the part's log timed out"),
    }
}

/// Now in UTC, `2026-12-01T02:43:32.123Z`.
fn timestamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, of_day) = ((secs / 86_400) as i64, secs % 86_400);
    let (year, month, day) = amdim_shared::utc::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60,
        now.subsec_millis()
    )
}

/// An event's message and its other fields as ` key=value`.
#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.rest, " {}={value}", field.name());
        }
    }
}

/// The tracing layer that copies the events of capturing threads (INFO and
/// above, after the process's filter) into their rank's log, as
/// `time LEVEL target: message key=value…`.
pub struct PartLogLayer;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for PartLogLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        if *event.metadata().level() > tracing::Level::INFO {
            return;
        }
        let Some(lines) = CURRENT.try_with(|c| c.borrow().clone()).ok().flatten() else {
            return;
        };
        let mut fields = Fields::default();
        event.record(&mut fields);
        let m = event.metadata();
        let line = format!("{} {:>5} {}: {}{}", timestamp(), m.level(), m.target(), fields.message, fields.rest);
        // One entry per printed line, as the stored object will split it.
        let mut lines = lock(&lines);
        for piece in line.split('\n') {
            lines.push(piece.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amdim_shared::log_line::MAX_LOG_LINE_BYTES as MAX_LINE_BYTES;

    #[test]
    fn a_full_buffer_drops_the_oldest_and_the_object_says_how_many() {
        let mut r = RankLines::default();
        let line = "x".repeat(MAX_LINE_BYTES);
        let fit = MAX_BYTES / MAX_LINE_BYTES;
        for _ in 0..fit + 3 {
            r.push(line.clone());
        }
        assert_eq!((r.first_seq, r.lines.len()), (3, fit));
        assert!(r.text().starts_with("… 3 earlier lines dropped"));
        // Sending resumes at the oldest line still held, in bounded batches.
        let (first, batch) = r.batch().unwrap();
        assert_eq!(first, 3);
        assert_eq!(batch.len(), BATCH_BYTES / MAX_LINE_BYTES);
        r.acked = r.end();
        assert!(r.batch().is_none());
        r.push("y".repeat(MAX_LINE_BYTES * 2));
        assert_eq!(r.lines.back().map(|l| l.chars().count()), Some(MAX_LINE_BYTES + 1), "cut");
    }

    #[test]
    fn only_events_of_a_capturing_thread_reach_its_rank() {
        use tracing_subscriber::layer::SubscriberExt;
        let part = PartLog::start("job-test", 3, "/nonexistent");
        let subscriber = tracing_subscriber::registry().with(PartLogLayer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("before");
            {
                let _c = part.capture(5);
                tracing::info!(step = 7, loss = %1.5, "training");
                tracing::warn!("two\nlines");
                tracing::debug!("too detailed");
            }
            tracing::warn!("after");
        });
        let lines = lock(&part.rank(5)).lines.clone();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(
            lines[1].ends_with(" WARN amdim_worker::agent::log_ship::tests: two") && lines[2] == "lines",
            "{lines:?}"
        );
        assert!(
            lines[0].ends_with(" INFO amdim_worker::agent::log_ship::tests: training step=7 loss=1.5"),
            "{}",
            lines[0]
        );
        assert!(lines[0].starts_with("20") && lines[0].as_bytes()[10] == b'T', "{}", lines[0]);
        lock(&PARTS).retain(|p| !Arc::ptr_eq(p, &part));
    }
}
