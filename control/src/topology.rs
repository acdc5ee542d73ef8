//! Where a node is: the zone and region of a Kubernetes Node, from its
//! `topology.kubernetes.io/zone` and `topology.kubernetes.io/region`
//! labels, read from the API server (`GET /api/v1/nodes/NAME`, RBAC: `get`
//! on nodes, nothing else). The control plane fills a registering
//! endpoint's locality from them, so a pod needs to know nothing but its
//! node's name (the downward API's `spec.nodeName`).
//!
//! Answers are cached per node for [`CACHE_TTL`] (a Node's labels change
//! rarely; a restarted control plane reads them again), at most
//! [`MAX_CACHED`] nodes. A lookup that fails leaves the locality as the
//! sidecar gave it: registration never waits on the API server for more
//! than [`LOOKUP_TIMEOUT`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::k8s_api::ApiServer;

pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";

const CACHE_TTL: Duration = Duration::from_secs(60);
const MAX_CACHED: usize = 10_000;
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);
/// A Node object is a few KiB; more is not a Node.
const MAX_NODE_BYTES: usize = 1024 * 1024;

/// A node's zone and region (empty: the label is not there).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeLocality {
    pub zone: String,
    pub region: String,
}

pub struct Topology {
    api: Arc<ApiServer>,
    cache: Mutex<HashMap<String, (Instant, NodeLocality)>>,
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topology")
            .field("api", &self.api.base())
            .finish()
    }
}

impl Topology {
    pub fn new(api: Arc<ApiServer>) -> Self {
        Self {
            api,
            cache: Mutex::default(),
        }
    }

    /// The zone and region of `node`, from its labels (cached).
    pub async fn locality(&self, node: &str) -> Result<NodeLocality, String> {
        // The name goes into a URL path: only what Kubernetes allows in a
        // Node name (a DNS subdomain) may get there.
        let valid = !node.is_empty()
            && node.len() <= 253
            && node
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid {
            return Err(format!("{node:?} is not a Kubernetes node name"));
        }
        if let Some(found) = self.cached(node) {
            return Ok(found);
        }
        let path = format!("/api/v1/nodes/{node}");
        let url = format!("{}{path}", self.api.base());
        let get = self.api.get(&path, MAX_NODE_BYTES);
        let found = match tokio::time::timeout(LOOKUP_TIMEOUT, get).await {
            Err(_) => return Err(format!("{url}: timed out after {LOOKUP_TIMEOUT:?}")),
            // No such Node: no labels to apply (remembered like a Node
            // without them).
            Ok(Err(e)) if e.status == Some(http::StatusCode::NOT_FOUND) => NodeLocality::default(),
            Ok(Err(e)) => return Err(format!("{url}: {e}")),
            Ok(Ok(body)) => {
                let node: serde_json::Value = serde_json::from_slice(&body)
                    .map_err(|e| format!("{url}: not a Node object: {e}"))?;
                let label = |name: &str| {
                    node["metadata"]["labels"][name]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned()
                };
                NodeLocality {
                    zone: label(ZONE_LABEL),
                    region: label(REGION_LABEL),
                }
            }
        };
        self.remember(node, &found);
        Ok(found)
    }

    fn cached(&self, node: &str) -> Option<NodeLocality> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let (at, found) = cache.get(node)?;
        (at.elapsed() < CACHE_TTL).then(|| found.clone())
    }

    fn remember(&self, node: &str, found: &NodeLocality) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, (at, _)| at.elapsed() < CACHE_TTL);
        }
        if cache.len() < MAX_CACHED {
            cache.insert(node.to_owned(), (Instant::now(), found.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology() -> Topology {
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let api = ApiServer::new("https://127.0.0.1:1", ca.cert.pem().as_bytes(), None).unwrap();
        Topology::new(Arc::new(api))
    }

    #[tokio::test]
    async fn names_that_are_not_node_names_never_reach_a_url() {
        let topology = topology();
        for bad in [
            "",
            "../secrets",
            "node?watch=1",
            "Node-1",
            "a/b",
            &"n".repeat(254),
        ] {
            let err = topology.locality(bad).await.unwrap_err();
            assert!(err.contains("not a Kubernetes node name"), "{bad}: {err}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn answers_are_cached_for_a_while() {
        let topology = topology();
        let zoned = NodeLocality {
            zone: "eu-1a".into(),
            region: "eu-1".into(),
        };
        topology.remember("node-1", &zoned);
        assert_eq!(topology.locality("node-1").await.unwrap(), zoned);
        tokio::time::advance(CACHE_TTL).await;
        assert!(topology.cached("node-1").is_none(), "stale after the TTL");
    }
}
