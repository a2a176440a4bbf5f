//! The coordinator crate: the `amdimctl` client and its dataset tools today;
//! the gRPC coordinator server arrives with the coordinator issue. It links
//! no ML code: job specs are validated with `amdim-shared` alone.

pub mod dataset;
