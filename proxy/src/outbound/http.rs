//! HTTP/1.1, HTTP/2 and gRPC to a service, routed per request: choose a
//! version (pin, header match, weights), pick an endpoint (locality tier,
//! P2C over peak-EWMA), send on the pooled HTTP/2 connection to that
//! endpoint's sidecar; retry idempotent requests elsewhere within the
//! service's budget; bound each request in time. Errors the mesh generates
//! carry `x-bulkhead-error`.
//!
//! What every request on one app connection shares is worked out once per
//! connection ([`HttpRoute`]); a request does no lookup by string, formats
//! nothing and takes no lock shared with other connections. A request that
//! carries `Upgrade` (WebSocket) takes the boxed branch in [`upgrade`].
//!
//! One app's mistakes stay on its own connection, never on the pooled one
//! other apps' requests share: a malformed Host is a 400, a head the peer
//! sidecar would refuse a 431 (both answered here, nothing sent); an
//! HTTP/1 head must arrive within `--header-read-timeout`, an HTTP/2
//! connection may open `--max-concurrent-streams` at once, and one that
//! resets streams as a flood does is closed ([`ConnStreams`]) rather than
//! have its resets forwarded.

mod upgrade;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use metrics::Counter;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::Outbound;
use super::balancers::ServiceRoute;
use super::retry::{self, MAX_ATTEMPTS};
use crate::balance::{Outcome, Pick};
use crate::drain::Drain;
use crate::http::{self as h, Answer, Body};
use crate::limits::{self, ConnStreams, FrameMeter, Head, IdleCheck, Limit, Limits};
use crate::pool::{ConnectError, Lane};
use crate::route;
use crate::state::{MeshState, ServiceId, ServiceKey};
use crate::telemetry::{Observed, RequestMetrics};

/// What every request on one app connection shares.
pub(super) struct HttpRoute {
    /// `outbound` or `capture`, for the limits' metrics.
    listener: &'static str,
    key: ServiceKey,
    /// How requests find the service's view: an index, not a name.
    id: ServiceId,
    /// The Service's declared port.
    port: u16,
    /// The one endpoint a pod-address caller reaches (no split, no
    /// balancing, no sibling on retry).
    pin: Option<SocketAddr>,
    /// `service.namespace:port`: the authority the peer sidecar sees.
    authority: Authority,
    service: ServiceRoute,
    /// Metrics of answers no endpoint gave (no endpoint, timeout, bad pin).
    unattributed: Arc<RequestMetrics>,
    retries: Counter,
}

impl HttpRoute {
    fn new(
        listener: &'static str,
        key: &ServiceKey,
        port: u16,
        pin: Option<SocketAddr>,
        outbound: &Outbound,
        state: &MeshState,
    ) -> Result<Self, String> {
        let (namespace, name) = key;
        let authority = Authority::try_from(format!("{name}.{namespace}:{port}"))
            .map_err(|e| format!("{name}.{namespace}:{port}: {e}"))?;
        let id = state
            .id(key)
            .ok_or_else(|| format!("no Service {namespace}/{name} known yet"))?;
        Ok(Self {
            listener,
            key: key.clone(),
            id,
            port,
            pin,
            authority,
            service: outbound.balancers.get(key, state),
            unattributed: Arc::new(RequestMetrics::new("outbound", name.as_str(), "", "")),
            retries: metrics::counter!("bulkhead_retries_total", "service" => name.clone()),
        })
    }
}

/// The route of a listener's connections, made again only when the
/// Service's port changes.
#[derive(Default)]
pub(super) struct RouteCache {
    last: Mutex<Option<Arc<HttpRoute>>>,
}

impl RouteCache {
    pub(super) fn get(
        &self,
        listener: &'static str,
        key: &ServiceKey,
        port: u16,
        pin: Option<SocketAddr>,
        outbound: &Outbound,
        state: &MeshState,
    ) -> Result<Arc<HttpRoute>, String> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(route) = &*last
            && route.port == port
            && route.pin == pin
        {
            return Ok(Arc::clone(route));
        }
        let route = Arc::new(HttpRoute::new(listener, key, port, pin, outbound, state)?);
        *last = Some(Arc::clone(&route));
        Ok(route)
    }
}

