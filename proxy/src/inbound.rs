//! Inbound (port 4143): accept → TLS 1.3 with a mandatory mesh client
//! certificate (checked in the handshake: chain, validity, one SPIFFE ID in
//! our trust domain) → read the preface → authorize → forward to the app.
//! A connection ends by the peer certificate's notAfter, and soon after a
//! new trust bundle stops trusting it ([`crate::trust`]).
//! Nothing reaches the app before the peer is authenticated and the request
//! authorized; denials are logged, counted and marked. An extended CONNECT
//! (an upgrade the caller's app asked for) takes the boxed branch in
//! [`upgrade`], authorized by the same [`admit`].

mod upgrade;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bulkhead_proto::SpiffeId;
use bulkhead_proto::model::{AllowList, Protocol};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::accept::{self, Listener};
use crate::config::{AppPort, AppProtocol};
use crate::drain::Drain;
use crate::http::{self as h, Body};
use crate::identity;
use crate::policy::{self, HttpRequestInfo, Verdict};
use crate::state::{ServiceId, ServiceKey, StateCell};
use crate::telemetry::{Observed, RequestMetrics};
use crate::trust;
use crate::wire::{Payload, Preface};

pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long at most before the peer certificate's notAfter an inbound
/// HTTP/2 connection is sent GOAWAY (half the pool's own margin).
const CERT_EXPIRY_GOAWAY: Duration = Duration::from_secs(30);
pub(crate) const PREFACE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most mTLS connections the inbound port holds at once (other sidecars
/// pool theirs, so a busy pod sees few).
pub(crate) const MAX_CONNECTIONS: usize = 10_000;

/// What the inbound side needs, shared by every connection.
pub(crate) struct Inbound {
    pub(crate) tls: TlsAcceptor,
    /// The bundle the acceptor checks with: open connections are checked
    /// again when it is replaced.
    pub(crate) bundle: bulkhead_tls::BundleSlot,
    pub(crate) trust_domain: String,
    /// This workload's service: whose AllowLists apply.
    pub(crate) key: ServiceKey,
    /// Its number in the mesh state, once the state knows it (it never
    /// changes after): requests find the AllowLists by index.
    pub(crate) id: OnceLock<ServiceId>,
    pub(crate) version: String,
    /// Where each declared port's calls go (`--app`).
    pub(crate) apps: Apps,
    /// The protocol of a port our Service does not declare.
    pub(crate) app_protocol: AppProtocol,
    pub(crate) states: StateCell,
    pub(crate) app_http1: Client<HttpConnector, Incoming>,
    pub(crate) app_http2: Client<HttpConnector, Incoming>,
    pub(crate) request_timeout: Duration,
    /// Opaque TCP streams idle this long either way are closed.
    pub(crate) tcp_idle_timeout: Duration,
}

/// What a service no AllowList targets has (shared: the deny path does not
/// allocate per request).
static NO_ALLOW_LISTS: std::sync::LazyLock<Arc<[AllowList]>> =
    std::sync::LazyLock::new(|| Arc::from([]));

/// One local app address (`--app`), with its authority built once.
pub(crate) struct App {
    pub(crate) addr: SocketAddr,
    authority: Authority,
}

/// The app's addresses by declared port: a port named by `PORT=ADDR` goes
/// there; any other port to the bare `ADDR`, else to the only app given
/// (a single-port app whose Service declares another number, like a
/// Kubernetes Service port 80 in front of container port 8080).
pub(crate) struct Apps {
    by_port: Vec<(u16, App)>,
    default: Option<App>,
}

impl Apps {
    pub(crate) fn new(ports: &[AppPort]) -> Self {
        let app = |addr: SocketAddr| App {
            addr,
            authority: Authority::try_from(addr.to_string())
                .expect("a socket address is an authority"),
        };
        Self {
            by_port: ports
                .iter()
                .filter_map(|p| Some((p.port?, app(p.addr))))
                .collect(),
            default: ports.iter().find(|p| p.port.is_none()).map(|p| app(p.addr)),
        }
    }

    /// Where calls to declared port `port` go.
    pub(crate) fn for_port(&self, port: u16) -> Option<&App> {
        self.by_port
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(_, app)| app)
            .or(self.default.as_ref())
            .or(match self.by_port.as_slice() {
                [(_, only)] => Some(only),
                _ => None,
            })
    }
}

