//! The dashboard (`bulkheadctl dashboard`, `bulkhead-demo --dashboard`):
//! a web server on loopback that talks to the control plane with the
//! operator's credentials, the way `kubectl proxy` does. Nothing new is
//! exposed: the browser talks only to 127.0.0.1 ([`guard`]), the control
//! plane only to an authenticated operator.
//!
//! The page is plain HTML, CSS and JavaScript built into the binary
//! (`assets/`, no CDN, works offline) and draws every string from the
//! mesh as text, never as markup. It is live: the control plane's event
//! stream is relayed to it over Server-Sent Events ([`live`],
//! `/api/events`) and each event refreshes the view it concerns; figures
//! that have no event (rates, latencies) are polled from the JSON [`api`]
//! every few seconds. The charts' history is sampled here ([`history`]);
//! the Policy view's answers come from the same code as `bulkheadctl
//! explain` ([`policy`], [`crate::explain`]).
//!
//! Views plug into the page's registry (`VIEWS` in `assets/app.js`): a
//! view is a nav label, a route, and a function that fetches its JSON
//! and draws it.

mod api;
mod guard;
mod history;
mod live;
mod policy;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bulkhead_proto::pb::admin_client::AdminClient;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tonic::transport::Channel;

use api::{Api, ApiError, RolloutAction, check_name};
use policy::ExplainForm;

/// The port `bulkheadctl dashboard` listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 50750;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// Largest request body accepted (a rollout action is a few dozen bytes).
const MAX_BODY: usize = 16 * 1024;
/// Connections served at once; more wait.
const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one connection may stay open (the page opens another; an
/// event stream cut this way is resumed by the browser with `Last-Event-ID`).
const CONNECTION_LIMIT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    #[error("{0}: the dashboard listens on loopback only (127.0.0.1 or ::1)")]
    NotLoopback(IpAddr),
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
}

struct State {
    api: Api,
    token: String,
    port: u16,
    index: String,
}

/// A bound dashboard, not serving yet.
pub struct Dashboard {
    listener: TcpListener,
    addr: SocketAddr,
    state: State,
}

impl Dashboard {
    /// Binds `address` (loopback only; port 0 picks one) for a dashboard
    /// that reads the control plane through `admin`.
    pub async fn bind(
        address: SocketAddr,
        admin: AdminClient<Channel>,
    ) -> Result<Self, DashboardError> {
        if !address.ip().is_loopback() {
            return Err(DashboardError::NotLoopback(address.ip()));
        }
        let listener = TcpListener::bind(address)
            .await
            .map_err(|e| DashboardError::Bind(address, e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| DashboardError::Bind(address, e))?;
        let token = guard::new_token();
        // The token is hex: safe inside an attribute.
        let index = INDEX_HTML.replace("{{TOKEN}}", &token);
        Ok(Self {
            listener,
            addr,
            state: State {
                api: Api::new(admin),
                token,
                port: addr.port(),
                index,
            },
        })
    }

    /// The mesh's trust domain, which `ns/sa` callers in the Policy
    /// view's form belong to (default `cluster.local`).
    pub fn trust_domain(mut self, trust_domain: &str) -> Self {
        self.state.api.trust_domain = trust_domain.to_owned();
        self
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The page's address, as printed for the user.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Serves until `shutdown` completes; follows the event stream and
    /// samples the charts' history meanwhile.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let state = Arc::new(self.state);
        let relay = tokio::spawn(state.api.live.clone().follow(state.api.admin.clone()));
        let sampler = {
            let state = state.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(history::SAMPLE_EVERY);
                loop {
                    tick.tick().await;
                    if let Err(error) = state.api.sample().await {
                        tracing::debug!(%error, "dashboard: no sample");
                    }
                }
            })
        };
        let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        tokio::select! {
            () = shutdown => {}
            () = accept(self.listener, state, connections) => {}
        }
        sampler.abort();
        relay.abort();
    }
}

async fn accept(listener: TcpListener, state: Arc<State>, connections: Arc<Semaphore>) {
    loop {
        let Ok(permit) = connections.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = crate::admin_http::accept_next(&listener, "dashboard").await;
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(secured(handle(req, peer, &state).await)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(CONNECTION_LIMIT, conn).await;
            drop(permit);
        });
    }
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()).boxed_unsync());
    *resp.status_mut() = status;
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, value);
    }
    resp
}

/// `/api/events`: the relayed event stream; a page resumes with the
/// `Last-Event-ID` its browser sends.
fn event_stream(req: &Request<Incoming>, state: &State) -> Response<Body> {
    let last_id = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
        .filter(|id| *id >= 0);
    match state.api.live.stream(last_id) {
        Ok(frames) => {
            let mut resp = Response::new(StreamBody::new(frames).boxed_unsync());
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/event-stream"),
            );
            resp
        }
        Err(busy) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"error": busy.to_string()}),
        ),
    }
}

