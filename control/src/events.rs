//! The mesh event stream: everything that happens in the mesh, as
//! CloudEvents 1.0 (JSON) kept in the store.
//!
//! - Written where the change is: an event goes into the SAME store
//!   transaction as the change it describes (apply, delete, register,
//!   deregister, readiness, certificate issue), so it is never lost nor
//!   invented. What has no write of its own (a refused certificate, an
//!   expired lease, what sidecars publish) is written alone ([`upkeep`]).
//! - Keyed by time, `events/<unix-ms, 13 digits>-<replica>-<n>`: a `--since`
//!   is one range read. The CloudEvent `id` is derived from the key's mod
//!   revision: `revision × 1000 + n`, n the event's place among those one
//!   transaction wrote (in key order, which is the order they were made),
//!   so it is unique and increasing mesh-wide and a repeat is
//!   recognisable; it is not stored in the value (which cannot know it)
//!   but set on read ([`number`]).
//! - Bounded: every key is on a lease of the retention (plus margin), and
//!   the replica that leads rollouts deletes what is older than the
//!   retention or beyond the count bound, oldest first, noting the newest
//!   revision it deleted in `events-horizon` in the same transaction.
//!   A consumer that asks for older events is told what it lost
//!   ([`feed`], type [`LOST`]) rather than given a silent gap.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::keys;
use crate::store::{KeyValue, LeaseId, Op, Revision, Store, StoreError};

pub(crate) mod feed;
pub(crate) mod sse;
pub(crate) mod upkeep;

/// Shortest retention `--events-retention` accepts.
pub const MIN_RETENTION: Duration = Duration::from_secs(60);

pub(crate) const PREFIX: &str = "dev.bulkhead.";
pub(crate) const ENDPOINT_REGISTERED: &str = "dev.bulkhead.endpoint.registered";
pub(crate) const ENDPOINT_DEREGISTERED: &str = "dev.bulkhead.endpoint.deregistered";
pub(crate) const ENDPOINT_EXPIRED: &str = "dev.bulkhead.endpoint.expired";
pub(crate) const ENDPOINT_READY: &str = "dev.bulkhead.endpoint.ready";
pub(crate) const ENDPOINT_UNREADY: &str = "dev.bulkhead.endpoint.unready";
pub(crate) const ENDPOINT_EJECTED: &str = "dev.bulkhead.endpoint.ejected";
pub(crate) const ENDPOINT_READMITTED: &str = "dev.bulkhead.endpoint.readmitted";
pub(crate) const CERTIFICATE_ISSUED: &str = "dev.bulkhead.certificate.issued";
pub(crate) const CERTIFICATE_RENEWED: &str = "dev.bulkhead.certificate.renewed";
pub(crate) const CERTIFICATE_REFUSED: &str = "dev.bulkhead.certificate.refused";
pub(crate) const RESOURCE_APPLIED: &str = "dev.bulkhead.resource.applied";
pub(crate) const RESOURCE_DELETED: &str = "dev.bulkhead.resource.deleted";
pub(crate) const AUTHZ_DENIED: &str = "dev.bulkhead.authz.denied";
pub(crate) const EGRESS_REFUSED: &str = "dev.bulkhead.egress.refused";
pub(crate) const ROLLOUT_STEP: &str = "dev.bulkhead.rollout.step";
/// Not stored: what a consumer is told when events it asked for are gone.
pub(crate) const LOST: &str = "dev.bulkhead.events.lost";

/// The types a sidecar may publish (`Discovery.PublishEvents`).
pub(crate) const SIDECAR_TYPES: [&str; 4] = [
    ENDPOINT_EJECTED,
    ENDPOINT_READMITTED,
    AUTHZ_DENIED,
    EGRESS_REFUSED,
];

/// A CloudEvent id as a number (see the module docs).
pub(crate) type EventId = i64;

/// Events one transaction may write (etcd allows 128 operations).
const IDS_PER_REVISION: i64 = 1000;

/// The id of the `n`th event written at `revision`.
pub(crate) fn event_id(revision: Revision, n: usize) -> EventId {
    revision.saturating_mul(IDS_PER_REVISION).saturating_add(
        i64::try_from(n)
            .unwrap_or(i64::MAX)
            .min(IDS_PER_REVISION - 1),
    )
}

