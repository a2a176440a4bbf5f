//! The TCP collective backend (CPU ranks) and its static rendezvous.
//!
//! Rendezvous: rank 0 listens on the rendezvous address; every other rank
//! connects there and says who it is and where its data listener is; rank 0
//! checks the world (size, duplicates, missing ranks) and hands out the
//! address table. Then every pair of ranks opens one TCP connection (the
//! higher rank dials), so each rank holds a full-duplex stream to each peer.
//!
//! Algorithms: ring all-reduce (reduce-scatter then all-gather over near-
//! equal segments), ring all-gather and ring reduce-scatter. In each ring
//! step a sender thread streams one segment to the next rank in frames of
//! [`CHUNK_BYTES`] while this thread receives the previous rank's segment
//! and reduces it frame by frame, so large buffers are bandwidth-bound.
//! Barrier and broadcast go through rank 0 / the root directly.
//!
//! Ring neighbours that can map the same memory (same host, same IPC
//! namespace, same user: found out by trying at connect time) move ring
//! data through a [`ShmPipe`] instead of their socket; the socket stays
//! the control channel (abort frames, a closed peer), watched while a pipe
//! transfer waits. `RendezvousSpec::shared_memory = false` keeps all data
//! on TCP.
//!
//! Every read and write is bounded by the timeout. On any failure the
//! communicator is poisoned and sends an abort frame, naming the ranks it
//! blames, to every peer, so that the others stop at once with that reason
//! instead of waiting for their own timeouts. This module knows bytes and
//! ranks only; what the buffers mean is `ops`'.

use super::shm::{self, ShmPipe, WaitError};
use super::{CollResult, Collective, CollectiveError, segments};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Payload bytes per data frame.
pub const CHUNK_BYTES: usize = 4 << 20;
const CHUNK_FLOATS: usize = CHUNK_BYTES / 4;
const MAGIC: u32 = 0x414d_4431; // "AMD1"

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
enum Kind {
    Data = 1,
    Abort = 2,
    Arrive = 3,
    Release = 4,
    Hello = 5,
    Table = 6,
    Refused = 7,
    ShmOffer = 8,
    ShmAnswer = 9,
}

impl Kind {
    fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Data,
            2 => Self::Abort,
            3 => Self::Arrive,
            4 => Self::Release,
            5 => Self::Hello,
            6 => Self::Table,
            7 => Self::Refused,
            8 => Self::ShmOffer,
            9 => Self::ShmAnswer,
            _ => return None,
        })
    }
}

/// Where this rank is in the world and how to find the others.
#[derive(Clone, Debug)]
pub struct RendezvousSpec {
    pub rank: usize,
    pub world: usize,
    /// `host:port` where rank 0 listens for the others.
    pub rendezvous: String,
    /// Host (or IP) the other ranks use to reach this rank's data port.
    pub advertise_host: String,
    /// Bound on every wait, rendezvous included.
    pub timeout: Duration,
    /// Ring neighbours on one host exchange data through shared memory.
    pub shared_memory: bool,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Hello {
    rank: usize,
    world: usize,
    data_addr: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct AbortNote {
    reporter: usize,
    ranks: Vec<usize>,
    message: String,
}

/// A shared-memory pipe a rank offers its previous ring neighbour (an
/// empty path: none could be made).
#[derive(serde::Serialize, serde::Deserialize)]
struct ShmOffer {
    path: String,
    nonce: u64,
}

struct Peer {
    reader: Mutex<TcpStream>,
    writer: Mutex<TcpStream>,
    /// The socket's descriptor, polled (never read) while a pipe waits.
    fd: RawFd,
}

/// One rank's connections to all the others.
pub struct TcpCollective {
    rank: usize,
    world: usize,
    timeout: Duration,
    /// `peers[p]` for p ≠ rank.
    peers: Vec<Option<Peer>>,
    poisoned: Mutex<Option<CollectiveError>>,
    /// Serialises collectives: one at a time per communicator.
    busy: Mutex<()>,
    /// Ring data to the next rank / from the previous one, when shared.
    pipe_to_next: Option<ShmPipe>,
    pipe_from_prev: Option<ShmPipe>,
}

fn io_error(op: &'static str, peer: usize, timeout: Duration, e: std::io::Error) -> CollectiveError {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => CollectiveError::Timeout { op, peer, timeout },
        ErrorKind::UnexpectedEof => CollectiveError::PeerLost {
            op,
            peer,
            message: "connection closed (process exited?)".into(),
        },
        _ => CollectiveError::PeerLost {
            op,
            peer,
            message: e.to_string(),
        },
    }
}

fn write_frame(stream: &mut TcpStream, kind: Kind, payload: &[u8]) -> std::io::Result<()> {
    let mut header = [0u8; 16];
    header[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    header[4..8].copy_from_slice(&(kind as u32).to_le_bytes());
    header[8..16].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    stream.write_all(&header)?;
    stream.write_all(payload)
}

fn read_header(stream: &mut TcpStream) -> std::io::Result<(Option<Kind>, u64)> {
    let mut header = [0u8; 16];
    stream.read_exact(&mut header)?;
    let magic = u32::from_le_bytes(header[0..4].try_into().unwrap_or_default());
    if magic != MAGIC {
        return Err(std::io::Error::new(
            ErrorKind::InvalidData,
            "not an amdim collective stream (bad frame magic)",
        ));
    }
    let kind = Kind::from_u32(u32::from_le_bytes(header[4..8].try_into().unwrap_or_default()));
    Ok((kind, u64::from_le_bytes(header[8..16].try_into().unwrap_or_default())))
}

/// Reads one small frame (control messages, at most 1 MiB).
fn read_small(stream: &mut TcpStream) -> std::io::Result<(Option<Kind>, Vec<u8>)> {
    let (kind, len) = read_header(stream)?;
    if len > 1 << 20 {
        return Err(std::io::Error::new(ErrorKind::InvalidData, format!("control frame of {len} bytes")));
    }
    let mut payload = vec![0u8; len as usize];
    stream.read_exact(&mut payload)?;
    Ok((kind, payload))
}

fn configure(stream: &TcpStream, timeout: Duration) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))
}

