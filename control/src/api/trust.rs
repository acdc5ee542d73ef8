//! The admin API's trust calls: the trust in force and what rests on it
//! (`bulkheadctl ca status`), and the stages of a root rotation (`ca rotate
//! prepare|activate|retire`): each reads the store's trust record, takes
//! the step [`crate::ca::rotation`] decides, and writes the result with a
//! compare-and-swap on the revision it read, so two operators (or
//! replicas) racing cannot both win.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bulkhead_proto::pb;
use prost::Message;
use tonic::Status;

use super::{ControlPlane, store_status};
use crate::ca::rotation::{self, RotationError, Step};
use crate::ca::{Rotation, TrustRecord};
use crate::keys;
use crate::trust::leaves::LeafNote;
use crate::trust::signers::{self, SignerNote};

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The trust status as the store holds it now.
pub(crate) async fn status(plane: &ControlPlane) -> Result<pb::TrustStatus, Status> {
    plane.hub.wait_synced().await;
    let record = plane.trust.record();
    let store = plane.store.as_ref();
    let (endpoints, _) = store.list(keys::ENDPOINTS).await.map_err(store_status)?;
    let (leaves, _) = store.list(keys::LEAVES).await.map_err(store_status)?;
    let signers = signers::list(store).await.map_err(store_status)?;
    let leaves: HashMap<String, LeafNote> = leaves
        .into_iter()
        .filter_map(|kv| Some((kv.key, LeafNote::decode(&kv.value)?)))
        .collect();
    let mut certificates = Vec::with_capacity(endpoints.len());
    for kv in endpoints {
        let ep = pb::Endpoint::decode(kv.value.as_slice())
            .map_err(|e| Status::internal(format!("stored {} does not decode: {e}", kv.key)))?;
        let leaf = leaves.get(&keys::leaf_of(&kv.key));
        certificates.push(pb::EndpointCertificate {
            namespace: ep.namespace,
            service: ep.service,
            address: ep.address,
            inbound_port: ep.inbound_port,
            identity: ep.identity,
            root_sha256: leaf.map(|l| l.root.clone()).unwrap_or_default(),
            not_after_unix: leaf.map_or(0, |l| unix(l.not_after())),
        });
    }
    Ok(to_status(&record, certificates, signers))
}

pub(crate) fn to_status(
    record: &TrustRecord,
    endpoints: Vec<pb::EndpointCertificate>,
    signers: Vec<SignerNote>,
) -> pb::TrustStatus {
    let (next, previous, renew_by) = match record.rotation() {
        Rotation::None => (None, None, 0),
        Rotation::Prepared { next } => (Some(next), None, 0),
        Rotation::Activated { previous, renew_by } => (None, Some(previous), unix(*renew_by)),
    };
    let der =
        |i: Option<&crate::ca::IssuerCert>| i.map(|i| i.cert.der.to_vec()).unwrap_or_default();
    pb::TrustStatus {
        stage: record.stage().as_str().to_owned(),
        roots_der: record.roots().iter().map(|r| r.der.to_vec()).collect(),
        issuer_der: record.issuer().cert.der.to_vec(),
        next_issuer_der: der(next),
        previous_issuer_der: der(previous),
        renew_by_unix: renew_by,
        endpoints,
        signers: signers
            .into_iter()
            .map(|s| pb::Signer {
                replica: s.replica,
                issuers_sha256: s.issuers,
            })
            .collect(),
    }
}

/// Default of `ca rotate activate --renew-within`.
const DEFAULT_RENEW_WITHIN: Duration = Duration::from_secs(60);
/// How often a stage retries after losing a race for the record.
const CAS_ATTEMPTS: usize = 3;
/// How long a stage waits for this replica to put the record it wrote in
/// force (the next command may reach this replica).
const APPLY_WAIT: Duration = Duration::from_secs(5);

