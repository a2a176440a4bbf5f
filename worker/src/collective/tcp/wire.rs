//! The framing of the TCP collective's streams: every message is a 16-byte
//! header (magic, kind, payload length) and its payload. This file owns the
//! frame kinds, writing and reading frames, and turning an I/O error into
//! the [`CollectiveError`] that names the peer. It knows nothing of ranks'
//! roles, rings or the rendezvous; it must not hold state.

use crate::collective::CollectiveError;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Payload bytes per data frame.
pub const CHUNK_BYTES: usize = 4 << 20;
pub(super) const CHUNK_FLOATS: usize = CHUNK_BYTES / 4;
const MAGIC: u32 = 0x414d_4431; // "AMD1"

/// What a frame carries (its header's second word).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub(super) enum Kind {
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

pub(super) fn io_error(op: &'static str, peer: usize, timeout: Duration, e: std::io::Error) -> CollectiveError {
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

pub(super) fn write_frame(stream: &mut TcpStream, kind: Kind, payload: &[u8]) -> std::io::Result<()> {
    let mut header = [0u8; 16];
    header[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    header[4..8].copy_from_slice(&(kind as u32).to_le_bytes());
    header[8..16].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    stream.write_all(&header)?;
    stream.write_all(payload)
}

pub(super) fn read_header(stream: &mut TcpStream) -> std::io::Result<(Option<Kind>, u64)> {
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
pub(super) fn read_small(stream: &mut TcpStream) -> std::io::Result<(Option<Kind>, Vec<u8>)> {
    let (kind, len) = read_header(stream)?;
    if len > 1 << 20 {
        return Err(std::io::Error::new(ErrorKind::InvalidData, format!("control frame of {len} bytes")));
    }
    let mut payload = vec![0u8; len as usize];
    stream.read_exact(&mut payload)?;
    Ok((kind, payload))
}
