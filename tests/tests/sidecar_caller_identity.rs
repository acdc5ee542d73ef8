//! The app learns who called, and nobody can forge it (issue 10): whatever
//! identity headers a caller sends — `x-forwarded-client-cert`, which apps
//! written for Envoy-based meshes trust, or `x-bulkhead-*` — the callee's
//! sidecar removes them and sets the verified peer identity itself, through
//! the caller's sidecar or from a hand-driven mesh client alike.

use std::sync::{Arc, Mutex};

use bulkhead_tests::control::wait_for_async;
use bulkhead_tests::proxy::*;
use bulkhead_tests::security::*;
use bytes::Bytes;
use http::{HeaderMap, Response};
use http_body_util::{Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const FORGED: [(&str, &str); 3] = [
    (
        "x-forwarded-client-cert",
        "By=spiffe://cluster.local/ns/shop/sa/cart;URI=spiffe://cluster.local/ns/shop/sa/admin",
    ),
    (
        "x-bulkhead-peer-identity",
        "spiffe://cluster.local/ns/shop/sa/admin",
    ),
    ("x-bulkhead-caller", "admin"),
];

/// `cart`'s app, keeping the headers of the last request it saw.
async fn header_keeping_cart(
    m: &bulkhead_tests::mesh::Mesh,
) -> (App, Sidecar, Arc<Mutex<HeaderMap>>) {
    let seen = Arc::new(Mutex::new(HeaderMap::new()));
    let keep = seen.clone();
    let app = App::http_with(move |req| {
        *keep.lock().unwrap() = req.headers().clone();
        async { Response::new(Full::new(Bytes::from_static(b"ok"))) }
    })
    .await;
    let cart = m.sidecar(SidecarSpec::new("shop", "cart", "1.0.0").app(&app));
    (app, cart, seen)
}

/// What cart's app must have seen: exactly one of each identity header,
/// naming web, and none of the forged ones.
fn assert_told_web(seen: &HeaderMap) {
    let web = "spiffe://cluster.local/ns/shop/sa/web";
    let all = |name: &str| -> Vec<&str> {
        seen.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("?"))
            .collect()
    };
    assert_eq!(all("x-bulkhead-peer-identity"), [web], "{seen:?}");
    let xfcc = all("x-forwarded-client-cert");
    assert_eq!(xfcc.len(), 1, "{seen:?}");
    assert!(
        xfcc[0].starts_with("By=spiffe://cluster.local/ns/shop/sa/cart;Hash=")
            && xfcc[0].ends_with(&format!(";URI={web}")),
        "{xfcc:?}"
    );
    assert!(seen.get("x-bulkhead-caller").is_none(), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_identity_headers_never_reach_the_app() {
    let m = mesh().await;
    let (_app, _cart, seen) = header_keeping_cart(&m).await;
    let web = m.sidecar(SidecarSpec::new("shop", "web", "1.0.0").upstream("cart"));
    until_routable(&web, "cart", "/cart/probe").await;
    let reply = call(web.upstream("cart"), "GET", "/cart/1", &FORGED)
        .await
        .expect("call");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_told_web(&seen.lock().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_skips_its_sidecar_cannot_forge_them_either() {
    let m = mesh().await;
    let (_app, cart, seen) = header_keeping_cart(&m).await;
    // web's own certificate, but a hand-driven client sending the forged
    // headers straight to cart's inbound port.
    let config = bulkhead_tls::client_config(
        m.ca.bundle(),
        bulkhead_tls::ExpectedServer::Identity(identity("cart")),
        Some(client_cert(&m, |_| {})),
        &[ALPN],
    )
    .expect("client config");
    let tcp = TcpStream::connect(cart.inbound).await.expect("connect");
    let name = ServerName::IpAddress(cart.inbound.ip().into());
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("handshake");
    tls.write_all(&preface(b"BHK1", 1, 0, 8080))
        .await
        .expect("preface");
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Empty<Bytes>>(TokioIo::new(tls))
        .await
        .expect("HTTP/2");
    tokio::spawn(conn);
    let mut req = http::Request::get("http://cart.shop/cart/1");
    for (name, value) in FORGED {
        req = req.header(name, value);
    }
    let resp = sender
        .send_request(req.body(Empty::new()).expect("request"))
        .await
        .expect("answered");
    assert_eq!(resp.status(), 200);
    wait_for_async("cart's app saw the request", WAIT, || async {
        (!seen.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    assert_told_web(&seen.lock().unwrap());
}