/// The last id an event written at `revision` can have.
pub(crate) fn last_id_of(revision: Revision) -> EventId {
    event_id(revision, usize::MAX)
}

/// Stored events with their ids: sorted by (revision, key), numbered
/// within each revision.
pub(crate) fn number(mut kvs: Vec<&KeyValue>) -> Vec<(EventId, &KeyValue)> {
    kvs.sort_by(|a, b| (a.mod_revision, &a.key).cmp(&(b.mod_revision, &b.key)));
    let mut out = Vec::with_capacity(kvs.len());
    let mut n = 0;
    let mut last = None;
    for kv in kvs {
        n = if last == Some(kv.mod_revision) {
            n + 1
        } else {
            0
        };
        last = Some(kv.mod_revision);
        out.push((event_id(kv.mod_revision, n), kv));
    }
    out
}

/// Retention of the event stream (validated at the edge).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventSettings {
    /// How long events are kept (`--events-retention`).
    pub retention: Duration,
    /// Most events kept (`--events-max`).
    pub max: u64,
}

impl Default for EventSettings {
    fn default() -> Self {
        // A day and then some: "what happened yesterday" still answers.
        Self {
            retention: Duration::from_secs(26 * 3600),
            max: 100_000,
        }
    }
}

/// One CloudEvent 1.0, as stored (without `id`) and as delivered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct CloudEvent {
    pub specversion: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subject: String,
    pub time: String,
    pub datacontenttype: String,
    /// Extension attribute: the namespace the event concerns (empty:
    /// mesh-wide), what consumers filter on.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    pub data: serde_json::Value,
}

