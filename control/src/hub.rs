//! The mesh as this replica sees it: a view of every resource and endpoint,
//! and the trust record, kept current by one store watch, and fanned out to
//! subscribers (sidecar Watch streams) as deltas.
//!
//! One watch per replica, however many sidecars: subscribers never touch the
//! store. A subscriber takes a snapshot and subscribes to deltas under the
//! same lock, so it can miss nothing; one that falls behind the bounded
//! broadcast buffer is told to resync and gets a fresh snapshot instead of
//! growing a queue.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use bulkhead_proto::model::{Endpoint, Resource};
use futures::StreamExt;
use prost::Message;
use tokio::sync::{broadcast, watch};

use crate::ca::TrustRecord;
use crate::events::upkeep::Unexplained;
use crate::keys;
use crate::store::{Event, Revision, Store, StoreError};

mod watchers;

pub(crate) use watchers::Watchers;

/// How many deltas a slow subscriber may fall behind before it resyncs.
const DELTA_BUFFER: usize = 1024;
/// Batches of unexplained endpoint deletions kept for a slow reader.
const DELETION_BUFFER: usize = 256;

/// One change to the view. Deletions carry the object that was removed, so
/// subscribers can tell whether it concerned them.
#[derive(Clone, Debug)]
pub enum Change {
    Resource(Arc<Resource>),
    ResourceDeleted(Arc<Resource>),
    Endpoint(Arc<Endpoint>),
    EndpointDeleted(Arc<Endpoint>),
    /// A new trust record (roots, issuer, rotation stage): for everyone.
    Trust(Arc<TrustRecord>),
}

/// Changes that together bring the view to `revision`.
#[derive(Clone, Debug)]
pub enum Delta {
    Changes {
        revision: Revision,
        changes: Arc<Vec<Change>>,
    },
    /// The view was rebuilt from a fresh listing (history was compacted):
    /// subscribers must take a new snapshot.
    Resync,
}

/// Everything the control plane knows, at one revision.
#[derive(Debug, Default)]
pub struct View {
    pub revision: Revision,
    /// By store key (`resources/...`).
    pub resources: BTreeMap<String, Arc<Resource>>,
    /// By store key (`endpoints/...`): the ready ones only (what sidecars
    /// may be sent to); unready registrations stay in the store for
    /// operators (`ListEndpoints` with `all`).
    pub endpoints: BTreeMap<String, Arc<Endpoint>>,
    /// Endpoint addresses → the store keys of the endpoints there.
    by_address: HashMap<IpAddr, BTreeSet<String>>,
    /// The trust record, once the store holds one.
    pub trust: Option<Arc<TrustRecord>>,
}

impl View {
    /// The endpoints registered at `ip` (any port, any service).
    pub fn endpoints_at(&self, ip: IpAddr) -> impl Iterator<Item = &Arc<Endpoint>> {
        self.by_address
            .get(&ip)
            .into_iter()
            .flatten()
            .filter_map(|key| self.endpoints.get(key))
    }

    fn insert_endpoint(&mut self, key: &str, ep: Arc<Endpoint>) {
        if let Some(old) = self.endpoints.insert(key.to_owned(), ep.clone())
            && old.address != ep.address
        {
            self.unindex(old.address, key);
        }
        self.by_address
            .entry(ep.address)
            .or_default()
            .insert(key.to_owned());
    }

    fn remove_endpoint(&mut self, key: &str) -> Option<Arc<Endpoint>> {
        let old = self.endpoints.remove(key)?;
        self.unindex(old.address, key);
        Some(old)
    }

    fn unindex(&mut self, ip: IpAddr, key: &str) {
        if let Some(keys) = self.by_address.get_mut(&ip) {
            keys.remove(key);
            if keys.is_empty() {
                self.by_address.remove(&ip);
            }
        }
    }

