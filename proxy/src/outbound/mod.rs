//! Outbound: an app's call leaving the pod, however it was addressed — a
//! `--upstream` listener, a listener mesh DNS made ([`MeshListeners`]), or
//! a captured connection once capture has found its service.
//!
//! Per connection ([`connection`]): find the service's declared port and
//! protocol, then [`tcp`] (pick an endpoint, dial its sidecar, copy bytes)
//! or [`http`] (serve the app HTTP/1.1 or HTTP/2 and route every request
//! on its own). Each service the app calls has one balancer and one retry
//! budget ([`balancers`]); when a request may be sent again is [`retry`]'s.

mod balancers;
mod http;
mod mesh_names;
mod retry;
mod tcp;

pub(crate) use self::http::{SendBody, serve_client};
pub(crate) use self::retry::retryable;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use bulkhead_proto::model::{Endpoint, Locality, Protocol};
use tokio::net::TcpStream;

pub(crate) use self::balancers::Balancers;
pub(crate) use self::mesh_names::MeshListeners;
use crate::accept::{self, Listener};
use crate::drain::Drain;
use crate::limits::Limits;
use crate::pool::Pool;
use crate::state::{MeshState, ServiceKey, StateCell};
use crate::subscriptions::Subscriptions;

/// What the outbound side shares across listeners and connections.
pub(crate) struct Outbound {
    /// This workload's own SPIFFE ID, hashed once: what splits sticky by
    /// caller key their choice on.
    pub(crate) caller: crate::route::StickyKey,
    /// This sidecar's locality, as the flags say until the control plane
    /// records another (zone and region from the Node's labels).
    pub(crate) locality: Arc<ArcSwap<Locality>>,
    pub(crate) states: StateCell,
    /// What the state holds, grown as the app asks for more.
    pub(crate) subscriptions: Arc<Subscriptions>,
    pub(crate) pool: Pool,
    pub(crate) balancers: Balancers,
    pub(crate) request_timeout: Duration,
    /// Opaque TCP streams idle this long either way are closed.
    pub(crate) tcp_idle_timeout: Duration,
    pub(crate) limits: Limits,
}

/// Where one listener's (or one captured connection's) calls go: a service
/// and, when the caller named one, its declared port.
pub(crate) struct Target {
    /// The listener's name in metrics: `outbound` or `capture`.
    listener: &'static str,
    key: ServiceKey,
    port: Option<u16>,
    /// The one endpoint (`address:inbound-port`) a caller that dialled a
    /// pod address reaches: never balanced, never moved to a sibling.
    pin: Option<SocketAddr>,
    /// Connections on one listener share their route.
    routes: http::RouteCache,
    /// Set once the state holds the service in full (never undone: the
    /// subscription only grows).
    subscribed: AtomicBool,
}

impl Target {
    /// `key` (on `port`, or its only port) from an app-facing listener.
    pub(crate) fn new(key: ServiceKey, port: Option<u16>) -> Self {
        Self {
            listener: "outbound",
            key,
            port,
            pin: None,
            routes: http::RouteCache::default(),
            subscribed: AtomicBool::new(false),
        }
    }

    /// `endpoint` of `key` only, on `port`: what a caller that dialled the
    /// endpoint's own address (a pod IP) reaches.
    pub(crate) fn pinned(key: ServiceKey, port: u16, endpoint: &Endpoint) -> Self {
        Self {
            pin: Some(SocketAddr::new(endpoint.address, endpoint.inbound_port)),
            ..Self::new(key, Some(port))
        }
    }

    /// `key` (on `port`, or its only port) as a gateway route reaches it.
    pub(crate) fn gateway(key: ServiceKey, port: Option<u16>) -> Self {
        Self {
            listener: "gateway",
            ..Self::new(key, port)
        }
    }

    /// The same target, reached through the capture listener.
    pub(crate) fn captured(self) -> Self {
        Self {
            listener: "capture",
            ..self
        }
    }

    /// A service reached by DNS, capture or a gateway route may not be
    /// subscribed yet: wait (bounded) for its endpoints rather than refuse.
    async fn ensure_subscribed(&self, outbound: &Outbound) {
        if !self.subscribed.load(Ordering::Relaxed)
            && outbound
                .subscriptions
                .ensure(&outbound.states, &self.key)
                .await
        {
            self.subscribed.store(true, Ordering::Relaxed);
        }
    }