impl CloudEvent {
    /// Parses a stored event and gives it its id.
    pub(crate) fn from_kv(kv: &KeyValue, id: EventId) -> Option<Self> {
        let mut event: Self = serde_json::from_slice(&kv.value).ok()?;
        event.id = id.to_string();
        Some(event)
    }

    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// An event about to be written.
#[derive(Clone, Debug)]
pub(crate) struct NewEvent {
    pub kind: &'static str,
    pub subject: String,
    pub namespace: String,
    pub data: serde_json::Value,
    /// When it happened (unix ms); 0: now.
    pub unix_ms: i64,
    /// Who saw it, when not this replica (a sidecar's identity).
    pub source: Option<String>,
}

impl NewEvent {
    pub(crate) fn new(
        kind: &'static str,
        namespace: &str,
        subject: impl Into<String>,
        data: serde_json::Value,
    ) -> Self {
        Self {
            kind,
            subject: subject.into(),
            namespace: namespace.to_owned(),
            data,
            unix_ms: 0,
            source: None,
        }
    }
}

pub(crate) fn rfc3339(unix_ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(unix_ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The writer of this replica's events.
pub struct Events {
    store: std::sync::Arc<dyn Store>,
    pub(crate) settings: EventSettings,
    /// This replica's name and a random suffix: keys of a restarted replica
    /// never collide with its predecessor's.
    replica: String,
    /// The CloudEvent `source` of what this replica writes.
    source: String,
    sequence: AtomicU64,
    /// One lease for many keys, granted again every quarter of the
    /// retention (as `measure` does for `stats/`).
    lease: Mutex<Option<(LeaseId, tokio::time::Instant)>>,
    pub(crate) refusals: upkeep::Refusals,
    /// What sidecars published, against their budget.
    pub(crate) publishers: upkeep::Publishers,
    /// The consumers this replica serves (WatchEvents and SSE), bounded.
    pub(crate) consumers: feed::Consumers,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("replica", &self.replica)
            .field("settings", &self.settings)
            .finish()
    }
}

impl Events {
    pub(crate) fn new(
        store: std::sync::Arc<dyn Store>,
        settings: EventSettings,
        replica: &str,
    ) -> Self {
        Self {
            store,
            settings,
            replica: format!("{replica}-{:08x}", rand::random::<u32>()),
            source: format!("/bulkhead-control/{replica}"),
            sequence: AtomicU64::new(0),
            lease: Mutex::new(None),
            refusals: upkeep::Refusals::default(),
            publishers: upkeep::Publishers::default(),
            consumers: feed::Consumers::default(),
        }
    }

    async fn lease(&self) -> Result<LeaseId, StoreError> {
        let renew_every = self.settings.retention / 4;
        if let Some((id, granted)) = *self.lease.lock().unwrap_or_else(|e| e.into_inner())
            && granted.elapsed() < renew_every
        {
            return Ok(id);
        }
        // Outlives the age trim, which is the bound consumers are told of;
        // the lease only cleans up when no replica leads.
        let ttl = self.settings.retention + renew_every + Duration::from_secs(60);
        let id = self.store.grant(ttl).await?;
        *self.lease.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((id, tokio::time::Instant::now()));
        Ok(id)
    }

    /// Forgets the lease after a write failed on it (it was revoked or the
    /// store lost it): the next event gets a new one.
    pub(crate) fn lease_failed(&self, error: &StoreError) {
        if matches!(error, StoreError::LeaseNotFound(_)) {
            *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    /// The store write of `event`, for the transaction of its change.
    pub(crate) async fn op(&self, event: NewEvent) -> Result<Op, StoreError> {
        let unix_ms = if event.unix_ms > 0 {
            event.unix_ms
        } else {
            now_ms()
        };
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        let record = CloudEvent {
            specversion: "1.0".to_owned(),
            id: String::new(),
            source: event.source.unwrap_or_else(|| self.source.clone()),
            kind: event.kind.to_owned(),
            subject: event.subject,
            time: rfc3339(unix_ms),
            datacontenttype: "application/json".to_owned(),
            namespace: event.namespace,
            data: event.data,
        };
        Ok(Op::Put {
            key: keys::event(now_ms(), &self.replica, n),
            value: record.to_json().into_bytes(),
            lease: Some(self.lease().await?),
        })
    }

    /// Writes events that have no change of their own to ride with.
    pub(crate) async fn write(&self, events: Vec<NewEvent>) -> Result<Revision, StoreError> {
        self.txn_with(Vec::new(), events).await
    }

    /// Writes `change` and the events that describe it in one transaction;
    /// a lease of ours that is gone is replaced once.
    pub(crate) async fn txn_with(
        &self,
        change: Vec<Op>,
        events: Vec<NewEvent>,
    ) -> Result<Revision, StoreError> {
        let mut retried = false;
        loop {
            let mut ops = change.clone();
            ops.extend(self.ops(&events).await?);
            match self.store.txn(ops).await {
                Err(error) if !retried && self.lost_our_lease(&error) => retried = true,
                other => return other,
            }
        }
    }

    /// Writes `events` only if `key` does not exist, creating it in the same
    /// transaction (empty, on the events' lease, so it lives as long as
    /// they do): `Ok(false)` when it existed and nothing was written. How
    /// replicas that all see one change write its event once.
    pub(crate) async fn create_with(
        &self,
        key: &str,
        events: Vec<NewEvent>,
    ) -> Result<bool, StoreError> {
        let mut retried = false;
        loop {
            let mut ops = vec![Op::Put {
                key: key.to_owned(),
                value: Vec::new(),
                lease: Some(self.lease().await?),
            }];
            ops.extend(self.ops(&events).await?);
            match self.store.txn_if(key, 0, ops).await {
                Err(error) if !retried && self.lost_our_lease(&error) => retried = true,
                other => return other,
            }
        }
    }

    async fn ops(&self, events: &[NewEvent]) -> Result<Vec<Op>, StoreError> {
        let mut ops = Vec::with_capacity(events.len());
        for event in events {
            ops.push(self.op(event.clone()).await?);
        }
        Ok(ops)
    }

    /// Whether `error` says the lease we write events on is gone (then
    /// forgotten, so the next write gets a new one): worth one more try.
    fn lost_our_lease(&self, error: &StoreError) -> bool {
        match error {
            StoreError::LeaseNotFound(id) if self.held_lease() == Some(*id) => {
                self.lease_failed(error);
                true
            }
            _ => false,
        }
    }

    fn held_lease(&self) -> Option<LeaseId> {
        self.lease
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|(id, _)| id)
    }
}

/// The newest events deleted by retention: consumers that ask for older
/// ones are told they lost them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Horizon {
    /// The highest revision of a deleted event.
    pub revision: Revision,
    /// The latest time (unix ms, from its key) of a deleted event.
    pub unix_ms: i64,
}

impl Horizon {
    pub(crate) async fn read(store: &dyn Store) -> Result<Self, StoreError> {
        Ok(store
            .get(keys::EVENTS_HORIZON)
            .await?
            .and_then(|kv| serde_json::from_slice(&kv.value).ok())
            .unwrap_or_default())
    }
}

/// Whether an event of type `kind` passes the `filters` (none: all).
/// A filter is a full type or what follows `dev.bulkhead.` up to a dot:
/// `endpoint` and `endpoint.expired` both match
/// `dev.bulkhead.endpoint.expired`; `end` does not.
pub(crate) fn type_matches(filters: &[String], kind: &str) -> bool {
    if filters.is_empty() {
        return true;
    }
    let short = kind.strip_prefix(PREFIX).unwrap_or(kind);
    filters.iter().any(|f| {
        let f = f.strip_prefix(PREFIX).unwrap_or(f);
        short == f || (short.starts_with(f) && short.as_bytes().get(f.len()) == Some(&b'.'))
    })
}

/// A memory store and its writer (an hour's retention, at most 100
/// events), and a way to write `n` events, for tests.
#[cfg(test)]
pub(crate) mod test_support {
    use std::sync::Arc;

    use super::*;

    pub(crate) fn events() -> (Arc<dyn Store>, EventSettings, Events) {
        let store: Arc<dyn Store> = Arc::new(crate::store::MemoryStore::new());
        let settings = EventSettings {
            retention: Duration::from_secs(3600),
            max: 100,
        };
        let events = Events::new(store.clone(), settings, "cp");
        (store, settings, events)
    }

    /// Writes `n` events one by one; their revisions.
    pub(crate) async fn write(events: &Events, n: usize) -> Vec<Revision> {
        let mut out = Vec::new();
        for i in 0..n {
            let e = NewEvent::new(
                RESOURCE_APPLIED,
                "shop",
                format!("s{i}"),
                serde_json::json!({}),
            );
            out.push(events.write(vec![e]).await.unwrap());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_type_filter_matches_whole_segments() {
        let f = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(type_matches(&[], ENDPOINT_EXPIRED));
        assert!(type_matches(&f(&["endpoint"]), ENDPOINT_EXPIRED));
        assert!(type_matches(&f(&["endpoint.expired"]), ENDPOINT_EXPIRED));
        assert!(type_matches(&f(&[ENDPOINT_EXPIRED]), ENDPOINT_EXPIRED));
        assert!(!type_matches(&f(&["end"]), ENDPOINT_EXPIRED));
        assert!(!type_matches(&f(&["certificate"]), ENDPOINT_EXPIRED));
    }

    #[test]
    fn times_are_rfc3339_in_utc() {
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    #[tokio::test]
    async fn an_event_is_stored_without_id_and_read_back_with_its_revision() {
        let store: std::sync::Arc<dyn Store> =
            std::sync::Arc::new(crate::store::MemoryStore::new());
        let events = Events::new(store.clone(), EventSettings::default(), "cp-0");
        let revision = events
            .write(vec![NewEvent::new(
                RESOURCE_APPLIED,
                "shop",
                "Service/shop/web",
                serde_json::json!({"by": "spiffe://td/ns/bulkhead/sa/operator"}),
            )])
            .await
            .unwrap();
        let (kvs, _) = store.list(keys::EVENTS).await.unwrap();
        assert_eq!(kvs.len(), 1);
        assert!(!String::from_utf8_lossy(&kvs[0].value).contains("\"id\""));
        let event = CloudEvent::from_kv(&kvs[0], event_id(revision, 0)).unwrap();
        assert_eq!(event.id, (revision * 1000).to_string());
        assert_eq!(event.kind, RESOURCE_APPLIED);
        assert_eq!(event.specversion, "1.0");
        assert_eq!(event.namespace, "shop");
        assert_ne!(kvs[0].lease, 0, "on the retention lease");
    }
}