/// Dials `addr` until it answers or `deadline` passes.
fn dial(addr: &str, deadline: Instant) -> Result<TcpStream, String> {
    loop {
        let resolved: Vec<SocketAddr> = match addr.to_socket_addrs() {
            Ok(a) => a.collect(),
            Err(e) => return Err(format!("cannot resolve {addr}: {e}")),
        };
        let mut last = String::from("no address");
        for a in &resolved {
            match TcpStream::connect_timeout(a, Duration::from_secs(2)) {
                Ok(s) => return Ok(s),
                Err(e) => last = e.to_string(),
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("cannot connect to {addr}: {last}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn accept_until(listener: &TcpListener, deadline: Instant) -> std::io::Result<Option<TcpStream>> {
    listener.set_nonblocking(true)?;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                return Ok(Some(s));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Ok(None);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    }
}

fn rv_err(message: impl Into<String>) -> CollectiveError {
    CollectiveError::Rendezvous(message.into())
}

impl TcpCollective {
    /// Runs the rendezvous and connects every pair of ranks.
    pub fn connect(spec: &RendezvousSpec) -> CollResult<Self> {
        let (rank, world) = (spec.rank, spec.world);
        if world == 0 || rank >= world {
            return Err(rv_err(format!("rank {rank} is not in a world of {world}")));
        }
        let deadline = Instant::now() + spec.timeout;
        let data = TcpListener::bind((spec.advertise_host.as_str(), 0))
            .map_err(|e| rv_err(format!("cannot listen on {}: {e}", spec.advertise_host)))?;
        let data_addr = data.local_addr().map_err(|e| rv_err(e.to_string()))?;
        let table = if rank == 0 {
            Self::host_rendezvous(spec, data_addr.to_string(), deadline)?
        } else {
            Self::join_rendezvous(spec, data_addr.to_string(), deadline)?
        };
        let mut streams: Vec<Option<TcpStream>> = (0..world).map(|_| None).collect();
        // Lower ranks first: dial every lower rank, then accept every higher one.
        for (peer, addr) in table.iter().enumerate().take(rank) {
            let mut s = dial(addr, deadline).map_err(|e| rv_err(format!("rank {peer}: {e}")))?;
            configure(&s, spec.timeout).map_err(|e| rv_err(e.to_string()))?;
            write_frame(&mut s, Kind::Hello, &(rank as u64).to_le_bytes()).map_err(|e| rv_err(format!("rank {peer}: {e}")))?;
            streams[peer] = Some(s);
        }
        while streams.iter().enumerate().any(|(p, s)| p > rank && s.is_none()) {
            let Some(mut s) = accept_until(&data, deadline).map_err(|e| rv_err(e.to_string()))? else {
                let missing: Vec<usize> = (rank + 1..world).filter(|&p| streams[p].is_none()).collect();
                return Err(CollectiveError::NotArrived {
                    op: "connect",
                    missing,
                    timeout: spec.timeout,
                });
            };
            configure(&s, spec.timeout).map_err(|e| rv_err(e.to_string()))?;
            let (kind, payload) = read_small(&mut s).map_err(|e| rv_err(format!("a peer's hello: {e}")))?;
            let peer = match (kind, <[u8; 8]>::try_from(payload.as_slice())) {
                (Some(Kind::Hello), Ok(b)) => u64::from_le_bytes(b) as usize,
                _ => return Err(rv_err("a connection to the data port did not say its rank")),
            };
            if peer <= rank || peer >= world || streams[peer].is_some() {
                return Err(rv_err(format!("unexpected connection from rank {peer}")));
            }
            streams[peer] = Some(s);
        }
        let mut peers = Vec::with_capacity(world);
        for s in streams {
            peers.push(match s {
                Some(s) => {
                    let writer = s.try_clone().map_err(|e| rv_err(e.to_string()))?;
                    Some(Peer {
                        fd: s.as_raw_fd(),
                        reader: Mutex::new(s),
                        writer: Mutex::new(writer),
                    })
                }
                None => None,
            });
        }
        let mut c = Self {
            rank,
            world,
            timeout: spec.timeout,
            peers,
            poisoned: Mutex::new(None),
            busy: Mutex::new(()),
            pipe_to_next: None,
            pipe_from_prev: None,
        };
        if spec.shared_memory && world > 1 {
            c.share_memory_with_neighbours()?;
        }
        Ok(c)
    }

    /// Each rank offers its previous neighbour a pipe (for the data that
    /// neighbour sends it) and tries to open the one its next neighbour
    /// offers; a pipe is used only when both ends have it mapped. The
    /// files are unlinked once answered, so a crash leaves none behind.
    fn share_memory_with_neighbours(&mut self) -> CollResult<()> {
        let (next, prev) = (self.next(), self.prev());
        let nonce = {
            use std::hash::BuildHasher;
            std::collections::hash_map::RandomState::new().hash_one((std::process::id(), self.rank, Instant::now()))
        };
        let created = ShmPipe::create(Path::new(shm::SHM_DIR), shm::PIPE_BYTES, nonce);
        let offer = match &created {
            Ok((_, path)) => ShmOffer {
                path: path.to_string_lossy().into_owned(),
                nonce,
            },
            Err(e) => {
                tracing::debug!(rank = self.rank, "no shared-memory pipe in {}: {e}", shm::SHM_DIR);
                ShmOffer {
                    path: String::new(),
                    nonce: 0,
                }
            }
        };
        let ask = |peer: usize, kind: Kind, payload: &[u8]| {
            let mut w = self.peer(peer).writer.lock().unwrap_or_else(|e| e.into_inner());
            write_frame(&mut w, kind, payload).map_err(|e| rv_err(format!("rank {peer}: {e}")))
        };
        let hear = |peer: usize, kind: Kind| {
            let mut r = self.peer(peer).reader.lock().unwrap_or_else(|e| e.into_inner());
            match read_small(&mut r) {
                Ok((Some(k), payload)) if k == kind => Ok(payload),
                Ok(_) => Err(rv_err(format!("rank {peer} answered out of step while sharing memory"))),
                Err(e) => Err(rv_err(format!("rank {peer}: {e}"))),
            }
        };
        let payload = serde_json::to_vec(&offer).map_err(|e| rv_err(e.to_string()))?;
        ask(prev, Kind::ShmOffer, &payload)?;
        let theirs: ShmOffer =
            serde_json::from_slice(&hear(next, Kind::ShmOffer)?).map_err(|e| rv_err(format!("rank {next}: a malformed offer: {e}")))?;
        let to_next = match theirs.path.as_str() {
            "" => None,
            path => ShmPipe::open(Path::new(path), theirs.nonce)
                .map_err(|e| tracing::debug!(rank = self.rank, peer = next, "cannot map {path}: {e}"))
                .ok(),
        };
        ask(next, Kind::ShmAnswer, &[u8::from(to_next.is_some())])?;
        let accepted = hear(prev, Kind::ShmAnswer)? == [1];
        let from_prev = created.ok().and_then(|(pipe, path)| {
            let _ = std::fs::remove_file(&path);
            accepted.then_some(pipe)
        });
        tracing::info!(
            rank = self.rank,
            to_next = to_next.is_some(),
            from_prev = from_prev.is_some(),
            "ring neighbours sharing memory"
        );
        self.pipe_to_next = to_next;
        self.pipe_from_prev = from_prev;
        Ok(())
    }

    /// Whether ring data to the next rank and from the previous one goes
    /// through shared memory.
    pub fn shares_memory(&self) -> (bool, bool) {
        (self.pipe_to_next.is_some(), self.pipe_from_prev.is_some())
    }

    /// Rank 0: collects every rank's hello, checks the world, sends the table.
    fn host_rendezvous(spec: &RendezvousSpec, own: String, deadline: Instant) -> CollResult<Vec<String>> {
        let world = spec.world;
        let listener = TcpListener::bind(&spec.rendezvous)
            .map_err(|e| rv_err(format!("rank 0 cannot listen on the rendezvous address {}: {e}", spec.rendezvous)))?;
        let mut table: Vec<Option<String>> = vec![None; world];
        table[0] = Some(own);
        let mut joined: Vec<(usize, TcpStream)> = Vec::new();
        let refuse = |s: &mut TcpStream, why: String| {
            let _ = write_frame(s, Kind::Refused, why.as_bytes());
            rv_err(why)
        };
        while table.iter().any(Option::is_none) {
            let Some(mut s) = accept_until(&listener, deadline).map_err(|e| rv_err(e.to_string()))? else {
                let missing: Vec<usize> = (0..world).filter(|&r| table[r].is_none()).collect();
                let why = format!("ranks {missing:?} did not join within {:?}", spec.timeout);
                for (_, s) in &mut joined {
                    let _ = write_frame(s, Kind::Refused, why.as_bytes());
                }
                return Err(CollectiveError::NotArrived {
                    op: "rendezvous",
                    missing,
                    timeout: spec.timeout,
                });
            };
            configure(&s, spec.timeout).map_err(|e| rv_err(e.to_string()))?;
            let hello: Hello = match read_small(&mut s) {
                Ok((Some(Kind::Hello), payload)) => {
                    serde_json::from_slice(&payload).map_err(|e| rv_err(format!("a malformed hello: {e}")))?
                }
                // Something else dialled the port (a health check, a scanner): ignore it.
                _ => continue,
            };
            if hello.world != world {
                return Err(refuse(
                    &mut s,
                    format!("rank {} says the world has {} ranks, rank 0 says {world}", hello.rank, hello.world),
                ));
            }
            if hello.rank == 0 || hello.rank >= world || table[hello.rank].is_some() {
                return Err(refuse(&mut s, format!("rank {} joined twice or is out of range", hello.rank)));
            }
            table[hello.rank] = Some(hello.data_addr);
            joined.push((hello.rank, s));
        }
        let table: Vec<String> = table.into_iter().flatten().collect();
        let payload = serde_json::to_vec(&table).map_err(|e| rv_err(e.to_string()))?;
        for (r, s) in &mut joined {
            write_frame(s, Kind::Table, &payload).map_err(|e| rv_err(format!("sending the table to rank {r}: {e}")))?;
        }
        Ok(table)
    }

    /// Ranks ≠ 0: say hello to rank 0 and wait for the table.
    fn join_rendezvous(spec: &RendezvousSpec, own: String, deadline: Instant) -> CollResult<Vec<String>> {
        let mut s = dial(&spec.rendezvous, deadline).map_err(|e| rv_err(format!("rank 0 at {}: {e}", spec.rendezvous)))?;
        configure(&s, spec.timeout).map_err(|e| rv_err(e.to_string()))?;
        let hello = Hello {
            rank: spec.rank,
            world: spec.world,
            data_addr: own,
        };
        let payload = serde_json::to_vec(&hello).map_err(|e| rv_err(e.to_string()))?;
        write_frame(&mut s, Kind::Hello, &payload).map_err(|e| rv_err(format!("rank 0: {e}")))?;
        match read_small(&mut s) {
            Ok((Some(Kind::Table), payload)) => {
                let table: Vec<String> = serde_json::from_slice(&payload).map_err(|e| rv_err(format!("a malformed table: {e}")))?;
                if table.len() != spec.world {
                    return Err(rv_err(format!("rank 0 sent a table of {} ranks", table.len())));
                }
                Ok(table)
            }
            Ok((Some(Kind::Refused), why)) => Err(rv_err(format!("rank 0 refused: {}", String::from_utf8_lossy(&why)))),
            Ok(_) => Err(rv_err("rank 0 answered with something other than the table")),
            Err(e) => Err(rv_err(format!("waiting for rank 0's table: {e}"))),
        }
    }

    fn peer(&self, p: usize) -> &Peer {
        match &self.peers[p] {
            Some(peer) => peer,
            None => unreachable!("rank {} has no connection to itself", self.rank),
        }
    }

    fn next(&self) -> usize {
        (self.rank + 1) % self.world
    }

    fn prev(&self) -> usize {
        (self.rank + self.world - 1) % self.world
    }

    /// Runs `f` unless poisoned; a failure poisons and tells every peer.
    fn guarded<T>(&self, f: impl FnOnce() -> CollResult<T>) -> CollResult<T> {
        let _busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = self.poisoned.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Err(e);
        }
        let out = f();
        if let Err(e) = &out {
            self.poison(e.clone());
        }
        out
    }

    fn poison(&self, e: CollectiveError) {
        let note = AbortNote {
            reporter: self.rank,
            ranks: e.blamed(),
            message: e.to_string(),
        };
        let payload = serde_json::to_vec(&note).unwrap_or_default();
        for (p, peer) in self.peers.iter().enumerate() {
            let Some(peer) = peer else { continue };
            if note.ranks.contains(&p) {
                continue;
            }
            if let Ok(mut w) = peer.writer.try_lock() {
                let _ = w.set_write_timeout(Some(Duration::from_millis(200)));
                let _ = write_frame(&mut w, Kind::Abort, &payload);
            }
        }
        *self.poisoned.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
    }

    /// Reads a frame header from `peer`; abort frames become errors.
    fn expect(&self, op: &'static str, peer: usize, stream: &mut TcpStream, want: Kind) -> CollResult<u64> {
        let (kind, len) = read_header(stream).map_err(|e| io_error(op, peer, self.timeout, e))?;
        match kind {
            Some(k) if k == want => Ok(len),
            Some(Kind::Abort) => {
                let mut payload = vec![0u8; len.min(1 << 20) as usize];
                stream.read_exact(&mut payload).map_err(|e| io_error(op, peer, self.timeout, e))?;
                let note: AbortNote = serde_json::from_slice(&payload).map_err(|e| CollectiveError::PeerLost {
                    op,
                    peer,
                    message: format!("malformed abort: {e}"),
                })?;
                Err(CollectiveError::Aborted {
                    op,
                    reporter: note.reporter,
                    ranks: note.ranks,
                    message: note.message,
                })
            }
            other => Err(CollectiveError::PeerLost {
                op,
                peer,
                message: format!("protocol error: expected {want:?}, got {other:?} (the ranks are out of step)"),
            }),
        }
    }

    /// One ring step: streams `send` to the next rank while receiving the
    /// previous rank's segment into `recv` (added when `reduce`).
    fn ring_step(&self, op: &'static str, send: &[f32], recv: &mut [f32], reduce: bool) -> CollResult<()> {
        let (next, prev) = (self.next(), self.prev());
        let stop = AtomicBool::new(false);
        if let (Some(to_next), Some(from_prev)) = (&self.pipe_to_next, &self.pipe_from_prev) {
            // A rank is at most W−1 ring steps ahead of its next neighbour,
            // so a pipe holds at most W messages in flight: when they all fit,
            // writing never waits for the reader, and one thread can write
            // and then read (no sender thread, no hand-off between threads).
            let message = 8 + 4 * send.len().max(recv.len());
            if self.world * message <= to_next.capacity() {
                self.pipe_send(op, to_next, send, &stop)?;
                return self.pipe_receive(op, from_prev, recv, reduce);
            }
        }
        std::thread::scope(|scope| {
            let sender = scope.spawn(|| -> CollResult<()> {
                if let Some(pipe) = &self.pipe_to_next {
                    return self.pipe_send(op, pipe, send, &stop);
                }
                let mut w = self.peer(next).writer.lock().unwrap_or_else(|e| e.into_inner());
                for chunk in send.chunks(CHUNK_FLOATS) {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    write_frame(&mut w, Kind::Data, bytemuck::cast_slice(chunk)).map_err(|e| io_error(op, next, self.timeout, e))?;
                }
                Ok(())
            });
            let received = (|| -> CollResult<()> {
                if let Some(pipe) = &self.pipe_from_prev {
                    return self.pipe_receive(op, pipe, recv, reduce);
                }
                let mut r = self.peer(prev).reader.lock().unwrap_or_else(|e| e.into_inner());
                let mut scratch = vec![0f32; if reduce { CHUNK_FLOATS.min(recv.len()) } else { 0 }];
                for chunk in recv.chunks_mut(CHUNK_FLOATS) {
                    let len = self.expect(op, prev, &mut r, Kind::Data)?;
                    same_size(op, prev, len, chunk.len())?;
                    if reduce {
                        let part = &mut scratch[..chunk.len()];
                        r.read_exact(bytemuck::cast_slice_mut(part))
                            .map_err(|e| io_error(op, prev, self.timeout, e))?;
                        chunk.iter_mut().zip(part.iter()).for_each(|(a, b)| *a += *b);
                    } else {
                        r.read_exact(bytemuck::cast_slice_mut(chunk))
                            .map_err(|e| io_error(op, prev, self.timeout, e))?;
                    }
                }
                Ok(())
            })();
            if received.is_err() {
                stop.store(true, Ordering::Relaxed);
            }
            let sent = sender.join().unwrap_or_else(|_| {
                Err(CollectiveError::Invalid {
                    op,
                    message: "the sender thread panicked".into(),
                })
            });
            received.and(sent)
        })
    }

    /// The sending half of a ring step through shared memory: a length,
    /// then the floats. Gives up when the receiving half failed (`stop`) or
    /// the next rank's socket closes or carries an abort.
    fn pipe_send(&self, op: &'static str, pipe: &ShmPipe, send: &[f32], stop: &AtomicBool) -> CollResult<()> {
        let next = self.next();
        let fd = self.peer(next).fd;
        let check = || {
            if stop.load(Ordering::Relaxed) || shm::socket_signalled(fd) {
                Err(CollectiveError::PeerLost {
                    op,
                    peer: next,
                    message: "closed its connection or aborted while this rank was sending".into(),
                })
            } else {
                Ok(())
            }
        };
        let bytes: &[u8] = bytemuck::cast_slice(send);
        pipe.write_all(&(bytes.len() as u64).to_le_bytes(), self.timeout, check)
            .and_then(|()| pipe.write_all(bytes, self.timeout, check))
            .map_err(|e| self.pipe_error(op, next, e))
    }

    /// The receiving half through shared memory: checks the length, then
    /// adds (or copies) the floats straight out of the pipe. An abort
    /// frame or a closed socket from the previous rank ends the wait with
    /// that reason.
    fn pipe_receive(&self, op: &'static str, pipe: &ShmPipe, recv: &mut [f32], reduce: bool) -> CollResult<()> {
        let prev = self.prev();
        let fd = self.peer(prev).fd;
        let mut r = self.peer(prev).reader.lock().unwrap_or_else(|e| e.into_inner());
        let mut check = || {
            if !shm::socket_signalled(fd) {
                return Ok(());
            }
            // Only an abort (or the end of the stream) can arrive now.
            self.expect(op, prev, &mut r, Kind::Data).and_then(|_| {
                Err(CollectiveError::PeerLost {
                    op,
                    peer: prev,
                    message: "sent data on its socket during a shared-memory transfer (the ranks are out of step)".into(),
                })
            })
        };
        let mut header = [0u8; 8];
        pipe.read_with(8, self.timeout, &mut check, |at, b| header[at..at + b.len()].copy_from_slice(b))
            .map_err(|e| self.pipe_error(op, prev, e))?;
        same_size(op, prev, u64::from_le_bytes(header), recv.len())?;
        let mut misaligned = false;
        pipe.read_with(recv.len() * 4, self.timeout, &mut check, |at, bytes| {
            let (Ok(src), true) = (bytemuck::try_cast_slice::<u8, f32>(bytes), at % 4 == 0) else {
                misaligned = true;
                return;
            };
            let dst = &mut recv[at / 4..at / 4 + src.len()];
            if reduce {
                dst.iter_mut().zip(src).for_each(|(a, b)| *a += *b);
            } else {
                dst.copy_from_slice(src);
            }
        })
        .map_err(|e| self.pipe_error(op, prev, e))?;
        if misaligned {
            return Err(CollectiveError::PeerLost {
                op,
                peer: prev,
                message: "published a partial float in shared memory".into(),
            });
        }
        Ok(())
    }

    fn pipe_error(&self, op: &'static str, peer: usize, e: WaitError<CollectiveError>) -> CollectiveError {
        match e {
            WaitError::Timeout => CollectiveError::Timeout {
                op,
                peer,
                timeout: self.timeout,
            },
            WaitError::Stopped(e) => e,
        }
    }

    /// Ring reduce-scatter over `segs` of `buf`, in place: afterwards segment
    /// r of rank r holds the sum over ranks.
    fn ring_reduce_scatter(&self, op: &'static str, buf: &mut [f32], segs: &[Range<usize>]) -> CollResult<()> {
        let w = self.world;
        for s in 0..w - 1 {
            let send = (self.rank + 2 * w - s - 1) % w;
            let recv = (self.rank + 2 * w - s - 2) % w;
            let (a, b) = split_pair(buf, segs[send].clone(), segs[recv].clone());
            self.ring_step(op, a, b, true)?;
        }
        Ok(())
    }

    /// Ring all-gather over `segs` of `buf`, in place: rank r starts with
    /// segment r filled and ends with all of them.
    fn ring_all_gather(&self, op: &'static str, buf: &mut [f32], segs: &[Range<usize>]) -> CollResult<()> {
        let w = self.world;
        for s in 0..w - 1 {
            let send = (self.rank + w - s) % w;
            let recv = (self.rank + 2 * w - s - 1) % w;
            let (a, b) = split_pair(buf, segs[send].clone(), segs[recv].clone());
            self.ring_step(op, a, b, false)?;
        }
        Ok(())
    }
}

/// A data message of `bytes` from `peer` where `floats` floats were expected
/// is an error: the ranks' buffer sizes differ.
fn same_size(op: &'static str, peer: usize, bytes: u64, floats: usize) -> CollResult<()> {
    if bytes == (floats * 4) as u64 {
        return Ok(());
    }
    Err(CollectiveError::PeerLost {
        op,
        peer,
        message: format!(
            "sent {bytes} bytes where {} were expected (buffer sizes differ across ranks)",
            floats * 4
        ),
    })
}

/// Disjoint `send` (shared) and `recv` (mutable) ranges of one buffer.
fn split_pair(buf: &mut [f32], send: Range<usize>, recv: Range<usize>) -> (&[f32], &mut [f32]) {
    if send.start < recv.start {
        let (lo, hi) = buf.split_at_mut(recv.start);
        (&lo[send], &mut hi[..recv.len()])
    } else {
        let (lo, hi) = buf.split_at_mut(send.start);
        (&hi[..send.len()], &mut lo[recv])
    }
}

impl Collective for TcpCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) -> CollResult<()> {
        if self.world == 1 {
            return Ok(());
        }
        self.guarded(|| {
            let segs = segments(buf.len(), self.world);
            self.ring_reduce_scatter("all_reduce", buf, &segs)?;
            self.ring_all_gather("all_reduce", buf, &segs)
        })
    }

    fn all_gather_into(&self, local: &[f32], out: &mut [f32]) -> CollResult<()> {
        let n = local.len();
        if out.len() != n * self.world {
            return Err(CollectiveError::Invalid {
                op: "all_gather",
                message: format!("output of {} elements for {} ranks of {n}", out.len(), self.world),
            });
        }
        out[self.rank * n..(self.rank + 1) * n].copy_from_slice(local);
        if self.world == 1 {
            return Ok(());
        }
        self.guarded(|| {
            let segs: Vec<_> = (0..self.world).map(|r| r * n..(r + 1) * n).collect();
            self.ring_all_gather("all_gather", out, &segs)
        })
    }

    fn reduce_scatter_sum(&self, full: &[f32]) -> CollResult<Vec<f32>> {
        if !full.len().is_multiple_of(self.world) {
            return Err(CollectiveError::Invalid {
                op: "reduce_scatter",
                message: format!("{} elements do not split into {} ranks", full.len(), self.world),
            });
        }
        let n = full.len() / self.world;
        let mut work = full.to_vec();
        if self.world > 1 {
            self.guarded(|| {
                let segs: Vec<_> = (0..self.world).map(|r| r * n..(r + 1) * n).collect();
                self.ring_reduce_scatter("reduce_scatter", &mut work, &segs)
            })?;
        }
        Ok(work[self.rank * n..(self.rank + 1) * n].to_vec())
    }

    fn broadcast(&self, buf: &mut [f32], root: usize) -> CollResult<()> {
        if self.world == 1 {
            return Ok(());
        }
        if root >= self.world {
            return Err(CollectiveError::Invalid {
                op: "broadcast",
                message: format!("root {root} is not a rank of a world of {}", self.world),
            });
        }
        self.guarded(|| {
            if self.rank == root {
                for p in (0..self.world).filter(|&p| p != root) {
                    let mut w = self.peer(p).writer.lock().unwrap_or_else(|e| e.into_inner());
                    for chunk in buf.chunks(CHUNK_FLOATS) {
                        write_frame(&mut w, Kind::Data, bytemuck::cast_slice(chunk))
                            .map_err(|e| io_error("broadcast", p, self.timeout, e))?;
                    }
                }
                return Ok(());
            }
            let mut r = self.peer(root).reader.lock().unwrap_or_else(|e| e.into_inner());
            for chunk in buf.chunks_mut(CHUNK_FLOATS) {
                let len = self.expect("broadcast", root, &mut r, Kind::Data)?;
                if len != (chunk.len() * 4) as u64 {
                    return Err(CollectiveError::PeerLost {
                        op: "broadcast",
                        peer: root,
                        message: "buffer sizes differ across ranks".into(),
                    });
                }
                r.read_exact(bytemuck::cast_slice_mut(chunk))
                    .map_err(|e| io_error("broadcast", root, self.timeout, e))?;
            }
            Ok(())
        })
    }

    fn barrier(&self) -> CollResult<()> {
        if self.world == 1 {
            return Ok(());
        }
        self.guarded(|| {
            if self.rank != 0 {
                let mut w = self.peer(0).writer.lock().unwrap_or_else(|e| e.into_inner());
                write_frame(&mut w, Kind::Arrive, &[]).map_err(|e| io_error("barrier", 0, self.timeout, e))?;
                drop(w);
                // Rank 0 decides: it waits up to the timeout for the others,
                // then releases or names the missing; give it that long and more.
                let mut r = self.peer(0).reader.lock().unwrap_or_else(|e| e.into_inner());
                let _ = r.set_read_timeout(Some(2 * self.timeout));
                let got = self.expect("barrier", 0, &mut r, Kind::Release);
                let _ = r.set_read_timeout(Some(self.timeout));
                got?;
                return Ok(());
            }
            // Rank 0 waits for everyone until one shared deadline.
            let deadline = Instant::now() + self.timeout;
            let mut missing = Vec::new();
            for p in 1..self.world {
                let mut r = self.peer(p).reader.lock().unwrap_or_else(|e| e.into_inner());
                let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
                let _ = r.set_read_timeout(Some(left));
                let got = self.expect("barrier", p, &mut r, Kind::Arrive);
                let _ = r.set_read_timeout(Some(self.timeout));
                match got {
                    Ok(_) => {}
                    Err(CollectiveError::Timeout { .. }) | Err(CollectiveError::PeerLost { .. }) => missing.push(p),
                    Err(e) => return Err(e),
                }
            }
            if !missing.is_empty() {
                return Err(CollectiveError::NotArrived {
                    op: "barrier",
                    missing,
                    timeout: self.timeout,
                });
            }
            for p in 1..self.world {
                let mut w = self.peer(p).writer.lock().unwrap_or_else(|e| e.into_inner());
                write_frame(&mut w, Kind::Release, &[]).map_err(|e| io_error("barrier", p, self.timeout, e))?;
            }
            Ok(())
        })
    }
}