    /// The declared port and its protocol, from the Service.
    fn resolve(&self, state: &MeshState) -> Result<(u16, Protocol), String> {
        let (namespace, name) = &self.key;
        let svc = state
            .view(&self.key)
            .and_then(|v| v.service.as_ref())
            .ok_or_else(|| format!("no Service {namespace}/{name} known yet"))?;
        let ports = &svc.spec.ports;
        match self.port {
            Some(p) => ports
                .iter()
                .find(|sp| sp.port == p)
                .map(|sp| (sp.port, sp.protocol))
                .ok_or_else(|| format!("Service {namespace}/{name} declares no port {p}")),
            None if ports.len() == 1 => Ok((ports[0].port, ports[0].protocol)),
            None => Err(format!(
                "Service {namespace}/{name} has several ports: name one as {name}:PORT"
            )),
        }
    }
}

/// Serves one app-facing listener (an `--upstream`, or one mesh DNS made)
/// until the sidecar drains.
pub(crate) async fn serve(
    listener: Listener,
    target: Target,
    outbound: Arc<Outbound>,
    drain: Drain,
) {
    let target = Arc::new(target);
    accept::serve(listener, Some(drain.clone()), move |tcp, _| {
        connection(tcp, target.clone(), outbound.clone(), drain.clone())
    })
    .await;
}

/// One app connection to `target`.
pub(crate) async fn connection(
    tcp: TcpStream,
    target: Arc<Target>,
    outbound: Arc<Outbound>,
    drain: Drain,
) {
    target.ensure_subscribed(&outbound).await;
    // The `reason` label says which step refused: no such Service (or port),
    // or a route that cannot be built for it.
    let resolved = {
        let state = outbound.states.load();
        match target.resolve(&state) {
            Err(why) => Err(("unknown-service", why)),
            Ok((port, Protocol::Tcp)) => Ok((port, None)),
            Ok((port, _)) => target
                .routes
                .get(
                    target.listener,
                    &target.key,
                    port,
                    target.pin,
                    &outbound,
                    &state,
                )
                .map(|route| (port, Some(route)))
                .map_err(|why| ("bad-target", why)),
        }
    };
    match resolved {
        Ok((port, None)) => tcp::stream(tcp, &target.key, port, target.pin, &outbound).await,
        Ok((_, Some(route))) => http::serve(tcp, route, outbound, drain).await,
        Err((reason, why)) => {
            metrics::counter!("bulkhead_mesh_errors_total", "direction" => "outbound", "reason" => reason).increment(1);
            tracing::warn!(service = %target.key.1, reason, %why, "refusing connection");
        }
    }
}

/// One HTTP request to `target` on the mesh path, from a workload that is
/// not an app behind a listener (the gateway): subscribe if need be, find
/// the declared port, then route it as an app's request is routed (split,
/// pin, locality, retries, mTLS). A target the mesh cannot reach over HTTP
/// is answered by the mesh (503 unknown, 502 not HTTP).
pub(crate) async fn send<B: SendBody>(
    target: &Target,
    req: ::http::Request<B>,
    outbound: &Outbound,
) -> ::http::Response<crate::http::Body> {
    target.ensure_subscribed(outbound).await;
    let route = {
        let state = outbound.states.load();
        match target.resolve(&state) {
            Err(why) => Err((
                ::http::StatusCode::SERVICE_UNAVAILABLE,
                "unknown-service",
                why,
            )),
            Ok((_, Protocol::Tcp)) => Err((
                ::http::StatusCode::BAD_GATEWAY,
                "not-http",
                format!("{}/{} is a TCP port", target.key.0, target.key.1),
            )),
            Ok((port, _)) => target
                .routes
                .get(target.listener, &target.key, port, None, outbound, &state)
                .map_err(|why| (::http::StatusCode::BAD_GATEWAY, "bad-target", why)),
        }
    };
    match route {
        Ok(route) => self::http::request(req, &route, outbound).await,
        Err((status, reason, why)) => {
            metrics::counter!("bulkhead_mesh_errors_total", "direction" => "outbound", "reason" => reason).increment(1);
            tracing::warn!(service = %target.key.1, reason, %why, "gateway request refused");
            crate::http::mesh_response(false, status, reason, &format!("bulkhead: {why}"))
        }
    }
}
