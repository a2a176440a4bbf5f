//! Shared-memory pipes between two ranks on one host (Linux).
//!
//! A pipe is a single-producer, single-consumer byte ring in a file under
//! `/dev/shm` that both processes map. The writer copies bytes in and
//! publishes a running `written` count; the reader consumes them in place
//! (reducing straight out of the ring, with no copy of its own) and
//! publishes `read`. A side that has nothing to do spins briefly, then
//! sleeps on a futex in the mapping, which the other side wakes when it
//! publishes. Over loopback TCP every byte is copied twice by the kernel;
//! here it is copied once, with no system call per frame.
//!
//! The pipe knows nothing of peers, ranks or collectives: waits take a
//! timeout and a `check` closure that the caller uses to notice a peer
//! that died or aborted (the TCP connection stays the control channel).
//! Whether two ranks can share memory at all (same host, same IPC
//! namespace, same user) is found out by trying: [`ShmPipe::create`] makes
//! the file, the peer [`ShmPipe::open`]s it and checks its nonce.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Where pipes are created: the tmpfs of POSIX shared memory.
pub const SHM_DIR: &str = "/dev/shm";
/// Ring bytes per pipe.
pub const PIPE_BYTES: usize = 8 << 20;
/// Bytes moved between two publications: small enough that the reader
/// starts while the writer is still copying, large enough that the
/// publication (and a futex wake) is rare.
const PUBLISH_BYTES: usize = 256 << 10;
/// Polls of the other side's counter before sleeping on the futex.
const SPINS: u32 = 200;
/// Longest futex sleep between two `check` calls.
const SLICE: Duration = Duration::from_millis(2);
/// The data ring starts one page in; the header fills the first page.
const DATA_OFFSET: usize = 4096;
const MAGIC: u64 = 0x616d_6469_6d73_686d; // "amdimshm"

/// The first page of the mapping. Each side's counter and futex word sit
/// on their own cache line.
#[repr(C, align(64))]
struct Header {
    magic: u64,
    nonce: u64,
    capacity: u64,
    _pad0: [u64; 5],
    /// Bytes the writer has published (monotonic).
    written: AtomicU64,
    /// Bumped on every publication by the writer; the reader sleeps on it.
    data_seq: AtomicU32,
    reader_sleeping: AtomicU32,
    _pad1: [u64; 6],
    /// Bytes the reader has consumed (monotonic).
    read: AtomicU64,
    /// Bumped on every consumption by the reader; the writer sleeps on it.
    space_seq: AtomicU32,
    writer_sleeping: AtomicU32,
    _pad2: [u64; 6],
}

const _: () = assert!(std::mem::size_of::<Header>() <= DATA_OFFSET);

/// Why a wait ended without the bytes it waited for.
#[derive(Debug)]
pub enum WaitError<E> {
    /// The deadline passed.
    Timeout,
    /// The caller's `check` said to stop.
    Stopped(E),
}

/// One direction of shared memory between two processes.
pub struct ShmPipe {
    map: memmap2::MmapMut,
    capacity: usize,
}

// SAFETY: the mapping is only touched through atomics (the header) and
// through disjoint byte ranges handed out by the ring protocol: the writer
// writes only bytes the reader has released, and the reader reads only
// bytes the writer has published (release/acquire on the counters).
unsafe impl Send for ShmPipe {}
unsafe impl Sync for ShmPipe {}

