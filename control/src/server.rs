//! The control plane's gRPC listener: accept, TLS handshake (bounded in time
//! and in number at once), then tonic. The peer's SPIFFE identity, already
//! verified by the handshake, travels to handlers as [`ConnInfo`]. A
//! connection whose client certificate a new trust bundle no longer trusts
//! (its root was retired) is closed at once: the client dials again with
//! the certificate it holds now.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bulkhead_proto::SpiffeId;
use bulkhead_tls::BundleSlot;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

/// A client that has not finished its TLS handshake by then is dropped.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; further connections wait in the backlog.
const MAX_HANDSHAKES: usize = 256;

/// Who is on the other end of a gRPC connection.
#[derive(Clone, Debug)]
pub(crate) struct ConnInfo {
    /// The identity of the client certificate, if one was presented (it has
    /// passed chain, validity and SPIFFE checks in the handshake).
    pub peer: Option<SpiffeId>,
}

/// A TLS connection that remembers its peer, and ends when the trust
/// bundle stops trusting the peer's certificate.
pub(crate) struct TlsConn {
    inner: TlsStream<TcpStream>,
    info: ConnInfo,
    untrusted: Pin<Box<dyn Future<Output = ()> + Send>>,
    closed: bool,
}

impl TlsConn {
    /// Whether the connection must end now (its peer lost the trust).
    fn poll_untrusted(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.closed && self.untrusted.as_mut().poll(cx).is_ready() {
            self.closed = true;
            metrics::counter!("bulkhead_untrusted_connections_closed_total").increment(1);
            tracing::info!(peer = ?self.info.peer, "closing a connection whose client certificate the trust bundle no longer trusts");
        }
        self.closed
    }
}

fn untrusted_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "the client certificate's root left the trust bundle",
    )
}

impl Connected for TlsConn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // The server always has a read pending: polling the trust here
        // registers for its changes.
        if self.poll_untrusted(cx) {
            return Poll::Ready(Err(untrusted_error()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.closed {
            return Poll::Ready(Err(untrusted_error()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.closed {
            return Poll::Ready(Err(untrusted_error()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts TCP connections, performs TLS handshakes concurrently, and yields
/// finished connections. Ends when the returned receiver is dropped.
pub(crate) fn accept_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    bundle: BundleSlot,
) -> mpsc::Receiver<Result<TlsConn, io::Error>> {
    let trust_domain = bundle.trust_domain();
    let (tx, rx) = mpsc::channel(64);
    let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let (tcp, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(error) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let trust_domain = trust_domain.clone();
            let bundle = bundle.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(error)) => {
                        metrics::counter!("bulkhead_tls_handshakes_total", "result" => "error")
                            .increment(1);
                        tracing::debug!(%remote, %error, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        metrics::counter!("bulkhead_tls_handshakes_total", "result" => "timeout")
                            .increment(1);
                        tracing::debug!(%remote, "TLS handshake timed out");
                        return;
                    }
                };
                metrics::counter!("bulkhead_tls_handshakes_total", "result" => "ok").increment(1);
                let chain = tls.get_ref().1.peer_certificates().map(<[_]>::to_vec);
                let peer = chain
                    .as_ref()
                    .and_then(|certs| certs.first())
                    .and_then(|leaf| SpiffeId::from_cert_der(leaf, &trust_domain).ok());
                let untrusted: Pin<Box<dyn Future<Output = ()> + Send>> = match chain {
                    Some(chain) => Box::pin(bundle.until_untrusted(chain)),
                    // Nothing to lose trust in (a Certify call).
                    None => Box::pin(std::future::pending()),
                };
                let conn = TlsConn {
                    inner: tls,
                    info: ConnInfo { peer },
                    untrusted,
                    closed: false,
                };
                let _ = tx.send(Ok(conn)).await;
            });
        }
    });
    rx
}
