//! Connections to other sidecars: TLS 1.3 with this workload's certificate,
//! the server checked to be exactly the identity registered for the endpoint
//! dialled, then the preface (see [`crate::wire`]). HTTP/2 connections are
//! pooled and multiplexed per (endpoint, port); TCP, and an upgraded HTTP
//! stream ([`Lane::Dedicated`]), get one per stream.
//!
//! A request finds its pooled connection without a lock: the table is
//! copied on write (a new connection, a departed endpoint, a new trust
//! bundle), which is rare, and read through `arc-swap` on every request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tracing::Instrument;

use bulkhead_proto::SpiffeId;
use bulkhead_tls::{self as tls, BundleSlot, CertSlot, ExpectedServer, TrustBundle};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::sign::CertifiedKey;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::http::Body;
use crate::identity;
use crate::limits::{self, Limits};
use crate::wire::{self, Payload, Preface};

pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("connect to {0}: {1}")]
    Connect(SocketAddr, String),
    #[error("TLS to {0}: {1}")]
    Tls(SocketAddr, String),
    #[error("HTTP/2 with {0}: {1}")]
    Http2(SocketAddr, String),
}

impl ConnectError {
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Self::Connect(..) => "connect-failed",
            Self::Tls(..) => "tls-failed",
            Self::Http2(..) => "http2-failed",
        }
    }
}

/// Which HTTP/2 connection to an endpoint a request takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lane {
    /// The pooled one, multiplexed with every other request.
    Pooled,
    /// One of its own, closed when its stream ends: for an upgraded stream
    /// ([`crate::upgrade`]), which may live for hours and would otherwise
    /// hold one of the pooled connection's stream slots (the peer allows
    /// 1,024) all that time.
    Dedicated,
}

type Key = (SocketAddr, u16);

/// A pooled connection, used for new requests until `retire_at`: ahead of
/// the first notAfter of the two certificates that authenticated it (the
/// peer closes it at ours, and we must not use it past theirs) — or at once
/// when a new trust bundle would refuse either of them.
#[derive(Clone)]
struct Pooled {
    sender: SendRequest<Body>,
    retire_at: Instant,
    /// Which connection this is, so that one found closing is forgotten
    /// only if it is still the one in the table.
    id: u64,
    chains: Arc<Chains>,
}

/// The two certificate chains that authenticated a connection.
struct Chains {
    /// Ours, as presented (none: we had no certificate yet).
    own: Option<Arc<CertifiedKey>>,
    /// The server's, leaf first.
    peer: Vec<CertificateDer<'static>>,
}

impl Chains {
    fn trusted_by(&self, bundle: &TrustBundle) -> bool {
        bundle.still_trusts_server(&self.peer)
            && self
                .own
                .as_ref()
                .is_none_or(|own| bundle.still_trusts_client(&own.cert))
    }
}

impl Pooled {
    fn usable(&self, now: Instant) -> bool {
        now < self.retire_at && !self.sender.is_closed()
    }
}

/// How long at most before a certificate's notAfter the pool stops using
/// the connection it authenticated (inbound's GOAWAY comes later).
const CERT_EXPIRY_RETIRE: Duration = Duration::from_secs(60);

type Table = HashMap<Key, Pooled>;

pub(crate) struct Pool {
    bundle: BundleSlot,
    slot: CertSlot,
    /// Dial path only: one TLS config per peer identity.
    connectors: Mutex<HashMap<SpiffeId, TlsConnector>>,
    /// Read per request, lock-free.
    http2: ArcSwap<Table>,
    /// Serializes writers of `http2` (copy, change, swap).
    writing: Mutex<()>,
    /// Numbers pooled connections.
    opened: std::sync::atomic::AtomicU64,
    /// The largest response head taken (`--max-header-bytes`, as the peer
    /// checks what it sends), and the flow-control windows.
    limits: Limits,
}

impl Pool {
    pub(crate) fn new(bundle: BundleSlot, slot: CertSlot, limits: Limits) -> Self {
        Self {
            bundle,
            slot,
            connectors: Mutex::default(),
            http2: ArcSwap::default(),
            writing: Mutex::new(()),
            opened: std::sync::atomic::AtomicU64::new(0),
            limits,
        }
    }

