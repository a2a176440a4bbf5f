//! The workers' log lines as the coordinator keeps them: one bounded ring
//! per (job, rank) ([`RankLog`]; when full the oldest line goes, and a
//! reader that missed lines gets a marker line saying how many), fed by
//! numbered batches so that a resent batch adds nothing twice, and the map
//! of all rings with a counter that wakes followers ([`LogBuffers`]). In
//! memory only: a coordinator restart starts empty (the stored log objects
//! hold finished parts). No gRPC, no job rules: `log_service` owns those.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

/// Lines kept per (job, rank).
pub(crate) const LINES_PER_RANK: usize = 10_000;

/// The marker a reader gets in place of `n` lines the ring no longer holds.
pub(crate) fn dropped_marker(n: u64) -> String {
    format!("… {n} earlier lines dropped")
}

/// One rank's lines: `first` numbers the oldest held, so line `first + i`
/// is `lines[i]`; numbers keep counting across generations.
#[derive(Debug)]
pub(crate) struct RankLog {
    lines: VecDeque<String>,
    capacity: usize,
    first: u64,
    /// Per generation: the worker's sequence number expected next.
    next_seq: BTreeMap<u32, u64>,
    /// The generation of the latest batch.
    generation: u32,
}

impl RankLog {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            lines: VecDeque::new(),
            capacity: capacity.max(1),
            first: 0,
            next_seq: BTreeMap::new(),
            generation: 0,
        }
    }

    /// The number the next line appended will get.
    pub(crate) fn end(&self) -> u64 {
        self.first + self.lines.len() as u64
    }

    fn append(&mut self, mut line: String) {
        amdim_shared::log_line::cap_log_line(&mut line);
        if self.lines.len() == self.capacity {
            self.lines.pop_front();
            self.first += 1;
        }
        self.lines.push_back(line);
    }

    /// Adds a batch of generation `generation` whose first line has the
    /// worker's number `first_seq`: lines already received are skipped,
    /// lines the worker never sent (a gap) become one marker line, and a
    /// new generation starts with a header line. Returns the worker's next
    /// number (every line below it is kept).
    pub(crate) fn push(&mut self, generation: u32, first_seq: u64, lines: Vec<String>) -> u64 {
        let expected = self.next_seq.get(&generation).copied();
        let have = expected.unwrap_or(0);
        let end = first_seq + lines.len() as u64;
        if end <= have {
            return have;
        }
        if generation != self.generation {
            if self.generation != 0 || generation > 1 {
                self.append(format!("— generation {generation} —"));
            }
            self.generation = generation;
        }
        if first_seq > have {
            let missing = first_seq - have;
            self.append(match expected {
                Some(_) => format!("… {missing} lines the worker dropped or could not send"),
                None => format!("… {missing} earlier lines not received by this coordinator"),
            });
        }
        let skip = have.saturating_sub(first_seq) as usize;
        for line in lines.into_iter().skip(skip) {
            self.append(line);
        }
        self.next_seq.insert(generation, end);
        end
    }

    /// The lines from number `from` on, led by a marker when some of them
    /// were dropped; and the number to read from next time.
    pub(crate) fn read(&self, from: u64) -> (Vec<String>, u64) {
        let mut out = Vec::new();
        if from < self.first {
            out.push(dropped_marker(self.first - from));
        }
        let skip = from.saturating_sub(self.first) as usize;
        out.extend(self.lines.iter().skip(skip).cloned());
        (out, self.end())
    }
}

/// Every job's rings, and a counter bumped after each batch (followers wait on it).
pub(crate) struct LogBuffers {
    jobs: Mutex<HashMap<String, BTreeMap<u32, RankLog>>>,
    capacity: usize,
    pub(crate) added: tokio::sync::watch::Sender<u64>,
    /// When rings of forgotten jobs were last looked for.
    pruned: Mutex<std::time::Instant>,
}

