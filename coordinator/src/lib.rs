//! The coordinator crate, in two halves that share nothing but the gRPC
//! contract: `server`, what runs inside the `amdim-coordinator` process
//! (the pure `State` with its rules, the SQLite store, the gRPC services,
//! metrics), and `ctl`, the client side (`amdimctl`'s job, dataset and
//! checkpoint tools, the embedded `local` mode and the scale benchmark).
//! The binaries in `bin/` are thin shells over these. It links no ML code:
//! job specs are validated with `amdim-shared` alone.

pub mod ctl;
pub mod server;
