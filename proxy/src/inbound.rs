//! Inbound (port 4143): accept → TLS 1.3 with a mandatory mesh client
//! certificate (checked in the handshake: chain, validity, one SPIFFE ID in
//! our trust domain; at most `--max-handshakes` under way at once) → read
//! the preface → opaque TCP, or HTTP/2 ([`http`]): authorize each request
//! → forward it to the app ([`app`]). Nothing reaches the app before the
//! peer is authenticated and the request authorized; denials are logged,
//! counted and marked. An extended CONNECT (an upgrade the caller's app
//! asked for) takes the boxed branch in [`upgrade`], authorized by the
//! same [`http::admit`]. Requests served count for this version's
//! aggregates ([`VersionCounters`]). A connection ends by the peer
//! certificate's notAfter, and soon after a new trust bundle stops trusting
//! it ([`crate::trust`]).

mod app;
mod caller;
mod http;
mod upgrade;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ::http::uri::Authority;
use bulkhead_proto::SpiffeId;
use bulkhead_proto::model::{AllowList, Protocol};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::accept::{self, Listener};
use crate::config::{AppPort, AppProtocol};
use crate::drain::Drain;
use crate::identity;
use crate::limits::{self, Limit, Limits, Pending};
use crate::policy::{self, Verdict};
use crate::state::{ServiceId, ServiceKey, StateCell};
use crate::telemetry::VersionCounters;
use crate::trust;
use crate::wire::{Payload, Preface};

pub(crate) use self::app::{AppClient, clients as app_clients};
pub(crate) use self::caller::Caller;

pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const PREFACE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the inbound side needs, shared by every connection.
pub(crate) struct Inbound {
    pub(crate) tls: TlsAcceptor,
    /// The bundle the acceptor checks with: open connections are checked
    /// again when it is replaced.
    pub(crate) bundle: bulkhead_tls::BundleSlot,
    pub(crate) trust_domain: String,
    /// This workload's own identity (what `x-forwarded-client-cert` names
    /// as `By`).
    pub(crate) identity: SpiffeId,
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
    pub(crate) app_http1: AppClient,
    pub(crate) app_http2: AppClient,
    pub(crate) request_timeout: Duration,
    pub(crate) limits: Limits,
    /// Connections in their TLS handshake (`--max-handshakes`).
    pub(crate) handshakes: Arc<Semaphore>,
    /// Requests waiting for, or in flight to, the app.
    pub(crate) pending: Arc<Pending>,
    /// Opaque TCP streams idle this long either way are closed.
    pub(crate) tcp_idle_timeout: Duration,
    /// This version's HTTP and gRPC aggregates, reported to the control
    /// plane.
    pub(crate) served: Arc<VersionCounters>,
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
}

/// Serves the inbound port until the sidecar drains.
pub(crate) async fn serve(listener: Listener, inbound: Arc<Inbound>, drain: Drain) {
    accept::serve(listener, Some(drain.clone()), move |tcp, remote| {
        connection(tcp, remote, inbound.clone(), drain.clone())
    })
    .await;
}

async fn connection(tcp: TcpStream, remote: SocketAddr, inbound: Arc<Inbound>, drain: Drain) {
    // A handshake costs a signature and holds a slot until it ends (or
    // times out): past the limit a newcomer is closed at once, and the
    // connections already up are not slowed by a flood of new ones.
    let Ok(handshaking) = inbound.handshakes.clone().try_acquire_owned() else {
        let _ = tcp.set_zero_linger();
        limits::exceeded("inbound", Limit::Handshakes);
        tracing::debug!(%remote, "too many TLS handshakes under way: connection refused");
        return;
    };
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, inbound.tls.accept(tcp)).await;
    drop(handshaking);
    let tls = match handshake {
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
    // never resumed, so every connection was let in by a full check).
    let expires = identity::connection_deadline(leaf);
    let caller = Caller::new(peer, leaf, &inbound.identity);
    // ... or soon after the trust bundle stops trusting it.
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
            tracing::info!(%remote, peer = %caller, %error, "inbound connection refused: bad preface");
            return;
        }
        Err(_) => {
            tracing::info!(%remote, peer = %caller, "inbound connection refused: no preface in time");
            return;
        }
    };
    // The accept loop's span names the connection; now it names the peer.
    tracing::Span::current().record("identity", tracing::field::display(&caller));
    match preface.payload {
        Payload::Tcp => {
            tcp_stream(tls, caller.id, preface.port, &inbound, expires, untrusted).await
        }
        // An opaque TCP port is bytes end to end: never parsed as HTTP.
        Payload::Http2 if inbound.current(preface.port).protocol == Protocol::Tcp => {
            metrics::counter!("bulkhead_mesh_errors_total", "direction" => "inbound", "reason" => "protocol-mismatch").increment(1);
            tracing::info!(%remote, peer = %caller, port = preface.port, "inbound HTTP refused: the port is declared tcp");
        }
        Payload::Http2 => {
            http::serve(
                tls,
                caller,
                preface.port,
                inbound,
                drain,
                expires,
                untrusted,
            )
            .await
        }
    }
}

/// Counts, logs and reports (aggregated, see [`crate::events`]) one
/// denied request; `path` is the normalized HTTP path (empty for TCP).
fn deny_log(peer: &SpiffeId, target: &str, label: &str, port: u16, what: &str, path: &str) {
    crate::events::denied(peer, target, label, path);
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
            deny_log(&peer, inbound.service(), &decision.label(), port, "tcp", "");
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
