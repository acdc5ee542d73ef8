//! The contract between the Bulkhead control plane and its clients.
//!
//! - [`pb`]: the gRPC API generated from `proto/bulkhead.proto`.
//! - [`identity`]: SPIFFE workload identities and reading them from certificates.
//! - [`model`]: the resources operators apply (`Service`, `AllowList`,
//!   `TrafficSplit`, `Rollout`), their validation, and registry endpoints.
//! - [`policy`]: allow-list decisions and path normalization, exactly as the
//!   sidecar applies them, and their explanation for `bulkheadctl explain`.
//! - [`stats`]: request measurements sidecars report (latency histograms).
//!
//! No I/O: nothing here listens, dials, stores or holds TLS state. Both the
//! control plane and the sidecar build on it; TLS and the channel to the
//! control plane live in `bulkhead-tls`.

pub mod duration;
pub mod identity;
pub mod model;
pub mod policy;
pub mod stats;

/// Generated protobuf messages and gRPC clients/servers (package `bulkhead.v1`).
#[allow(unreachable_pub, clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("bulkhead.v1");
}

pub use duration::parse_duration;
pub use identity::{IdentityError, SpiffeId};
