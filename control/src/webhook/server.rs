//! The webhook's HTTPS listener: accept → TLS (bounded handshake) → HTTP/1.1
//! or HTTP/2 → `POST /inject` with a bounded body read in bounded time →
//! [`Injector::review`] → JSON. Drains on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::Injector;

/// The listener's TLS: TLS 1.2 and 1.3, no client certificate (the API
/// server presents none unless configured to), HTTP/2 or HTTP/1.1, and
/// the certificate `resolver` holds at each handshake (so a renewed one
/// is served without a restart).
pub fn server_config(
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(bulkhead_tls::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The largest review accepted. The API server caps objects near 1.5 MiB;
/// a review carries one (twice for UPDATE) plus a little envelope.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;
const PATH: &str = "/inject";
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Reading the body and deciding; the API server itself gives up at 30 s.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONNECTIONS: usize = 512;
const MAX_STREAMS_PER_CONNECTION: u32 = 64;
/// How long in-flight reviews may take once shutdown starts.
const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Serves `/inject` on `listener` until `shutdown` completes, then stops
/// accepting, lets open connections finish their reviews (up to a grace
/// period) and returns.
pub async fn serve(
    listener: TcpListener,
    tls: TlsAcceptor,
    injector: watch::Receiver<Arc<Injector>>,
    shutdown: impl Future,
) {
    let (drain_tx, drain_rx) = watch::channel(false);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(error) => {
                        // Out of file descriptors and the like: back off.
                        tracing::warn!(%error, "webhook accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, "webhook connection refused: {MAX_CONNECTIONS} already open");
                    continue;
                };
                let (tls, injector, drain) = (tls.clone(), injector.clone(), drain_rx.clone());
                connections.spawn(async move {
                    connection(tcp, peer, tls, injector, drain).await;
                    drop(slot);
                });
            }
        }
    }
    drop(listener);
    let _ = drain_tx.send(true);
    let drained = tokio::time::timeout(DRAIN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "webhook connections still open after the drain grace; closing them"
        );
        connections.shutdown().await;
    }
}

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: TlsAcceptor,
    injector: watch::Receiver<Arc<Injector>>,
    mut drain: watch::Receiver<bool>,
) {
    let stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "webhook TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "webhook TLS handshake timed out");
            return;
        }
    };
    let service = hyper::service::service_fn(move |req| {
        // The injector in force now (it follows the trust bundle).
        let injector = injector.borrow().clone();
        async move { Ok::<_, Infallible>(handle(req, &injector).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "webhook connection ended with an error");
            }
            return;
        }
        _ = drain.wait_for(|draining| *draining) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

fn text(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::from(format!("{message}\n")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn body(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp
}

fn count(result: &'static str) {
    metrics::counter!("bulkhead_webhook_reviews_total", "result" => result).increment(1);
}

async fn handle(req: Request<Incoming>, injector: &Injector) -> Response<Full<Bytes>> {
    if req.uri().path() != PATH {
        return text(
            StatusCode::NOT_FOUND,
            "not found: the webhook is POST /inject",
        );
    }
    if req.method() != Method::POST {
        let mut resp = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: POST an AdmissionReview to /inject",
        );
        resp.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
        return resp;
    }
    let too_large = || {
        count("malformed");
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("payload too large: an AdmissionReview is at most {MAX_BODY_BYTES} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return too_large();
    }
    let read = Limited::new(req.into_body(), MAX_BODY_BYTES).collect();
    let bytes = match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(error)) if error.downcast_ref::<LengthLimitError>().is_some() => return too_large(),
        Ok(Err(error)) => {
            count("malformed");
            return text(
                StatusCode::BAD_REQUEST,
                &format!("could not read the request body: {error}"),
            );
        }
        Err(_) => {
            count("malformed");
            return text(
                StatusCode::REQUEST_TIMEOUT,
                "request timeout: the body did not arrive in time",
            );
        }
    };
    match injector.review(&bytes) {
        Ok(reviewed) => {
            count(reviewed.verdict.as_str());
            tracing::info!(
                uid = %reviewed.uid,
                verdict = reviewed.verdict.as_str(),
                warnings = reviewed.warnings.len(),
                "admission review"
            );
            body(StatusCode::OK, "application/json", reviewed.json)
        }
        Err(error) => {
            count("malformed");
            tracing::warn!(uid = error.uid.as_deref().unwrap_or("-"), %error, "bad admission review");
            let (content_type, bytes) = error.body();
            body(StatusCode::BAD_REQUEST, content_type, bytes)
        }
    }
}