impl ShmPipe {
    /// Creates a pipe file in `dir` (mode 0600, so only this user's
    /// processes can open it). Returns the pipe and the file's path; the
    /// caller unlinks it once the peer has opened it or declined.
    pub fn create(dir: &Path, capacity: usize, nonce: u64) -> io::Result<(Self, PathBuf)> {
        if capacity == 0 || !capacity.is_multiple_of(64) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "pipe capacity must be a multiple of 64",
            ));
        }
        let path = dir.join(format!("amdim-{}-{nonce:016x}", std::process::id()));
        let file = File::options().read(true).write(true).create_new(true).mode(0o600).open(&path)?;
        let made = (|| {
            // Reserve the pages now: a tmpfs that runs out of space later
            // would kill the process with SIGBUS on its first write.
            // SAFETY: a valid descriptor of a file we own.
            let err = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, (DATA_OFFSET + capacity) as libc::off_t) };
            if err != 0 {
                return Err(io::Error::from_raw_os_error(err));
            }
            // SAFETY: the file is ours and stays mapped for the pipe's life;
            // concurrent access follows the ring protocol (see `Sync`).
            let mut map = unsafe { memmap2::MmapMut::map_mut(&file)? };
            map[..24].copy_from_slice(&[MAGIC.to_le_bytes(), nonce.to_le_bytes(), (capacity as u64).to_le_bytes()].concat());
            Ok(Self { map, capacity })
        })();
        if made.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        made.map(|pipe| (pipe, path))
    }

    /// Opens a pipe the peer created, if it carries the expected nonce.
    pub fn open(path: &Path, nonce: u64) -> io::Result<Self> {
        let file = File::options().read(true).write(true).open(path)?;
        let len = file.metadata()?.len() as usize;
        if len <= DATA_OFFSET {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "pipe file too short"));
        }
        // SAFETY: as in `create`.
        let map = unsafe { memmap2::MmapMut::map_mut(&file)? };
        let word = |i: usize| u64::from_le_bytes(map[8 * i..8 * i + 8].try_into().unwrap_or_default());
        let capacity = word(2) as usize;
        if word(0) != MAGIC || word(1) != nonce || capacity != len - DATA_OFFSET || !capacity.is_multiple_of(64) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not the pipe this peer offered"));
        }
        Ok(Self { map, capacity })
    }

    /// Bytes the ring holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn header(&self) -> &Header {
        // SAFETY: the mapping is page-aligned and at least DATA_OFFSET long;
        // the header's plain fields are written once before the peer opens
        // the file, the rest are atomics.
        unsafe { &*(self.map.as_ptr() as *const Header) }
    }

    fn data(&self) -> *mut u8 {
        // SAFETY: DATA_OFFSET < mapping length (checked at create/open).
        unsafe { (self.map.as_ptr() as *mut u8).add(DATA_OFFSET) }
    }

    /// Writes all of `bytes` (a multiple of 4 long), waiting for room; a
    /// wait longer than `timeout` fails.
    pub fn write_all<E>(&self, bytes: &[u8], timeout: Duration, mut check: impl FnMut() -> Result<(), E>) -> Result<(), WaitError<E>> {
        let h = self.header();
        let mut written = h.written.load(Ordering::Relaxed);
        let mut done = 0;
        while done < bytes.len() {
            let free = |read: u64| self.capacity - (written - read) as usize;
            let read = await_counter(&h.read, &h.space_seq, &h.writer_sleeping, timeout, &mut check, free)?;
            let at = written as usize % self.capacity;
            let n = free(read).min(self.capacity - at).min(bytes.len() - done).min(PUBLISH_BYTES);
            // SAFETY: [at, at + n) lies in the ring and holds no unread bytes.
            unsafe { std::ptr::copy_nonoverlapping(bytes[done..].as_ptr(), self.data().add(at), n) };
            done += n;
            written += n as u64;
            h.written.store(written, Ordering::Release);
            publish(&h.data_seq, &h.reader_sleeping);
        }
        Ok(())
    }

    /// Consumes `len` bytes, handing them to `take(offset, bytes)` in
    /// contiguous pieces that stay 4-byte aligned when `len` and every
    /// earlier message are multiples of 4.
    pub fn read_with<E>(
        &self,
        len: usize,
        timeout: Duration,
        mut check: impl FnMut() -> Result<(), E>,
        mut take: impl FnMut(usize, &[u8]),
    ) -> Result<(), WaitError<E>> {
        let h = self.header();
        let mut read = h.read.load(Ordering::Relaxed);
        let mut done = 0;
        while done < len {
            let available = |written: u64| (written - read) as usize;
            let written = await_counter(&h.written, &h.data_seq, &h.reader_sleeping, timeout, &mut check, available)?;
            let at = read as usize % self.capacity;
            let n = available(written).min(self.capacity - at).min(len - done).min(PUBLISH_BYTES);
            // SAFETY: [at, at + n) was published by the writer and is not
            // rewritten until `read` moves past it.
            take(done, unsafe { std::slice::from_raw_parts(self.data().add(at), n) });
            done += n;
            read += n as u64;
            h.read.store(read, Ordering::Release);
            publish(&h.space_seq, &h.writer_sleeping);
        }
        Ok(())
    }
}

/// The other side's `counter` once `usable(counter)` bytes are more than
/// none, sleeping on its `seq` word until then.
fn await_counter<E>(
    counter: &AtomicU64,
    seq: &AtomicU32,
    sleeping: &AtomicU32,
    timeout: Duration,
    check: &mut impl FnMut() -> Result<(), E>,
    usable: impl Fn(u64) -> usize,
) -> Result<u64, WaitError<E>> {
    let now = counter.load(Ordering::Acquire);
    if usable(now) > 0 {
        return Ok(now);
    }
    wait_for(seq, sleeping, timeout, check, || usable(counter.load(Ordering::Acquire)) > 0)?;
    Ok(counter.load(Ordering::Acquire))
}

