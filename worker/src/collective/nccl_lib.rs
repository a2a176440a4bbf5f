//! NCCL loaded at run time (feature `cuda`): the library, the few entry
//! points training uses, and the version check.
//!
//! Why not cudarc's NCCL bindings: cudarc 0.19 dlopens `libnccl.so`, then
//! names numbered after the *CUDA* version (`libnccl.so.12`, `.11`, …), but
//! never `libnccl.so.2`, the only name NCCL's runtime package (`libnccl2`,
//! the CUDA runtime images, the `nvidia-nccl-cu*` wheels) installs; and its
//! `ncclConfig_t` layout follows cudarc's NCCL version features. So this
//! file opens `$AMDIM_NCCL_LIBRARY` if set, else `libnccl.so.2`, else
//! `libnccl.so`, resolves the symbols itself and passes the NCCL 2.17
//! layout of `ncclConfig_t` (size + magic + version tell any newer NCCL
//! which fields exist). Non-blocking communicators need NCCL ≥ 2.17
//! ([`MIN_VERSION`]); an older library is refused with both versions named.
//!
//! This file owns only the FFI surface; what to call when (the watchdog,
//! error naming) lives in collective/nccl.rs.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::OnceLock;

/// `ncclComm_t`.
pub(crate) type RawComm = *mut c_void;
/// `ncclResult_t`.
pub(crate) type NcclResult = c_int;
pub(crate) const SUCCESS: NcclResult = 0;
pub(crate) const IN_PROGRESS: NcclResult = 7;
/// `ncclFloat32`.
pub(crate) const FLOAT32: c_int = 7;
/// `ncclSum`.
pub(crate) const SUM: c_int = 0;
/// NCCL_VERSION(2, 17, 0): ncclCommInitRankConfig with `blocking`.
pub(crate) const MIN_VERSION: c_int = 21700;

/// `ncclUniqueId`: 128 opaque bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct UniqueId {
    pub(crate) internal: [c_char; 128],
}

/// `ncclConfig_t` as of NCCL 2.17 (`NCCL_CONFIG_INITIALIZER` then `blocking`).
#[repr(C)]
pub(crate) struct Config {
    size: usize,
    magic: u32,
    version: u32,
    blocking: c_int,
    cga_cluster_size: c_int,
    min_ctas: c_int,
    max_ctas: c_int,
    net_name: *const c_char,
    split_share: c_int,
}

impl Config {
    /// A configuration with every field left to NCCL except `blocking = 0`.
    pub(crate) fn non_blocking() -> Self {
        const UNDEF: c_int = c_int::MIN;
        Self {
            size: std::mem::size_of::<Self>(),
            magic: 0xcafe_beef,
            version: MIN_VERSION as u32,
            blocking: 0,
            cga_cluster_size: UNDEF,
            min_ctas: UNDEF,
            max_ctas: UNDEF,
            net_name: std::ptr::null(),
            split_share: UNDEF,
        }
    }
}

type Stream = *mut c_void;

/// The entry points, resolved once.
pub(crate) struct Nccl {
    /// Which file was opened, for messages.
    pub(crate) path: String,
    /// NCCL's version code (major·10000 + minor·100 + patch).
    pub(crate) version: c_int,
    pub(crate) get_unique_id: unsafe extern "C" fn(*mut UniqueId) -> NcclResult,
    pub(crate) comm_init_rank_config: unsafe extern "C" fn(*mut RawComm, c_int, UniqueId, c_int, *mut Config) -> NcclResult,
    pub(crate) comm_get_async_error: unsafe extern "C" fn(RawComm, *mut NcclResult) -> NcclResult,
    pub(crate) comm_abort: unsafe extern "C" fn(RawComm) -> NcclResult,
    pub(crate) comm_finalize: unsafe extern "C" fn(RawComm) -> NcclResult,
    pub(crate) comm_destroy: unsafe extern "C" fn(RawComm) -> NcclResult,
    get_error_string: unsafe extern "C" fn(NcclResult) -> *const c_char,
    get_last_error: unsafe extern "C" fn(RawComm) -> *const c_char,
    pub(crate) all_reduce: unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, RawComm, Stream) -> NcclResult,
    pub(crate) all_gather: unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, RawComm, Stream) -> NcclResult,
    pub(crate) reduce_scatter: unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, RawComm, Stream) -> NcclResult,
    pub(crate) broadcast: unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, RawComm, Stream) -> NcclResult,
    // Keeps the function pointers above valid; never unloaded.
    _lib: libloading::Library,
}

/// Library names tried in order when `AMDIM_NCCL_LIBRARY` is unset.
const CANDIDATES: [&str; 2] = ["libnccl.so.2", "libnccl.so"];

