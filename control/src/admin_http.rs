//! The control plane's admin port (default 127.0.0.1:9990): `/metrics`
//! (Prometheus text; the trust's expiry gauges are rendered from the trust
//! in force, the per-version gauges and histograms from the reports this
//! replica received), `/ready` (store reachable, state loaded, and a key for the
//! issuer that signs: a replica that cannot sign takes no traffic), `/live`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes_body::Full;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::hub::Hub;
use crate::store::Store;

mod bytes_body {
    pub(super) type Full = http_body_util::Full<hyper::body::Bytes>;
}

/// How long `/ready` waits for the store before calling it unready.
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub(crate) struct AdminState {
    pub metrics: PrometheusHandle,
    pub store: Arc<dyn Store>,
    pub hub: Arc<Hub>,
    pub trust: Arc<crate::trust::Trust>,
    pub measurements: Arc<crate::measure::Measurements>,
}

/// Serves the admin endpoints until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, state: AdminState) {
    loop {
        let (tcp, _) = accept_next(&listener, "admin").await;
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(req, &state).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(tcp), service);
            // Admin clients are scrapers and probes: bound how long one may
            // hold a connection.
            let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
        });
    }
}

/// The next connection; a failed accept (descriptors exhausted, say) is
/// logged and retried after a pause rather than ending the listener.
pub(crate) async fn accept_next(
    listener: &TcpListener,
    what: &str,
) -> (tokio::net::TcpStream, std::net::SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(a) => return a,
            Err(error) => {
                tracing::warn!(%error, "{what} accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::from(body.into()))
        .unwrap_or_default()
}

async fn route(req: Request<Incoming>, state: &AdminState) -> Response<Full> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match req.uri().path() {
        "/metrics" => {
            let mut body = state.metrics.render();
            body.push_str(&crate::trust::expiry::render(&state.trust.record()));
            body.push_str(&state.measurements.render());
            let mut resp = text(StatusCode::OK, body);
            resp.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            resp
        }
        "/live" => text(StatusCode::OK, "live\n"),
        "/ready" => {
            if !state.hub.is_synced() {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: mesh state not loaded yet\n",
                );
            }
            if let Err(no_signer) = state.trust.signer() {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {no_signer}\n"),
                );
            }
            match tokio::time::timeout(READY_PROBE_TIMEOUT, state.store.health()).await {
                Ok(Ok(())) => text(StatusCode::OK, "ready\n"),
                Ok(Err(error)) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {error}\n"),
                ),
                Err(_) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: store health check timed out\n",
                ),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /ready or /live\n",
        ),
    }
}
