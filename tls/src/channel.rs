//! Connecting to the control plane: a tonic channel over our own TLS
//! (TLS 1.3, the server must be a control-plane identity chained to the trust
//! bundle; host names are not what is checked). Used by `bulkheadctl`, the
//! tests and the sidecar.

use std::sync::Arc;
use std::time::Duration;

use crate::bundle::BundleSlot;
use crate::verify::{self as tls, CertSlot, ExpectedServer};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// TLS handshakes that take longer than this are abandoned.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("control-plane URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// Parses `https://host:port` (or `host:port`), default port 8443.
pub fn parse_control_url(url: &str) -> Result<(String, u16), ClientError> {
    let bad = |reason: &str| ClientError::BadUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let rest = if let Some(rest) = url.strip_prefix("https://") {
        rest
    } else if url.contains("://") {
        return Err(bad(
            "expected https://HOST:PORT (the control plane only speaks TLS)",
        ));
    } else {
        url
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') {
        return Err(bad("expected https://HOST:PORT"));
    }
    let uri: Uri = format!("http://{rest}")
        .parse()
        .map_err(|_| bad("not a valid host:port"))?;
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok((host, uri.port_u16().unwrap_or(8443)))
}

/// A lazily connecting channel: it dials on first use and re-dials after a
/// failure, so callers ride out control-plane restarts by retrying calls.
/// Each handshake checks the control plane against the bundle in force.
pub fn channel(
    url: &str,
    bundle: impl Into<BundleSlot>,
    client_cert: Option<CertSlot>,
) -> Result<Channel, ClientError> {
    let (host, port) = parse_control_url(url)?;
    let config = tls::client_config(
        bundle,
        ExpectedServer::control_plane(),
        client_cert,
        &[tls::ALPN_H2],
    )?;
    let connector = TlsConnector::from(Arc::new(config));
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let endpoint = Endpoint::from_shared(format!("http://{authority}"))
        .map_err(|e| ClientError::BadUrl {
            url: url.to_owned(),
            reason: e.to_string(),
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    let dial = tower::service_fn(move |_uri: Uri| {
        let connector = connector.clone();
        let target = (host.clone(), port);
        async move {
            let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
                })??;
            tcp.set_nodelay(true)?;
            // The name is not verified (identities are); it only fills SNI.
            let name = ServerName::try_from("bulkhead-control").expect("static name is valid");
            let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
                })??;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(dial))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_urls() {
        assert_eq!(
            parse_control_url("https://127.0.0.1:9443").unwrap(),
            ("127.0.0.1".into(), 9443)
        );
        assert_eq!(
            parse_control_url("https://cp.example").unwrap(),
            ("cp.example".into(), 8443)
        );
        assert_eq!(
            parse_control_url("localhost:1234").unwrap(),
            ("localhost".into(), 1234)
        );
        assert_eq!(
            parse_control_url("https://[::1]:8443/").unwrap(),
            ("::1".into(), 8443)
        );
        assert!(parse_control_url("http://127.0.0.1:8443").is_err());
        assert!(parse_control_url("https://host:8443/path").is_err());
        assert!(parse_control_url("https://").is_err());
    }
}