fn version_string(code: c_int) -> String {
    format!("{}.{}.{}", code / 10000, (code % 10000) / 100, code % 100)
}

impl Nccl {
    /// NCCL's text for a result code.
    pub(crate) fn describe(&self, code: NcclResult, comm: Option<RawComm>) -> String {
        // SAFETY: NCCL returns static NUL-terminated strings (or null).
        let text = |p: *const c_char| (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned());
        let base = text(unsafe { (self.get_error_string)(code) }).unwrap_or_else(|| format!("ncclResult {code}"));
        match comm.and_then(|c| text(unsafe { (self.get_last_error)(c) })) {
            Some(last) if !last.is_empty() => format!("{base} ({last})"),
            _ => base,
        }
    }

    fn open() -> Result<Self, String> {
        let names: Vec<String> = match std::env::var("AMDIM_NCCL_LIBRARY") {
            Ok(path) if !path.is_empty() => vec![path],
            _ => CANDIDATES.iter().map(|s| s.to_string()).collect(),
        };
        Self::open_first(&names)
    }

    fn open_first(names: &[String]) -> Result<Self, String> {
        let mut tried = Vec::new();
        let (lib, path) = names
            .iter()
            .find_map(|name| {
                // SAFETY: loading NCCL runs only its library constructors.
                match unsafe { libloading::Library::new(name) } {
                    Ok(lib) => Some((lib, name.clone())),
                    Err(e) => {
                        tried.push(format!("{name}: {e}"));
                        None
                    }
                }
            })
            .ok_or_else(|| {
                format!(
                    "NCCL (>= {} wanted) cannot be loaded: tried {}; install NCCL 2 (libnccl2, or the nvidia-nccl wheel) and put its lib folder on LD_LIBRARY_PATH, or set AMDIM_NCCL_LIBRARY to the file",
                    version_string(MIN_VERSION),
                    tried.join("; ")
                )
            })?;
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: the signature is NCCL's public C API for this symbol.
                *unsafe { lib.get($name.as_bytes()) }.map_err(|e| format!("{path}: no symbol {}: {e}", $name))?
            };
        }
        let get_version: unsafe extern "C" fn(*mut c_int) -> NcclResult = sym!("ncclGetVersion");
        let mut version = 0;
        // SAFETY: writes one int.
        if unsafe { get_version(&mut version) } != SUCCESS {
            return Err(format!("{path}: ncclGetVersion failed"));
        }
        if version < MIN_VERSION {
            return Err(format!(
                "{path} is NCCL {}, but NCCL >= {} is wanted (non-blocking communicators, ncclCommAbort)",
                version_string(version),
                version_string(MIN_VERSION)
            ));
        }
        Ok(Self {
            version,
            get_unique_id: sym!("ncclGetUniqueId"),
            comm_init_rank_config: sym!("ncclCommInitRankConfig"),
            comm_get_async_error: sym!("ncclCommGetAsyncError"),
            comm_abort: sym!("ncclCommAbort"),
            comm_finalize: sym!("ncclCommFinalize"),
            comm_destroy: sym!("ncclCommDestroy"),
            get_error_string: sym!("ncclGetErrorString"),
            get_last_error: sym!("ncclGetLastError"),
            all_reduce: sym!("ncclAllReduce"),
            all_gather: sym!("ncclAllGather"),
            reduce_scatter: sym!("ncclReduceScatter"),
            broadcast: sym!("ncclBroadcast"),
            path,
            _lib: lib,
        })
    }

    /// NCCL, loaded on first use; the error names the library and versions.
    pub(crate) fn get() -> Result<&'static Nccl, String> {
        static LIB: OnceLock<Result<Nccl, String>> = OnceLock::new();
        LIB.get_or_init(Nccl::open).as_ref().map_err(Clone::clone)
    }

    pub(crate) fn version_text(&self) -> String {
        version_string(self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_nccl_2_17_layout() {
        // size_t, 2×u32, 4×int, pointer, int (+ padding) on 64-bit Linux.
        assert_eq!(std::mem::size_of::<Config>(), 48);
        let c = Config::non_blocking();
        assert_eq!((c.magic, c.version, c.blocking), (0xcafe_beef, 21700, 0));
        assert_eq!(version_string(22805), "2.28.5");
    }

    #[test]
    fn a_missing_library_is_named_with_the_version_wanted() {
        let e = Nccl::open_first(&["/nonexistent/libnccl.so.2".into()]).err().unwrap_or_default();
        assert!(e.contains("/nonexistent/libnccl.so.2") && e.contains(">= 2.17.0"), "{e}");
    }
}