fn rotation_status(error: RotationError) -> Status {
    match error {
        RotationError::BadRoot(_)
        | RotationError::BadIssuer(_)
        | RotationError::RenewWithin(_)
        | RotationError::Record(_) => Status::invalid_argument(error.to_string()),
        RotationError::NotPrepared { .. }
        | RotationError::NotActivated
        | RotationError::InProgress { .. }
        | RotationError::MissingKeys { .. }
        | RotationError::StillOnOldRoot { .. } => Status::failed_precondition(error.to_string()),
    }
}

/// The record as stored, and the revision to swap it at.
async fn stored(plane: &ControlPlane) -> Result<(TrustRecord, i64), Status> {
    let kv = plane
        .store
        .get(keys::TRUST)
        .await
        .map_err(store_status)?
        .ok_or_else(|| {
            Status::unavailable("the store holds no trust record yet (a replica writes one as it starts); try again")
        })?;
    let record = TrustRecord::decode(&kv.value)
        .map_err(|e| Status::internal(format!("the stored trust record: {e}")))?;
    Ok((record, kv.mod_revision))
}

/// Reads the record, takes `step`, and swaps the result in; retried when
/// another writer got there first. Then waits (bounded) for this replica
/// to put it in force, and returns the status.
async fn transition(
    plane: &ControlPlane,
    stage: &'static str,
    step: impl Fn(&TrustRecord) -> Result<Step, RotationError> + Send,
) -> Result<pb::TrustStatus, Status> {
    for _ in 0..CAS_ATTEMPTS {
        let (record, revision) = stored(plane).await?;
        let next = match step(&record).map_err(rotation_status)? {
            Step::AlreadyDone => {
                tracing::info!(stage, "root rotation: stage already done; nothing written");
                return status(plane).await;
            }
            Step::Write(next) => next,
        };
        let swapped = plane
            .store
            .put_if(keys::TRUST, revision, next.encode())
            .await
            .map_err(store_status)?;
        if !swapped {
            continue;
        }
        tracing::info!(
            stage,
            now = next.stage().as_str(),
            roots = next.roots().len(),
            issuer = %next.issuer().cert.fingerprint,
            "root rotation: trust record written"
        );
        let mut records = plane.trust.subscribe();
        let _ = tokio::time::timeout(APPLY_WAIT, records.wait_for(|r| **r == *next)).await;
        return status(plane).await;
    }
    Err(Status::aborted(format!(
        "{stage}: the trust record kept changing under this call; run it again"
    )))
}

pub(crate) async fn prepare(
    plane: &ControlPlane,
    req: pb::PrepareRotationRequest,
) -> Result<pb::TrustStatus, Status> {
    let td = plane.trust.trust_domain().to_owned();
    transition(plane, "prepare", |record| {
        rotation::prepare(
            record,
            &req.root_der,
            &req.issuer_der,
            &td,
            SystemTime::now(),
        )
    })
    .await
}

pub(crate) async fn activate(
    plane: &ControlPlane,
    req: pb::ActivateRotationRequest,
) -> Result<pb::TrustStatus, Status> {
    let within = match req.renew_within_seconds {
        0 => DEFAULT_RENEW_WITHIN,
        s => Duration::from_secs(u64::from(s)),
    };
    // Every live replica must hold the next issuer's key.
    let replicas: Vec<(String, Vec<String>)> = signers::list(plane.store.as_ref())
        .await
        .map_err(store_status)?
        .into_iter()
        .map(|s| (s.replica, s.issuers))
        .collect();
    transition(plane, "activate", |record| {
        rotation::activate(record, within, &replicas, SystemTime::now())
    })
    .await
}

pub(crate) async fn retire(plane: &ControlPlane) -> Result<pb::TrustStatus, Status> {
    let current = status(plane).await?;
    let endpoints: Vec<(String, String)> = current
        .endpoints
        .iter()
        .map(|e| (e.identity.clone(), e.root_sha256.clone()))
        .collect();
    transition(plane, "retire", |record| {
        rotation::retire(record, &endpoints)
    })
    .await
}
