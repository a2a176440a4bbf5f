//! The static rendezvous of the TCP collective: rank 0 listens on the
//! rendezvous address; every other rank connects there and says who it is
//! and where its data listener is; rank 0 checks the world (size,
//! duplicates, missing ranks) and hands out the address table. Then every
//! pair of ranks opens one TCP connection (the higher rank dials), so each
//! rank holds a full-duplex stream to each peer, and ring neighbours that
//! can map the same memory agree on a [`ShmPipe`] for ring data.
//!
//! This file owns connecting (and nothing after it): it must not move
//! collective data, and every wait in it is bounded by the spec's timeout.

use super::wire::{Kind, read_small, write_frame};
use super::{Peer, TcpCollective};
use crate::collective::shm::{self, ShmPipe};
use crate::collective::{CollResult, CollectiveError};
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// A shared-memory pipe a rank offers its previous ring neighbour (an
/// empty path: none could be made).
#[derive(serde::Serialize, serde::Deserialize)]
struct ShmOffer {
    path: String,
    nonce: u64,
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
            cancelled: Mutex::new(None),
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_addr() -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
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
