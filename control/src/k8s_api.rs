//! Talking to the Kubernetes API server: one request over TLS verified
//! against the cluster CA, with the control plane's own service-account
//! token as bearer (re-read at each call: the kubelet rotates it), the
//! answer bounded in size. Serves the issuer-keys fetch (attestation, any
//! URL: [`get`]) and, through one [`ApiServer`], Node topology labels
//! ([`crate::topology`]) and the webhook configuration's `caBundle`
//! ([`crate::webhook::ca_bundle`]). Callers bound every call in time.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

/// How much of a refusal's body is read for its `Status` message.
const MAX_ERROR_BYTES: usize = 16 * 1024;

/// Why a call failed: the HTTP status when the server answered.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct ApiError {
    pub status: Option<http::StatusCode>,
    pub reason: String,
}

fn fail(reason: impl std::fmt::Display) -> ApiError {
    ApiError {
        status: None,
        reason: reason.to_string(),
    }
}

/// One API server (`https://host[:port]`), its CA and the token file: what
/// `--k8s-api`, `--k8s-api-ca` and `--k8s-api-token` name.
pub struct ApiServer {
    base: String,
    tls: Arc<rustls::ClientConfig>,
    token_file: Option<PathBuf>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("base", &self.base)
            .finish()
    }
}

impl ApiServer {
    /// Checks the URL (https only) and the CA (PEM certificates) once.
    pub fn new(base: &str, ca_pem: &[u8], token_file: Option<PathBuf>) -> Result<Self, String> {
        if !base.starts_with("https://") {
            return Err(format!("{base:?}: must be an https:// URL"));
        }
        let base = base.trim_end_matches('/').to_owned();
        base.parse::<http::Uri>()
            .map_err(|e| format!("{base:?}: not a URL: {e}"))?;
        let tls = client_config(ca_pem).map_err(|e| e.reason)?;
        Ok(Self {
            base,
            tls,
            token_file,
        })
    }

    /// `https://host[:port]`, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET path`; the body, at most `max_bytes`.
    pub async fn get(&self, path: &str, max_bytes: usize) -> Result<Bytes, ApiError> {
        let url = format!("{}{path}", self.base);
        let request = Request {
            method: http::Method::GET,
            url: &url,
            accept: "application/json",
            body: None,
        };
        send(&self.tls, self.token_file.as_deref(), request, max_bytes).await
    }

    /// `PATCH path` with `body` of `content_type` (which says the patch's
    /// kind, e.g. `application/json-patch+json`); the answer's body.
    pub async fn patch(
        &self,
        path: &str,
        content_type: &'static str,
        body: Vec<u8>,
        max_bytes: usize,
    ) -> Result<Bytes, ApiError> {
        let url = format!("{}{path}", self.base);
        let request = Request {
            method: http::Method::PATCH,
            url: &url,
            accept: "application/json",
            body: Some((content_type, body)),
        };
        send(&self.tls, self.token_file.as_deref(), request, max_bytes).await
    }
}

/// `GET url` (https only, any host); the body, at most `max_bytes`.
pub(crate) async fn get(
    url: &str,
    ca_pem: &[u8],
    token_file: Option<&Path>,
    accept: &str,
    max_bytes: usize,
) -> Result<Bytes, ApiError> {
    let tls = client_config(ca_pem)?;
    let request = Request {
        method: http::Method::GET,
        url,
        accept,
        body: None,
    };
    send(&tls, token_file, request, max_bytes).await
}

fn client_config(ca_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, ApiError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in bulkhead_tls::certs_from_pem(ca_pem, "API server CA").map_err(fail)? {
        roots.add(cert).map_err(fail)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(bulkhead_tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(fail)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

struct Request<'a> {
    method: http::Method,
    url: &'a str,
    accept: &'a str,
    /// Content type and bytes.
    body: Option<(&'static str, Vec<u8>)>,
}

async fn send(
    tls: &Arc<rustls::ClientConfig>,
    token_file: Option<&Path>,
    request: Request<'_>,
    max_bytes: usize,
) -> Result<Bytes, ApiError> {
    let uri: http::Uri = request
        .url
        .parse()
        .map_err(|e| fail(format!("not a URL: {e}")))?;
    if uri.scheme_str() != Some("https") {
        return Err(fail("only https:// URLs are fetched"));
    }
    let host = uri
        .host()
        .ok_or_else(|| fail("no host"))?
        .trim_matches(['[', ']'])
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let name = ServerName::try_from(host.clone()).map_err(fail)?;
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(fail)?;
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| fail(format!("TLS: {e}")))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(fail)?;
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(request.method)
        .uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .header(
            http::header::HOST,
            uri.authority().map(|a| a.as_str()).unwrap_or(&host),
        )
        .header(http::header::ACCEPT, request.accept);
    if let Some(path) = token_file {
        let token = std::fs::read_to_string(path)
            .map_err(|e| fail(format!("token file {}: {e}", path.display())))?;
        req = req.header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", token.trim()),
        );
    }
    let body = match request.body {
        Some((content_type, bytes)) => {
            req = req.header(http::header::CONTENT_TYPE, content_type);
            Full::new(Bytes::from(bytes))
        }
        None => Full::new(Bytes::new()),
    };
    let req = req.body(body).map_err(fail)?;
    let resp = sender.send_request(req).await.map_err(fail)?;
    let status = resp.status();
    if !status.is_success() {
        // The API server explains a refusal in a Status object's message
        // ("... is forbidden: User ... cannot patch ..."): worth a log line.
        let body = Limited::new(resp.into_body(), MAX_ERROR_BYTES)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|status| status["message"].as_str().map(str::to_owned));
        return Err(ApiError {
            status: Some(status),
            reason: match message {
                Some(message) => format!("HTTP {status}: {message}"),
                None => format!("HTTP {status}"),
            },
        });
    }
    Ok(Limited::new(resp.into_body(), max_bytes)
        .collect()
        .await
        .map_err(|e| fail(format!("body: {e}")))?
        .to_bytes())
}