    fn apply(&mut self, event: &Event) -> Option<Change> {
        // Every replica flushes reports every second; they concern no
        // subscriber, so they are dropped before anything is decoded or
        // looked up.
        let key = match event {
            Event::Put(kv) => kv.key.as_str(),
            Event::Delete { key, .. } => key.as_str(),
        };
        if key.starts_with(keys::STATS)
            || key.starts_with(keys::EVENTS)
            || key.starts_with(keys::EVENT_CLAIMS)
        {
            return None;
        }
        match event {
            Event::Put(kv) => {
                if kv.key.starts_with(keys::RESOURCES) {
                    let json = std::str::from_utf8(&kv.value).ok()?;
                    match Resource::from_json(json) {
                        Ok(res) => {
                            let res = Arc::new(res);
                            self.resources.insert(kv.key.clone(), res.clone());
                            Some(Change::Resource(res))
                        }
                        Err(error) => {
                            // Only the control plane writes here, after
                            // validation; a bad record means a foreign writer.
                            tracing::warn!(key = %kv.key, %error, "ignoring unparsable resource in store");
                            None
                        }
                    }
                } else if kv.key.starts_with(keys::ENDPOINTS) {
                    let decoded = bulkhead_proto::pb::Endpoint::decode(kv.value.as_slice())
                        .map_err(|e| e.to_string())
                        .and_then(|pb| Endpoint::try_from(pb).map_err(|e| e.to_string()));
                    match decoded {
                        // An endpoint whose app is not ready is, to
                        // sidecars, not there: it leaves the view (and
                        // comes back when ready) like a deregistration.
                        Ok(ep) if !ep.ready => {
                            self.remove_endpoint(&kv.key).map(Change::EndpointDeleted)
                        }
                        Ok(ep) => {
                            let ep = Arc::new(ep);
                            self.insert_endpoint(&kv.key, ep.clone());
                            Some(Change::Endpoint(ep))
                        }
                        Err(error) => {
                            tracing::warn!(key = %kv.key, %error, "ignoring unparsable endpoint in store");
                            None
                        }
                    }
                } else if kv.key == keys::TRUST {
                    match TrustRecord::decode(&kv.value) {
                        Ok(record) if self.trust.as_deref() == Some(&record) => None,
                        Ok(record) => {
                            let record = Arc::new(record);
                            self.trust = Some(record.clone());
                            Some(Change::Trust(record))
                        }
                        Err(error) => {
                            // Keep serving the last good trust; say so loudly.
                            tracing::error!(key = %kv.key, %error, "ignoring an invalid trust record in the store; the last good one stays in force");
                            None
                        }
                    }
                } else {
                    None
                }
            }
            Event::Delete { key, .. } if key == keys::TRUST => {
                tracing::error!(%key, "the trust record was deleted from the store; the last one stays in force (a restarted replica writes its files' trust again)");
                None
            }
            Event::Delete { key, .. } => {
                if let Some(res) = self.resources.remove(key) {
                    Some(Change::ResourceDeleted(res))
                } else {
                    self.remove_endpoint(key).map(Change::EndpointDeleted)
                }
            }
        }
    }
}