/// How long a connection closed for flooding may take to finish the
/// streams it has open.
const FLOOD_GRACE: Duration = Duration::from_secs(5);

/// Serves HTTP/1.1 or HTTP/2 (auto-detected) to the app on one connection
/// until it closes, breaks a limit, or the sidecar drains.
pub(super) async fn serve(
    tcp: TcpStream,
    route: Arc<HttpRoute>,
    outbound: Arc<Outbound>,
    drain: Drain,
) {
    let listener = route.listener;
    let limits = outbound.limits.clone();
    // Upgraded streams outlive their request: the drain tracks them.
    let upgrades = drain.clone();
    serve_client(
        tcp,
        listener,
        limits,
        drain,
        move |req: Request<Incoming>| {
            let outbound = outbound.clone();
            let route = route.clone();
            // One header lookup is all an ordinary request pays for upgrades.
            let upgrade = req
                .headers()
                .contains_key(http::header::UPGRADE)
                .then(|| upgrades.clone());
            async move {
                if let Some(problem) = h::host_problem(req.version(), req.headers()) {
                    bad_host(problem, &route)
                } else {
                    match upgrade {
                        None => request(req, &route, &outbound).await,
                        Some(drain) => {
                            Box::pin(upgrade::request(req, &route, &outbound, drain)).await
                        }
                    }
                }
            }
        },
    )
    .await;
}

/// Serves one connection from a client that is not a sidecar (an app, or
/// the outside world at a gateway), HTTP/1.1 or HTTP/2, each request
/// answered by `handle`, until it closes, breaks a limit (no request in
/// time, idle, a flood of resets) or `drain` signals. `listener` names it
/// in the limits' metrics.
pub(crate) async fn serve_client<I, H, Fut>(
    io: I,
    listener: &'static str,
    limits: Limits,
    drain: Drain,
    handle: H,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    let streams = Arc::new(ConnStreams::new(listener));
    let svc_streams = streams.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let stream = svc_streams.start();
        let http2 = req.version() == http::Version::HTTP_2;
        let answer = handle(req);
        async move {
            if http2 {
                // hyper looks for the client's RST_STREAM while this yields:
                // a stream reset as soon as it was opened ends here, and is
                // never sent on to the peer sidecar.
                tokio::task::yield_now().await;
            }
            let resp = answer.await;
            stream.answered();
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let builder = limits.client_facing_server();
    let io = TokioIo::new(FrameMeter::new(io, streams.clone()));
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    // hyper times an HTTP/1 head itself; nothing times the bytes before it
    // knows the version: this does. An HTTP/2 client that connected ahead
    // of its first call (a gRPC channel) is left to the idle timeout.
    let first_request = tokio::time::sleep(limits.header_read_timeout);
    tokio::pin!(first_request);
    let mut waiting_first = true;
    let mut idle = IdleCheck::new(limits.idle_timeout);
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    ended(listener, &*error);
                }
                return;
            }
            () = &mut first_request, if waiting_first => {
                waiting_first = false;
                if streams.started() == 0 && !streams.speaks_http2() {
                    limits::exceeded(listener, Limit::HeaderReadTimeout);
                    tracing::debug!("no request in time: client connection closed");
                    return;
                }
            }
            flood = streams.flooding() => {
                tracing::warn!(limit = flood.as_str(), "the client floods: closing its connection");
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(FLOOD_GRACE, conn).await;
                return;
            }
            () = idle.idle(&streams) => {
                limits::exceeded(listener, Limit::IdleTimeout);
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
                return;
            }
            () = drain.signaled() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
                return;
            }
        }
    }
}

