//! `Identity` service: certificates for workloads. The SPIFFE ID always comes
//! from the attestation (Certify) or the caller's current certificate (Renew),
//! never from the CSR.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bulkhead_proto::SpiffeId;
use bulkhead_proto::pb::{self, certify_request::Attestation};
use tonic::{Request, Response, Status};

use super::{ControlPlane, peer, store_status};
use crate::ca::{CsrError, Issued, TokenError};
use crate::events::{self, NewEvent};
use crate::keys;

#[derive(Debug, Clone)]
pub(crate) struct IdentityService {
    plane: Arc<ControlPlane>,
}

impl IdentityService {
    pub(crate) fn new(plane: Arc<ControlPlane>) -> Self {
        Self { plane }
    }

    /// Counts a refusal, and adds it to this window's `certificate.refused`
    /// events (one per identity and reason, however many).
    fn refused(&self, identity: &str, reason: &'static str, status: Status) -> Status {
        metrics::counter!("bulkhead_certify_refused_total", "reason" => reason).increment(1);
        tracing::info!(
            reason,
            message = status.message(),
            "refused certificate request"
        );
        self.plane
            .events
            .refusals
            .add(identity, reason, status.message());
        status
    }

    fn issue(&self, csr_der: &[u8], identity: &SpiffeId) -> Result<Issued, Status> {
        // A replica without the active issuer's key refuses rather than
        // signing with another: the caller retries, another replica signs.
        let signer = self.plane.trust.signer().map_err(|e| {
            self.refused(
                &identity.to_string(),
                "no_signer",
                Status::unavailable(format!("cannot issue certificates now: {e}")),
            )
        })?;
        signer
            .certify(csr_der, identity, self.plane.cert_lifetime)
            .map_err(|e| self.refused(&identity.to_string(), "csr", csr_status(e)))
    }

    /// The answer, once the event that records the issue is written: no
    /// certificate leaves without one (UNAVAILABLE when the store cannot
    /// take it; the caller retries).
    async fn respond(
        &self,
        issued: Issued,
        identity: &SpiffeId,
        method: &'static str,
    ) -> Result<pb::CertifyResponse, Status> {
        let not_after = unix_secs(issued.not_after);
        let kind = if method == "renew" {
            events::CERTIFICATE_RENEWED
        } else {
            events::CERTIFICATE_ISSUED
        };
        let event = NewEvent::new(
            kind,
            identity.namespace(),
            identity.to_string(),
            serde_json::json!({
                "identity": identity.to_string(),
                "method": method,
                "notAfter": events::rfc3339(not_after.saturating_mul(1000)),
            }),
        );
        self.plane
            .events
            .write(vec![event])
            .await
            .map_err(store_status)?;
        metrics::counter!("bulkhead_certificates_issued_total", "method" => method).increment(1);
        tracing::info!(%identity, method, "issued certificate");
        Ok(pb::CertifyResponse {
            chain_der: issued.chain_der.iter().map(|c| c.to_vec()).collect(),
            trust_bundle_der: self
                .plane
                .trust
                .record()
                .roots()
                .iter()
                .map(|r| r.der.to_vec())
                .collect(),
            spiffe_id: identity.to_string(),
            not_after_unix: not_after,
        })
    }
}

fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn csr_status(error: CsrError) -> Status {
    Status::invalid_argument(format!("certificate signing request refused: {error}"))
}

fn token_status(error: TokenError) -> Status {
    match error {
        TokenError::Expired { .. } => Status::unauthenticated(format!(
            "bootstrap token refused: {error}; mint a new one with `bulkheadctl token create`"
        )),
        _ => Status::unauthenticated(format!("bootstrap token refused: {error}")),
    }
}

#[tonic::async_trait]
impl pb::identity_server::Identity for IdentityService {
    async fn certify(
        &self,
        request: Request<pb::CertifyRequest>,
    ) -> Result<Response<pb::CertifyResponse>, Status> {
        let req = request.into_inner();
        let token = match req.attestation {
            Some(Attestation::BootstrapToken(token)) => token,
            Some(Attestation::ServiceAccountJwt(jwt)) => {
                let Some(k8s) = &self.plane.k8s else {
                    return Err(self.refused(
                        "",
                        "attestation",
                        Status::unimplemented(
                            "Kubernetes service-account attestation is not enabled on this control plane (start it with --k8s-jwks and --k8s-issuer); use a bootstrap token",
                        ),
                    ));
                };
                let identity = k8s.verify(&jwt).map_err(|e| {
                    self.refused(
                        "",
                        "k8s_token",
                        Status::unauthenticated(format!("service-account token refused: {e}")),
                    )
                })?;
                let issued = self.issue(&req.csr_der, &identity)?;
                return Ok(Response::new(
                    self.respond(issued, &identity, "certify").await?,
                ));
            }
            None => {
                return Err(self.refused(
                    "",
                    "attestation",
                    Status::invalid_argument("no attestation: send a bootstrap token"),
                ));
            }
        };
        let claims = self
            .plane
            .trust
            .verify_token(&token, SystemTime::now())
            .map_err(|e| self.refused("", "token", token_status(e)))?;
        // Sign before consuming a one-time token, so a bad CSR does not burn it.
        let issued = self.issue(&req.csr_der, &claims.identity)?;
        if claims.once {
            let key = keys::token(&claims.id);
            let remaining = claims
                .expires_at
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .max(std::time::Duration::from_secs(1));
            // The record outlives the token by a minute so that clock skew
            // between replicas cannot reopen it; then etcd forgets it.
            let lease = self
                .plane
                .store
                .grant(remaining + std::time::Duration::from_secs(60))
                .await
                .map_err(store_status)?;
            let first_use = self
                .plane
                .store
                .create(&key, claims.identity.to_string().into_bytes(), Some(lease))
                .await
                .map_err(store_status)?;
            if !first_use {
                let _ = self.plane.store.revoke(lease).await;
                return Err(self.refused(
                    &claims.identity.to_string(),
                    "token_reused",
                    Status::permission_denied(format!(
                        "bootstrap token {} is one-time and has already been used",
                        claims.id
                    )),
                ));
            }
        }
        Ok(Response::new(
            self.respond(issued, &claims.identity, "certify").await?,
        ))
    }

    async fn renew(
        &self,
        request: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::CertifyResponse>, Status> {
        let identity = peer(&request)?;
        let issued = self.issue(&request.get_ref().csr_der, &identity)?;
        Ok(Response::new(
            self.respond(issued, &identity, "renew").await?,
        ))
    }
}