/// What one request (or stream) to `port` is held to right now.
struct Current {
    allow_lists: Arc<[AllowList]>,
    /// The port's protocol: our Service's word for it, else `--app-protocol`.
    protocol: Protocol,
}

impl Inbound {
    /// The AllowLists in force and the port's protocol: one lookup by key
    /// in the state's index, no lock.
    fn current(&self, port: u16) -> Current {
        let state = self.states.load();
        let id = match self.id.get() {
            Some(id) => Some(*id),
            None => state.id(&self.key).inspect(|id| {
                let _ = self.id.set(*id);
            }),
        };
        let view = id.and_then(|id| state.view_at(id));
        let declared = view
            .and_then(|v| v.service.as_ref())
            .and_then(|svc| svc.spec.ports.iter().find(|p| p.port == port))
            .map(|p| p.protocol);
        Current {
            allow_lists: view
                .map(|v| Arc::clone(&v.allow_lists))
                .unwrap_or_else(|| Arc::clone(&NO_ALLOW_LISTS)),
            protocol: declared.unwrap_or(match self.app_protocol {
                AppProtocol::Http => Protocol::Http,
                AppProtocol::Grpc => Protocol::Grpc,
                AppProtocol::Tcp => Protocol::Tcp,
            }),
        }
    }

    fn service(&self) -> &str {
        &self.key.1
    }

