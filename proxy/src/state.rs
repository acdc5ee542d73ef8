//! The sidecar's view of the mesh, built from the control plane's Watch
//! stream, and the indexes the data path reads it through.
//!
//! A [`MeshState`] is immutable once published ([`StateCell`]); updates
//! make a new one and swap it in. The request path reads it without a lock
//! and without building a key: everything it asks for is looked up in a
//! map keyed by what the connection already holds.
//!
//! - [`ServiceView`], per service (`namespace`, `name`): its `Service`, its
//!   TrafficSplit, the AllowLists targeting it and its endpoints. An update
//!   rebuilds only the views of the services it touched; the others are the
//!   same `Arc`s as before, so consumers (balancers, the pool) can skip them
//!   by pointer.
//! - by address: Service VIPs and endpoint addresses, for capture's
//!   "which service was this connection going to".
//!
//! Everything pushed is also kept as the resource list for `/config` and
//! the snapshot in `--state-dir` (written off the serving thread, at most
//! once a second, by [`save_forever`]), from which a restarted sidecar
//! serves before the control plane answers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};
use bulkhead_proto::model::{AllowList, Egress, Endpoint, Resource, Service, TrafficSplit, Trust};
use bulkhead_proto::pb::{self, change::Item, change::Op};
use prost::Message;
use tokio::sync::watch;

/// `(namespace, name)` of a service.
pub(crate) type ServiceKey = (String, String);

/// An endpoint's key within its service: `address:inbound_port`.
pub(crate) type EndpointKey = SocketAddr;

/// A service's number, given the first time the sidecar hears of it and
/// never reused or changed (snapshots keep it): what a connection holds to
/// find its service's view per request by index, not by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ServiceId(u32);

/// Endpoint changes for one service: added or replaced (`Some`), gone (`None`).
type EndpointChanges = Vec<(EndpointKey, Option<Arc<Endpoint>>)>;

/// What the data path knows of one service.
#[derive(Clone, Debug, Default)]
pub(crate) struct ServiceView {
    pub(crate) service: Option<Arc<Service>>,
    /// The TrafficSplit for the service (the first by name, if several).
    pub(crate) split: Option<Arc<TrafficSplit>>,
    /// The AllowLists in the service's namespace targeting it.
    pub(crate) allow_lists: Arc<[AllowList]>,
    /// Its registered endpoints; replaced whole (a new `Arc`) when any
    /// of them changes.
    pub(crate) endpoints: Arc<BTreeMap<EndpointKey, Arc<Endpoint>>>,
}

impl ServiceView {
    fn is_empty(&self) -> bool {
        self.service.is_none()
            && self.split.is_none()
            && self.allow_lists.is_empty()
            && self.endpoints.is_empty()
    }
}

#[derive(Clone, Debug, Default)]
pub(crate) struct MeshState {
    pub(crate) revision: i64,
    /// Every resource pushed, by `Kind/ns/name`.
    resources: Arc<BTreeMap<String, Arc<Resource>>>,
    /// Every service ever heard of → its number; only grows.
    ids: Arc<HashMap<ServiceKey, ServiceId>>,
    /// Views by [`ServiceId`]; `None` for services no longer known.
    views: Arc<Vec<Option<Arc<ServiceView>>>>,
    /// Service VIPs → the service.
    vips: Arc<HashMap<IpAddr, ServiceKey>>,
    /// Endpoint addresses (pod IPs) → the services registered there.
    addresses: Arc<HashMap<IpAddr, Vec<ServiceKey>>>,
    /// The trust last pushed (roots, and a rotation's renewal deadline);
    /// `None` until the control plane has sent one.
    pub(crate) trust: Option<Arc<Trust>>,
    /// The services whose endpoints and splits this state holds in full
    /// (what the Watch asked for); with the directory, others have their
    /// Service resource only.
    subscribed: Subscribed,
}

/// Which services a state holds in full.
#[derive(Clone, Debug)]
pub(crate) enum Subscribed {
    All,
    Only(Arc<HashSet<ServiceKey>>),
}

impl Default for Subscribed {
    fn default() -> Self {
        Self::Only(Arc::default())
    }
}