/// How an app connection ended, counted when a limit ended it.
fn ended(listener: &'static str, error: &(dyn std::error::Error + Send + Sync + 'static)) {
    let hyper_error = error.downcast_ref::<hyper::Error>();
    if hyper_error.is_some_and(hyper::Error::is_timeout) {
        limits::exceeded(listener, Limit::HeaderReadTimeout);
    } else if hyper_error.is_some_and(hyper::Error::is_parse_too_large) {
        limits::exceeded(listener, Limit::HeaderSize);
    }
    tracing::debug!(%error, "outbound app connection ended");
}

/// RFC 9112 §3.2: a request without exactly one valid Host is a 400.
#[cold]
fn bad_host(problem: &'static str, route: &HttpRoute) -> Response<Body> {
    metrics::counter!("bulkhead_mesh_errors_total", "direction" => "outbound", "reason" => "bad-host").increment(1);
    tracing::debug!(problem, "request refused: bad Host");
    let resp = h::mesh_response(
        false,
        StatusCode::BAD_REQUEST,
        "bad-host",
        &format!("bulkhead: {problem}"),
    );
    let started = Instant::now();
    let metrics = Arc::clone(&route.unattributed);
    Observed::wrap(resp.map(Answer::Mesh), started, metrics, None, None, None).map(|b| b.boxed())
}

/// A request body the outbound sends on: the app's own, or (from the
/// gateway's aggregates) one the mesh made.
pub(crate) trait SendBody:
    hyper::body::Body<Data = bytes::Bytes, Error = hyper::Error> + Send + Sync + 'static
{
}

impl<B> SendBody for B where
    B: hyper::body::Body<Data = bytes::Bytes, Error = hyper::Error> + Send + Sync + 'static
{
}

pub(super) async fn request<B: SendBody>(
    req: Request<B>,
    route: &HttpRoute,
    outbound: &Outbound,
) -> Response<Body> {
    let started = Instant::now();
    let grpc = h::is_grpc(req.headers());
    // A gRPC call's own deadline bounds the whole call (head and stream);
    // --request-timeout caps the wait for the head of any request.
    let call_deadline = h::grpc_deadline(req.headers(), started);
    let head_deadline = started + outbound.request_timeout;
    let head_deadline = call_deadline.map_or(head_deadline, |d| d.min(head_deadline));
    route.service.budget.record_request(started);
    let (resp, answered) =
        route_request(req, route, outbound, grpc, head_deadline, Lane::Pooled).await;
    let (metrics, pick) = match answered {
        Some(Answered { metrics, pick }) => (metrics, pick),
        None => (Arc::clone(&route.unattributed), None),
    };
    Observed::wrap(resp, started, metrics, pick, call_deadline, None).map(|b| b.boxed())
}

/// The endpoint that answered: its metrics, and (when its response is
/// being streamed back) its pick and the latency to the head.
struct Answered {
    metrics: Arc<RequestMetrics>,
    pick: Option<(Pick, Duration)>,
}

/// The response (the endpoint's body as it came, or one the mesh made),
/// and who gave it (`None`: the mesh answered without an endpoint).
type Routed = (Response<Answer>, Option<Answered>);

/// How sending to one endpoint failed.
#[derive(Debug, thiserror::Error)]
enum SendError {
    /// Nothing was sent: safe to send elsewhere.
    #[error(transparent)]
    Connect(ConnectError),
    /// Failed after sending started: the peer may have acted on it.
    #[error("request failed: {0}")]
    Request(String),
    /// The request's deadline passed before the endpoint answered.
    #[error("no answer before the request's deadline")]
    Timeout,
}

