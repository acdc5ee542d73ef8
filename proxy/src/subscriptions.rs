//! What the sidecar asks the control plane to push, and how that grows on
//! demand.
//!
//! A sidecar whose app reaches the mesh only through `--upstream`s
//! subscribes to those services and nothing else. One whose app may reach
//! any service — by mesh DNS (`--dns`) or capture (`--outbound`) — subscribes
//! to the *directory* (every Service resource, no endpoints) plus the
//! services the app has actually asked for:
//!
//! - a DNS answer for a mesh name asks for its service ([`Subscriptions::want`]);
//! - a connection to a service not yet subscribed asks for it and waits, at
//!   most [`SUBSCRIBE_WAIT`], for a state that holds it ([`Subscriptions::ensure`]);
//! - a captured connection to an address no subscribed service has asks the
//!   control plane which service is there ([`Subscriptions::lookup_address`],
//!   answers cached, misses for [`NEGATIVE_TTL`]).
//!
//! The Watch is then re-opened with the wider set (`control_client`): the
//! published state stays in place meanwhile, and the new snapshot replaces
//! it. Services are never dropped (a pod's callees are few and stable);
//! past [`MAX_SUBSCRIBED`] the sidecar subscribes to every service instead.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bulkhead_proto::pb::{self, discovery_client::DiscoveryClient};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::state::{MeshState, ServiceKey, StateCell, Subscribed};

/// How long a connection to a service not yet subscribed waits for its
/// endpoints before it is served with what there is (usually: refused).
pub(crate) const SUBSCRIBE_WAIT: Duration = Duration::from_secs(3);

/// Most services subscribed by name; beyond, every service (the control
/// plane takes at most 1,024 names).
pub(crate) const MAX_SUBSCRIBED: usize = 1000;

/// How long "no service at this address" is remembered.
pub(crate) const NEGATIVE_TTL: Duration = Duration::from_secs(10);

/// Most addresses remembered as not in the mesh.
const MAX_NEGATIVE: usize = 4096;

/// Most address lookups in flight at once (more wait their turn).
const MAX_LOOKUPS: usize = 16;

/// Most services one address's answer subscribes to (the control plane
/// sends at most as many).
const MAX_SERVICES_AT_ADDRESS: usize = 16;

/// How long one address lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) struct Subscriptions {
    /// Always subscribed: the `--upstream`s' services.
    fixed: BTreeSet<ServiceKey>,
    /// Directory plus demand (DNS or capture on); else `fixed` only.
    on_demand: bool,
    own_service: String,
    /// The Gateway resource served (`bulkhead-proxy gateway`); empty for a sidecar.
    gateway: String,
    wanted: Mutex<BTreeSet<ServiceKey>>,
    wake: Notify,
    channel: OnceLock<Channel>,
    negative: Mutex<HashMap<IpAddr, Instant>>,
    lookups: Semaphore,
}

impl Subscriptions {
    /// `seed`: services to subscribe to from the start besides `fixed`
    /// (those a restored state was using).
    pub(crate) fn new(
        fixed: BTreeSet<ServiceKey>,
        on_demand: bool,
        own_service: String,
        seed: impl IntoIterator<Item = ServiceKey>,
    ) -> Self {
        let wanted = if on_demand {
            seed.into_iter().collect()
        } else {
            BTreeSet::new()
        };
        Self {
            fixed,
            on_demand,
            own_service,
            gateway: String::new(),
            wanted: Mutex::new(wanted),
            wake: Notify::new(),
            channel: OnceLock::new(),
            negative: Mutex::default(),
            lookups: Semaphore::new(MAX_LOOKUPS),
        }
    }

    /// Also asks for the Gateway resource `name` (in the workload's namespace).
    pub(crate) fn with_gateway(mut self, name: &str) -> Self {
        self.gateway = name.to_owned();
        self
    }

    /// The control plane to look addresses up on, once there is one.
    pub(crate) fn connect(&self, channel: Channel) {
        let _ = self.channel.set(channel);
    }

    /// The Watch to open now, and what a state it brings holds in full.
    pub(crate) fn request(&self) -> (pb::WatchRequest, Subscribed) {
        let wanted = self.wanted.lock().unwrap_or_else(|e| e.into_inner());
        let all: HashSet<ServiceKey> = self.fixed.iter().chain(wanted.iter()).cloned().collect();
        let (services, subscribed) = if all.len() > MAX_SUBSCRIBED {
            (vec!["*".to_owned()], Subscribed::All)
        } else {
            let mut names: Vec<String> = all
                .iter()
                .map(|(namespace, name)| format!("{name}.{namespace}"))
                .collect();
            names.sort();
            (names, Subscribed::Only(Arc::new(all)))
        };
        let request = pb::WatchRequest {
            services,
            own_service: self.own_service.clone(),
            directory: self.on_demand,
            gateway: self.gateway.clone(),
        };
        (request, subscribed)
    }