fn answer(result: Result<serde_json::Value, ApiError>) -> Response<Body> {
    match result {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => error_response(&e),
    }
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    respond(
        status,
        "application/json",
        serde_json::to_vec(value).unwrap_or_default(),
    )
}

fn error_response(error: &ApiError) -> Response<Body> {
    json_response(error.status(), &json!({"error": error.to_string()}))
}

fn refused(why: &guard::Refusal) -> Response<Body> {
    json_response(StatusCode::FORBIDDEN, &json!({"error": why.to_string()}))
}

/// Every response leaves with the security headers.
fn secured(mut resp: Response<Body>) -> Response<Body> {
    let headers = resp.headers_mut();
    for (name, value) in guard::SECURITY_HEADERS {
        headers.insert(*name, http::HeaderValue::from_static(value));
    }
    resp
}

/// One request's steps: who asks (loopback, our Host), which route, and
/// for a change the token and origin, a bounded body, then the API.
async fn handle(req: Request<Incoming>, peer: SocketAddr, state: &State) -> Response<Body> {
    if let Err(why) = guard::check_request(peer, req.headers(), state.port) {
        return refused(&why);
    }
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/") => respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            state.index.clone(),
        ),
        (&Method::GET, "/app.js") => {
            respond(StatusCode::OK, "text/javascript; charset=utf-8", APP_JS)
        }
        (&Method::GET, "/style.css") => {
            respond(StatusCode::OK, "text/css; charset=utf-8", STYLE_CSS)
        }
        (&Method::GET, "/api/overview") => answer(state.api.overview().await),
        (&Method::GET, "/api/service" | "/api/policy") => {
            let query = req.uri().query().unwrap_or_default();
            let (namespace, name) = (param(query, "namespace"), param(query, "name"));
            if let Err(e) = check_name("namespace", namespace).and(check_name("name", name)) {
                return error_response(&e);
            }
            answer(if path == "/api/service" {
                state.api.service(namespace, name).await
            } else {
                state.api.policy(namespace, name).await
            })
        }
        (&Method::GET, "/api/denials") => answer(Ok(json!({"denials": state.api.live.denials()}))),
        (&Method::GET, "/api/events") => event_stream(&req, state),
        (&Method::POST, "/api/explain") => {
            // Read-only, but it carries a body: the page's token all the same.
            if let Err(why) = guard::check_change(req.headers(), state.port, &state.token) {
                return refused(&why);
            }
            match read_json::<ExplainForm>(req).await {
                Ok(form) => answer(state.api.explain(&form).await),
                Err(e) => error_response(&e),
            }
        }
        (&Method::POST, "/api/rollout-action") => {
            if let Err(why) = guard::check_change(req.headers(), state.port, &state.token) {
                return refused(&why);
            }
            let action = match read_json::<RolloutAction>(req).await {
                Ok(a) => a,
                Err(e) => return error_response(&e),
            };
            answer(state.api.act(&action).await)
        }
        (
            _,
            "/"
            | "/app.js"
            | "/style.css"
            | "/api/overview"
            | "/api/service"
            | "/api/policy"
            | "/api/denials"
            | "/api/events"
            | "/api/explain"
            | "/api/rollout-action",
        ) => json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "method not allowed"}),
        ),
        _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "no such page"})),
    }
}

/// A query parameter's value (names and namespaces need no decoding:
/// anything but a DNS name is refused after).
fn param<'a>(query: &'a str, name: &str) -> &'a str {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .unwrap_or_default()
}

async fn read_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, ApiError> {
    let is_json = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        return Err(ApiError::BadRequest(
            "expected Content-Type: application/json".into(),
        ));
    }
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| ApiError::BadRequest(format!("body unreadable or over {MAX_BODY} bytes")))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters() {
        assert_eq!(param("namespace=shop&name=web", "name"), "web");
        assert_eq!(param("namespace=shop&name=web", "namespace"), "shop");
        assert_eq!(param("namespace=shop", "name"), "");
        assert_eq!(param("", "name"), "");
    }

    #[test]
    fn the_page_loads_only_its_own_script() {
        assert!(INDEX_HTML.contains("{{TOKEN}}"));
        assert!(INDEX_HTML.contains("src=\"/app.js\""));
        assert!(!INDEX_HTML.contains("<script>"), "no inline script (CSP)");
        assert!(
            !APP_JS.contains("innerHTML"),
            "mesh strings are text, never markup"
        );
    }
}
