//! The generated gRPC messages, clients and servers of `proto/amdim/v1`.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("amdim.v1");
}
