//! Reading the Kubernetes API server: one `GET` over TLS verified against
//! the cluster CA, with the control plane's own service-account token as
//! bearer (re-read at each call: the kubelet rotates it), the body bounded
//! in size. Serves the issuer-keys fetch (attestation) and Node topology
//! labels ([`crate::topology`]). Callers bound it in time.

use std::path::Path;
use std::sync::Arc;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

/// Why a GET failed: the HTTP status when the server answered.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub(crate) struct GetError {
    pub(crate) status: Option<http::StatusCode>,
    pub(crate) reason: String,
}

fn fail(reason: impl std::fmt::Display) -> GetError {
    GetError {
        status: None,
        reason: reason.to_string(),
    }
}

/// `GET url` (https only); the body, at most `max_bytes`.
pub(crate) async fn get(
    url: &str,
    ca_pem: &[u8],
    token_file: Option<&Path>,
    accept: &str,
    max_bytes: usize,
) -> Result<Bytes, GetError> {
    let uri: http::Uri = url.parse().map_err(|e| fail(format!("not a URL: {e}")))?;
    if uri.scheme_str() != Some("https") {
        return Err(fail("only https:// URLs are fetched"));
    }
    let host = uri
        .host()
        .ok_or_else(|| fail("no host"))?
        .trim_matches(['[', ']'])
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let mut roots = rustls::RootCertStore::empty();
    for cert in bulkhead_tls::certs_from_pem(ca_pem, "API server CA").map_err(fail)? {
        roots.add(cert).map_err(fail)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(bulkhead_tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(fail)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(host.clone()).map_err(fail)?;
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(fail)?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| fail(format!("TLS: {e}")))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(fail)?;
    tokio::spawn(conn);
    let mut req = http::Request::get(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .header(
            http::header::HOST,
            uri.authority().map(|a| a.as_str()).unwrap_or(&host),
        )
        .header(http::header::ACCEPT, accept);
    if let Some(path) = token_file {
        let token = std::fs::read_to_string(path)
            .map_err(|e| fail(format!("token file {}: {e}", path.display())))?;
        req = req.header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", token.trim()),
        );
    }
    let req = req.body(Empty::<Bytes>::new()).map_err(fail)?;
    let resp = sender.send_request(req).await.map_err(fail)?;
    if !resp.status().is_success() {
        return Err(GetError {
            status: Some(resp.status()),
            reason: format!("HTTP {}", resp.status()),
        });
    }
    Ok(Limited::new(resp.into_body(), max_bytes)
        .collect()
        .await
        .map_err(|e| fail(format!("body: {e}")))?
        .to_bytes())
}
