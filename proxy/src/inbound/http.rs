//! HTTP on an inbound connection: another sidecar's pooled HTTP/2, each
//! stream a request to authorize ([`admit`]) and send to the app
//! ([`super::app`]), within the connection's limits: streams open at once,
//! the head size (the same limit the caller's sidecar checks, so it is the
//! caller that answers 431), keep-alive pings, an idle timeout, and a peer
//! that resets streams as a flood does ([`ConnStreams`]) is sent GOAWAY.
//! A stream its peer reset before it was first polled never reaches the
//! app; past `--max-pending-requests` a request is answered 503
//! `overloaded` without reaching it.
//!
//! Every request served feeds this version's aggregates
//! ([`VersionCounters`](crate::telemetry::VersionCounters)) — except those
//! the mesh refuses for the caller's own doing ([`Answer::Refused`]: a bad
//! path, an AllowList denial), which say nothing about the version.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use bulkhead_proto::model::Protocol;
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::{Caller, Inbound, deny_log, upgrade};
use crate::drain::Drain;
use crate::http::{self as h, Body};
use crate::identity;
use crate::limits::{self, ConnStreams, FrameMeter, IdleCheck, Limit};
use crate::policy::{self, HttpRequestInfo, Verdict};
use crate::telemetry::{Observed, RequestMetrics};
use crate::trust;

/// How long at most before the peer certificate's notAfter an inbound
/// HTTP/2 connection is sent GOAWAY (half the pool's own margin).
const CERT_EXPIRY_GOAWAY: Duration = Duration::from_secs(30);
/// How long a connection closed for flooding may take to finish the
/// streams it has open.
const FLOOD_GRACE: Duration = Duration::from_secs(5);

