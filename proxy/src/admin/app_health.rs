//! The app's kubelet probes, served for the kubelet on the admin port.
//!
//! Inbound capture sends every connection to the pod to the mTLS port, so
//! the kubelet's plaintext probes cannot reach the app. The injector
//! rewrites them to `GET /app-health/<container>/<kind>` here and passes
//! the original targets in `BULKHEAD_APP_PROBES` (JSON, read once):
//!
//! ```json
//! {"/app-health/web/readiness": {"port": 8080, "path": "/ready", "scheme": "HTTP",
//!                                "headers": [{"name": "X-Probe", "value": "1"}]},
//!  "/app-health/web/liveness":  {"tcp": 8080},
//!  "/app-health/web/startup":   {"grpc": 9090, "service": ""}}
//! ```
//!
//! Each request checks the app on 127.0.0.1 as the kubelet would have:
//! HTTP(S) `GET` (TLS unverified, like the kubelet) answered with the app's
//! own status code; TCP connect → 200; gRPC health `Check` `SERVING` → 200;
//! no answer within [`TIMEOUT`] → 503. Unknown paths → 404, and a table
//! that does not parse is logged and serves 404 for every path.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;

pub(super) const ENV: &str = "BULKHEAD_APP_PROBES";
pub(super) const PREFIX: &str = "/app-health/";
/// The longest one check of the app may take.
pub(super) const TIMEOUT: Duration = Duration::from_secs(5);
/// Checks running at once; more are answered 503 at once.
const MAX_IN_FLIGHT: usize = 32;
const MAX_ENTRIES: usize = 256;
const MAX_HEADERS: usize = 32;
/// Of a gRPC health response.
const MAX_BODY: usize = 64 * 1024;

/// One probe's original target, on 127.0.0.1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Probe {
    Http {
        port: u16,
        path: PathAndQuery,
        tls: bool,
        headers: Vec<(HeaderName, HeaderValue)>,
    },
    Tcp {
        port: u16,
    },
    Grpc {
        port: u16,
        service: String,
    },
}

pub(super) type Table = BTreeMap<String, Probe>;

#[derive(Deserialize)]
struct Entry {
    port: Option<u16>,
    path: Option<String>,
    scheme: Option<String>,
    #[serde(default)]
    headers: Vec<HeaderEntry>,
    tcp: Option<u16>,
    grpc: Option<u16>,
    service: Option<String>,
}

#[derive(Deserialize)]
struct HeaderEntry {
    name: String,
    #[serde(default)]
    value: String,
}

/// Parses the table; any bad entry rejects it whole, named.
pub(super) fn parse(json: &str) -> Result<Table, String> {
    let raw: BTreeMap<String, Entry> =
        serde_json::from_str(json).map_err(|e| format!("not a JSON object of probes: {e}"))?;
    if raw.len() > MAX_ENTRIES {
        return Err(format!("{} probes; at most {MAX_ENTRIES}", raw.len()));
    }
    raw.into_iter()
        .map(|(path, e)| {
            let probe = entry(e).map_err(|why| format!("{path:?}: {why}"))?;
            if !path.starts_with(PREFIX) {
                return Err(format!("{path:?}: does not start with {PREFIX}"));
            }
            Ok((path, probe))
        })
        .collect()
}

fn entry(e: Entry) -> Result<Probe, String> {
    let nonzero = |p: u16, what: &str| {
        if p == 0 {
            Err(format!("{what}: port 0"))
        } else {
            Ok(p)
        }
    };
    match (e.port, e.tcp, e.grpc) {
        (Some(port), None, None) => {
            let tls = match e.scheme.as_deref().unwrap_or("HTTP") {
                s if s.eq_ignore_ascii_case("http") => false,
                s if s.eq_ignore_ascii_case("https") => true,
                other => return Err(format!("scheme {other:?}: expected HTTP or HTTPS")),
            };
            let path = e.path.as_deref().filter(|p| !p.is_empty()).unwrap_or("/");
            if !path.starts_with('/') {
                return Err(format!("path {path:?} does not start with /"));
            }
            let path =
                PathAndQuery::try_from(path).map_err(|err| format!("path {path:?}: {err}"))?;
            if e.headers.len() > MAX_HEADERS {
                return Err(format!(
                    "{} headers; at most {MAX_HEADERS}",
                    e.headers.len()
                ));
            }
            let headers = e
                .headers
                .into_iter()
                .map(|h| {
                    let name = HeaderName::try_from(h.name.as_str())
                        .map_err(|err| format!("header {:?}: {err}", h.name))?;
                    let value = HeaderValue::try_from(h.value.as_str())
                        .map_err(|err| format!("header {:?} value: {err}", h.name))?;
                    Ok((name, value))
                })
                .collect::<Result<_, String>>()?;
            Ok(Probe::Http {
                port: nonzero(port, "port")?,
                path,
                tls,
                headers,
            })
        }
        (None, Some(port), None) => Ok(Probe::Tcp {
            port: nonzero(port, "tcp")?,
        }),
        (None, None, Some(port)) => {
            let service = e.service.unwrap_or_default();
            if service.len() > 1024 {
                return Err("grpc service name longer than 1024 bytes".into());
            }
            Ok(Probe::Grpc {
                port: nonzero(port, "grpc")?,
                service,
            })
        }
        _ => Err("expected exactly one of port (HTTP), tcp or grpc".into()),
    }
}