    /// Asks for `key` to be subscribed; true if that is new (the Watch
    /// will be widened). A sidecar without demand ignores it.
    pub(crate) fn want(&self, key: &ServiceKey) -> bool {
        if !self.on_demand || self.fixed.contains(key) {
            return false;
        }
        let mut wanted = self.wanted.lock().unwrap_or_else(|e| e.into_inner());
        if wanted.len() > MAX_SUBSCRIBED || !wanted.insert(key.clone()) {
            return false;
        }
        if wanted.len() == MAX_SUBSCRIBED + 1 {
            tracing::warn!(
                limit = MAX_SUBSCRIBED,
                "this app calls more services than a sidecar subscribes to by name: subscribing to all"
            );
        }
        drop(wanted);
        tracing::debug!(namespace = %key.0, service = %key.1, "subscribing on demand");
        self.wake.notify_one();
        true
    }

    /// Wakes when [`want`](Self::want) added something.
    pub(crate) async fn widened(&self) {
        self.wake.notified().await
    }

    /// Whether `subscribed` lacks something wanted since.
    pub(crate) fn wider_than(&self, subscribed: &Subscribed) -> bool {
        let Subscribed::Only(set) = subscribed else {
            return false;
        };
        let wanted = self.wanted.lock().unwrap_or_else(|e| e.into_inner());
        wanted.len() > MAX_SUBSCRIBED || wanted.iter().any(|k| !set.contains(k))
    }

    /// Makes sure the published state holds `key` in full, asking for it
    /// and waiting (at most [`SUBSCRIBE_WAIT`]) if it does not yet. False
    /// when the wait ran out (the control plane is slow or away).
    pub(crate) async fn ensure(&self, states: &StateCell, key: &ServiceKey) -> bool {
        if states.load().is_subscribed(key) {
            return true;
        }
        self.want(key);
        wait_for(states, SUBSCRIBE_WAIT, |s| s.is_subscribed(key)).await
    }

    /// The services with an endpoint at `ip`, as the control plane knows
    /// them (empty: not in the mesh, or the control plane cannot say now).
    pub(crate) async fn lookup_address(&self, ip: IpAddr) -> Vec<ServiceKey> {
        if !self.on_demand || self.known_absent(ip) {
            return Vec::new();
        }
        let Some(channel) = self.channel.get() else {
            return Vec::new();
        };
        let Ok(_turn) = self.lookups.acquire().await else {
            return Vec::new();
        };
        let request = pb::LookupAddressRequest {
            address: ip.to_string(),
        };
        let mut client = DiscoveryClient::new(channel.clone());
        let call = client.lookup_address(request);
        let services = match tokio::time::timeout(LOOKUP_TIMEOUT, call).await {
            Ok(Ok(answer)) => answer.into_inner().services,
            Ok(Err(status)) => {
                tracing::warn!(%ip, code = ?status.code(), message = status.message(), "address lookup failed");
                return Vec::new();
            }
            Err(_) => {
                tracing::warn!(%ip, timeout = ?LOOKUP_TIMEOUT, "address lookup timed out");
                return Vec::new();
            }
        };
        let keys: Vec<ServiceKey> = services
            .iter()
            .take(MAX_SERVICES_AT_ADDRESS)
            .filter_map(|s| {
                let (name, namespace) = s.split_once('.')?;
                Some((namespace.to_owned(), name.to_owned()))
            })
            .collect();
        if keys.is_empty() {
            self.remember_absent(ip);
        }
        keys
    }

    fn known_absent(&self, ip: IpAddr) -> bool {
        let negative = self.negative.lock().unwrap_or_else(|e| e.into_inner());
        negative
            .get(&ip)
            .is_some_and(|until| *until > Instant::now())
    }

    fn remember_absent(&self, ip: IpAddr) {
        let mut negative = self.negative.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if negative.len() >= MAX_NEGATIVE {
            negative.retain(|_, until| *until > now);
        }
        if negative.len() < MAX_NEGATIVE {
            negative.insert(ip, now + NEGATIVE_TTL);
        }
    }
}

/// Waits (at most `limit`) for a published state that satisfies `ready`.
async fn wait_for(states: &StateCell, limit: Duration, ready: impl Fn(&MeshState) -> bool) -> bool {
    let mut changes = states.subscribe();
    let wait = async {
        loop {
            if ready(&states.load()) {
                return;
            }
            if changes.changed().await.is_err() {
                // No more publishes: wait out the limit.
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::time::timeout(limit, wait).await.is_ok()
}

#[cfg(test)]
mod tests;
