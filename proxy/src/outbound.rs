//! Outbound: the local listeners an app calls (`--upstream NAME=ADDR`).
//!
//! Per connection: find the Service (its declared port and protocol). TCP
//! services: pick an endpoint, dial its sidecar (mTLS, exact identity),
//! copy bytes. HTTP/gRPC services: serve HTTP/1.1 and HTTP/2 to the app and
//! route every request on its own: choose a version (pin, header match,
//! weights), pick an endpoint (locality tier, P2C over peak-EWMA), send over
//! the pooled HTTP/2 connection to that sidecar; retry idempotent requests
//! within a budget; bound each request in time. Errors the mesh generates
//! carry `x-bulkhead-error`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulkhead_proto::model::{Locality, Protocol};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::balance::{Balancer, BalancerConfig, Outcome};
use crate::config::Upstream;
use crate::http::{self as h, Body};
use crate::pool::{ConnectError, Pool};
use crate::route;
use crate::state::{MeshState, ServiceKey};
use crate::telemetry::RequestMetrics;
use crate::wire::{Payload, Preface};

/// Attempts for a retryable request (the first plus retries).
const MAX_ATTEMPTS: usize = 3;

pub struct Outbound {
    pub locality: Locality,
    pub states: watch::Receiver<Arc<MeshState>>,
    pub pool: Pool,
    pub balancers: Balancers,
    pub request_timeout: Duration,
    /// Opaque TCP streams idle this long either way are closed.
    pub tcp_idle_timeout: Duration,
    pub budget: RetryBudget,
}

/// One balancer per service, kept in step with the mesh state.
#[derive(Default)]
pub struct Balancers {
    map: Mutex<HashMap<ServiceKey, Arc<Balancer>>>,
}

impl Balancers {
    pub fn get(&self, key: &ServiceKey, state: &MeshState) -> Arc<Balancer> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(key.clone())
            .or_insert_with(|| {
                let b = Arc::new(Balancer::new(key.1.clone(), BalancerConfig::default()));
                b.update(state.endpoints_of(&key.0, &key.1));
                b
            })
            .clone()
    }

    /// Pushes new endpoint sets to every balancer (stats of endpoints that
    /// stay are kept by the balancer).
    pub fn refresh(&self, state: &MeshState) {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        for ((ns, name), b) in map.iter() {
            b.update(state.endpoints_of(ns, name));
        }
    }
}

/// Retries may add at most 20 % to the request rate (plus 10 per second so
/// a quiet service can still retry): counted over a sliding 10 s window.
pub struct RetryBudget {
    window_start: Mutex<Instant>,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            window_start: Mutex::new(Instant::now()),
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        }
    }
}

impl RetryBudget {
    fn roll(&self) {
        let mut start = self.window_start.lock().unwrap_or_else(|e| e.into_inner());
        if start.elapsed() > Duration::from_secs(10) {
            *start = Instant::now();
            self.requests.store(0, Ordering::Relaxed);
            self.retries.store(0, Ordering::Relaxed);
        }
    }

    pub fn record_request(&self) {
        self.roll();
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn try_retry(&self) -> bool {
        let requests = self.requests.load(Ordering::Relaxed);
        let allowed = requests / 5 + 100;
        if self.retries.fetch_add(1, Ordering::Relaxed) < allowed {
            true
        } else {
            self.retries.fetch_sub(1, Ordering::Relaxed);
            false
        }
    }
}

/// Accepts app connections on one upstream listener until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    upstream: Upstream,
    outbound: Arc<Outbound>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let upstream = Arc::new(upstream);
    // Connections on one listener share their route.
    let routes = Arc::new(RouteCache::default());
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    tracing::warn!(%error, "outbound accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let _ = tcp.set_nodelay(true);
        let outbound = outbound.clone();
        let upstream = upstream.clone();
        let shutdown = shutdown.clone();
        let routes = routes.clone();
        tracker.spawn(async move { connection(tcp, upstream, outbound, shutdown, &routes).await });
    }
}

