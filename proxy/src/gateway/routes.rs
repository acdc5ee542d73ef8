//! The route table: the Gateway resource made into what a request is
//! matched against, rebuilt whenever the control plane pushes a new one.
//!
//! Matching: a route with a `host` takes only requests for that host; a
//! path prefix matches whole segments; of the routes that match, the
//! longest prefix wins, and for equal prefixes a route naming the host
//! wins over one that takes any host. No route: 404 — nothing is
//! reachable that a route does not name.

use std::sync::Arc;
use std::time::Duration;

use bulkhead_proto::model::{
    AggregateBackend, Gateway, GatewayRoute, JwtProvider, Require, Resource, RouteTarget,
};

use super::jwks::ProviderKeys;
use super::serve::Front;
use crate::outbound::Target;
use crate::state::StateCell;
use crate::subscriptions::Subscriptions;

/// What the gateway serves now; empty (every request a 404) until its
/// Gateway resource arrives.
#[derive(Default)]
pub(super) struct RouteTable {
    /// Longest prefix first; host-specific before any-host.
    routes: Vec<Route>,
    /// Every header a provider writes a claim into: removed from every
    /// outside request, whatever its route, so only a verified claim
    /// ever reaches a service under these names.
    claim_headers: Vec<http::HeaderName>,
}

pub(super) struct Route {
    pub(super) spec: GatewayRoute,
    pub(super) to: To,
    /// `None`: no token asked for or checked.
    pub(super) auth: Option<Auth>,
    /// The route in metrics: its prefix (bounded by the resource).
    pub(super) label: Arc<str>,
}

pub(super) enum To {
    Service(Target),
    Aggregate { timeout: Duration, parts: Vec<Part> },
}

/// One backend of an aggregate.
pub(super) struct Part {
    pub(super) spec: AggregateBackend,
    pub(super) target: Target,
}

pub(super) struct Auth {
    pub(super) provider: Arc<JwtProvider>,
    pub(super) keys: Arc<ProviderKeys>,
    pub(super) require: Require,
}

impl RouteTable {
    /// The route for a request to `host` (lower-case, no port) and `path`
    /// (normalized).
    pub(super) fn find(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| {
            r.spec.matches_path(path)
                && r.spec
                    .host
                    .as_deref()
                    .is_none_or(|h| host.is_some_and(|host| host == h))
        })
    }

    pub(super) fn strip_claim_headers(&self, headers: &mut http::HeaderMap) {
        for name in &self.claim_headers {
            headers.remove(name);
        }
    }

    fn build(gateway: &Gateway, front: &Front) -> Self {
        let namespace = &gateway.metadata.namespace;
        let providers: Vec<Arc<JwtProvider>> = gateway
            .spec
            .jwt
            .iter()
            .flatten()
            .cloned()
            .map(Arc::new)
            .collect();
        let mut routes: Vec<Route> = gateway
            .spec
            .routes
            .iter()
            .map(|spec| {
                let to = match &spec.target {
                    RouteTarget::Service { service, port } => {
                        To::Service(Target::gateway(service.key(namespace), *port))
                    }
                    RouteTarget::Aggregate(agg) => To::Aggregate {
                        timeout: agg.timeout(),
                        parts: agg
                            .backends
                            .iter()
                            .map(|b| Part {
                                spec: b.clone(),
                                target: Target::gateway(b.service.key(namespace), b.port),
                            })
                            .collect(),
                    },
                };
                let auth = spec.auth.as_ref().and_then(|a| {
                    let name = a.jwt.as_deref()?;
                    let provider = providers.iter().find(|p| p.name == name)?.clone();
                    let keys = front.keys.provider(&provider);
                    (a.require != Require::Never).then_some(Auth {
                        provider,
                        keys,
                        require: a.require,
                    })
                });
                Route {
                    label: Arc::from(spec.path_prefix.as_str()),
                    spec: spec.clone(),
                    to,
                    auth,
                }
            })
            .collect();
        routes.sort_by(|a, b| {
            b.spec
                .prefix()
                .len()
                .cmp(&a.spec.prefix().len())
                .then(b.spec.host.is_some().cmp(&a.spec.host.is_some()))
        });
        front.keys.retain(&providers);
        let claim_headers = providers
            .iter()
            .flat_map(|p| p.claim_to_headers.iter().flatten())
            .filter_map(|c| http::HeaderName::try_from(c.header.as_str()).ok())
            .collect();
        Self {
            routes,
            claim_headers,
        }
    }
}

/// Keeps the route table in step with the Gateway resource `name` (in
/// `namespace`), and subscribes to every service its routes name so their
/// endpoints are known before the first request.
pub(super) async fn follow(
    name: String,
    namespace: String,
    states: StateCell,
    subscriptions: Arc<Subscriptions>,
    front: Arc<Front>,
) {
    let key = Resource::key_for(bulkhead_proto::model::Kind::Gateway, &namespace, &name);
    let mut changes = states.subscribe();
    // `None` until the first config (restored or pushed) says whether the
    // resource exists.
    let mut current: Option<Option<Arc<Resource>>> = None;
    loop {
        let (found, decided) = {
            let state = states.load();
            let found = state.resource(&key).cloned();
            let decided = state.revision != 0 || found.is_some();
            (found, decided)
        };
        // Every snapshot brings the resource again: rebuild only when it
        // changed, so routes keep their subscriptions and connections.
        let changed = current.as_ref().map(|c| c.as_deref()) != Some(found.as_deref());
        if decided && changed {
            match found.as_deref() {
                Some(Resource::Gateway(gateway)) => {
                    for route in &gateway.spec.routes {
                        let services: Vec<_> = match &route.target {
                            RouteTarget::Service { service, .. } => vec![service],
                            RouteTarget::Aggregate(a) => {
                                a.backends.iter().map(|b| &b.service).collect()
                            }
                        };
                        for service in services {
                            subscriptions.want(&service.key(&namespace));
                        }
                    }
                    front
                        .routes
                        .store(Arc::new(RouteTable::build(gateway, &front)));
                    tracing::info!(
                        gateway = %name,
                        routes = gateway.spec.routes.len(),
                        "gateway routes in force"
                    );
                }
                _ => {
                    front.routes.store(Arc::new(RouteTable::default()));
                    front.keys.retain(&[]);
                    tracing::warn!(
                        gateway = %name,
                        %namespace,
                        "no Gateway resource of this name: every request is a 404 until one is applied"
                    );
                }
            }
            current = Some(found);
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}
