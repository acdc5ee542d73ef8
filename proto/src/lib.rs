//! The contract between the Bulkhead control plane and its clients.
//!
//! - [`pb`]: the gRPC API generated from `proto/bulkhead.proto`.
//! - [`identity`]: SPIFFE workload identities and reading them from certificates.
//! - [`model`]: the resources operators apply (`Service`, `AllowList`,
//!   `TrafficSplit`, `Rollout`), their validation, and registry endpoints.
//! - [`tls`]: rustls configurations that authenticate peers by SPIFFE ID.
//!
//! - [`client`]: a gRPC channel to the control plane over mesh TLS.
//!
//! Nothing here listens or stores: both the control plane and the sidecar
//! build on it (the [`client`] connector is the one piece that dials).

pub mod client;
pub mod identity;
pub mod model;
pub mod tls;

/// Generated protobuf messages and gRPC clients/servers (package `bulkhead.v1`).
#[allow(unreachable_pub, clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("bulkhead.v1");
}

pub use identity::{IdentityError, SpiffeId};
