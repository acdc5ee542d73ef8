//! The admin API's trust calls: the trust in force and what rests on it
//! (`bulkheadctl ca status`).

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use bulkhead_proto::pb;
use prost::Message;
use tonic::Status;

use super::{ControlPlane, store_status};
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
