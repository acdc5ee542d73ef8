//! A connection is let in only by a full certificate check, and lives no
//! longer than the certificate that let it in (issue 10): the inbound port
//! never resumes a TLS session (a resumed session would skip the check: the
//! class of Envoy's CVE-2022-21654), and a connection, opaque TCP or
//! HTTP/2, ends at the peer certificate's notAfter (HTTP/2 is sent GOAWAY
//! first). The client is driven by hand (`bulkhead_tests::security`), so
//! none of the sidecar's own client code can paper over a server-side gap.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bulkhead_tests::proxy::*;
use bulkhead_tests::security::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A `shop/web` client certificate valid for `left` more.
fn cert_expiring_in(m: &bulkhead_tests::mesh::Mesh, left: Duration) -> bulkhead_tls::CertSlot {
    client_cert(m, |p| p.not_after = (SystemTime::now() + left).into())
}

/// Dials `callee`'s inbound port as `client` with `config`, sends the
/// preface; returns the stream and how the handshake went.
async fn dial(
    callee: &Sidecar,
    config: Arc<rustls::ClientConfig>,
    preface: &[u8],
) -> (
    tokio_rustls::client::TlsStream<TcpStream>,
    Option<rustls::HandshakeKind>,
) {
    let tcp = TcpStream::connect(callee.inbound).await.expect("connect");
    let name = ServerName::IpAddress(callee.inbound.ip().into());
    let mut tls = tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .expect("handshake in time")
    .expect("handshake");
    tls.write_all(preface).await.expect("preface");
    let kind = tls.get_ref().1.handshake_kind();
    (tls, kind)
}

fn config_for(
    m: &bulkhead_tests::mesh::Mesh,
    callee: &str,
    cert: bulkhead_tls::CertSlot,
) -> rustls::ClientConfig {
    bulkhead_tls::client_config(
        m.ca.bundle(),
        bulkhead_tls::ExpectedServer::Identity(identity(callee)),
        Some(cert),
        &[ALPN],
    )
    .expect("client config")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_sessions_are_never_resumed() {
    let m = mesh().await;
    let (_echo, ledger) = ledger(&m).await;
    // A client that would resume if the server let it: one session cache
    // shared by both connections.
    let mut config = config_for(&m, "ledger", client_cert(&m, |_| {}));
    config.resumption = Resumption::in_memory_sessions(16);
    let config = Arc::new(config);
    for round in 0..2 {
        let (mut tls, kind) = dial(&ledger, config.clone(), &TO_LEDGER).await;
        assert_eq!(
            kind,
            Some(rustls::HandshakeKind::Full),
            "connection {round}"
        );
        // An exchange, so any session ticket the server sent is taken in
        // before the next connection.
        tls.write_all(b"ping").await.expect("write");
        assert_eq!(
            read_reply(&mut tls, 4).await,
            Outcome::Answered(b"ping".to_vec())
        );
        tls.shutdown().await.ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opaque_stream_ends_with_the_peer_certificate() {
    let m = mesh().await;
    let (_echo, ledger) = ledger(&m).await;
    let config = Arc::new(config_for(
        &m,
        "ledger",
        cert_expiring_in(&m, Duration::from_secs(3)),
    ));
    let (mut tls, _) = dial(&ledger, config, &TO_LEDGER).await;
    tls.write_all(b"ping").await.expect("write");
    assert_eq!(
        read_reply(&mut tls, 4).await,
        Outcome::Answered(b"ping".to_vec())
    );
    // Nothing more is sent: the server closes the stream when the client
    // certificate expires (well before the 1 h idle timeout).
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(WAIT, tls.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the stream outlived its certificate");
    let counted = |s: &Sidecar| {
        s.metric(
            "bulkhead_tcp_connections_total",
            &[("direction", "inbound"), ("result", "cert-expired")],
        )
    };
    bulkhead_tests::control::wait_for_async("the expiry counted", WAIT, || async {
        (counted(&ledger) >= 1.0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_is_sent_goaway_before_the_peer_certificate_expires() {
    let m = mesh().await;
    let cart_app = App::http("cart", "1.0.0").await;
    let cart = m.sidecar(SidecarSpec::new("shop", "cart", "1.0.0").app(&cart_app));
    let config = Arc::new(config_for(
        &m,
        "cart",
        cert_expiring_in(&m, Duration::from_secs(4)),
    ));
    let (tls, _) = dial(&cart, config, &preface(b"BHK1", 1, 0, 8080)).await;
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Empty<Bytes>>(TokioIo::new(tls))
        .await
        .expect("HTTP/2 handshake");
    let conn = tokio::spawn(conn);
    let req = http::Request::get("http://cart.shop/cart/1")
        .body(Empty::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("answered");
    assert_eq!(resp.status(), 200);
    let _ = resp.into_body().collect().await;
    // The connection ends by itself, a GOAWAY first (hyper's connection
    // future completes cleanly after one).
    let ended = tokio::time::timeout(WAIT, conn)
        .await
        .expect("the connection outlived its certificate")
        .expect("connection task");
    assert!(ended.is_ok(), "closed by GOAWAY, not torn down: {ended:?}");
    assert!(sender.is_closed());
}