/// Reads the table from the environment (once; later calls are free).
pub(super) fn load() {
    table();
}

/// The table from the environment, read on first use.
fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| match std::env::var(ENV) {
        Err(std::env::VarError::NotPresent) => Table::new(),
        Err(error) => {
            tracing::error!(%error, "{ENV}: unreadable; /app-health/* answers 404");
            Table::new()
        }
        Ok(json) => match parse(&json) {
            Ok(table) => {
                tracing::info!(probes = table.len(), "app probes served on the admin port");
                table
            }
            Err(error) => {
                tracing::error!(%error, "{ENV}: ignored; /app-health/* answers 404");
                Table::new()
            }
        },
    })
}

/// Whether the app passes its own readiness probes (every table entry
/// whose path ends in `/readiness`; 200–399 passes, as for the kubelet).
/// `None`: the table has none (the caller falls back to a TCP connect).
pub(super) async fn app_ready(timeout: Duration) -> Option<Result<(), String>> {
    let mut probes: Vec<(&'static String, &'static Probe)> = Vec::new();
    for (path, probe) in table() {
        if path.ends_with("/readiness") {
            probes.push((path, probe));
        }
    }
    if probes.is_empty() {
        return None;
    }
    for (path, probe) in probes {
        match check(probe, timeout).await {
            Ok(status) if (200..400).contains(&status.as_u16()) => {}
            Ok(status) => return Some(Err(format!("app readiness {path} answered {status}"))),
            Err(why) => return Some(Err(format!("app readiness {path}: {why}"))),
        }
    }
    Some(Ok(()))
}

/// Answers one `/app-health/...` request.
pub(super) async fn answer(path: &str) -> (StatusCode, String) {
    let Some(probe) = table().get(path) else {
        return (StatusCode::NOT_FOUND, format!("no app probe at {path}\n"));
    };
    static IN_FLIGHT: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_IN_FLIGHT);
    let Ok(_permit) = IN_FLIGHT.try_acquire() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many app probes at once\n".into(),
        );
    };
    match check(probe, TIMEOUT).await {
        Ok(status) => (status, format!("app answered {}\n", status.as_u16())),
        Err(why) => {
            tracing::debug!(path, %why, "app probe failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("app probe failed: {why}\n"),
            )
        }
    }
}

/// Checks the app: the status to answer the kubelet with, or why the
/// app could not be reached (→ 503).
pub(super) async fn check(probe: &Probe, timeout: Duration) -> Result<StatusCode, String> {
    match tokio::time::timeout(timeout, check_inner(probe)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

async fn check_inner(probe: &Probe) -> Result<StatusCode, String> {
    let addr = |port: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match probe {
        Probe::Tcp { port } => {
            TcpStream::connect(addr(*port))
                .await
                .map_err(|e| format!("connect {}: {e}", addr(*port)))?;
            Ok(StatusCode::OK)
        }
        Probe::Http {
            port,
            path,
            tls,
            headers,
        } => {
            let tcp = TcpStream::connect(addr(*port))
                .await
                .map_err(|e| format!("connect {}: {e}", addr(*port)))?;
            let mut req = Request::get(path.as_str()).body(Full::new(Bytes::new()));
            if let Ok(req) = &mut req {
                let h = req.headers_mut();
                if let Ok(host) = HeaderValue::try_from(format!("127.0.0.1:{port}")) {
                    h.insert(http::header::HOST, host);
                }
                h.insert(
                    http::header::USER_AGENT,
                    HeaderValue::from_static("kube-probe/bulkhead"),
                );
                h.insert(http::header::ACCEPT, HeaderValue::from_static("*/*"));
                h.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                // The probe's own headers win, Host included.
                for (name, _) in headers {
                    h.remove(name);
                }
                for (name, value) in headers {
                    h.append(name.clone(), value.clone());
                }
            }
            let req = req.map_err(|e| format!("request: {e}"))?;
            if *tls {
                let config = insecure_tls().ok_or("no TLS client configuration")?;
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(
                        rustls_pki_types::ServerName::IpAddress(Ipv4Addr::LOCALHOST.into()),
                        tcp,
                    )
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                http1_status(TokioIo::new(tls), req).await
            } else {
                http1_status(TokioIo::new(tcp), req).await
            }
        }
        Probe::Grpc { port, service } => grpc_health(addr(*port), service).await,
    }
}

async fn http1_status<T>(io: T, req: Request<Full<Bytes>>) -> Result<StatusCode, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let conn = tokio::spawn(conn);
    let result = sender
        .send_request(req)
        .await
        .map(|resp| resp.status())
        .map_err(|e| format!("HTTP: {e}"));
    // The body is not read: the connection goes with the answer.
    conn.abort();
    result
}

/// `grpc.health.v1.Health/Check` over h2c (tonic-health's client): 200
/// when `SERVING`. The caller bounds it in time.
async fn grpc_health(addr: SocketAddr, service: &str) -> Result<StatusCode, String> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("address {addr}: {e}"))?
        .user_agent("kube-probe/bulkhead")
        .map_err(|e| format!("user agent: {e}"))?
        .connect()
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let mut client = HealthClient::new(channel).max_decoding_message_size(MAX_BODY);
    let reply = client
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map_err(|status| format!("grpc-status {}: {}", status.code() as i32, status.message()))?
        .into_inner();
    serving(&reply)
}