/// The shared view plus its delta feed.
pub struct Hub {
    view: RwLock<View>,
    deltas: broadcast::Sender<Delta>,
    synced: watch::Sender<bool>,
    /// The view's revision, for [`Hub::catch_up`].
    revision: watch::Sender<Revision>,
    /// The view's trust record, for the replica's own TLS and signing.
    trust: watch::Sender<Option<Arc<TrustRecord>>>,
    /// The subscribers, and whether each has been sent what concerns it.
    watchers: Arc<Watchers>,
    /// Endpoint deletions no event explains (lease expiries).
    unexplained: broadcast::Sender<Arc<Vec<Unexplained>>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("revision", &self.read().revision)
            .finish()
    }
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    pub fn new() -> Self {
        let (deltas, _) = broadcast::channel(DELTA_BUFFER);
        let (synced, _) = watch::channel(false);
        Self {
            view: RwLock::new(View::default()),
            deltas,
            synced,
            revision: watch::Sender::new(0),
            trust: watch::Sender::new(None),
            watchers: Arc::default(),
            unexplained: broadcast::channel(DELETION_BUFFER).0,
        }
    }

    /// The subscribers fed from this view.
    pub(crate) fn watchers(&self) -> &Arc<Watchers> {
        &self.watchers
    }

    /// The trust record as the store holds it (None until it holds one),
    /// told of every change.
    pub fn trust(&self) -> watch::Receiver<Option<Arc<TrustRecord>>> {
        self.trust.subscribe()
    }

    /// Every endpoint deletion seen from now on that no event written in
    /// the same transaction explains (a deregistration writes one; a lease
    /// expiry cannot).
    pub(crate) fn unexplained_deletions(&self) -> broadcast::Receiver<Arc<Vec<Unexplained>>> {
        self.unexplained.subscribe()
    }

    /// Read access to the current view.
    pub fn read(&self) -> RwLockReadGuard<'_, View> {
        self.view.read().unwrap_or_else(|e| e.into_inner())
    }

    /// A consistent snapshot (whatever `f` extracts) and a receiver for every
    /// delta after it.
    pub fn subscribe<T>(&self, f: impl FnOnce(&View) -> T) -> (T, broadcast::Receiver<Delta>) {
        let view = self.read();
        // Subscribing while holding the read lock: deltas are published under
        // the write lock, so none can slip between snapshot and receiver.
        let rx = self.deltas.subscribe();
        (f(&view), rx)
    }

    /// True once the first listing has been loaded.
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Waits until the first listing has been loaded.
    pub async fn wait_synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Waits until the view holds every write the store had made when this
    /// was called (at most `bound`, then goes on with a warning): what a
    /// caller wrote before asking is in what it is then sent (read your
    /// writes, across replicas too). One store read, with no keys.
    pub async fn catch_up(&self, store: &dyn Store, bound: Duration) {
        // A prefix that holds nothing: only the store's revision comes back.
        let target = match store.list(keys::SYNC_PROBE).await {
            Ok((_, revision)) => revision,
            Err(error) => {
                tracing::warn!(%error, "cannot read the store's revision; serving the view as it is");
                return;
            }
        };
        let mut rx = self.revision.subscribe();
        if tokio::time::timeout(bound, rx.wait_for(|r| *r >= target))
            .await
            .is_err()
        {
            tracing::warn!(
                target,
                have = *rx.borrow(),
                "the view did not catch up with the store in time; serving it as it is"
            );
        }
    }

    fn replace(&self, listing: Vec<crate::store::KeyValue>, revision: Revision) {
        let mut fresh = View {
            revision,
            ..View::default()
        };
        for kv in listing {
            fresh.apply(&Event::Put(kv));
        }
        let mut view = self.view.write().unwrap_or_else(|e| e.into_inner());
        let had_state = self.is_synced();
        *view = fresh;
        self.publish_trust(view.trust.clone());
        self.watchers.published(revision);
        if had_state {
            let _ = self.deltas.send(Delta::Resync);
        }
        self.synced.send_replace(true);
        self.revision.send_replace(revision);
    }

    fn apply(&self, revision: Revision, events: &[Event]) {
        self.note_unexplained(events);
        let mut view = self.view.write().unwrap_or_else(|e| e.into_inner());
        let changes: Vec<Change> = events.iter().filter_map(|e| view.apply(e)).collect();
        view.revision = view.revision.max(revision);
        if changes.iter().any(|c| matches!(c, Change::Trust(_))) {
            self.publish_trust(view.trust.clone());
        }
        if !changes.is_empty() {
            self.watchers.published(view.revision);
            let _ = self.deltas.send(Delta::Changes {
                revision: view.revision,
                changes: Arc::new(changes),
            });
        }
        // After the deltas: a Watch that waited for this revision
        // subscribes with the view already holding it.
        self.revision.send_replace(view.revision);
    }

    fn note_unexplained(&self, events: &[Event]) {
        if self.unexplained.receiver_count() == 0 {
            return;
        }
        let explained: BTreeSet<Revision> = events
            .iter()
            .filter_map(|e| match e {
                Event::Put(kv) if kv.key.starts_with(keys::EVENTS) => Some(kv.mod_revision),
                _ => None,
            })
            .collect();
        let gone: Vec<Unexplained> = events
            .iter()
            .filter_map(|e| match e {
                Event::Delete { key, revision }
                    if key.starts_with(keys::ENDPOINTS) && !explained.contains(revision) =>
                {
                    Some(Unexplained {
                        key: key.clone(),
                        revision: *revision,
                    })
                }
                _ => None,
            })
            .collect();
        if !gone.is_empty() {
            let _ = self.unexplained.send(Arc::new(gone));
        }
    }

    fn publish_trust(&self, record: Option<Arc<TrustRecord>>) {
        self.trust.send_if_modified(|current| {
            let changed = *current != record;
            *current = record;
            changed
        });
    }

    /// Keeps the view current for as long as the process runs: list, then
    /// watch from the listing's revision; relist when history is compacted
    /// or the store cannot be listed yet (retrying with backoff).
    pub async fn run(self: Arc<Self>, store: Arc<dyn Store>) {
        let mut backoff =
            bulkhead_process::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            let (listing, revision) = match store.list("").await {
                Ok(l) => l,
                Err(error) => {
                    let retry_in = backoff.next_delay();
                    tracing::warn!(%error, ?retry_in, "cannot list the store; retrying");
                    tokio::time::sleep(retry_in).await;
                    continue;
                }
            };
            backoff.reset();
            tracing::info!(revision, keys = listing.len(), "loaded mesh state");
            self.replace(listing, revision);
            let mut stream = store.watch("", revision + 1);
            while let Some(item) = stream.next().await {
                match item {
                    Ok(batch) => self.apply(batch.revision, &batch.events),
                    Err(StoreError::Compacted {
                        requested,
                        compacted,
                    }) => {
                        tracing::warn!(requested, compacted, "watch history compacted; relisting");
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "watch failed; relisting");
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bulkhead_proto::model::{Locality, Protocol, ServicePort};

    use super::*;
    use crate::store::KeyValue;

    fn put(key: &str, service: &str, ip: &str) -> Event {
        put_ready(key, service, ip, true)
    }

    fn put_ready(key: &str, service: &str, ip: &str, ready: bool) -> Event {
        let ep = Endpoint {
            namespace: "shop".into(),
            service: service.into(),
            version: "1.0.0".into(),
            address: ip.parse().unwrap(),
            inbound_port: 4143,
            ports: vec![ServicePort {
                port: 8080,
                protocol: Protocol::Http,
            }],
            locality: Locality::default(),
            identity: None,
            registered_unix_ms: 0,
            ready,
        };
        Event::Put(KeyValue {
            key: key.into(),
            value: bulkhead_proto::pb::Endpoint::from(&ep).encode_to_vec(),
            create_revision: 1,
            mod_revision: 1,
            lease: 0,
        })
    }

    fn trust_put(value: Vec<u8>) -> Event {
        Event::Put(KeyValue {
            key: keys::TRUST.into(),
            value,
            create_revision: 1,
            mod_revision: 1,
            lease: 0,
        })
    }

    #[tokio::test]
    async fn a_trust_record_reaches_subscribers_and_a_bad_one_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let files = crate::ca::init_ca("example.org", &tmp.path().join("ca")).unwrap();
        let record = crate::ca::test_support::trust_record(&files);
        let hub = Hub::new();
        let mut trust = hub.trust();
        let (_, mut deltas) = hub.subscribe(|_| ());
        hub.apply(2, &[trust_put(record.encode())]);
        assert!(trust.has_changed().unwrap());
        assert_eq!(trust.borrow_and_update().as_deref(), Some(&record));
        assert!(matches!(
            deltas.try_recv(),
            Ok(Delta::Changes { changes, .. }) if matches!(changes[0], Change::Trust(_))
        ));
        // The same record again, a damaged one, or a deletion: no change.
        hub.apply(3, &[trust_put(record.encode())]);
        hub.apply(4, &[trust_put(b"{}".to_vec())]);
        hub.apply(
            5,
            &[Event::Delete {
                key: keys::TRUST.into(),
                revision: 5,
            }],
        );
        assert!(!trust.has_changed().unwrap());
        assert!(deltas.try_recv().is_err());
        assert_eq!(hub.read().trust.as_deref(), Some(&record));
    }

    fn at(view: &View, ip: &str) -> Vec<String> {
        let mut services: Vec<String> = view
            .endpoints_at(ip.parse().unwrap())
            .map(|e| e.service.clone())
            .collect();
        services.sort();
        services
    }

    #[test]
    fn endpoints_are_indexed_by_address_through_moves_and_deletes() {
        let mut view = View::default();
        let (web, api) = (
            "endpoints/shop/web/198.18.0.1:4143",
            "endpoints/shop/api/198.18.0.1:4143",
        );
        view.apply(&put(web, "web", "198.18.0.1"));
        view.apply(&put(api, "api", "198.18.0.1"));
        assert_eq!(at(&view, "198.18.0.1"), ["api", "web"]);
        // The same key re-put with another address moves in the index.
        view.apply(&put(web, "web", "198.18.0.2"));
        assert_eq!(at(&view, "198.18.0.1"), ["api"]);
        assert_eq!(at(&view, "198.18.0.2"), ["web"]);
        view.apply(&Event::Delete {
            key: api.into(),
            revision: 2,
        });
        assert!(at(&view, "198.18.0.1").is_empty());
        assert!(!view.by_address.contains_key(&"198.18.0.1".parse().unwrap()));
        assert_eq!(at(&view, "198.18.0.2"), ["web"]);
    }

    #[test]
    fn an_unready_endpoint_leaves_the_view_and_returns_when_ready() {
        let mut view = View::default();
        let web = "endpoints/shop/web/198.18.0.1:4143";
        // Registered before its app is ready: not there for sidecars.
        assert!(
            view.apply(&put_ready(web, "web", "198.18.0.1", false))
                .is_none()
        );
        assert!(view.endpoints.is_empty());
        assert!(matches!(
            view.apply(&put(web, "web", "198.18.0.1")),
            Some(Change::Endpoint(_))
        ));
        assert_eq!(at(&view, "198.18.0.1"), ["web"]);
        // Unready again: a deletion to subscribers, gone from the index.
        assert!(matches!(
            view.apply(&put_ready(web, "web", "198.18.0.1", false)),
            Some(Change::EndpointDeleted(ep)) if ep.service == "web"
        ));
        assert!(view.endpoints.is_empty());
        assert!(at(&view, "198.18.0.1").is_empty());
    }

    #[test]
    fn stats_flushes_change_nothing_and_reach_no_subscriber() {
        let hub = Hub::new();
        let (_, mut deltas) = hub.subscribe(|_| ());
        let flush = keys::stats(1_700_000_000_000, "cp-0-0000abcd");
        hub.apply(
            2,
            &[Event::Put(KeyValue {
                key: flush.clone(),
                value: b"{\"series\":[]}".to_vec(),
                create_revision: 2,
                mod_revision: 2,
                lease: 7,
            })],
        );
        hub.apply(
            3,
            &[Event::Delete {
                key: flush,
                revision: 3,
            }],
        );
        assert!(deltas.try_recv().is_err(), "no delta for stats keys");
        let view = hub.read();
        assert_eq!(view.revision, 3, "the view still follows the revision");
        assert!(view.resources.is_empty() && view.endpoints.is_empty());
    }
}
