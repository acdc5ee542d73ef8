//! One [`Balancer`] and one [`RetryBudget`] per service the app calls,
//! made on a connection's first use of the service and kept in step with
//! the mesh state: a config change updates only the balancers whose
//! service's endpoints changed.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bulkhead_proto::model::Endpoint;

use super::retry::RetryBudget;
use crate::balance::{Balancer, BalancerConfig, EndpointStatus};
use crate::state::{MeshState, ServiceKey};

/// What connections to one service share.
#[derive(Clone)]
pub(crate) struct ServiceRoute {
    pub(crate) balancer: Arc<Balancer>,
    pub(crate) budget: Arc<RetryBudget>,
}

struct Entry {
    route: ServiceRoute,
    /// The endpoint set last given to the balancer (compared by pointer).
    applied: Arc<BTreeMap<SocketAddr, Arc<Endpoint>>>,
}

/// Looked up once per connection, never per request.
#[derive(Default)]
pub(crate) struct Balancers {
    map: Mutex<HashMap<ServiceKey, Entry>>,
}

fn endpoints_of(state: &MeshState, key: &ServiceKey) -> Arc<BTreeMap<SocketAddr, Arc<Endpoint>>> {
    state
        .view(key)
        .map(|v| Arc::clone(&v.endpoints))
        .unwrap_or_default()
}

fn list(endpoints: &BTreeMap<SocketAddr, Arc<Endpoint>>) -> Vec<Endpoint> {
    endpoints.values().map(|e| e.as_ref().clone()).collect()
}

impl Balancers {
    pub(crate) fn get(&self, key: &ServiceKey, state: &MeshState) -> ServiceRoute {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = map.get(key) {
            return entry.route.clone();
        }
        let applied = endpoints_of(state, key);
        let balancer = Arc::new(Balancer::new(key.1.clone(), BalancerConfig::default()));
        balancer.update(list(&applied));
        let route = ServiceRoute {
            balancer,
            budget: Arc::new(RetryBudget::default()),
        };
        map.insert(
            key.clone(),
            Entry {
                route: route.clone(),
                applied,
            },
        );
        route
    }

    /// Every balancer's endpoints with what it has learnt of them (latency,
    /// in flight, ejection), for `/config`.
    pub(crate) fn snapshot(&self) -> Vec<(ServiceKey, Vec<EndpointStatus>)> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = map
            .iter()
            .map(|(key, entry)| (key.clone(), entry.route.balancer.snapshot()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Gives each balancer whose service's endpoints changed its new set
    /// (endpoints that stay keep their statistics). Returns the endpoint
    /// addresses that left, for the pool to close.
    pub(crate) fn refresh(&self, state: &MeshState) -> Vec<SocketAddr> {
        let mut gone = Vec::new();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        for (key, entry) in map.iter_mut() {
            let now = endpoints_of(state, key);
            if Arc::ptr_eq(&now, &entry.applied) || (now.is_empty() && entry.applied.is_empty()) {
                continue;
            }
            gone.extend(entry.applied.keys().filter(|a| !now.contains_key(a)));
            entry.route.balancer.update(list(&now));
            entry.applied = now;
        }
        gone
    }
}