impl LogBuffers {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            jobs: Mutex::new(HashMap::new()),
            capacity,
            added: tokio::sync::watch::channel(0).0,
            pruned: Mutex::new(std::time::Instant::now()),
        }
    }

    /// True at most once per `every`: time to [`retain`](Self::retain).
    pub(crate) fn prune_due(&self, every: std::time::Duration) -> bool {
        let mut last = self.pruned.lock().unwrap_or_else(|e| e.into_inner());
        let due = last.elapsed() >= every;
        if due {
            *last = std::time::Instant::now();
        }
        due
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, BTreeMap<u32, RankLog>>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`RankLog::push`] on (job, rank), creating its ring when new.
    pub(crate) fn push(&self, job: &str, rank: u32, generation: u32, first_seq: u64, lines: Vec<String>) -> u64 {
        let next = {
            let mut jobs = self.lock();
            let ranks = jobs.entry(job.to_string()).or_default();
            let ring = ranks.entry(rank).or_insert_with(|| RankLog::new(self.capacity));
            ring.push(generation, first_seq, lines)
        };
        self.added.send_modify(|n| *n += 1);
        next
    }

    /// New lines of `job` (one rank, or all) since `cursors` (rank → next
    /// line number; a rank not there yet reads from its start), advancing them.
    pub(crate) fn read_new(&self, job: &str, rank: Option<u32>, cursors: &mut BTreeMap<u32, u64>) -> Vec<(u32, Vec<String>)> {
        let jobs = self.lock();
        let Some(ranks) = jobs.get(job) else { return Vec::new() };
        let mut out = Vec::new();
        for (&r, ring) in ranks.iter().filter(|(r, _)| rank.is_none_or(|want| want == **r)) {
            let from = cursors.get(&r).copied().unwrap_or(0);
            if from >= ring.end() {
                continue;
            }
            let (lines, next) = ring.read(from);
            cursors.insert(r, next);
            out.push((r, lines));
        }
        out
    }

    /// Forgets the jobs `keep` says no to.
    pub(crate) fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.lock().retain(|job, _| keep(job));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(range: std::ops::Range<u32>) -> Vec<String> {
        range.map(|i| format!("line {i}")).collect()
    }

    #[test]
    fn a_full_ring_drops_the_oldest_and_a_reader_gets_a_marker() {
        let mut ring = RankLog::new(3);
        assert_eq!(ring.push(1, 0, lines(0..5)), 5);
        let (got, next) = ring.read(0);
        assert_eq!(got, ["… 2 earlier lines dropped", "line 2", "line 3", "line 4"]);
        assert_eq!(next, 5);
        // A reader that kept up gets no marker; one that fell behind does.
        let (got, _) = ring.read(4);
        assert_eq!(got, ["line 4"]);
        ring.push(1, 5, lines(5..7));
        assert_eq!(ring.read(5).0, ["line 5", "line 6"]);
        assert_eq!(ring.read(3).0, ["… 1 earlier lines dropped", "line 4", "line 5", "line 6"]);
    }

    #[test]
    fn a_resent_batch_adds_nothing_and_gaps_and_generations_are_marked() {
        let mut ring = RankLog::new(100);
        assert_eq!(ring.push(1, 0, lines(0..3)), 3);
        // The same batch again (its answer was lost), then one overlapping it.
        assert_eq!(ring.push(1, 0, lines(0..3)), 3);
        assert_eq!(ring.push(1, 2, lines(2..5)), 5);
        // The worker dropped seq 5..7 while it could not send.
        assert_eq!(ring.push(1, 7, lines(7..8)), 8);
        // The next generation numbers its lines from 0 again.
        assert_eq!(ring.push(2, 0, vec!["again".into()]), 1);
        let (got, _) = ring.read(0);
        assert_eq!(
            got,
            [
                "line 0",
                "line 1",
                "line 2",
                "line 3",
                "line 4",
                "… 2 lines the worker dropped or could not send",
                "line 7",
                "— generation 2 —",
                "again"
            ]
        );
        // A coordinator that starts in the middle of a part says so.
        let mut fresh = RankLog::new(10);
        fresh.push(1, 40, lines(40..41));
        assert_eq!(fresh.read(0).0, ["… 40 earlier lines not received by this coordinator", "line 40"]);
    }

    #[test]
    fn readers_see_only_their_rank_and_only_new_lines() {
        let buffers = LogBuffers::new(10);
        buffers.push("job-1", 0, 1, 0, lines(0..2));
        buffers.push("job-1", 1, 1, 0, lines(10..11));
        let mut all = BTreeMap::new();
        let got = buffers.read_new("job-1", None, &mut all);
        assert_eq!(got, [(0, lines(0..2)), (1, lines(10..11))]);
        assert!(buffers.read_new("job-1", None, &mut all).is_empty());
        buffers.push("job-1", 1, 1, 1, lines(11..12));
        let mut one = BTreeMap::new();
        assert_eq!(buffers.read_new("job-1", Some(1), &mut one), [(1, lines(10..12))]);
        assert_eq!(buffers.read_new("job-1", None, &mut all), [(1, lines(11..12))]);
        buffers.retain(|j| j != "job-1");
        assert!(buffers.read_new("job-1", None, &mut BTreeMap::new()).is_empty());
    }
}