/// The service port and protocol an upstream addresses, from its Service.
fn target(state: &MeshState, up: &Upstream) -> Result<(u16, Protocol), String> {
    let svc = state
        .service(&up.namespace, &up.service)
        .ok_or_else(|| format!("no Service {}/{} known yet", up.namespace, up.service))?;
    match up.port {
        Some(p) => svc
            .spec
            .ports
            .iter()
            .find(|sp| sp.port == p)
            .map(|sp| (sp.port, sp.protocol))
            .ok_or_else(|| {
                format!(
                    "Service {}/{} declares no port {p}",
                    up.namespace, up.service
                )
            }),
        None if svc.spec.ports.len() == 1 => {
            Ok((svc.spec.ports[0].port, svc.spec.ports[0].protocol))
        }
        None => Err(format!(
            "Service {}/{} has several ports: name one as {}:PORT",
            up.namespace, up.service, up.service
        )),
    }
}

async fn connection(
    tcp: TcpStream,
    up: Arc<Upstream>,
    outbound: Arc<Outbound>,
    shutdown: CancellationToken,
    routes: &RouteCache,
) {
    let state = outbound.states.borrow().clone();
    let (port, protocol) = match target(&state, &up) {
        Ok(t) => t,
        Err(reason) => {
            metrics::counter!("bulkhead_mesh_errors_total", "direction" => "outbound", "reason" => "unknown-service").increment(1);
            tracing::warn!(service = %up.service, %reason, "refusing connection");
            return;
        }
    };
    if protocol == Protocol::Tcp {
        tcp_stream(tcp, &up, port, &outbound, &state).await;
        return;
    }
    let route = match routes.get(up, port, &outbound, &state) {
        Ok(r) => r,
        Err(reason) => {
            metrics::counter!("bulkhead_mesh_errors_total", "direction" => "outbound", "reason" => "bad-target").increment(1);
            tracing::warn!(%reason, "refusing connection");
            return;
        }
    };
    drop(state);
    let service = hyper::service::service_fn(move |req| {
        let outbound = outbound.clone();
        let route = route.clone();
        async move { Ok::<_, std::convert::Infallible>(request(req, &route, &outbound).await) }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(tcp), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "outbound app connection ended");
            }
        }
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

async fn tcp_stream(
    mut app: TcpStream,
    up: &Upstream,
    port: u16,
    outbound: &Outbound,
    state: &MeshState,
) {
    let key = (up.namespace.clone(), up.service.clone());
    let balancer = outbound.balancers.get(&key, state);
    let choice = route::choose_with_fallback(
        state.split(&up.namespace, &up.service),
        &http::HeaderMap::new(),
        rand::random(),
        |c| balancer.has_healthy(|e| c.accepts(&e.version)),
    )
    .unwrap_or(route::VersionChoice::Any);
    // Nothing has been sent yet, so a failed dial may try other endpoints.
    let mut tried: Vec<std::net::SocketAddr> = Vec::new();
    let (pick, identity, mut remote, started) = loop {
        let eligible = |e: &bulkhead_proto::model::Endpoint| {
            choice.accepts(&e.version) && e.port(port).is_some()
        };
        let pick = if tried.len() >= MAX_ATTEMPTS {
            None
        } else {
            balancer.pick(&outbound.locality, |e| {
                eligible(e)
                    && !tried.contains(&std::net::SocketAddr::new(e.address, e.inbound_port))
            })
        };
        let Some(pick) = pick else {
            let reason = if tried.is_empty() {
                "no-endpoints"
            } else {
                "connect-failed"
            };
            metrics::counter!("bulkhead_mesh_errors_total", "direction" => "outbound", "reason" => reason).increment(1);
            tracing::warn!(service = %up.service, reason, "no reachable endpoint; closing connection");
            return;
        };
        let ep = pick.endpoint().clone();
        let Some(identity) = ep.identity.clone() else {
            return;
        };
        let addr = std::net::SocketAddr::new(ep.address, ep.inbound_port);
        tried.push(addr);
        let started = Instant::now();
        match outbound
            .pool
            .dial(
                addr,
                &identity,
                Preface {
                    payload: Payload::Tcp,
                    port,
                },
            )
            .await
        {
            Ok(s) => break (pick, identity, s, started),
            Err(error) => {
                pick.finish(Outcome {
                    latency: started.elapsed(),
                    success: false,
                });
                tracing::warn!(%error, "cannot reach endpoint; trying another");
            }
        }
    };
    let connected = started.elapsed();
    let result = crate::wire::splice(&mut app, &mut remote, outbound.tcp_idle_timeout).await;
    let class = crate::wire::splice_result(&result);
    pick.finish(Outcome {
        latency: connected,
        // Idling out says nothing against the endpoint.
        success: class != "error",
    });
    metrics::counter!("bulkhead_tcp_connections_total", "direction" => "outbound", "service" => up.service.clone(), "peer" => identity.to_string(), "result" => class).increment(1);
}

