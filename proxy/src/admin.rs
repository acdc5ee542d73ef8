//! The proxy's admin port (default 127.0.0.1:4191): `/metrics`, `/ready`
//! (certificate, config and a live app), `/live`, `/config` (what the
//! sidecar currently acts on, as JSON), and `/app-health/<container>/<kind>`:
//! the app's kubelet probes, rewritten by the injector to come here
//! ([`app_health`]).
//!
//! In a pod the port listens on the pod IP, for the kubelet and Prometheus:
//! from there only probes and `/metrics` answer; `/config` answers only to
//! loopback clients (403 otherwise). Every request is a GET: nothing here
//! changes state.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bulkhead_tls::CertSlot;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::accept::{self, Listener};
use crate::drain::Drain;
use crate::http::{self as h, Body};
use crate::limits::{self, Limit, Limits};
use crate::outbound::Outbound;
use crate::state::{StateCell, Subscribed};

/// Longest an admin connection stays open.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Where an admin request comes from. In a pod the admin port listens on
/// the pod IP (the kubelet and Prometheus need it there), so anyone on the
/// pod network can reach it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Caller {
    /// This pod: may read everything.
    Loopback,
    /// Anywhere else: probes and metrics only.
    Network,
}

pub(crate) struct Admin {
    pub(crate) metrics: PrometheusHandle,
    pub(crate) slot: CertSlot,
    /// The trust bundle in force (`/config` lists its roots).
    pub(crate) bundle: bulkhead_tls::BundleSlot,
    pub(crate) states: StateCell,
    /// Whose balancers `/config` shows.
    pub(crate) outbound: Arc<Outbound>,
    /// The app's `--app` addresses (readiness without a probe: all accept).
    pub(crate) apps: Vec<SocketAddr>,
    /// A resource (`Kind/namespace/name`) the config must hold before this
    /// workload is ready: a gateway's Gateway. `None` for a sidecar.
    pub(crate) requires: Option<String>,
    pub(crate) drain: Drain,
    /// `--header-read-timeout` and `--max-header-bytes` hold here too.
    pub(crate) limits: Limits,
}

impl Admin {
    /// Ready: a certificate, a config, the app ready (its readiness probe,
    /// else answering on --app), not draining.
    pub(crate) async fn readiness(&self) -> Result<(), String> {
        if self.drain.is_draining() {
            return Err("draining".into());
        }
        if self.slot.get().is_none() {
            return Err("no certificate yet".into());
        }
        if self.states.load().revision == 0 {
            return Err("no config from the control plane yet".into());
        }
        if let Some(key) = &self.requires
            && self.states.load().resource(key).is_none()
        {
            return Err(format!("no {key} in the config yet"));
        }
        // The app's own readiness probe when the injector passed one, else
        // a TCP connect to --app.
        if let Some(ready) = app_health::app_ready(Duration::from_secs(1)).await {
            return ready;
        }
        for &app in &self.apps {
            match tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(app))
                .await
            {
                Ok(Ok(_)) => {}
                _ => return Err(format!("app at {app} does not answer")),
            }
        }
        Ok(())
    }

    fn config_json(&self) -> String {
        let state = self.states.load_full();
        let resources: Vec<serde_json::Value> = state
            .resources()
            .filter_map(|r| serde_json::from_str(&r.to_json()).ok())
            .collect();
        let endpoints: Vec<serde_json::Value> = state
            .endpoints()
            .map(|e| {
                serde_json::json!({
                    "namespace": e.namespace, "service": e.service, "version": e.version,
                    "address": e.address.to_string(), "inboundPort": e.inbound_port,
                    "identity": e.identity.as_ref().map(|i| i.to_string()),
                    "locality": {"node": e.locality.node, "zone": e.locality.zone, "region": e.locality.region},
                })
            })
            .collect();
        // Read from the certificate in use, so renewals show at once.
        let expiry = self.slot.get().and_then(|key| {
            let not_after = bulkhead_tls::not_after(key.cert.first()?)?;
            Some(not_after.duration_since(UNIX_EPOCH).ok()?.as_secs())
        });
        let balancers: Vec<serde_json::Value> = self
            .outbound
            .balancers
            .snapshot()
            .into_iter()
            .map(|((namespace, service), endpoints)| {
                let endpoints: Vec<serde_json::Value> = endpoints
                    .iter()
                    .map(|s| {
                        serde_json::json!({
                            "address": s.endpoint.address.to_string(),
                            "inboundPort": s.endpoint.inbound_port,
                            "version": s.endpoint.version,
                            "latencyMs": s.latency.as_secs_f64() * 1e3,
                            "inFlight": s.in_flight,
                            "consecutiveFailures": s.consecutive_failures,
                            "ejectedForMs": s.ejected_for.map(|d| d.as_millis() as u64),
                        })
                    })
                    .collect();
                serde_json::json!({"namespace": namespace, "service": service, "endpoints": endpoints})
            })
            .collect();
        // What the state holds in full: `*`, or `name.namespace` each.
        let subscribed: serde_json::Value = match state.subscribed() {
            Subscribed::All => "*".into(),
            Subscribed::Only(set) => {
                let mut names: Vec<String> =
                    set.iter().map(|(ns, n)| format!("{n}.{ns}")).collect();
                names.sort();
                names.into()
            }
        };
        let own = self.outbound.locality.load();
        // SHA-256 fingerprints, as `bulkheadctl ca status` names them.
        let trust_roots: Vec<String> = self
            .bundle
            .get()
            .roots_der()
            .iter()
            .map(|r| bulkhead_tls::fingerprint(r))
            .collect();
        let issuer = self
            .slot
            .get()
            .and_then(|key| key.cert.get(1).map(|i| bulkhead_tls::fingerprint(i)));
        serde_json::to_string_pretty(&serde_json::json!({
            "revision": state.revision,
            "locality": {"node": own.node, "zone": own.zone, "region": own.region},
            "subscribed": subscribed,
            "certificateNotAfterUnix": expiry,
            "certificateIssuer": issuer,
            "trustRoots": trust_roots,
            "resources": resources,
            "endpoints": endpoints,
            "balancers": balancers,
        }))
        .unwrap_or_default()
    }
}

