//! Loopback worlds for the tests of the TCP collective and of `ops`: every
//! rank a thread of this process, connected through the real rendezvous.
//! Test-only; it must not be compiled into the library.

use super::{RendezvousSpec, TcpCollective};
use std::net::TcpListener;
use std::time::Duration;

/// `world` ranks connected over loopback (one thread each during the
/// rendezvous), in rank order. For tests.
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

/// Runs `f(rank, collective)` on `world` threads connected over
/// loopback; each thread owns its collective (closed when it returns).
pub(super) fn with_world<T: Send>(
    world: usize,
    timeout: Duration,
    shared_memory: bool,
    f: impl Fn(usize, &TcpCollective) -> T + Sync,
) -> Vec<T> {
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

pub(super) fn data(rank: usize, n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 7 + rank * 13) % 97) as f32 - 40.0).collect()
}
