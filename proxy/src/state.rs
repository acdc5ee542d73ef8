//! The sidecar's view of the mesh, built from the control plane's Watch
//! stream: the services it calls (Service, endpoints, TrafficSplits), the
//! AllowLists that guard its own service, and the trust bundle.
//!
//! A [`MeshState`] is immutable once published; updates make a new one and
//! swap it in (readers on the request path clone an `Arc`, never lock
//! across I/O). The last good state is written to `--state-dir` so a
//! restarted sidecar serves before the control plane answers.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bulkhead_proto::model::{AllowList, Endpoint, Resource, Service, TrafficSplit};
use bulkhead_proto::pb::{self, change::Item, change::Op};
use prost::Message;

/// `(namespace, name)`.
pub type ServiceKey = (String, String);

#[derive(Clone, Debug, Default)]
pub struct MeshState {
    pub revision: i64,
    /// Every resource pushed, by `Kind/ns/name`.
    pub resources: BTreeMap<String, Arc<Resource>>,
    /// Endpoints by service, then by `address:inbound_port`.
    pub endpoints: HashMap<ServiceKey, BTreeMap<String, Arc<Endpoint>>>,
    pub bundle_der: Vec<Vec<u8>>,
}

impl MeshState {
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        match self
            .resources
            .get(&format!("Service/{namespace}/{name}"))?
            .as_ref()
        {
            Resource::Service(s) => Some(s),
            _ => None,
        }
    }

    /// The TrafficSplit for a service (the first by name, if several).
    pub fn split(&self, namespace: &str, service: &str) -> Option<&TrafficSplit> {
        let prefix = format!("TrafficSplit/{namespace}/");
        self.resources
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .find_map(|(_, r)| match r.as_ref() {
                Resource::TrafficSplit(ts) if ts.spec.service == service => Some(ts),
                _ => None,
            })
    }

    /// AllowLists in `namespace` targeting `service`.
    pub fn allow_lists(&self, namespace: &str, service: &str) -> Vec<&AllowList> {
        let prefix = format!("AllowList/{namespace}/");
        self.resources
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter_map(|(_, r)| match r.as_ref() {
                Resource::AllowList(al) if al.spec.target == service => Some(al),
                _ => None,
            })
            .collect()
    }

    pub fn endpoints_of(&self, namespace: &str, service: &str) -> Vec<Endpoint> {
        self.endpoints
            .get(&(namespace.to_owned(), service.to_owned()))
            .map(|eps| eps.values().map(|e| e.as_ref().clone()).collect())
            .unwrap_or_default()
    }

    /// Applies one Watch update (a snapshot replaces everything). Bad items
    /// are skipped and reported, never trusted.
    pub fn apply(&mut self, update: &pb::WatchUpdate) -> Vec<String> {
        if update.snapshot {
            *self = Self::default();
        }
        let mut problems = Vec::new();
        for change in &update.changes {
            let delete = change.op == Op::Delete as i32;
            match &change.item {
                Some(Item::Resource(r)) => {
                    let key = format!("{}/{}/{}", r.kind, r.namespace, r.name);
                    if delete {
                        self.resources.remove(&key);
                    } else {
                        match Resource::try_from(r) {
                            Ok(res) => {
                                self.resources.insert(key, Arc::new(res));
                            }
                            Err(e) => problems.push(format!("resource {key}: {e}")),
                        }
                    }
                }
                Some(Item::Endpoint(e)) => {
                    let service = (e.namespace.clone(), e.service.clone());
                    let key = format!("{}:{}", e.address, e.inbound_port);
                    if delete {
                        if let Some(set) = self.endpoints.get_mut(&service) {
                            set.remove(&key);
                            if set.is_empty() {
                                self.endpoints.remove(&service);
                            }
                        }
                    } else {
                        match Endpoint::try_from(e.clone()) {
                            Ok(ep) if ep.identity.is_some() => {
                                self.endpoints
                                    .entry(service)
                                    .or_default()
                                    .insert(key, Arc::new(ep));
                            }
                            Ok(_) => problems.push(format!("endpoint {key}: no identity")),
                            Err(err) => problems.push(format!("endpoint {key}: {err}")),
                        }
                    }
                }
                Some(Item::TrustBundle(b)) if !delete => self.bundle_der = b.roots_der.clone(),
                _ => {}
            }
        }
        self.revision = self.revision.max(update.revision);
        problems
    }

    /// The whole state as one snapshot update (what is persisted).
    pub fn to_snapshot(&self) -> pb::WatchUpdate {
        let mut changes = vec![pb::Change {
            op: Op::Upsert as i32,
            item: Some(Item::TrustBundle(pb::TrustBundle {
                roots_der: self.bundle_der.clone(),
            })),
        }];
        for r in self.resources.values() {
            changes.push(pb::Change {
                op: Op::Upsert as i32,
                item: Some(Item::Resource(pb::Resource::from(r.as_ref()))),
            });
        }
        for set in self.endpoints.values() {
            for e in set.values() {
                changes.push(pb::Change {
                    op: Op::Upsert as i32,
                    item: Some(Item::Endpoint(pb::Endpoint::from(e.as_ref()))),
                });
            }
        }
        pb::WatchUpdate {
            revision: self.revision,
            snapshot: true,
            changes,
        }
    }
}

/// Where the last good state lives on disk.
pub fn snapshot_path(state_dir: &Path) -> PathBuf {
    state_dir.join("mesh-state.pb")
}

/// Writes the state atomically (temp file + rename).
pub fn save(state: &MeshState, state_dir: &Path) -> std::io::Result<()> {
    let path = snapshot_path(state_dir);
    let tmp = path.with_extension("pb.tmp");
    std::fs::write(&tmp, state.to_snapshot().encode_to_vec())?;
    std::fs::rename(&tmp, &path)
}

/// Loads the last saved state, if any.
pub fn load(state_dir: &Path) -> Result<Option<MeshState>, String> {
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
    Ok(Some(state))
}