    pub(crate) fn app_clients() -> (
        Client<HttpConnector, Incoming>,
        Client<HttpConnector, Incoming>,
    ) {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        // Idle app connections close after 30 s, and at most 256 wait per
        // app: enough that a steady 320 concurrent requests reuse them
        // instead of dialing the app per request (bench/README.md), few
        // enough that a burst does not leave thousands open.
        let builder = || {
            let mut b = Client::builder(TokioExecutor::new());
            b.pool_timer(hyper_util::rt::TokioTimer::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(256);
            b
        };
        let http1 = builder().build(connector.clone());
        let http2 = builder().http2_only(true).build(connector);
        (http1, http2)
    }
}

/// Serves the inbound port until the sidecar drains.
pub(crate) async fn serve(listener: Listener, inbound: Arc<Inbound>, drain: Drain) {
    accept::serve(listener, Some(drain.clone()), move |tcp, remote| {
        connection(tcp, remote, inbound.clone(), drain.clone())
    })
    .await;
}

async fn connection(tcp: TcpStream, remote: SocketAddr, inbound: Arc<Inbound>, drain: Drain) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, inbound.tls.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            metrics::counter!("bulkhead_tls_handshakes_total", "direction" => "inbound", "result" => "error").increment(1);
            tracing::info!(%remote, %error, "inbound TLS handshake refused");
            return;
        }
        Err(_) => {
            metrics::counter!("bulkhead_tls_handshakes_total", "direction" => "inbound", "result" => "timeout").increment(1);
            tracing::info!(%remote, "inbound TLS handshake timed out");
            return;
        }
    };
    metrics::counter!("bulkhead_tls_handshakes_total", "direction" => "inbound", "result" => "ok")
        .increment(1);
    let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
    let peer = leaf.and_then(|leaf| SpiffeId::from_cert_der(leaf, &inbound.trust_domain).ok());
    let (Some(peer), Some(leaf)) = (peer, leaf) else {
        // The verifier makes this unreachable; fail closed anyway.
        tracing::warn!(%remote, "inbound connection without a mesh identity");
        return;
    };
    // The connection ends when the peer's certificate does (sessions are
    // never resumed, so every connection was let in by a full check), or
    // soon after the trust bundle stops trusting it.
    let expires = identity::connection_deadline(leaf);
    let chain = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(<[rustls_pki_types::CertificateDer<'static>]>::to_vec)
        .unwrap_or_default();
    let untrusted = Box::pin(inbound.bundle.until_untrusted(chain));
    let mut tls = tls;
    let preface = match tokio::time::timeout(PREFACE_TIMEOUT, Preface::read(&mut tls)).await {
        Ok(Ok(p)) => p,
        Ok(Err(error)) => {
            tracing::info!(%remote, %peer, %error, "inbound connection refused: bad preface");
            return;
        }
        Err(_) => {
            tracing::info!(%remote, %peer, "inbound connection refused: no preface in time");
            return;
        }
    };
    // The accept loop's span names the connection; now it names the peer.
    tracing::Span::current().record("identity", tracing::field::display(&peer));
    match preface.payload {
        Payload::Tcp => tcp_stream(tls, peer, preface.port, &inbound, expires, untrusted).await,
        // An opaque TCP port is bytes end to end: never parsed as HTTP.
        Payload::Http2 if inbound.current(preface.port).protocol == Protocol::Tcp => {
            metrics::counter!("bulkhead_mesh_errors_total", "direction" => "inbound", "reason" => "protocol-mismatch").increment(1);
            tracing::info!(%remote, %peer, port = preface.port, "inbound HTTP refused: the port is declared tcp");
        }
        Payload::Http2 => {
            let port = preface.port;
            let svc_inbound = inbound.clone();
            // One peer per connection: its metric labels are made once.
            let metrics = Arc::new(RequestMetrics::new(
                "inbound",
                inbound.service(),
                inbound.version.as_str(),
                peer.to_string(),
            ));
            let peer = Arc::new(peer);
            // Upgraded streams outlive their request: the drain tracks them.
            let streams = drain.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let inbound = svc_inbound.clone();
                let peer = peer.clone();
                let metrics = metrics.clone();
                // A method comparison is all an ordinary request pays.
                let upgrade = upgrade::is_upgrade(&req).then(|| streams.clone());
                async move {
                    let started = tokio::time::Instant::now();
                    // The caller's deadline (grpc-timeout) holds here too:
                    // the app's answer is cut when it runs out.
                    let deadline = h::grpc_deadline(req.headers(), started);
                    let resp = match upgrade {
                        None => request(req, &inbound, &peer, port, deadline).await,
                        Some(drain) => {
                            Box::pin(upgrade::request(req, &inbound, &peer, port, drain)).await
                        }
                    };
                    let resp = Observed::wrap(resp, started, metrics, None, deadline);
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .max_concurrent_streams(1024)
                // RFC 8441: upgrades arrive as extended CONNECT.
                .enable_connect_protocol()
                .serve_connection(TokioIo::new(tls), service);
            tokio::pin!(conn);
            // The peer's pool stops using the connection a tenth of its
            // certificate's remaining life (at most a minute) before it
            // expires; a twentieth (at most 30 s) before, GOAWAY asks it
            // to, in case it has not.
            let goaway_at = identity::ahead_of(expires, 20, CERT_EXPIRY_GOAWAY);
            let mut close_at = expires;
            let mut untrusted = untrusted;
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "inbound HTTP/2 connection ended");
                    }
                    return;
                }
                () = drain.signaled() => {}
                () = tokio::time::sleep_until(goaway_at) => {
                    tracing::info!("peer certificate about to expire: closing the connection");
                }
                () = &mut untrusted => {
                    // The caller, pushed the same bundle, stops sending
                    // here meanwhile; what it already sent finishes.
                    let since = tokio::time::Instant::now();
                    close_at = close_at.min(since + trust::UNTRUSTED_CLOSE_AFTER);
                    tracing::info!("the trust bundle no longer trusts the peer: closing the connection");
                    tokio::select! {
                        result = conn.as_mut() => {
                            if let Err(error) = result {
                                tracing::debug!(%error, "inbound HTTP/2 connection ended");
                            }
                            return;
                        }
                        () = tokio::time::sleep_until(since + trust::UNTRUSTED_GOAWAY_AFTER) => {}
                    }
                }
            }
            // GOAWAY, let in-flight streams finish, but not past the
            // peer certificate's notAfter (or the untrusted peer's grace).
            conn.as_mut().graceful_shutdown();
            if tokio::time::timeout_at(close_at, conn).await.is_err() {
                tracing::info!("peer certificate expired or no longer trusted: connection closed");
            }
        }
    }
}

fn deny_log(peer: &SpiffeId, target: &str, label: &str, port: u16, what: &str) {
    metrics::counter!("bulkhead_authz_denied_total", "direction" => "inbound", "target" => target.to_owned(), "peer" => peer.to_string(), "rule" => label.to_owned()).increment(1);
    tracing::info!(%peer, target, port, rule = label, request = what, "denied by allow-list");
}