/// What an app's health answer means for the probe: 200 when `SERVING`.
pub(crate) fn serving(reply: &tonic_health::pb::HealthCheckResponse) -> Result<StatusCode, String> {
    use tonic_health::pb::health_check_response::ServingStatus;
    match ServingStatus::try_from(reply.status) {
        Ok(ServingStatus::Serving) => Ok(StatusCode::OK),
        Ok(other) => Err(format!(
            "health status {}, not SERVING",
            other.as_str_name()
        )),
        Err(_) => Err(format!("health status {}, not SERVING", reply.status)),
    }
}

/// The kubelet does not verify the app's certificate; neither do we.
fn insecure_tls() -> Option<Arc<rustls::ClientConfig>> {
    static CONFIG: OnceLock<Option<Arc<rustls::ClientConfig>>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map(|b| {
                    Arc::new(
                        b.dangerous()
                            .with_custom_certificate_verifier(Arc::new(bulkhead_tls::AnyServer(
                                provider,
                            )))
                            .with_no_client_auth(),
                    )
                })
                .ok()
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_parse_or_are_refused_whole() {
        let t = parse(
            r#"{"/app-health/web/readiness": {"port": 8080, "path": "/ready?x=1", "scheme": "HTTPS",
                 "headers": [{"name": "X-Probe", "value": "1"}]},
                "/app-health/web/liveness": {"tcp": 8080},
                "/app-health/web/startup": {"grpc": 9090}}"#,
        )
        .unwrap();
        assert_eq!(t.len(), 3);
        match &t["/app-health/web/readiness"] {
            Probe::Http {
                port: 8080,
                path,
                tls: true,
                headers,
            } => {
                assert_eq!(path.as_str(), "/ready?x=1");
                assert_eq!(headers.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(t["/app-health/web/liveness"], Probe::Tcp { port: 8080 });
        assert_eq!(
            t["/app-health/web/startup"],
            Probe::Grpc {
                port: 9090,
                service: String::new()
            }
        );
        for bad in [
            "[]",
            "{",
            r#"{"/x": {"tcp": 1}}"#,
            r#"{"/app-health/a/b": {}}"#,
            r#"{"/app-health/a/b": {"tcp": 1, "port": 2}}"#,
            r#"{"/app-health/a/b": {"tcp": 0}}"#,
            r#"{"/app-health/a/b": {"tcp": 70000}}"#,
            r#"{"/app-health/a/b": {"port": 1, "scheme": "FTP"}}"#,
            r#"{"/app-health/a/b": {"port": 1, "path": "nope"}}"#,
            r#"{"/app-health/a/b": {"port": 1, "headers": [{"name": "bad name"}]}}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn closed_ports_are_unavailable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let timeout = Duration::from_secs(2);
        assert!(check(&Probe::Tcp { port }, timeout).await.is_err());
        let http = Probe::Http {
            port,
            path: PathAndQuery::from_static("/"),
            tls: false,
            headers: vec![],
        };
        assert!(check(&http, timeout).await.is_err());
        let grpc = Probe::Grpc {
            port,
            service: "x".into(),
        };
        assert!(check(&grpc, timeout).await.is_err());
    }
}
