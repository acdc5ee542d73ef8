//! The gateway's listener: accept (bounded), TLS when configured (bounded
//! in time), HTTP/1.1 or HTTP/2, then [`handle`] per request: clean the
//! outside request, route it, authenticate the end user, send it into the
//! mesh.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::jwks::KeyStore;
use super::jwt;
use super::routes::{RouteTable, To};
use crate::accept::{self, Listener};
use crate::drain::Drain;
use crate::http::{self as h, Body, VerifiedClaims};
use crate::limits::Limits;
use crate::outbound::{self, Outbound};

/// What every connection of the gateway shares.
pub(super) struct Front {
    pub(super) outbound: Arc<Outbound>,
    pub(super) routes: ArcSwap<RouteTable>,
    pub(super) keys: KeyStore,
    pub(super) limits: Limits,
    /// `None`: plain HTTP.
    pub(super) tls: Option<TlsAcceptor>,
}

/// Longest a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) async fn serve(listener: Listener, front: Arc<Front>, drain: Drain) {
    accept::serve(listener, Some(drain.clone()), move |tcp, peer| {
        connection(tcp, peer, front.clone(), drain.clone())
    })
    .await;
}

async fn connection(tcp: TcpStream, peer: SocketAddr, front: Arc<Front>, drain: Drain) {
    let Some(acceptor) = front.tls.clone() else {
        return http(tcp, peer, false, front, drain).await;
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => {
            metrics::counter!("bulkhead_gateway_tls_handshakes_total", "result" => "ok")
                .increment(1);
            http(tls, peer, true, front, drain).await;
        }
        Ok(Err(error)) => {
            metrics::counter!("bulkhead_gateway_tls_handshakes_total", "result" => "error")
                .increment(1);
            tracing::debug!(%error, "client TLS handshake failed");
        }
        Err(_) => {
            metrics::counter!("bulkhead_gateway_tls_handshakes_total", "result" => "timeout")
                .increment(1);
            tracing::debug!("client TLS handshake timed out");
        }
    }
}

/// One client connection, held to the same limits as an app's to its
/// sidecar (head size and time, streams, resets, idleness).
async fn http<I>(io: I, peer: SocketAddr, tls: bool, front: Arc<Front>, drain: Drain)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let limits = front.limits.clone();
    outbound::serve_client(io, "gateway", limits, drain, move |req| {
        let front = front.clone();
        async move { handle(req, &front, peer, tls).await }
    })
    .await;
}

/// One outside request, to its answer.
async fn handle(
    mut req: Request<Incoming>,
    front: &Front,
    peer: SocketAddr,
    tls: bool,
) -> Response<Body> {
    // Only the mesh sets x-bulkhead-* (peer identity, version pins,
    // verified claims): nothing from outside passes for it.
    h::strip_mesh_headers(req.headers_mut());
    if let Some(problem) = h::host_problem(req.version(), req.headers()) {
        return refuse(StatusCode::BAD_REQUEST, "bad-host", problem, "-");
    }
    // Routes match the normalized path, the one form the target sidecar
    // will match its AllowLists against too; a path servers could read
    // differently is refused here as it would be there.
    let path = match bulkhead_proto::policy::normalize_path(req.uri().path()) {
        Ok(p) => p.into_owned(),
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "bad-path",
                &format!("bulkhead: {e}"),
                "-",
            );
        }
    };
    let host = request_host(&req);
    let table = front.routes.load();
    let Some(route) = table.find(host.as_deref(), &path) else {
        return refuse(
            StatusCode::NOT_FOUND,
            "no-route",
            "bulkhead: no route for this path",
            "-",
        );
    };
    let label = route.label.clone();
    table.strip_claim_headers(req.headers_mut());
    let verified = match &route.auth {
        None => Ok(None),
        Some(auth) => jwt::authenticate(auth, req.headers_mut()).await,
    };
    if let Err(rejection) = verified {
        tracing::debug!(route = %label, ?rejection, "end user refused");
        metrics::counter!(
            "bulkhead_gateway_auth_refused_total",
            "route" => label.to_string(),
            "reason" => rejection.reason()
        )
        .increment(1);
        let mut resp = refuse(
            rejection.status(),
            rejection.reason(),
            rejection.message(),
            &label,
        );
        if let Some(challenge) = rejection.challenge() {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge);
        }
        return resp;
    }
    // The verified claims travel to the target's sidecar, for AllowList
    // rules with `claims`.
    if let Ok(Some(claims)) = &verified {
        match VerifiedClaims::encode(claims) {
            Some(header) => {
                req.extensions_mut().insert(header);
            }
            None => tracing::debug!(route = %label, "claims too large to pass on"),
        }
    }
    forwarded(req.headers_mut(), peer, tls);
    let resp = match &route.to {
        To::Service(target) => outbound::send(target, req, &front.outbound).await,
        To::Aggregate { timeout, parts } => {
            let rest = route.spec.rest(&path).to_owned();
            super::aggregate::serve(req, parts, *timeout, &rest, &front.outbound).await
        }
    };
    count(&label, resp.status());
    resp
}

/// The request's host, lower-case, without a port: HTTP/2's `:authority`
/// or HTTP/1's `Host`.
fn request_host(req: &Request<Incoming>) -> Option<String> {
    let raw: Cow<'_, str> = match req.uri().authority() {
        Some(a) => Cow::Borrowed(a.host()),
        None => {
            let host = req.headers().get(header::HOST)?.to_str().ok()?;
            let authority: http::uri::Authority = host.parse().ok()?;
            Cow::Owned(authority.host().to_owned())
        }
    };
    Some(raw.trim_end_matches('.').to_ascii_lowercase())
}

/// `x-forwarded-for` (the client appended) and `x-forwarded-proto`.
fn forwarded(headers: &mut http::HeaderMap, peer: SocketAddr, tls: bool) {
    let client = peer.ip().to_string();
    let value = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(before) if before.len() < 1024 => format!("{before}, {client}"),
        _ => client,
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert("x-forwarded-for", value);
    }
    headers.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
}

fn count(route: &Arc<str>, status: StatusCode) {
    metrics::counter!(
        "bulkhead_gateway_requests_total",
        "route" => route.to_string(),
        "status" => status_class(status)
    )
    .increment(1);
}

/// An answer the gateway gives itself, marked as the mesh's.
fn refuse(status: StatusCode, reason: &'static str, message: &str, route: &str) -> Response<Body> {
    metrics::counter!(
        "bulkhead_gateway_requests_total",
        "route" => route.to_owned(),
        "status" => status_class(status)
    )
    .increment(1);
    h::mesh_response(false, status, reason, message)
}

/// `2xx`, `4xx`, ...: a bounded label.
fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
