//! The control plane's gRPC services, one module each:
//!
//! - [`identity`]: `Certify` (attestation + CSR → certificate) and `Renew`.
//! - [`discovery`]: endpoint registration on leases, and the `Watch` push.
//! - [`admin`]: apply/get/delete resources, list endpoints and follow the
//!   event stream, for operators; the trust calls live in [`trust`], the
//!   preflight's in [`health`].
//!
//! Every handler takes the caller's identity from its client certificate
//! ([`crate::server::ConnInfo`]), never from the request.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bulkhead_proto::SpiffeId;
use tonic::{Request, Status};

use crate::hub::Hub;
use crate::server::ConnInfo;
use crate::store::{Store, StoreError};

pub(crate) mod admin;
pub(crate) mod discovery;
pub(crate) mod health;
pub(crate) mod identity;
pub(crate) mod rollouts;
pub(crate) mod trust;

/// Largest request the control plane decodes (YAML files for `apply` are
/// the biggest legitimate ones).
pub(crate) const MAX_REQUEST_BYTES: usize = 2 * 1024 * 1024;

/// Shared state of every service.
pub struct ControlPlane {
    pub store: Arc<dyn Store>,
    /// The trust in force: the bundle, the issuer that signs, tokens.
    pub trust: Arc<crate::trust::Trust>,
    pub hub: Arc<Hub>,
    /// Identities allowed to call the admin API.
    pub operators: BTreeSet<SpiffeId>,
    /// Lifetime of issued workload certificates.
    pub cert_lifetime: Duration,
    /// TTL of endpoint registrations' leases.
    pub lease_ttl: Duration,
    /// Kubernetes service-account token verification, when configured.
    pub k8s: Option<Arc<crate::attest::K8sVerifier>>,
    /// Node topology labels for registering endpoints' locality.
    pub topology: Option<Arc<crate::topology::Topology>>,
    /// What sidecars report, shared with the other replicas.
    pub measurements: Arc<crate::measure::Measurements>,
    /// This replica's name (`--replica-name`).
    pub replica: String,
    /// The admission webhook, when this replica serves it.
    pub webhook: Option<health::WebhookServing>,
    /// The mesh event stream's writer.
    pub events: Arc<crate::events::Events>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("trust_domain", &self.trust.trust_domain())
            .field("operators", &self.operators)
            .field("cert_lifetime", &self.cert_lifetime)
            .field("lease_ttl", &self.lease_ttl)
            .finish()
    }
}

/// The identity of the caller's client certificate, or UNAUTHENTICATED.
pub(crate) fn peer<T>(req: &Request<T>) -> Result<SpiffeId, Status> {
    req.extensions()
        .get::<ConnInfo>()
        .and_then(|info| info.peer.clone())
        .ok_or_else(|| {
            Status::unauthenticated(
                "this call needs a mesh client certificate (mTLS); none was presented",
            )
        })
}

/// Maps store failures to gRPC: callers may retry UNAVAILABLE.
pub(crate) fn store_status(error: StoreError) -> Status {
    match error {
        StoreError::Unavailable(reason) => {
            Status::unavailable(format!("control-plane store unavailable: {reason}"))
        }
        StoreError::LeaseNotFound(lease) => Status::not_found(format!(
            "lease {lease:x} expired or revoked: register again"
        )),
        other => Status::internal(format!("control-plane store: {other}")),
    }
}

pub(crate) fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