fn retryable(req: &Request<Incoming>) -> bool {
    let idempotent = matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    ) || req.headers().contains_key("idempotency-key");
    // Only bodiless requests can be sent twice without buffering.
    idempotent && req.body().is_end_stream()
}

/// What every request on one app connection shares, worked out once per
/// connection rather than per request.
struct HttpRoute {
    up: Arc<Upstream>,
    /// The Service's declared port.
    port: u16,
    /// `service.namespace:port`: the authority the peer sidecar sees.
    authority: Authority,
    balancer: Arc<Balancer>,
    /// Metrics of answers no endpoint gave (no endpoint, timeout, bad pin).
    unattributed: RequestMetrics,
}

impl HttpRoute {
    fn new(
        up: Arc<Upstream>,
        port: u16,
        outbound: &Outbound,
        state: &MeshState,
    ) -> Result<Self, String> {
        let authority = Authority::try_from(format!("{}.{}:{port}", up.service, up.namespace))
            .map_err(|e| format!("{}.{}:{port}: {e}", up.service, up.namespace))?;
        let key = (up.namespace.clone(), up.service.clone());
        let balancer = outbound.balancers.get(&key, state);
        let unattributed = RequestMetrics::new("outbound", up.service.as_str(), "", "");
        Ok(Self {
            up,
            port,
            authority,
            balancer,
            unattributed,
        })
    }
}

/// The route of a listener's connections, made again only when the
/// Service's port changes.
#[derive(Default)]
struct RouteCache {
    last: Mutex<Option<Arc<HttpRoute>>>,
}

impl RouteCache {
    fn get(
        &self,
        up: Arc<Upstream>,
        port: u16,
        outbound: &Outbound,
        state: &MeshState,
    ) -> Result<Arc<HttpRoute>, String> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(route) = &*last
            && route.port == port
        {
            return Ok(Arc::clone(route));
        }
        let route = Arc::new(HttpRoute::new(up, port, outbound, state)?);
        *last = Some(Arc::clone(&route));
        Ok(route)
    }
}

async fn request(req: Request<Incoming>, route: &HttpRoute, outbound: &Outbound) -> Response<Body> {
    let started = Instant::now();
    let grpc = h::is_grpc(req.headers());
    outbound.budget.record_request();
    let (resp, served) = match tokio::time::timeout(
        outbound.request_timeout,
        route_request(req, route, outbound, grpc),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => {
            metrics::counter!("bulkhead_mesh_errors_total", "direction" => "outbound", "reason" => "timeout").increment(1);
            (
                h::mesh_response(
                    grpc,
                    StatusCode::GATEWAY_TIMEOUT,
                    "timeout",
                    "bulkhead: request timed out",
                ),
                None,
            )
        }
    };
    served
        .as_deref()
        .unwrap_or(&route.unattributed)
        .record(resp.status(), started.elapsed());
    resp
}