/// After moving a counter: bump the sequence word and wake a sleeper.
fn publish(seq: &AtomicU32, sleeping: &AtomicU32) {
    seq.fetch_add(1, Ordering::SeqCst);
    if sleeping.load(Ordering::SeqCst) != 0 {
        futex_wake(seq);
    }
}

/// Waits until `ready()`: spins a little, then sleeps on `seq` in slices,
/// calling `check` between them; gives up after `timeout` without progress.
fn wait_for<E>(
    seq: &AtomicU32,
    sleeping: &AtomicU32,
    timeout: Duration,
    check: &mut impl FnMut() -> Result<(), E>,
    ready: impl Fn() -> bool,
) -> Result<(), WaitError<E>> {
    for _ in 0..SPINS {
        if ready() {
            return Ok(());
        }
        std::hint::spin_loop();
    }
    let deadline = Instant::now() + timeout;
    loop {
        let seen = seq.load(Ordering::SeqCst);
        sleeping.store(1, Ordering::SeqCst);
        if ready() {
            sleeping.store(0, Ordering::SeqCst);
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            sleeping.store(0, Ordering::SeqCst);
            return Err(WaitError::Timeout);
        }
        futex_wait(seq, seen, SLICE.min(deadline - now));
        sleeping.store(0, Ordering::SeqCst);
        if ready() {
            return Ok(());
        }
        check().map_err(WaitError::Stopped)?;
    }
}

/// Sleeps while `*word == expected`, at most `timeout` (a shared, not
/// process-private, futex: the word lives in a mapping of two processes).
fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: the word is a live AtomicU32 in the mapping; the kernel only
    // reads it. EAGAIN, EINTR and ETIMEDOUT all mean "look again".
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
        );
    }
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: as in `futex_wait`.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX);
    }
}

/// Whether a peer's TCP socket has something to say (an abort frame) or
/// was closed: during a shared-memory transfer nothing else arrives on it.
pub fn socket_signalled(fd: std::os::fd::RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never() -> Result<(), ()> {
        Ok(())
    }

    #[test]
    fn bytes_cross_the_ring_in_order_across_wrap_arounds() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, path) = ShmPipe::create(dir.path(), 4096, 7).unwrap();
        let reader = ShmPipe::open(&path, 7).unwrap();
        std::fs::remove_file(&path).unwrap();
        let message: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let timeout = Duration::from_secs(20);
        std::thread::scope(|s| {
            s.spawn(|| {
                for _ in 0..3 {
                    writer.write_all(&message, timeout, never).unwrap();
                }
            });
            for _ in 0..3 {
                let mut got = vec![0u8; message.len()];
                reader
                    .read_with(message.len(), timeout, never, |at, bytes| {
                        assert_eq!(at % 4, 0);
                        got[at..at + bytes.len()].copy_from_slice(bytes);
                    })
                    .unwrap();
                assert!(got == message, "bytes arrived changed or out of order");
            }
        });
    }

    #[test]
    fn a_wrong_nonce_or_a_foreign_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_pipe, path) = ShmPipe::create(dir.path(), 4096, 1).unwrap();
        assert!(ShmPipe::open(&path, 2).is_err());
        let other = dir.path().join("other");
        std::fs::write(&other, vec![0u8; 8192]).unwrap();
        assert!(ShmPipe::open(&other, 1).is_err());
    }

    #[test]
    fn a_reader_with_no_writer_times_out_and_check_can_stop_it() {
        let dir = tempfile::tempdir().unwrap();
        let (pipe, _path) = ShmPipe::create(dir.path(), 4096, 3).unwrap();
        let start = Instant::now();
        let r = pipe.read_with(4, Duration::from_millis(50), never, |_, _| {});
        assert!(matches!(r, Err(WaitError::Timeout)));
        assert!(start.elapsed() >= Duration::from_millis(50));
        let r = pipe.read_with(4, Duration::from_secs(10), || Err("peer gone"), |_, _| {});
        assert!(matches!(r, Err(WaitError::Stopped("peer gone"))));
        // A full ring stops the writer the same way.
        pipe.write_all(&[0u8; 4096], Duration::from_secs(1), never).unwrap();
        let r = pipe.write_all(&[0u8; 4], Duration::from_millis(20), never);
        assert!(matches!(r, Err(WaitError::Timeout)));
    }
}