/// Serves one peer's HTTP/2 connection to declared port `port` until it
/// ends, the sidecar drains, or the peer's certificate is about to expire.
pub(super) async fn serve(
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    caller: Caller,
    port: u16,
    inbound: Arc<Inbound>,
    drain: Drain,
    expires: tokio::time::Instant,
    mut untrusted: std::pin::Pin<Box<impl Future<Output = ()>>>,
) {
    let svc_inbound = inbound.clone();
    // One peer per connection: its metric labels are made once, and its
    // part of this version's traffic (who calls whom) is looked up once.
    let caller_id = caller.id.to_string();
    let caller_counts = inbound.served.caller(&caller_id);
    let metrics = Arc::new(RequestMetrics::new(
        "inbound",
        inbound.service(),
        inbound.version.as_str(),
        caller_id,
    ));
    let caller = Arc::new(caller);
    let streams = Arc::new(ConnStreams::new("inbound"));
    let svc_streams = streams.clone();
    // Upgraded streams outlive their request: the drain tracks them.
    let upgrades = drain.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let inbound = svc_inbound.clone();
        let caller = caller.clone();
        let metrics = metrics.clone();
        let caller_counts = caller_counts.clone();
        let stream = svc_streams.start();
        // A method comparison is all an ordinary request pays.
        let upgrade = upgrade::is_upgrade(&req).then(|| upgrades.clone());
        async move {
            // Yield once before anything else: hyper looks for the peer's
            // RST_STREAM while this waits, so a stream reset as soon as it
            // was opened (rapid reset) ends here, before the app.
            tokio::task::yield_now().await;
            let started = tokio::time::Instant::now();
            // In flight from here until the response stream ends, or this
            // future is dropped (the caller reset the stream).
            let serving = inbound.served.start(caller_counts);
            // The caller's deadline (grpc-timeout) holds here too:
            // the app's answer is cut when it runs out.
            let deadline = h::grpc_deadline(req.headers(), started);
            let head = req.method() == Method::HEAD;
            let answer = match upgrade {
                None => request(req, &inbound, &caller, port, deadline).await,
                Some(drain) => {
                    Box::pin(upgrade::request(req, &inbound, &caller, port, drain)).await
                }
            };
            stream.answered();
            let (mut resp, serving) = match answer {
                Answer::Version(resp) => (resp, Some(serving)),
                Answer::Refused(resp) => (*resp, None),
            };
            if head {
                // A response to HEAD has no body (RFC 9110 §9.3.2); over
                // HTTP/2 DATA frames would be a protocol error, and the
                // mesh's own answers (403, 502, ...) carry a text body.
                resp = resp.map(|_| h::empty());
            }
            let resp = Observed::wrap(resp, started, metrics, None, deadline, serving);
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let limits = &inbound.limits;
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.http2_keepalive)
        .keep_alive_timeout(limits::KEEPALIVE_TIMEOUT)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        // The caller's apps share the connection: one request body the app
        // does not read must not hold the window the others need.
        .initial_stream_window_size(limits::STREAM_WINDOW)
        .initial_connection_window_size(limits.connection_window())
        .max_send_buf_size(limits::SEND_BUFFER)
        // Resets are judged by `ConnStreams`, which sends GOAWAY and lets
        // the streams in flight finish; h2's own guard (reset streams not
        // yet accepted) ends the connection at once, failing every stream
        // the caller's other apps have on it: it stays, above ours.
        .max_pending_accept_reset_streams(limits.max_concurrent_streams as usize)
        // RFC 8441: upgrades arrive as extended CONNECT.
        .enable_connect_protocol()
        .serve_connection(TokioIo::new(FrameMeter::new(tls, streams.clone())), service);
    tokio::pin!(conn);
    // The peer's pool stops using the connection a tenth of its
    // certificate's remaining life (at most a minute) before it expires; a
    // twentieth (at most 30 s) before, GOAWAY asks it to, in case it has
    // not.
    let goaway_at = identity::ahead_of(expires, 20, CERT_EXPIRY_GOAWAY);
    let mut idle = IdleCheck::new(limits.idle_timeout);
    let mut until = expires;
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
        flood = streams.flooding() => {
            tracing::warn!(limit = flood.as_str(), "the peer floods: closing its connection");
            until = until.min(tokio::time::Instant::now() + FLOOD_GRACE);
        }
        () = idle.idle(&streams) => {
            limits::exceeded("inbound", Limit::IdleTimeout);
            tracing::debug!("idle connection closed");
        }
        () = &mut untrusted => {
            // The caller, pushed the same bundle, stops sending here
            // meanwhile; what it already sent finishes.
            let since = tokio::time::Instant::now();
            until = until.min(since + trust::UNTRUSTED_CLOSE_AFTER);
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
    // GOAWAY, let in-flight streams finish, but not past the peer
    // certificate's notAfter (or an untrusted peer's grace).
    conn.as_mut().graceful_shutdown();
    if tokio::time::timeout_at(until, conn).await.is_err() {
        tracing::info!("connection closed with streams still open");
    }
}

/// A response to an inbound request, and whose it is.
pub(super) enum Answer {
    /// The app's, or the sidecar's when the app could not give one: this
    /// version's doing, counted in its aggregates.
    Version(Response<Body>),
    /// The mesh refused the request for the caller's own doing (an
    /// ambiguous path, a target that does not parse, an AllowList denial,
    /// a malformed upgrade): not counted for this version (boxed: the
    /// path that serves stays small).
    Refused(Box<Response<Body>>),
}

async fn request(
    mut req: Request<Incoming>,
    inbound: &Inbound,
    caller: &Caller,
    port: u16,
    deadline: Option<tokio::time::Instant>,
) -> Answer {
    let grpc = h::is_grpc(req.headers());
    let protocol = match admit(&mut req, None, inbound, caller, port, grpc) {
        Ok(protocol) => protocol,
        Err(answer) => return *answer,
    };
    let http2 = protocol == Protocol::Grpc;
    if !http2 {
        *req.version_mut() = http::Version::HTTP_11;
    }
    let head_deadline = tokio::time::Instant::now() + inbound.request_timeout;
    let head_deadline = deadline.map_or(head_deadline, |d| d.min(head_deadline));
    match inbound.to_app(req, http2, head_deadline, grpc).await {
        Ok(resp) => Answer::Version(resp.map(|b| b.boxed())),
        Err(failed) => Answer::Version(failed),
    }
}

/// Normalizes the path, authorizes the request (as `method` when given,
/// else its own), and readies it for the app: its URI names the app and the
/// normalized path, Host the caller's authority, and no hop-by-hop header
/// is left. The port's protocol, or the mesh's answer when the request
/// stops here (boxed: the path that admits stays small).
pub(super) fn admit(
    req: &mut Request<Incoming>,
    method: Option<&Method>,
    inbound: &Inbound,
    caller: &Caller,
    port: u16,
    grpc: bool,
) -> Result<Protocol, Box<Answer>> {
    let refused = |resp| Box::new(Answer::Refused(Box::new(resp)));
    let peer = &caller.id;
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
            return Err(refused(h::mesh_response(
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
        return Err(refused(bad_target()));
    };
    let method = method.unwrap_or(req.method());
    let current = inbound.current(port);
    // Only a gateway's requests carry end-user claims (nothing to parse
    // on any other).
    let claims = h::gateway_claims(peer, req.headers());
    let decision = policy::authorize(
        &current.allow_lists,
        peer,
        port,
        Some(HttpRequestInfo {
            method: method.as_str(),
            normalized_path: path_and_query.path(),
            claims: claims.as_ref(),
        }),
        &inbound.trust_domain,
    );
    match decision.verdict {
        Verdict::Deny => {
            let label = decision.label();
            deny_log(
                peer,
                inbound.service(),
                &label,
                port,
                method.as_str(),
                path_and_query.path(),
            );
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
            return Err(refused(resp));
        }
        Verdict::AuditAllow => {
            metrics::counter!("bulkhead_authz_audit_total", "target" => inbound.service().to_owned(), "peer" => peer.to_string(), "rule" => decision.label()).increment(1);
            tracing::info!(%peer, port, %method, rule = %decision.label(), "audit: would deny request");
        }
        Verdict::Allow => {}
    }
    let Some(app) = inbound.apps.for_port(port) else {
        // This sidecar's own shortcoming: the version cannot serve.
        return Err(Box::new(Answer::Version(h::mesh_response(
            grpc,
            StatusCode::SERVICE_UNAVAILABLE,
            "no-app",
            &format!("bulkhead: no app behind this sidecar for port {port} (--app PORT=ADDR)"),
        ))));
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
        return Err(refused(bad_target()));
    };
    *req.uri_mut() = uri;
    h::strip_hop_by_hop(req.headers_mut());
    caller.tell_app(req.headers_mut());
    Ok(current.protocol)
}