async fn tcp_stream(
    mut tls: tokio_rustls::server::TlsStream<TcpStream>,
    peer: SpiffeId,
    port: u16,
    inbound: &Inbound,
    expires: tokio::time::Instant,
    untrusted: std::pin::Pin<Box<impl Future<Output = ()>>>,
) {
    let current = inbound.current(port);
    let decision = policy::authorize(
        &current.allow_lists,
        &peer,
        port,
        None,
        &inbound.trust_domain,
    );
    match decision.verdict {
        Verdict::Deny => {
            deny_log(&peer, inbound.service(), &decision.label(), port, "tcp");
            return;
        }
        Verdict::AuditAllow => {
            metrics::counter!("bulkhead_authz_audit_total", "target" => inbound.service().to_owned(), "peer" => peer.to_string(), "rule" => decision.label()).increment(1);
            tracing::info!(%peer, port, rule = %decision.label(), "audit: would deny tcp connection");
        }
        Verdict::Allow => {}
    }
    let Some(app) = inbound.apps.for_port(port).map(|a| a.addr) else {
        metrics::counter!("bulkhead_mesh_errors_total", "direction" => "inbound", "reason" => "no-app").increment(1);
        tracing::warn!(%peer, port, "no --app for this port");
        return;
    };
    let mut upstream = match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(app))
        .await
    {
        Ok(Ok(s)) => s,
        _ => {
            metrics::counter!("bulkhead_mesh_errors_total", "direction" => "inbound", "reason" => "app-unreachable").increment(1);
            tracing::warn!(%app, "app unreachable");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let started = Instant::now();
    let splice = crate::wire::splice(&mut tls, &mut upstream, inbound.tcp_idle_timeout);
    // An untrusted peer's stream gets the same grace an HTTP/2 one does
    // before it is closed: opaque bytes have no GOAWAY.
    let untrusted_close = async {
        untrusted.await;
        tracing::info!(%peer, "the trust bundle no longer trusts the peer: closing the TCP stream soon");
        tokio::time::sleep(trust::UNTRUSTED_CLOSE_AFTER).await;
    };
    let class = tokio::select! {
        result = tokio::time::timeout_at(expires, splice) => match result {
            Ok(result) => crate::wire::splice_result(&result),
            Err(_) => {
                tracing::info!(%peer, "peer certificate expired: TCP stream closed");
                "cert-expired"
            }
        },
        () = untrusted_close => "untrusted",
    };
    metrics::counter!("bulkhead_tcp_connections_total", "direction" => "inbound", "service" => inbound.service().to_owned(), "peer" => peer.to_string(), "result" => class).increment(1);
    metrics::histogram!("bulkhead_tcp_connection_duration_seconds", "direction" => "inbound", "service" => inbound.service().to_owned()).record(started.elapsed().as_secs_f64());
}

async fn request(
    mut req: Request<Incoming>,
    inbound: &Inbound,
    peer: &SpiffeId,
    port: u16,
    deadline: Option<tokio::time::Instant>,
) -> Response<Body> {
    let grpc = h::is_grpc(req.headers());
    let protocol = match admit(&mut req, None, inbound, peer, port, grpc) {
        Ok(protocol) => protocol,
        Err(refused) => return *refused,
    };
    let client = if protocol == Protocol::Grpc {
        &inbound.app_http2
    } else {
        *req.version_mut() = http::Version::HTTP_11;
        &inbound.app_http1
    };
    let head_deadline = tokio::time::Instant::now() + inbound.request_timeout;
    let head_deadline = deadline.map_or(head_deadline, |d| d.min(head_deadline));
    match to_app(client, req, head_deadline, grpc).await {
        Ok(resp) => resp.map(|b| b.boxed()),
        Err(failed) => failed,
    }
}

/// Normalizes the path, authorizes the request (as `method` when given,
/// else its own), and readies it for the app: its URI names the app and the
/// normalized path, Host the caller's authority, and no hop-by-hop header
/// is left. The port's protocol, or the mesh's answer when the request
/// stops here (boxed: the path that admits stays small).
fn admit(
    req: &mut Request<Incoming>,
    method: Option<&Method>,
    inbound: &Inbound,
    peer: &SpiffeId,
    port: u16,
    grpc: bool,
) -> Result<Protocol, Box<Response<Body>>> {
    // The app sees exactly the path that was authorized: the request's own
    // when it was already normal (no copy), the normalized one otherwise.
    let path_and_query = match policy::normalize_path(req.uri().path()) {
        Ok(Cow::Borrowed(_)) => req.uri().path_and_query().cloned(),
        Ok(Cow::Owned(normal)) => {
            let rebuilt = match req.uri().query() {
                Some(query) => format!("{normal}?{query}"),
                None => normal,
            };
            PathAndQuery::try_from(rebuilt).ok()
        }
        Err(error) => {
            metrics::counter!("bulkhead_mesh_errors_total", "direction" => "inbound", "reason" => error.reason()).increment(1);
            tracing::info!(%peer, %error, "request refused: ambiguous path");
            return Err(Box::new(h::mesh_response(
                grpc,
                StatusCode::BAD_REQUEST,
                "bad-path",
                &format!("bulkhead: {error}"),
            )));
        }
    };
    let bad_target = || {
        h::mesh_response(
            grpc,
            StatusCode::BAD_REQUEST,
            "bad-target",
            "bulkhead: request target does not parse",
        )
    };
    let Some(path_and_query) = path_and_query else {
        return Err(Box::new(bad_target()));
    };
    let method = method.unwrap_or(req.method());
    let current = inbound.current(port);
    let decision = policy::authorize(
        &current.allow_lists,
        peer,
        port,
        Some(HttpRequestInfo {
            method: method.as_str(),
            normalized_path: path_and_query.path(),
        }),
        &inbound.trust_domain,
    );
    match decision.verdict {
        Verdict::Deny => {
            let label = decision.label();
            deny_log(peer, inbound.service(), &label, port, method.as_str());
            let mut resp = h::mesh_response(
                grpc,
                StatusCode::FORBIDDEN,
                "denied",
                &format!(
                    "denied by the mesh: {peer} may not call {} ({label})",
                    inbound.service()
                ),
            );
            if let Ok(v) = HeaderValue::from_str(&label) {
                resp.headers_mut().insert(h::MESH_DENIED, v);
            }
            return Err(Box::new(resp));
        }
        Verdict::AuditAllow => {
            metrics::counter!("bulkhead_authz_audit_total", "target" => inbound.service().to_owned(), "peer" => peer.to_string(), "rule" => decision.label()).increment(1);
            tracing::info!(%peer, port, %method, rule = %decision.label(), "audit: would deny request");
        }
        Verdict::Allow => {}
    }
    let Some(app) = inbound.apps.for_port(port) else {
        return Err(Box::new(h::mesh_response(
            grpc,
            StatusCode::SERVICE_UNAVAILABLE,
            "no-app",
            &format!("bulkhead: no app behind this sidecar for port {port} (--app PORT=ADDR)"),
        )));
    };
    // HTTP/2 carries the caller's authority in the URI, HTTP/1.1 in Host.
    if !req.headers().contains_key(http::header::HOST)
        && let Some(authority) = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        req.headers_mut().insert(http::header::HOST, authority);
    }
    let mut target = http::uri::Parts::default();
    target.scheme = Some(Scheme::HTTP);
    target.authority = Some(app.authority.clone());
    target.path_and_query = Some(path_and_query);
    let Ok(uri) = Uri::from_parts(target) else {
        return Err(Box::new(bad_target()));
    };
    *req.uri_mut() = uri;
    h::strip_hop_by_hop(req.headers_mut());
    Ok(current.protocol)
}

/// Sends an admitted request to the app; the app's answer, or the mesh's
/// when the app did not answer by `deadline`.
async fn to_app(
    client: &Client<HttpConnector, Incoming>,
    req: Request<Incoming>,
    deadline: tokio::time::Instant,
    grpc: bool,
) -> Result<Response<Incoming>, Response<Body>> {
    match tokio::time::timeout_at(deadline, client.request(req)).await {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(error)) => {
            metrics::counter!("bulkhead_mesh_errors_total", "direction" => "inbound", "reason" => "app-error").increment(1);
            tracing::warn!(%error, "forwarding to the app failed");
            Err(h::mesh_response(
                grpc,
                StatusCode::BAD_GATEWAY,
                "app-unreachable",
                "bulkhead: the app did not answer",
            ))
        }
        Err(_) => Err(h::mesh_response(
            grpc,
            StatusCode::GATEWAY_TIMEOUT,
            "app-timeout",
            "bulkhead: the app did not answer in time",
        )),
    }
}