    /// Copies the table, changes the copy, swaps it in.
    fn update(&self, change: impl FnOnce(&mut Table)) {
        let _writer = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let mut table = Table::clone(&self.http2.load());
        change(&mut table);
        self.http2.store(Arc::new(table));
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
    pub(crate) async fn dial(
        &self,
        addr: SocketAddr,
        identity: &SpiffeId,
        preface: Preface,
    ) -> Result<TlsStream<TcpStream>, ConnectError> {
        Ok(self.dial_until(addr, identity, preface).await?.0)
    }

    /// [`Pool::dial`], when the connection must be over: the earlier
    /// notAfter of our certificate (read before the handshake, so a
    /// renewal during it cannot make it later) and the peer's — and the
    /// chains that authenticated it.
    async fn dial_until(
        &self,
        addr: SocketAddr,
        identity: &SpiffeId,
        preface: Preface,
    ) -> Result<(TlsStream<TcpStream>, Instant, Chains), ConnectError> {
        let own_key = self.slot.get();
        let own = own_key.as_ref().and_then(|key| {
            key.cert
                .first()
                .map(|leaf| identity::connection_deadline(leaf))
        });
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
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .map(<[CertificateDer<'static>]>::to_vec)
            .unwrap_or_default();
        let theirs = peer
            .first()
            .map(|leaf| identity::connection_deadline(leaf))
            .ok_or_else(|| ConnectError::Tls(addr, "no server certificate".into()))?;
        let until = own.map_or(theirs, |own| own.min(theirs));
        preface
            .write(&mut tls)
            .await
            .map_err(|e| ConnectError::Connect(addr, e.to_string()))?;
        Ok((tls, until, Chains { own: own_key, peer }))
    }

    /// An HTTP/2 connection to the endpoint ready to take a request: the
    /// pooled one (opened if there is none, or the old one closed), or for
    /// [`Lane::Dedicated`] a new one that is never pooled.
    pub(crate) async fn sender(
        &self,
        addr: SocketAddr,
        identity: &SpiffeId,
        port: u16,
        lane: Lane,
    ) -> Result<SendRequest<Body>, ConnectError> {
        let key = (addr, port);
        let now = Instant::now();
        let existing = match lane {
            Lane::Pooled => self
                .http2
                .load()
                .get(&key)
                .filter(|p| p.usable(now))
                .map(|p| (p.sender.clone(), p.id)),
            Lane::Dedicated => None,
        };
        if let Some((mut sender, id)) = existing {
            if sender.ready().await.is_ok() {
                return Ok(sender);
            }
            // The peer is closing it (GOAWAY: idle, draining, its
            // certificate expiring) and took nothing on it: forget it and
            // open another.
            self.update(|table| {
                if table.get(&key).is_some_and(|p| p.id == id) {
                    table.remove(&key);
                }
            });
        }
        let (mut sender, until, chains) = self.open(addr, identity, port).await?;
        if lane == Lane::Pooled {
            // Once retired, the connection closes when its in-flight
            // requests end (the last sender is dropped).
            let pooled = Pooled {
                sender: sender.clone(),
                retire_at: identity::ahead_of(until, 10, CERT_EXPIRY_RETIRE),
                chains: Arc::new(chains),
                id: self
                    .opened
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            };
            self.update(|table| {
                let now = Instant::now();
                table.retain(|_, p| p.usable(now));
                table.insert(key, pooled);
            });
        }
        sender
            .ready()
            .await
            .map_err(|e| ConnectError::Http2(addr, e.to_string()))?;
        Ok(sender)
    }

    /// A new HTTP/2 connection to the endpoint, served by a task of its own
    /// until both ends are done with it, and when it must be over (see
    /// [`Pool::dial_until`]).
    async fn open(
        &self,
        addr: SocketAddr,
        identity: &SpiffeId,
        port: u16,
    ) -> Result<(SendRequest<Body>, Instant, Chains), ConnectError> {
        let preface = Preface {
            payload: Payload::Http2,
            port,
        };
        let (tls, until, chains) = self.dial_until(addr, identity, preface).await?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .max_header_list_size(u32::try_from(self.limits.max_header_bytes).unwrap_or(u32::MAX))
            // Many apps' streams share the connection: one app that stops
            // reading its responses must not hold the connection's window.
            .initial_stream_window_size(limits::STREAM_WINDOW)
            .initial_connection_window_size(self.limits.connection_window())
            .max_send_buf_size(limits::SEND_BUFFER)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| ConnectError::Http2(addr, e.to_string()))?;
        let span =
            tracing::info_span!("sidecar-conn", endpoint = %addr, port, identity = %identity);
        tokio::spawn(
            async move {
                if let Err(error) = conn.await {
                    tracing::debug!(%error, "sidecar connection ended");
                }
            }
            .instrument(span),
        );
        Ok((sender, until, chains))
    }

    /// Retires the pooled connections `bundle` would no longer let in, on
    /// either side (they close once their in-flight requests end; new
    /// requests dial again, with the certificates in use now).
    pub(crate) fn retire_untrusted(&self, bundle: &TrustBundle) {
        let mut retired = 0;
        self.update(|table| {
            let before = table.len();
            table.retain(|_, p| p.chains.trusted_by(bundle));
            retired = before - table.len();
        });
        if retired > 0 {
            tracing::info!(
                connections = retired,
                "retired pooled connections the new trust bundle no longer trusts"
            );
        }
    }

    /// Forgets the connections to endpoints that are no longer registered
    /// (they close once their in-flight requests end).
    pub(crate) fn forget(&self, gone: &[SocketAddr]) {
        let now = Instant::now();
        self.update(|table| table.retain(|(addr, _), p| !gone.contains(addr) && p.usable(now)));
    }
}
