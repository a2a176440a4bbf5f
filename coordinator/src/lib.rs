//! The coordinator crate: the `amdimctl` client with its dataset and
//! checkpoint tools today;
//! the gRPC coordinator server arrives with the coordinator issue. It links
//! no ML code: job specs are validated with `amdim-shared` alone.

pub mod checkpoints;
pub mod dataset;