/// The response, and the metrics of the endpoint that gave it (`None`: the
/// mesh answered without one).
type Routed = (Response<Body>, Option<Arc<RequestMetrics>>);

async fn route_request(
    req: Request<Incoming>,
    route: &HttpRoute,
    outbound: &Outbound,
    grpc: bool,
) -> Routed {
    let up = &*route.up;
    let port = route.port;
    let balancer = &route.balancer;
    let state = outbound.states.borrow().clone();
    let choice = match route::choose_with_fallback(
        state.split(&up.namespace, &up.service),
        req.headers(),
        rand::random(),
        |c| balancer.has_healthy(|e| c.accepts(&e.version)),
    ) {
        Ok(c) => c,
        Err(error) => {
            return (
                h::mesh_response(
                    grpc,
                    StatusCode::BAD_REQUEST,
                    "bad-version-pin",
                    &format!("bulkhead: {error}"),
                ),
                None,
            );
        }
    };
    drop(state);
    let can_retry = retryable(&req);
    let (mut parts, body) = req.into_parts();
    h::strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(h::VERSION_PIN);
    // Built from parts: the path is shared with the app's request, the
    // authority with the connection (nothing formatted or parsed here).
    let mut target = http::uri::Parts::default();
    target.scheme = Some(Scheme::HTTP);
    target.authority = Some(route.authority.clone());
    target.path_and_query = Some(
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    let Ok(uri) = Uri::from_parts(target) else {
        return (
            h::mesh_response(
                grpc,
                StatusCode::BAD_REQUEST,
                "bad-target",
                "bulkhead: request target does not parse",
            ),
            None,
        );
    };
    parts.uri = uri;
    parts.version = http::Version::HTTP_2;
    let mut body = Some(body.boxed());
    let mut attempt = 0;
    // Endpoints this request already failed on: a retry goes elsewhere,
    // and comes back to them only when nothing else is left.
    let mut tried: Vec<std::net::SocketAddr> = Vec::new();
    loop {
        attempt += 1;
        let eligible = |e: &bulkhead_proto::model::Endpoint| {
            choice.accepts(&e.version) && e.port(port).is_some()
        };
        let fresh = balancer.pick(&outbound.locality, |e| {
            eligible(e) && !tried.contains(&std::net::SocketAddr::new(e.address, e.inbound_port))
        });
        let Some(pick) = fresh.or_else(|| balancer.pick(&outbound.locality, eligible)) else {
            metrics::counter!("bulkhead_mesh_errors_total", "direction" => "outbound", "reason" => "no-endpoints").increment(1);
            return (
                h::mesh_response(
                    grpc,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no-endpoints",
                    &format!(
                        "bulkhead: no healthy endpoint of {}/{}",
                        up.namespace, up.service
                    ),
                ),
                None,
            );
        };
        let ep = pick.endpoint();
        let Some(identity) = ep.identity.as_ref() else {
            pick.finish(Outcome {
                latency: Duration::ZERO,
                success: false,
            });
            continue;
        };
        let addr = std::net::SocketAddr::new(ep.address, ep.inbound_port);
        let served = pick.request_metrics();
        tried.push(addr);
        let sent = Instant::now();
        let result = match outbound.pool.sender(addr, identity, port).await {
            Ok(mut sender) => {
                let req_body = if can_retry {
                    h::empty()
                } else {
                    body.take().unwrap_or_else(h::empty)
                };
                sender
                    .send_request(Request::from_parts(parts.clone(), req_body))
                    .await
                    .map_err(|e| SendError::Request(e.to_string()))
            }
            Err(e) => Err(SendError::Connect(e)),
        };
        let latency = sent.elapsed();
        let retry_left = can_retry && attempt < MAX_ATTEMPTS;
        match result {
            Ok(resp) => {
                // A mesh-level failure at the peer (app unreachable) is
                // worth another endpoint; the app's own errors are not ours
                // to retry.
                let peer_mesh_error = resp.status() == StatusCode::BAD_GATEWAY
                    && resp.headers().contains_key(h::MESH_ERROR);
                pick.finish(Outcome {
                    latency,
                    success: !resp.status().is_server_error(),
                });
                if peer_mesh_error && retry_left && outbound.budget.try_retry() {
                    metrics::counter!("bulkhead_retries_total", "service" => up.service.clone())
                        .increment(1);
                    continue;
                }
                return (resp.map(|b| b.boxed()), Some(served));
            }
            Err(error) => {
                pick.finish(Outcome {
                    latency,
                    success: false,
                });
                let before_send = matches!(error, SendError::Connect(_));
                tracing::warn!(endpoint = %addr, %error, attempt, "request to endpoint failed");
                // A request that never left may always go elsewhere; one
                // that did only if it is idempotent.
                let may_retry =
                    (before_send && body.is_some() && attempt < MAX_ATTEMPTS) || retry_left;
                if may_retry && outbound.budget.try_retry() {
                    metrics::counter!("bulkhead_retries_total", "service" => up.service.clone())
                        .increment(1);
                    continue;
                }
                let reason = match &error {
                    SendError::Connect(e) => e.reason(),
                    SendError::Request(_) => "request-failed",
                };
                metrics::counter!("bulkhead_mesh_errors_total", "direction" => "outbound", "reason" => reason).increment(1);
                return (
                    h::mesh_response(
                        grpc,
                        StatusCode::BAD_GATEWAY,
                        reason,
                        &format!("bulkhead: {error}"),
                    ),
                    Some(served),
                );
            }
        }
    }
}

/// How sending to one endpoint failed.
#[derive(Debug, thiserror::Error)]
enum SendError {
    /// Nothing was sent: safe to send elsewhere.
    #[error(transparent)]
    Connect(ConnectError),
    /// Failed after sending started: the peer may have acted on it.
    #[error("request failed: {0}")]
    Request(String),
}

/// Listeners made on demand for the DNS server: each mesh service gets a
/// loopback address of its own (127.77.0.1, 127.77.0.2, ... in the order
/// names are first asked for) with a listener on each of its declared
/// ports, which route exactly as an `--upstream` would.
pub struct MeshListeners {
    outbound: Arc<Outbound>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    inner: Mutex<ListenerTable>,
}

#[derive(Default)]
struct ListenerTable {
    /// Service → its loopback address and the ports bound on it.
    services: HashMap<ServiceKey, (std::net::Ipv4Addr, std::collections::BTreeSet<u16>)>,
    next: u32,
}

/// Most services one sidecar makes listeners for (one /16 of loopback).
const MAX_DYNAMIC_SERVICES: u32 = 65_000;

impl MeshListeners {
    pub fn new(outbound: Arc<Outbound>, shutdown: CancellationToken, tracker: TaskTracker) -> Self {
        Self {
            outbound,
            shutdown,
            tracker,
            inner: Mutex::default(),
        }
    }

    /// The loopback address for `namespace/service`, binding listeners for
    /// any declared port not yet bound. `None` when the mesh has no such
    /// Service (or addresses ran out).
    pub fn lookup(&self, service: &str, namespace: &str) -> Option<std::net::IpAddr> {
        let state = self.outbound.states.borrow().clone();
        let svc = state.service(namespace, service)?;
        let key = (namespace.to_owned(), service.to_owned());
        let mut table = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let ip = match table.services.get(&key) {
            Some((ip, _)) => *ip,
            None => {
                if table.next >= MAX_DYNAMIC_SERVICES {
                    tracing::warn!(
                        service,
                        namespace,
                        "no loopback addresses left for DNS-addressed services"
                    );
                    return None;
                }
                table.next += 1;
                let n = table.next;
                let ip = std::net::Ipv4Addr::new(127, 77, (n >> 8) as u8, (n & 0xff) as u8);
                table.services.insert(key.clone(), (ip, Default::default()));
                ip
            }
        };
        let bound = &mut table.services.get_mut(&key)?.1;
        for port in svc.spec.ports.iter().map(|p| p.port) {
            if bound.contains(&port) {
                continue;
            }
            let addr = std::net::SocketAddr::from((ip, port));
            let listener = std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(TcpListener::from_std);
            match listener {
                Ok(listener) => {
                    bound.insert(port);
                    let upstream = Upstream {
                        service: service.to_owned(),
                        namespace: namespace.to_owned(),
                        port: Some(port),
                        listen: addr,
                    };
                    tracing::info!(%addr, service, namespace, "listening for a DNS-addressed service");
                    self.tracker.spawn(serve(
                        listener,
                        upstream,
                        self.outbound.clone(),
                        self.shutdown.clone(),
                        self.tracker.clone(),
                    ));
                }
                Err(error) => {
                    tracing::warn!(%addr, %error, "cannot listen for a DNS-addressed service")
                }
            }
        }
        Some(std::net::IpAddr::V4(ip))
    }
}

impl crate::dns::MeshNames for MeshListeners {
    fn lookup(&self, service: &str, namespace: &str) -> Option<std::net::IpAddr> {
        MeshListeners::lookup(self, service, namespace)
    }
}

/// The capture listener (4140): connections iptables redirected here. The
/// original destination picks the service — a Service's VIP, or the address
/// of a registered endpoint — and the connection is then routed exactly as
/// on an `--upstream` listener. Unknown destinations go out unchanged only
/// with `--egress allow`; otherwise they are refused and counted.
pub async fn serve_captured(
    listener: TcpListener,
    outbound: Arc<Outbound>,
    egress_allowed: bool,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    tracing::warn!(%error, "capture accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let _ = tcp.set_nodelay(true);
        let dst = match crate::capture::original_destination(&tcp) {
            Ok(d) => d,
            Err(error) => {
                metrics::counter!("bulkhead_outbound_refused_total", "reason" => "no-original-destination").increment(1);
                tracing::warn!(%error, "captured connection without an original destination");
                continue;
            }
        };
        let state = outbound.states.borrow().clone();
        match service_for(&state, dst) {
            Some((namespace, service)) => {
                let upstream = Arc::new(Upstream {
                    service,
                    namespace,
                    port: Some(dst.port()),
                    listen: dst,
                });
                let outbound = outbound.clone();
                let shutdown = shutdown.clone();
                tracker.spawn(async move {
                    connection(tcp, upstream, outbound, shutdown, &RouteCache::default()).await
                });
            }
            None if egress_allowed => {
                let idle = outbound.tcp_idle_timeout;
                tracker.spawn(async move { passthrough(tcp, dst, idle).await });
            }
            None => {
                metrics::counter!("bulkhead_outbound_refused_total", "reason" => "unknown-destination").increment(1);
                tracing::info!(%dst, "refused captured connection to a destination outside the mesh (see --egress)");
            }
        }
    }
}

/// The service a captured destination belongs to: its VIP, or an endpoint
/// registered at that address serving that port.
fn service_for(state: &MeshState, dst: std::net::SocketAddr) -> Option<ServiceKey> {
    for resource in state.resources.values() {
        if let bulkhead_proto::model::Resource::Service(svc) = resource.as_ref()
            && svc.spec.vip == Some(dst.ip())
            && svc.spec.ports.iter().any(|p| p.port == dst.port())
        {
            return Some((svc.metadata.namespace.clone(), svc.metadata.name.clone()));
        }
    }
    state.endpoints.iter().find_map(|(key, set)| {
        set.values()
            .any(|e| e.address == dst.ip() && e.port(dst.port()).is_some())
            .then(|| key.clone())
    })
}

async fn passthrough(mut app: TcpStream, dst: std::net::SocketAddr, idle: Duration) {
    match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(dst)).await {
        Ok(Ok(mut remote)) => {
            metrics::counter!("bulkhead_egress_connections_total").increment(1);
            let _ = crate::wire::splice(&mut app, &mut remote, idle).await;
        }
        _ => tracing::info!(%dst, "egress destination unreachable"),
    }
}