impl Subscribed {
    pub(crate) fn contains(&self, key: &ServiceKey) -> bool {
        match self {
            Self::All => true,
            Self::Only(set) => set.contains(key),
        }
    }
}

/// Where a captured connection was going, as the mesh knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Destination {
    /// A Service VIP on one of its ports: balanced over the service.
    Vip(ServiceKey),
    /// The address of a registered endpoint serving that port: that
    /// endpoint and no other.
    Endpoint(ServiceKey, Arc<Endpoint>),
}

impl MeshState {
    pub(crate) fn view(&self, key: &ServiceKey) -> Option<&Arc<ServiceView>> {
        self.view_at(*self.ids.get(key)?)
    }

    /// The view of service `id`: an index, for the request path.
    pub(crate) fn view_at(&self, id: ServiceId) -> Option<&Arc<ServiceView>> {
        self.views.get(id.0 as usize)?.as_ref()
    }

    /// Whether this state holds `key`'s endpoints and split, so that an
    /// empty set means "none registered", not "not asked for".
    pub(crate) fn is_subscribed(&self, key: &ServiceKey) -> bool {
        self.subscribed.contains(key)
    }

    pub(crate) fn subscribed(&self) -> &Subscribed {
        &self.subscribed
    }

    /// Records what the Watch this state came from asked for.
    pub(crate) fn set_subscribed(&mut self, subscribed: Subscribed) {
        self.subscribed = subscribed;
    }

    /// Services with endpoints or a split: what a sidecar that restarts on
    /// this state subscribes to again.
    pub(crate) fn services_in_use(&self) -> impl Iterator<Item = &ServiceKey> {
        self.views()
            .filter(|(_, v)| !v.endpoints.is_empty() || v.split.is_some())
            .map(|(k, _)| k)
    }

    /// The number of a service the sidecar has heard of.
    pub(crate) fn id(&self, key: &ServiceKey) -> Option<ServiceId> {
        self.ids.get(key).copied()
    }