async fn route_request<B: SendBody>(
    req: Request<B>,
    route: &HttpRoute,
    outbound: &Outbound,
    grpc: bool,
    deadline: Instant,
    lane: Lane,
) -> Routed {
    let port = route.port;
    let balancer = &route.service.balancer;
    let choice = if route.pin.is_some() {
        // The caller chose the pod: its version is whatever that pod runs.
        Ok(route::VersionChoice::Any)
    } else {
        let state = outbound.states.load();
        let split = state.view_at(route.id).and_then(|v| v.split.as_deref());
        route::choose_with_fallback(split, req.headers(), outbound.caller, rand::random(), |c| {
            balancer.has_healthy(|e| c.accepts(&e.version))
        })
    };
    let choice = match choice {
        Ok(c) => c,
        Err(error) => {
            let resp = h::mesh_response(
                grpc,
                StatusCode::BAD_REQUEST,
                "bad-version-pin",
                &format!("bulkhead: {error}"),
            );
            return (resp.map(Answer::Mesh), None);
        }
    };
    let can_retry = retry::retryable(&req);
    let (mut parts, body) = req.into_parts();
    h::strip_hop_by_hop(&mut parts.headers);
    h::strip_identity_claims(&mut parts.headers);
    if let Some(claims) = parts.extensions.remove::<h::VerifiedClaims>() {
        parts.headers.insert(h::CLAIMS, claims.0);
    }
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
        let resp = h::mesh_response(
            grpc,
            StatusCode::BAD_REQUEST,
            "bad-target",
            "bulkhead: request target does not parse",
        );
        return (resp.map(Answer::Mesh), None);
    };
    parts.uri = uri;
    parts.version = http::Version::HTTP_2;
    // The peer sidecar takes heads below the same limit; one it would
    // refuse is refused here, before it reaches the connection other
    // requests share.
    let path = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
    let protocol = parts
        .extensions
        .get::<hyper::ext::Protocol>()
        .map(hyper::ext::Protocol::as_str);
    let head = Head::request(
        &parts.method,
        route.authority.as_str(),
        path,
        protocol,
        &parts.headers,
    );
    if !head.fits(outbound.limits.max_header_bytes) {
        return (
            header_too_large(grpc, route, &head, outbound).map(Answer::Mesh),
            None,
        );
    }
    // What has not been sent yet. A retryable request (bodiless) keeps its
    // head for the next attempt, so only it pays for cloning headers; any
    // other is moved into its one send.
    let mut unsent = Some((parts, body.boxed()));
    let mut attempt = 0;
    // Endpoints this request already failed on: a retry goes elsewhere,
    // and comes back to them only when nothing else is left.
    let mut tried: Vec<SocketAddr> = Vec::new();
    let locality = outbound.locality.load();
    loop {
        attempt += 1;
        let eligible = |e: &bulkhead_proto::model::Endpoint| {
            choice.accepts(&e.version)
                && e.port(port).is_some()
                && route
                    .pin
                    .is_none_or(|pin| pin == SocketAddr::new(e.address, e.inbound_port))
        };
        let fresh = balancer.pick(&locality, |e| {
            eligible(e) && !tried.contains(&SocketAddr::new(e.address, e.inbound_port))
        });
        let Some(pick) = fresh.or_else(|| balancer.pick(&locality, eligible)) else {
            metrics::counter!("bulkhead_mesh_errors_total", "direction" => "outbound", "reason" => "no-endpoints").increment(1);
            let (namespace, name) = &route.key;
            let resp = h::mesh_response(
                grpc,
                StatusCode::SERVICE_UNAVAILABLE,
                "no-endpoints",
                &match route.pin {
                    Some(pin) => format!("bulkhead: endpoint {pin} of {namespace}/{name} is gone"),
                    None => format!("bulkhead: no healthy endpoint of {namespace}/{name}"),
                },
            );
            return (resp.map(Answer::Mesh), None);
        };
        let ep = pick.endpoint();
        let Some(identity) = ep.identity.as_ref() else {
            // The state admits no endpoint without an identity; were one
            // picked, fail closed rather than loop over it.
            pick.finish(Outcome {
                latency: Duration::ZERO,
                success: false,
            });
            let resp = h::mesh_response(
                grpc,
                StatusCode::BAD_GATEWAY,
                "no-identity",
                "bulkhead: endpoint has no registered identity",
            );
            return (resp.map(Answer::Mesh), None);
        };
        let addr = SocketAddr::new(ep.address, ep.inbound_port);
        let served = pick.request_metrics();
        tried.push(addr);
        let sent = Instant::now();
        let send = async {
            let mut sender = outbound
                .pool
                .sender(addr, identity, port, lane)
                .await
                .map_err(SendError::Connect)?;
            let request = match (can_retry, &mut unsent) {
                (true, Some((head, _))) => Some(Request::from_parts(head.clone(), h::empty())),
                (_, unsent) => unsent
                    .take()
                    .map(|(head, body)| Request::from_parts(head, body)),
            };
            // Never None (a request is sent again only while unsent), but
            // if it were: fail this request, not the process.
            let request =
                request.ok_or_else(|| SendError::Request("the request was already sent".into()))?;
            sender
                .send_request(request)
                .await
                .map_err(|e| SendError::Request(e.to_string()))
        };
        // A request out of time counts against the endpoint that kept it
        // waiting (latency estimate, outlier ejection), like any failure.
        let result = tokio::time::timeout_at(deadline, send)
            .await
            .unwrap_or(Err(SendError::Timeout));
        let latency = sent.elapsed();
        let retry_left = can_retry && attempt < MAX_ATTEMPTS;
        match result {
            Ok(resp) => {
                // A mesh-level failure at the peer (app unreachable) is
                // worth another endpoint; the app's own errors are not ours
                // to retry.
                let peer_mesh_error = match resp.status() {
                    StatusCode::BAD_GATEWAY => resp.headers().contains_key(h::MESH_ERROR),
                    // Shed before the app saw it.
                    StatusCode::SERVICE_UNAVAILABLE => resp
                        .headers()
                        .get(h::MESH_ERROR)
                        .is_some_and(|v| v == h::OVERLOADED),
                    _ => false,
                };
                if peer_mesh_error && retry_left && route.service.budget.try_retry(Instant::now()) {
                    pick.finish(Outcome {
                        latency,
                        success: false,
                    });
                    route.retries.increment(1);
                    continue;
                }
                // The endpoint's outcome is known when the stream ends: the
                // pick (in flight till then) travels with the body.
                let answered = Answered {
                    metrics: served,
                    pick: Some((pick, latency)),
                };
                return (resp.map(Answer::Peer), Some(answered));
            }
            Err(error) => {
                pick.finish(Outcome {
                    latency,
                    success: false,
                });
                let before_send = matches!(error, SendError::Connect(_));
                let timed_out = matches!(error, SendError::Timeout);
                tracing::warn!(endpoint = %addr, %error, attempt, "request to endpoint failed");
                // A request that never left may always go elsewhere; one
                // that did only if it is idempotent.
                let may_retry = !timed_out
                    && ((before_send && unsent.is_some() && attempt < MAX_ATTEMPTS) || retry_left);
                if may_retry && route.service.budget.try_retry(Instant::now()) {
                    route.retries.increment(1);
                    continue;
                }
                let (status, reason) = match &error {
                    SendError::Connect(e) => (StatusCode::BAD_GATEWAY, e.reason()),
                    SendError::Request(_) => (StatusCode::BAD_GATEWAY, "request-failed"),
                    SendError::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
                };
                metrics::counter!("bulkhead_mesh_errors_total", "direction" => "outbound", "reason" => reason).increment(1);
                let resp = h::mesh_response(grpc, status, reason, &format!("bulkhead: {error}"));
                let answered = Answered {
                    metrics: served,
                    pick: None,
                };
                return (resp.map(Answer::Mesh), Some(answered));
            }
        }
    }
}

#[cold]
fn header_too_large(
    grpc: bool,
    route: &HttpRoute,
    head: &Head<'_>,
    outbound: &Outbound,
) -> Response<Body> {
    limits::exceeded(route.listener, Limit::HeaderSize);
    let limit = outbound.limits.max_header_bytes;
    tracing::debug!(
        size = head.list_size(),
        limit,
        "request refused: head too large"
    );
    h::mesh_response(
        grpc,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "header-too-large",
        &format!(
            "bulkhead: the request's headers take {} bytes as HTTP/2 counts them; the limit is {limit}",
            head.list_size()
        ),
    )
}