/// Serves the admin port for as long as the process runs: it keeps
/// answering probes (with "draining") while the rest drains.
pub(crate) async fn serve(listener: Listener, admin: Arc<Admin>) {
    // Read the probe table now, so a bad one is reported at start.
    app_health::load();
    let header_read_timeout = admin.limits.header_read_timeout;
    let max_header_bytes = admin.limits.max_header_bytes;
    accept::serve(listener, None, move |tcp, peer| {
        let admin = admin.clone();
        let from = if peer.ip().to_canonical().is_loopback() {
            Caller::Loopback
        } else {
            Caller::Network
        };
        async move {
            let service = hyper::service::service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(route(req, &admin, from).await) }
            });
            // HTTP/1.1 only (what the kubelet and Prometheus speak): no
            // version sniffing that would wait for a first byte forever.
            // A slow or idle client gives its slot back soon: 64 of them
            // must not keep the kubelet's probes waiting.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .max_header_size(max_header_bytes)
                .serve_connection(TokioIo::new(tcp), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                Ok(Err(error)) if error.is_timeout() => {
                    limits::exceeded("admin", Limit::HeaderReadTimeout);
                }
                Ok(Err(error)) if error.is_parse_too_large() => {
                    limits::exceeded("admin", Limit::HeaderSize);
                }
                _ => {}
            }
        }
    })
    .await;
}

fn text(status: StatusCode, body: String, content_type: &'static str) -> Response<Body> {
    let mut r = Response::new(h::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

async fn route(req: Request<Incoming>, admin: &Admin, from: Caller) -> Response<Body> {
    if req.method() != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET\n".into(),
            "text/plain",
        );
    }
    let path = req.uri().path();
    if path.starts_with(app_health::PREFIX) {
        let (status, body) = app_health::answer(path).await;
        return text(status, body, "text/plain");
    }
    match path {
        "/metrics" => {
            // Rendering folds and formats every series: off the serving
            // thread, like the periodic upkeep (run.rs).
            let metrics = admin.metrics.clone();
            match tokio::task::spawn_blocking(move || metrics.render()).await {
                Ok(body) => text(StatusCode::OK, body, "text/plain; version=0.0.4"),
                Err(error) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("could not render metrics: {error}\n"),
                    "text/plain",
                ),
            }
        }
        "/live" => text(StatusCode::OK, "live\n".into(), "text/plain"),
        "/ready" => match admin.readiness().await {
            Ok(()) => text(StatusCode::OK, "ready\n".into(), "text/plain"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
                "text/plain",
            ),
        },
        // Every Service, AllowList, endpoint and identity the sidecar
        // knows: for this pod's eyes only.
        "/config" if from == Caller::Network => text(
            StatusCode::FORBIDDEN,
            "forbidden: /config answers only on loopback; from outside the pod use \
             `kubectl port-forward POD 4191` or `kubectl exec`\n"
                .into(),
            "text/plain",
        ),
        "/config" => text(StatusCode::OK, admin.config_json(), "application/json"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /ready, /live or /config\n".into(),
            "text/plain",
        ),
    }
}

mod app_health;

pub(crate) use self::app_health::serving;
