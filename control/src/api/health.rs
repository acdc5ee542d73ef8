//! The admin API's `GetHealth`: what `bulkheadctl check` judges, as the
//! answering replica sees it — its name and clock, the live replicas, each
//! store member, the webhook's certificate, and the sidecars watching it.
//! The judging (ok, warn, fail) is the CLI's: the replica reports facts.

use std::time::{Duration, UNIX_EPOCH};

use bulkhead_proto::pb;
use bulkhead_tls::CertSlot;
use tonic::Status;

use super::{ControlPlane, now_unix_ms, store_status};
use crate::ca::Cert;
use crate::keys;
use crate::trust::signers;

/// How long sidecars get to be sent a change published just before the
/// call, before they count as on an old config.
const WATCHERS_SETTLE: Duration = Duration::from_secs(1);

/// The admission webhook a replica serves: its certificate as served now.
#[derive(Clone, Debug)]
pub struct WebhookServing {
    pub slot: CertSlot,
    /// Renewed by the replica itself (else read from files).
    pub self_managed: bool,
}

fn unix(t: std::time::SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn webhook(plane: &ControlPlane) -> pb::WebhookHealth {
    let mut health = pb::WebhookHealth {
        kubernetes: plane.k8s.is_some(),
        ..Default::default()
    };
    let Some(serving) = &plane.webhook else {
        return health;
    };
    health.served = true;
    health.self_managed = serving.self_managed;
    let leaf = serving
        .slot
        .get()
        .and_then(|key| key.cert.first().cloned())
        .and_then(|der| Cert::parse(der, "webhook certificate").ok());
    if let Some(leaf) = leaf {
        health.not_before_unix = unix(leaf.not_before);
        health.not_after_unix = unix(leaf.not_after);
    }
    health
}

pub(crate) async fn health(plane: &ControlPlane) -> Result<pb::Health, Status> {
    let store = plane.store.as_ref();
    let members = store.members().await.map_err(store_status)?;
    let mut replicas: Vec<String> = signers::list(store)
        .await
        .map_err(store_status)?
        .into_iter()
        .map(|s| s.replica)
        .collect();
    replicas.sort();
    let (endpoints, _) = store.list(keys::ENDPOINTS).await.map_err(store_status)?;
    let watchers = plane.hub.watchers().settled(WATCHERS_SETTLE).await;
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    Ok(pb::Health {
        replica: plane.replica.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        replicas,
        store_members: members
            .into_iter()
            .map(|m| {
                let healthy = m.state.is_ok();
                pb::StoreMember {
                    name: m.name,
                    url: m.url,
                    healthy,
                    detail: m.state.unwrap_or_else(|e| e),
                }
            })
            .collect(),
        webhook: Some(webhook(plane)),
        watchers: count(watchers.connected),
        watchers_behind: count(watchers.behind),
        registered_endpoints: count(endpoints.len()),
        // Last, so that the time is as close to the answer as it can be.
        now_unix_ms: now_unix_ms(),
    })
}