/// `world` ranks connected over loopback (one thread each during the
/// rendezvous), in rank order. For tests.
#[cfg(test)]
pub(crate) fn connect_loopback(world: usize, timeout: Duration, shared_memory: bool) -> Vec<TcpCollective> {
    let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                let addr = addr.clone();
                scope.spawn(move || {
                    let spec = RendezvousSpec {
                        rank,
                        world,
                        rendezvous: addr,
                        advertise_host: "127.0.0.1".into(),
                        timeout,
                        shared_memory,
                    };
                    TcpCollective::connect(&spec).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_addr() -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    }

    /// Runs `f(rank, collective)` on `world` threads connected over
    /// loopback; each thread owns its collective (closed when it returns).
    fn with_world<T: Send>(world: usize, timeout: Duration, shared_memory: bool, f: impl Fn(usize, &TcpCollective) -> T + Sync) -> Vec<T> {
        let ranks = connect_loopback(world, timeout, shared_memory);
        std::thread::scope(|scope| {
            let f = &f;
            let handles: Vec<_> = ranks
                .into_iter()
                .enumerate()
                .map(|(rank, c)| scope.spawn(move || f(rank, &c)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    fn data(rank: usize, n: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 7 + rank * 13) % 97) as f32 - 40.0).collect()
    }

    #[test]
    fn ring_collectives_match_their_definitions() {
        for (world, shared_memory) in [(2, true), (3, true), (4, true), (2, false), (3, false)] {
            // Sizes that do and do not divide, below and above one frame
            // and one shared-memory ring.
            for n in [1, 5, 1000, CHUNK_FLOATS * 2 + 3, shm::PIPE_BYTES / 2 + 7] {
                let out = with_world(world, Duration::from_secs(20), shared_memory, |rank, c| {
                    assert_eq!(c.shares_memory(), (shared_memory, shared_memory), "rank {rank}");
                    let mut sum = data(rank, n);
                    c.all_reduce_sum(&mut sum).unwrap();
                    let gathered = c.all_gather(&data(rank, n)).unwrap();
                    let full: Vec<f32> = (0..world * n).map(|i| (i % 11) as f32 + rank as f32).collect();
                    let scattered = c.reduce_scatter_sum(&full).unwrap();
                    let mut b = if rank == 1 { data(9, n) } else { vec![0.0; n] };
                    c.broadcast(&mut b, 1).unwrap();
                    c.barrier().unwrap();
                    (sum, gathered, scattered, b)
                });
                let inputs: Vec<Vec<f32>> = (0..world).map(|r| data(r, n)).collect();
                let expect_sum: Vec<f32> = (0..n).map(|i| inputs.iter().map(|d| d[i]).sum()).collect();
                let expect_gather: Vec<f32> = (0..world).flat_map(|r| data(r, n)).collect();
                for (rank, (sum, gathered, scattered, b)) in out.into_iter().enumerate() {
                    assert_eq!(sum, expect_sum, "all_reduce w={world} n={n}");
                    assert_eq!(gathered, expect_gather, "all_gather w={world} n={n}");
                    let expect: Vec<f32> = (rank * n..(rank + 1) * n)
                        .map(|i| (0..world).map(|r| (i % 11) as f32 + r as f32).sum())
                        .collect();
                    assert_eq!(scattered, expect, "reduce_scatter w={world} n={n}");
                    assert_eq!(b, data(9, n), "broadcast");
                }
            }
        }
    }

    #[test]
    fn a_rank_that_leaves_fails_the_others_promptly_naming_it() {
        for shared_memory in [false, true] {
            let started = Instant::now();
            let out = with_world(3, Duration::from_secs(30), shared_memory, |rank, c| {
                if rank == 1 {
                    return None; // leaves without calling: its connections close on drop
                }
                let mut buf = vec![1.0f32; 1000];
                let first = c.all_reduce_sum(&mut buf).err();
                // Poisoned: the next call fails at once with the same error.
                let again = c.barrier().err();
                Some((first.map(|e| e.to_string()), again.map(|e| e.to_string())))
            });
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "failed by closed connections, not timeouts (shared memory: {shared_memory})"
            );
            for (rank, o) in out.into_iter().enumerate() {
                let Some((first, again)) = o else { continue };
                let first = first.unwrap_or_else(|| panic!("rank {rank} did not fail"));
                assert!(first.contains("rank 1") || first.contains("[1]"), "rank {rank}: {first}");
                assert_eq!(again.as_deref(), Some(first.as_str()));
            }
        }
    }

    #[test]
    fn a_rank_silent_in_a_shared_memory_ring_times_out_by_name() {
        let started = Instant::now();
        let out = with_world(3, Duration::from_millis(600), true, |rank, c| {
            if rank == 2 {
                std::thread::sleep(Duration::from_millis(2500));
                return String::new();
            }
            let mut buf = vec![1.0f32; 1000];
            c.all_reduce_sum(&mut buf).unwrap_err().to_string()
        });
        assert!(started.elapsed() < Duration::from_secs(5));
        // Rank 0 waits for rank 2's data and names it. Rank 1 waits for
        // rank 0: usually rank 0's abort tells it whom rank 0 blames, but
        // its own timeout (as long) may fire first on a loaded machine.
        assert!(out[0].contains("rank 2"), "{}", out[0]);
        assert!(["[2]", "rank 2", "rank 0"].iter().any(|r| out[1].contains(r)), "{}", out[1]);
    }

    #[test]
    fn a_silent_rank_times_out_and_the_barrier_names_it() {
        let out = with_world(3, Duration::from_millis(600), true, |rank, c| {
            if rank == 2 {
                std::thread::sleep(Duration::from_millis(1500));
                return String::new();
            }
            c.barrier().unwrap_err().to_string()
        });
        assert!(out[0].contains("ranks [2] did not arrive"), "{}", out[0]);
        assert!(out[1].contains("[2]"), "{}", out[1]);
    }

    #[test]
    fn rendezvous_names_missing_ranks_and_world_mismatches() {
        let addr = free_addr();
        let spec = |rank, world| RendezvousSpec {
            rank,
            world,
            rendezvous: addr.clone(),
            advertise_host: "127.0.0.1".into(),
            timeout: Duration::from_millis(800),
            shared_memory: true,
        };
        let err = TcpCollective::connect(&spec(0, 3)).err().unwrap().to_string();
        assert!(err.contains("[1, 2]"), "{err}");
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| TcpCollective::connect(&spec(0, 2)).err().map(|e| e.to_string()));
            let b = s.spawn(|| TcpCollective::connect(&spec(1, 3)).err().map(|e| e.to_string()));
            (a.join().unwrap(), b.join().unwrap())
        });
        assert!(a.unwrap().contains("world has 3 ranks"));
        assert!(b.unwrap().contains("refused"));
    }
}