    /// The `Service` resource of `namespace/name` (for call sites that hold
    /// names, not a key: DNS and registration, not the request path).
    pub(crate) fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        match self
            .resources
            .get(&format!("Service/{namespace}/{name}"))?
            .as_ref()
        {
            Resource::Service(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn resources(&self) -> impl Iterator<Item = &Arc<Resource>> {
        self.resources.values()
    }

    /// One resource by its key (`Kind/namespace/name`).
    pub(crate) fn resource(&self, key: &str) -> Option<&Arc<Resource>> {
        self.resources.get(key)
    }

    /// Every known service with its view.
    pub(crate) fn views(&self) -> impl Iterator<Item = (&ServiceKey, &Arc<ServiceView>)> {
        self.ids
            .iter()
            .filter_map(|(key, id)| Some((key, self.view_at(*id)?)))
    }

    pub(crate) fn endpoints(&self) -> impl Iterator<Item = &Arc<Endpoint>> {
        self.views
            .iter()
            .flatten()
            .flat_map(|v| v.endpoints.values())
    }

    /// What a captured connection to `dst` reaches: a VIP (on a declared
    /// port) first, then a registered endpoint at that address serving
    /// that port. `None`: not a mesh destination.
    pub(crate) fn destination(&self, dst: SocketAddr) -> Option<Destination> {
        if let Some(key) = self.vips.get(&dst.ip())
            && let Some(svc) = self.view(key).and_then(|v| v.service.as_ref())
            && svc.spec.ports.iter().any(|p| p.port == dst.port())
        {
            return Some(Destination::Vip(key.clone()));
        }
        self.addresses.get(&dst.ip())?.iter().find_map(|key| {
            self.view(key)?
                .endpoints
                .values()
                .find(|e| e.address == dst.ip() && e.port(dst.port()).is_some())
                .map(|e| Destination::Endpoint(key.clone(), Arc::clone(e)))
        })
    }

    /// Applies one Watch update (a snapshot replaces everything). Bad items
    /// are skipped and reported, never trusted. Only the services the
    /// update touches get new views.
    pub(crate) fn apply(&mut self, update: &pb::WatchUpdate) -> Vec<String> {
        if update.snapshot {
            // Everything goes but the service numbers, which connections
            // hold, and what was subscribed to (the caller's to change).
            *self = Self {
                ids: Arc::clone(&self.ids),
                trust: self.trust.take(),
                subscribed: std::mem::take(&mut self.subscribed),
                ..Self::default()
            };
        }
        let mut problems = Vec::new();
        let mut touched: HashSet<ServiceKey> = HashSet::new();
        let mut endpoint_changes: HashMap<ServiceKey, EndpointChanges> = HashMap::new();
        for change in &update.changes {
            let delete = change.op == Op::Delete as i32;
            match &change.item {
                Some(Item::Resource(r)) => {
                    let key = format!("{}/{}/{}", r.kind, r.namespace, r.name);
                    let resources = Arc::make_mut(&mut self.resources);
                    if let Some(old) = resources.get(&key) {
                        touched.extend(service_of(old));
                    }
                    if delete {
                        resources.remove(&key);
                        continue;
                    }
                    match Resource::try_from(r) {
                        Ok(res) => {
                            touched.extend(service_of(&res));
                            resources.insert(key, Arc::new(res));
                        }
                        Err(e) => problems.push(format!("resource {key}: {e}")),
                    }
                }
                Some(Item::Endpoint(e)) => {
                    let service = (e.namespace.clone(), e.service.clone());
                    let key = match e.address.parse::<IpAddr>() {
                        Ok(ip) => SocketAddr::new(ip, u16::try_from(e.inbound_port).unwrap_or(0)),
                        Err(_) => {
                            problems.push(format!(
                                "endpoint {}:{}: not an IP address",
                                e.address, e.inbound_port
                            ));
                            continue;
                        }
                    };
                    let entry = if delete {
                        None
                    } else {
                        match Endpoint::try_from(e.clone()) {
                            Ok(ep) if ep.identity.is_some() => Some(Arc::new(ep)),
                            Ok(_) => {
                                problems.push(format!("endpoint {key}: no identity"));
                                continue;
                            }
                            Err(err) => {
                                problems.push(format!("endpoint {key}: {err}"));
                                continue;
                            }
                        }
                    };
                    touched.insert(service.clone());
                    endpoint_changes
                        .entry(service)
                        .or_default()
                        .push((key, entry));
                }
                Some(Item::TrustBundle(b)) if !delete => match Trust::try_from(b) {
                    // Unchanged trust keeps its Arc: followers compare by it.
                    Ok(trust) if self.trust.as_deref() == Some(&trust) => {}
                    Ok(trust) => self.trust = Some(Arc::new(trust)),
                    Err(e) => problems.push(format!("trust bundle: {e}")),
                },
                _ => {}
            }
        }
        for key in touched {
            let changes = endpoint_changes.remove(&key).unwrap_or_default();
            self.rebuild(key, changes);
        }
        self.revision = self.revision.max(update.revision);
        problems
    }

    /// Makes `key`'s view again from the resources, with `changes` applied
    /// to its endpoints, and keeps the address indexes in step.
    fn rebuild(&mut self, key: ServiceKey, changes: Vec<(EndpointKey, Option<Arc<Endpoint>>)>) {
        let old = self.view(&key).cloned().unwrap_or_default();
        let mut endpoints = Arc::clone(&old.endpoints);
        if !changes.is_empty() {
            let set = Arc::make_mut(&mut endpoints);
            for (at, entry) in changes {
                match entry {
                    Some(e) => set.insert(at, e),
                    None => set.remove(&at),
                };
            }
        }
        let (namespace, name) = (&key.0, &key.1);
        let service = match self
            .resources
            .get(&format!("Service/{namespace}/{name}"))
            .map(AsRef::as_ref)
        {
            Some(Resource::Service(s)) => Some(Arc::new(s.clone())),
            _ => None,
        };
        let split = self
            .in_namespace("TrafficSplit", namespace)
            .find_map(|r| match r {
                Resource::TrafficSplit(ts) if ts.spec.service == *name => {
                    Some(Arc::new(ts.clone()))
                }
                _ => None,
            });
        let allow_lists: Arc<[AllowList]> = self
            .in_namespace("AllowList", namespace)
            .filter_map(|r| match r {
                Resource::AllowList(al) if al.spec.target == *name => Some(al.clone()),
                _ => None,
            })
            .collect();
        let view = ServiceView {
            service,
            split,
            allow_lists,
            endpoints,
        };
        self.reindex(&key, &old, &view);
        let id = match self.ids.get(&key) {
            Some(id) => *id,
            None if view.is_empty() => return,
            None => {
                let id = ServiceId(u32::try_from(self.ids.len()).unwrap_or(u32::MAX));
                Arc::make_mut(&mut self.ids).insert(key, id);
                id
            }
        };
        let views = Arc::make_mut(&mut self.views);
        let at = id.0 as usize;
        if views.len() <= at {
            views.resize(at + 1, None);
        }
        views[at] = (!view.is_empty()).then(|| Arc::new(view));
    }

    /// The `Egress` resources of `namespace` naming `service`.
    pub(crate) fn egresses_of(&self, namespace: &str, service: &str) -> Vec<Egress> {
        self.in_namespace("Egress", namespace)
            .filter_map(|r| match r {
                Resource::Egress(e) if e.names(service) => Some(e.clone()),
                _ => None,
            })
            .collect()
    }

    fn in_namespace<'a>(
        &'a self,
        kind: &str,
        namespace: &str,
    ) -> impl Iterator<Item = &'a Resource> + 'a {
        let prefix = format!("{kind}/{namespace}/");
        self.resources
            .range(prefix.clone()..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .map(|(_, r)| r.as_ref())
    }

    fn reindex(&mut self, key: &ServiceKey, old: &ServiceView, new: &ServiceView) {
        let vip_of = |v: &ServiceView| v.service.as_ref().and_then(|s| s.spec.vip);
        if vip_of(old) != vip_of(new) {
            let vips = Arc::make_mut(&mut self.vips);
            if let Some(ip) = vip_of(old)
                && vips.get(&ip) == Some(key)
            {
                vips.remove(&ip);
            }
            if let Some(ip) = vip_of(new) {
                vips.insert(ip, key.clone());
            }
        }
        if Arc::ptr_eq(&old.endpoints, &new.endpoints) {
            return;
        }
        let ips =
            |v: &ServiceView| -> HashSet<IpAddr> { v.endpoints.keys().map(|a| a.ip()).collect() };
        let (before, after) = (ips(old), ips(new));
        let addresses = Arc::make_mut(&mut self.addresses);
        for gone in before.difference(&after) {
            if let Some(keys) = addresses.get_mut(gone) {
                keys.retain(|k| k != key);
                if keys.is_empty() {
                    addresses.remove(gone);
                }
            }
        }
        for added in after.difference(&before) {
            addresses.entry(*added).or_default().push(key.clone());
        }
    }

    /// Keeps `endpoint` under `service` although the control plane no
    /// longer lists it (see `control_client`'s resync grace).
    pub(crate) fn hold_endpoint(&mut self, service: &ServiceKey, endpoint: Arc<Endpoint>) {
        let at = SocketAddr::new(endpoint.address, endpoint.inbound_port);
        if self
            .view(service)
            .is_some_and(|v| v.endpoints.contains_key(&at))
        {
            return;
        }
        self.rebuild(service.clone(), vec![(at, Some(endpoint))]);
    }

    /// Drops a held endpoint once its grace is over.
    pub(crate) fn release_endpoint(&mut self, service: &ServiceKey, at: EndpointKey) {
        if self
            .view(service)
            .is_some_and(|v| v.endpoints.contains_key(&at))
        {
            self.rebuild(service.clone(), vec![(at, None)]);
        }
    }

    /// The whole state as one snapshot update (what is persisted).
    pub(crate) fn to_snapshot(&self) -> pb::WatchUpdate {
        let mut changes: Vec<pb::Change> = self
            .trust
            .iter()
            .map(|trust| pb::Change {
                op: Op::Upsert as i32,
                item: Some(Item::TrustBundle(pb::TrustBundle::from(trust.as_ref()))),
            })
            .collect();
        for r in self.resources.values() {
            changes.push(pb::Change {
                op: Op::Upsert as i32,
                item: Some(Item::Resource(pb::Resource::from(r.as_ref()))),
            });
        }
        for e in self.endpoints() {
            changes.push(pb::Change {
                op: Op::Upsert as i32,
                item: Some(Item::Endpoint(pb::Endpoint::from(e.as_ref()))),
            });
        }
        pb::WatchUpdate {
            revision: self.revision,
            snapshot: true,
            changes,
        }
    }
}

/// The services a resource shapes the view of.
fn service_of(resource: &Resource) -> Option<ServiceKey> {
    let (namespace, name) = match resource {
        Resource::Service(s) => (&s.metadata.namespace, &s.metadata.name),
        Resource::TrafficSplit(ts) => (&ts.metadata.namespace, &ts.spec.service),
        Resource::AllowList(al) => (&al.metadata.namespace, &al.spec.target),
        _ => return None,
    };
    Some((namespace.clone(), name.clone()))
}

/// The published state: read without a lock on the request path, swapped
/// whole by the control-plane client, and followed by whoever must act on
/// changes (balancers, the pool, the snapshot writer).
#[derive(Clone)]
pub(crate) struct StateCell {
    current: Arc<ArcSwap<MeshState>>,
    changed: Arc<watch::Sender<i64>>,
}

impl StateCell {
    pub(crate) fn new(initial: MeshState) -> Self {
        let revision = initial.revision;
        Self {
            current: Arc::new(ArcSwap::from_pointee(initial)),
            changed: Arc::new(watch::channel(revision).0),
        }
    }

    /// The current state, for a short look (no refcount traffic).
    pub(crate) fn load(&self) -> Guard<Arc<MeshState>> {
        self.current.load()
    }

    /// The current state, to keep.
    pub(crate) fn load_full(&self) -> Arc<MeshState> {
        self.current.load_full()
    }

    pub(crate) fn publish(&self, state: MeshState) {
        let revision = state.revision;
        self.current.store(Arc::new(state));
        self.changed.send_replace(revision);
    }

    /// Wakes on each publish (with the revision published).
    pub(crate) fn subscribe(&self) -> watch::Receiver<i64> {
        self.changed.subscribe()
    }
}

/// Where the last good state lives on disk.
pub(crate) fn snapshot_path(state_dir: &Path) -> PathBuf {
    state_dir.join("mesh-state.pb")
}

/// Writes the state atomically (temp file + rename).
pub(crate) fn save(state: &MeshState, state_dir: &Path) -> std::io::Result<()> {
    let path = snapshot_path(state_dir);
    let tmp = path.with_extension("pb.tmp");
    std::fs::write(&tmp, state.to_snapshot().encode_to_vec())?;
    std::fs::rename(&tmp, &path)
}

/// How long after a change the snapshot is written: changes in between are
/// written together, so a burst of pushes costs one write.
pub(crate) const SAVE_DEBOUNCE: Duration = Duration::from_secs(1);

/// Writes the published state to `state_dir` after each change (debounced
/// by [`SAVE_DEBOUNCE`]), on a blocking thread: encoding and the file system
/// never hold up the thread that serves traffic.
pub(crate) async fn save_forever(cell: StateCell, state_dir: PathBuf) {
    let mut changes = cell.subscribe();
    changes.mark_unchanged();
    while changes.changed().await.is_ok() {
        tokio::time::sleep(SAVE_DEBOUNCE).await;
        changes.mark_unchanged();
        let state = cell.load_full();
        let dir = state_dir.clone();
        match tokio::task::spawn_blocking(move || save(&state, &dir)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "could not save the config snapshot"),
            Err(error) => tracing::warn!(%error, "the config snapshot writer failed"),
        }
    }
}

/// Loads the last saved state, if any.
pub(crate) fn load(state_dir: &Path) -> Result<Option<MeshState>, String> {
    let path = snapshot_path(state_dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let update = pb::WatchUpdate::decode(bytes.as_slice())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut state = MeshState::default();
    let problems = state.apply(&update);
    if !problems.is_empty() {
        tracing::warn!(path = %path.display(), ?problems, "saved state had unusable items");
    }
    // Until the control plane answers, what was saved is all there is.
    let held: HashSet<ServiceKey> = state.views().map(|(k, _)| k.clone()).collect();
    state.subscribed = Subscribed::Only(Arc::new(held));
    Ok(Some(state))
}

#[cfg(test)]
mod tests;
