//! The star operations of the TCP collective, which go through one rank
//! instead of around the ring: broadcast (the root writes to every rank)
//! and barrier (rank 0 collects every arrival until one deadline, then
//! releases everyone or names the missing). Callers wrap these in
//! `guarded`, so a failure here poisons the communicator.
//!
//! This file owns those two exchanges; it must not check arguments (the
//! `Collective` impl does) or handle aborts itself (`abort.rs` does).

use super::TcpCollective;
use super::wire::{CHUNK_FLOATS, Kind, io_error, write_frame};
use crate::collective::{CollResult, CollectiveError};
use std::io::Read;
use std::time::{Duration, Instant};

impl TcpCollective {
    /// The root's `buf` to every other rank, directly.
    pub(super) fn star_broadcast(&self, buf: &mut [f32], root: usize) -> CollResult<()> {
        if self.rank == root {
            for p in (0..self.world).filter(|&p| p != root) {
                let mut w = self.peer(p).writer.lock().unwrap_or_else(|e| e.into_inner());
                for chunk in buf.chunks(CHUNK_FLOATS) {
                    write_frame(&mut w, Kind::Data, bytemuck::cast_slice(chunk)).map_err(|e| io_error("broadcast", p, self.timeout, e))?;
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
    }

    /// Every rank reports to rank 0, which releases them all once each has
    /// arrived, or names those that did not within the timeout.
    pub(super) fn star_barrier(&self) -> CollResult<()> {
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
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::with_world;
    use crate::collective::Collective;
    use std::time::Duration;

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
}
