//! Connections to other sidecars: TLS 1.3 with this workload's certificate,
//! the server checked to be exactly the identity registered for the endpoint
//! dialled, then the preface (see [`crate::wire`]). HTTP/2 connections are
//! pooled and multiplexed per (endpoint, port); TCP gets one per stream.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulkhead_proto::SpiffeId;
use bulkhead_tls::{self as tls, CertSlot, ExpectedServer, TrustBundle};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::http::Body;
use crate::wire::{self, Payload, Preface};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {0}: {1}")]
    Connect(SocketAddr, String),
    #[error("TLS to {0}: {1}")]
    Tls(SocketAddr, String),
    #[error("HTTP/2 with {0}: {1}")]
    Http2(SocketAddr, String),
}

impl ConnectError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Connect(..) => "connect-failed",
            Self::Tls(..) => "tls-failed",
            Self::Http2(..) => "http2-failed",
        }
    }
}

type Key = (SocketAddr, u16);

pub struct Pool {
    bundle: TrustBundle,
    slot: CertSlot,
    connectors: Mutex<HashMap<SpiffeId, TlsConnector>>,
    http2: Mutex<HashMap<Key, SendRequest<Body>>>,
}

impl Pool {
    pub fn new(bundle: TrustBundle, slot: CertSlot) -> Self {
        Self {
            bundle,
            slot,
            connectors: Mutex::default(),
            http2: Mutex::default(),
        }
    }

    fn connector(&self, identity: &SpiffeId) -> Result<TlsConnector, String> {
        let mut map = self.connectors.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(identity) {
            return Ok(c.clone());
        }
        let config = tls::client_config(
            &self.bundle,
            ExpectedServer::Identity(identity.clone()),
            Some(self.slot.clone()),
            &[wire::ALPN],
        )
        .map_err(|e| e.to_string())?;
        let connector = TlsConnector::from(Arc::new(config));
        // Identities are few (one per service account); bound anyway.
        if map.len() > 4096 {
            map.clear();
        }
        map.insert(identity.clone(), connector.clone());
        Ok(connector)
    }

    /// A TLS connection to `addr` whose certificate must be `identity`, with
    /// the preface already sent.
    pub async fn dial(
        &self,
        addr: SocketAddr,
        identity: &SpiffeId,
        preface: Preface,
    ) -> Result<TlsStream<TcpStream>, ConnectError> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| ConnectError::Connect(addr, "timed out".into()))?
            .map_err(|e| ConnectError::Connect(addr, e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let connector = self
            .connector(identity)
            .map_err(|e| ConnectError::Tls(addr, e))?;
        let name = ServerName::IpAddress(addr.ip().into());
        let mut tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp))
            .await
            .map_err(|_| ConnectError::Tls(addr, "handshake timed out".into()))?
            .map_err(|e| {
                metrics::counter!("bulkhead_tls_handshakes_total", "direction" => "outbound", "result" => "error").increment(1);
                ConnectError::Tls(addr, e.to_string())
            })?;
        metrics::counter!("bulkhead_tls_handshakes_total", "direction" => "outbound", "result" => "ok").increment(1);
        preface
            .write(&mut tls)
            .await
            .map_err(|e| ConnectError::Connect(addr, e.to_string()))?;
        Ok(tls)
    }

    /// The pooled HTTP/2 connection to the endpoint, opened if there is
    /// none (or the old one closed), ready to take a request.
    pub async fn sender(
        &self,
        addr: SocketAddr,
        identity: &SpiffeId,
        port: u16,
    ) -> Result<SendRequest<Body>, ConnectError> {
        let key = (addr, port);
        let existing = {
            let map = self.http2.lock().unwrap_or_else(|e| e.into_inner());
            map.get(&key).filter(|s| !s.is_closed()).cloned()
        };
        let mut sender = match existing {
            Some(s) => s,
            None => {
                let tls = self
                    .dial(
                        addr,
                        identity,
                        Preface {
                            payload: Payload::Http2,
                            port,
                        },
                    )
                    .await?;
                let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                    .timer(hyper_util::rt::TokioTimer::new())
                    .keep_alive_interval(Duration::from_secs(20))
                    .keep_alive_timeout(Duration::from_secs(10))
                    .handshake(TokioIo::new(tls))
                    .await
                    .map_err(|e| ConnectError::Http2(addr, e.to_string()))?;
                tokio::spawn(async move {
                    if let Err(error) = conn.await {
                        tracing::debug!(%addr, %error, "sidecar connection ended");
                    }
                });
                self.http2
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, sender.clone());
                sender
            }
        };
        sender
            .ready()
            .await
            .map_err(|e| ConnectError::Http2(addr, e.to_string()))?;
        Ok(sender)
    }

    /// Forgets connections to endpoints no longer registered.
    pub fn retain(&self, keep: impl Fn(&SocketAddr) -> bool) {
        self.http2
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(addr, _), s| keep(addr) && !s.is_closed());
    }
}
