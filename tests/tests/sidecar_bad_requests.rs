//! One bad request never hurts the others: requests from many app
//! connections share one pooled HTTP/2 connection between two sidecars, so
//! a request the callee's sidecar would refuse (a head too large) is
//! answered 431 by the caller's own sidecar and never reaches that
//! connection, and a malformed HTTP/1.1 request (RFC 9112 §3.2: Host
//! missing, repeated, or with userinfo) is a 400. Real sidecars, real TLS;
//! the raw requests are bytes written to the app-facing listener.

use std::net::SocketAddr;
use std::time::Duration;

use bulkhead_tests::control::wait_for_async;
use bulkhead_tests::prom;
use bulkhead_tests::proxy::*;
use bulkhead_tests::security::{self, header};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `web` calling `cart`, whose app holds `/cart/slow` for a moment (so
/// requests are in flight together) and answers the rest at once.
struct Shop {
    _mesh: bulkhead_tests::mesh::Mesh,
    cart_app: App,
    _cart: Sidecar,
    web: Sidecar,
}

async fn shop() -> Shop {
    let mesh = security::mesh().await;
    let cart_app = App::http_with(|req: Request<Incoming>| async move {
        let slow = req.uri().path() == "/cart/slow";
        let method = req.method().clone();
        let body = req.into_body().collect().await.map(|b| b.to_bytes());
        if slow {
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
        let len = body.map(|b| b.len()).unwrap_or(0);
        Response::new(Full::new(Bytes::from(format!("{method} {len} bytes"))))
    })
    .await;
    let cart = mesh.sidecar(SidecarSpec::new("shop", "cart", "1.0.0").app(&cart_app));
    let web = mesh.sidecar(SidecarSpec::new("shop", "web", "1.0.0").upstream("cart"));
    until_routable(&web, "cart", "/cart/probe").await;
    Shop {
        _mesh: mesh,
        cart_app,
        _cart: cart,
        web,
    }
}

impl Shop {
    fn addr(&self) -> SocketAddr {
        self.web.upstream("cart")
    }

    /// TLS connections `web` has opened to other sidecars: unchanged means
    /// the pooled one was never lost.
    fn sidecar_connections(&self) -> f64 {
        prom::metric(
            &self.web.metrics(),
            "bulkhead_tls_handshakes_total",
            &[("direction", "outbound"), ("result", "ok")],
        )
    }

    async fn get_with(&self, name: &str, value: &[u8]) -> Reply {
        let req = Request::get(format!("http://{}/cart/big", self.addr()))
            .header(
                name,
                http::HeaderValue::from_bytes(value).expect("header value"),
            )
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = tokio::time::timeout(Duration::from_secs(20), client().request(req))
            .await
            .expect("answered in time")
            .expect("an HTTP answer");
        Reply::read(resp).await.expect("body")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_head_is_431_and_the_requests_beside_it_all_succeed() {
    let s = shop().await;
    let connections = s.sidecar_connections();
    let before = s.cart_app.seen();
    // Twenty requests in flight on the pooled connection: GETs, and POSTs
    // with a body (never retried: a broken connection would fail them even
    // though the app had run them).
    let addr = s.addr();
    let in_flight: Vec<_> = (0..20)
        .map(|i| {
            tokio::spawn(async move {
                let method = if i % 2 == 0 { "GET" } else { "POST" };
                let req = Request::builder()
                    .method(method)
                    .uri(format!("http://{addr}/cart/slow"))
                    .body(Full::new(Bytes::from(vec![b'x'; 1000])))
                    .expect("request");
                let resp = client().request(req).await.map_err(|e| e.to_string())?;
                Reply::read(resp).await
            })
        })
        .collect();
    wait_for_async(
        "the twenty to reach the app",
        Duration::from_secs(20),
        || {
            let seen = s.cart_app.seen();
            async move { (seen >= before + 20).then_some(()) }
        },
    )
    .await;
    // While they are held: one request with a 100 KB header.
    let big = s.get_with("x-big", &vec![b'a'; 100_000]).await;
    assert_eq!(big.status, 431, "{big:?}");
    assert_eq!(header(&big, "x-bulkhead-error"), Some("header-too-large"));
    for (i, call) in in_flight.into_iter().enumerate() {
        let reply = call
            .await
            .expect("task")
            .unwrap_or_else(|e| panic!("#{i}: {e}"));
        assert_eq!(reply.status, 200, "#{i}: {reply:?}");
        let expected = if i % 2 == 0 { "GET" } else { "POST 1000 bytes" };
        assert!(reply.body.starts_with(expected), "#{i}: {reply:?}");
    }
    assert_eq!(
        s.cart_app.seen(),
        before + 20,
        "each request reached the app once; the oversized one never"
    );
    assert_eq!(
        s.sidecar_connections(),
        connections,
        "the pooled connection between the sidecars was never lost"
    );
    assert_eq!(
        prom::metric(
            &s.web.metrics(),
            "bulkhead_limit_exceeded_total",
            &[("listener", "outbound"), ("limit", "header-size")],
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_limit_is_the_callees_so_what_passes_one_passes_both() {
    let s = shop().await;
    let connections = s.sidecar_connections();
    // Just under 64 KiB as HTTP/2 counts it: the caller lets it through,
    // and the callee takes it.
    let under = s.get_with("x-big", &vec![b'a'; 60_000]).await;
    assert_eq!(under.status, 200, "{under:?}");
    // A header of 40 KB whose bytes HPACK codes in 26 bits each: under the
    // limit as a list, but more frames on the wire than the callee takes
    // before it calls it a CONTINUATION flood and drops the connection.
    let binary = s.get_with("x-binary", &vec![0xfe; 40_000]).await;
    assert_eq!(binary.status, 431, "{binary:?}");
    // Many fields, each under any limit, together over it.
    let mut req = Request::get(format!("http://{}/cart/many", s.addr()));
    for i in 0..90 {
        req = req.header(format!("x-field-{i}"), "v".repeat(800));
    }
    let resp = client()
        .request(req.body(Full::new(Bytes::new())).expect("request"))
        .await
        .expect("answer");
    let many = Reply::read(resp).await.expect("body");
    assert_eq!(many.status, 431, "{many:?}");
    // A head past what the app-facing listener even buffers: hyper's own
    // 431 (unmarked), on the app's connection alone.
    let huge = s.get_with("x-big", &vec![b'a'; 300_000]).await;
    assert_eq!(huge.status, 431, "{huge:?}");
    assert_eq!(s.sidecar_connections(), connections);
    let r = call(s.addr(), "GET", "/cart/after", &[])
        .await
        .expect("call");
    assert_eq!(r.status, 200, "{r:?}");
}

/// Writes `request` to the app-facing listener as raw bytes; the status
/// code of the answer.
async fn raw_status(addr: SocketAddr, request: &str) -> u16 {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("an answer in time");
    let text = String::from_utf8_lossy(&got);
    text.strip_prefix("HTTP/1.1 ")
        .or_else(|| text.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP/1.1 answer to {request:?}: {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_host_is_400_as_rfc_9112_requires() {
    let s = shop().await;
    let addr = s.addr();
    let before = s.cart_app.seen();
    for (what, request) in [
        (
            "two Host fields",
            "GET /cart/a HTTP/1.1\r\nHost: cart\r\nHost: other\r\n\r\n",
        ),
        ("no Host", "GET /cart/a HTTP/1.1\r\n\r\n"),
        (
            "Host with userinfo",
            "GET /cart/a HTTP/1.1\r\nHost: user:secret@cart\r\n\r\n",
        ),
        (
            "Host with a path",
            "GET /cart/a HTTP/1.1\r\nHost: cart/admin\r\n\r\n",
        ),
    ] {
        assert_eq!(raw_status(addr, request).await, 400, "{what}");
    }
    assert_eq!(
        s.cart_app.seen(),
        before,
        "nothing malformed reached the app"
    );
    // The same requests, well formed, go through; HTTP/1.0 may omit Host.
    for request in [
        "GET /cart/a HTTP/1.1\r\nHost: cart\r\nConnection: close\r\n\r\n",
        "GET /cart/a HTTP/1.1\r\nHost: 127.0.0.1:9001\r\nConnection: close\r\n\r\n",
        "GET /cart/a HTTP/1.0\r\n\r\n",
    ] {
        assert_eq!(raw_status(addr, request).await, 200, "{request:?}");
    }
}
