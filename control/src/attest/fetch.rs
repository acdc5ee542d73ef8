//! Fetching the cluster's service-account issuer keys from the API server
//! (`GET /openid/v1/jwks`), over TLS verified against the cluster CA, with
//! the control plane's own service-account token as bearer. Bounded in time
//! and size.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::JwkSet;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use super::AttestError;

const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Where to fetch keys from, and how to authenticate there.
#[derive(Clone)]
pub struct Remote {
    /// `https://host[:port]/path`.
    pub url: String,
    /// The API server's CA (PEM).
    pub ca_pem: Vec<u8>,
    /// A file with a bearer token, re-read at each fetch (it is rotated).
    pub token_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("url", &self.url).finish()
    }
}

fn err(url: &str, reason: impl std::fmt::Display) -> AttestError {
    AttestError::Jwks {
        path: url.to_owned(),
        reason: reason.to_string(),
    }
}

impl Remote {
    pub async fn fetch(&self) -> Result<JwkSet, AttestError> {
        tokio::time::timeout(FETCH_TIMEOUT, self.fetch_unbounded())
            .await
            .map_err(|_| err(&self.url, "timed out"))?
    }

    async fn fetch_unbounded(&self) -> Result<JwkSet, AttestError> {
        let url = &self.url;
        let uri: http::Uri = url
            .parse()
            .map_err(|e| err(url, format!("not a URL: {e}")))?;
        if uri.scheme_str() != Some("https") {
            return Err(err(url, "only https:// URLs are fetched"));
        }
        let host = uri
            .host()
            .ok_or_else(|| err(url, "no host"))?
            .trim_matches(['[', ']'])
            .to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let mut roots = rustls::RootCertStore::empty();
        for cert in
            bulkhead_tls::certs_from_pem(&self.ca_pem, "API server CA").map_err(|e| err(url, e))?
        {
            roots.add(cert).map_err(|e| err(url, e))?;
        }
        let config = rustls::ClientConfig::builder_with_provider(bulkhead_tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| err(url, e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from(host.clone()).map_err(|e| err(url, e))?;
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| err(url, e))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| err(url, format!("TLS: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| err(url, e))?;
        tokio::spawn(conn);
        let mut req = http::Request::get(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
            .header(
                http::header::HOST,
                uri.authority().map(|a| a.as_str()).unwrap_or(&host),
            )
            .header(
                http::header::ACCEPT,
                "application/jwk-set+json, application/json",
            );
        if let Some(path) = &self.token_file {
            let token = std::fs::read_to_string(path)
                .map_err(|e| err(url, format!("token file {}: {e}", path.display())))?;
            req = req.header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", token.trim()),
            );
        }
        let req = req.body(Empty::<Bytes>::new()).map_err(|e| err(url, e))?;
        let resp = sender.send_request(req).await.map_err(|e| err(url, e))?;
        if !resp.status().is_success() {
            return Err(err(url, format!("HTTP {}", resp.status())));
        }
        let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| err(url, format!("body: {e}")))?
            .to_bytes();
        let set: JwkSet = serde_json::from_slice(&body)
            .map_err(|e| err(url, format!("not a JWKS document: {e}")))?;
        if set.keys.is_empty() {
            return Err(err(url, "holds no keys"));
        }
        tracing::info!(%url, keys = set.keys.len(), "fetched service-account issuer keys");
        Ok(set)
    }
}
