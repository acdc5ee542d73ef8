//! Every declared port, every protocol: a Service with several ports
//! reaches the app on each one's own local port (`--app PORT=ADDR`), the
//! Service's `protocol` for a port decides how the app is spoken to, and a
//! `tcp` port is bytes end to end — a server-first protocol, HTTP-looking
//! bytes and half-closes pass untouched.

use std::time::Duration;

use bulkhead_tests::control::wait_for_async;
use bulkhead_tests::mesh::Mesh;
use bulkhead_tests::proxy::*;
use bulkhead_tests::security::WAIT;
use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MESH: &str = "
apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: store, namespace: shop}
spec:
  ports:
  - {port: 8080, protocol: http}
  - {port: 9090, protocol: grpc}
  - {port: 7000, protocol: tcp}
---
apiVersion: bulkhead.dev/v1
kind: AllowList
metadata: {name: store, namespace: shop}
spec:
  target: store
  rules:
  - from: [web]
";

/// An HTTP app that answers with its own name and the HTTP version it was
/// spoken to with.
async fn named_app(name: &'static str) -> App {
    App::http_with(move |req| async move {
        Response::new(Full::new(Bytes::from(format!(
            "app={name} version={:?}",
            req.version()
        ))))
    })
    .await
}

/// A server-first TCP app (like SMTP or a database): a banner before the
/// client says anything, then each line echoed back; on the client's
/// half-close, a last word, then it closes.
async fn banner_app() -> App {
    App::serve(|mut tcp, count| async move {
        if tcp.write_all(b"220 store ready\r\n").await.is_err() {
            return;
        }
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    count.fetch_add(n as u64, std::sync::atomic::Ordering::SeqCst);
                    if tcp.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tcp.write_all(b"221 bye\r\n").await;
        let _ = tcp.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_declared_port_reaches_its_own_app_port_and_protocol() {
    let mesh = Mesh::memory("cluster.local", MESH, &[]).await;
    let (web_app, api_app, tcp_app) = (
        named_app("web").await,
        named_app("api").await,
        banner_app().await,
    );
    let _store = mesh.sidecar(
        SidecarSpec::new("shop", "store", "1.0.0")
            .arg("--app")
            .arg(&format!("8080={}", web_app.addr))
            .arg("--app")
            .arg(&format!("9090={}", api_app.addr))
            .arg("--app")
            .arg(&format!("7000={}", tcp_app.addr)),
    );
    let web = mesh.sidecar(
        SidecarSpec::new("shop", "web", "1.0.0")
            .upstream("store:8080")
            .upstream("store:9090")
            .upstream("store:7000"),
    );

    // The `http` port: the app on its own port, spoken to in HTTP/1.1
    // (--app-protocol is http, and so is the Service's port).
    let r = wait_for_async("store:8080 through web's sidecar", WAIT, || async {
        call(web.upstream("store:8080"), "GET", "/", &[])
            .await
            .ok()
            .filter(|r| r.status == 200)
    })
    .await;
    assert_eq!(r.body, "app=web version=HTTP/1.1", "{r:?}");
    // The `grpc` port: another app port, and HTTP/2 (the Service's word
    // for the port wins over --app-protocol).
    let r = call(
        web.upstream("store:9090"),
        "POST",
        "/store.v1.Api/Get",
        &[("content-type", "application/grpc")],
    )
    .await
    .expect("call");
    assert_eq!(r.body, "app=api version=HTTP/2.0", "{r:?}");
    assert_eq!(web_app.seen(), 1);
    assert_eq!(api_app.seen(), 1);

    // The `tcp` port: the banner arrives before the client writes a byte.
    let mut tcp = TcpStream::connect(web.upstream("store:7000"))
        .await
        .expect("connect");
    let mut banner = [0u8; 17];
    tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut banner))
        .await
        .expect("banner in time")
        .expect("banner");
    assert_eq!(&banner, b"220 store ready\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_port_is_bytes_end_to_end() {
    let mesh = Mesh::memory("cluster.local", MESH, &[]).await;
    let tcp_app = banner_app().await;
    // One bare --app: every port goes there; --app-protocol says http, the
    // Service says tcp for 7000, and the Service wins.
    let _store = mesh.sidecar(SidecarSpec::new("shop", "store", "1.0.0").app(&tcp_app));
    let web = mesh.sidecar(SidecarSpec::new("shop", "web", "1.0.0").upstream("store:7000"));

    let mut tcp = wait_for_async("store:7000 through web's sidecar", WAIT, || async {
        let mut tcp = TcpStream::connect(web.upstream("store:7000")).await.ok()?;
        let mut banner = [0u8; 17];
        tokio::time::timeout(Duration::from_secs(2), tcp.read_exact(&mut banner))
            .await
            .ok()?
            .ok()?;
        (&banner == b"220 store ready\r\n").then_some(tcp)
    })
    .await;
    // Bytes that look like HTTP (and a malformed request at that) are not
    // parsed, answered or changed: they come back as sent.
    let request =
        b"GET /../admin HTTP/1.1\r\nHost: \x00evil\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
    tcp.write_all(request).await.expect("write");
    // Half-close: the app still answers after the client stops writing.
    tcp.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut rest))
        .await
        .expect("the stream ends in time")
        .expect("read");
    let mut expected = request.to_vec();
    expected.extend_from_slice(b"221 bye\r\n");
    assert_eq!(
        String::from_utf8_lossy(&rest),
        String::from_utf8_lossy(&expected)
    );
    assert_eq!(tcp_app.seen(), request.len() as u64);
}
