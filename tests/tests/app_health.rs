//! The app's kubelet probes, as the injector rewrites them: the real
//! `bulkhead-proxy` with `BULKHEAD_APP_PROBES` in its environment answers
//! `GET /app-health/<container>/<kind>` on its admin port by checking the
//! app on 127.0.0.1 — HTTP (status passed through, headers sent), HTTPS
//! (unverified, like the kubelet), TCP and gRPC health — and 503 once the
//! app stops answering, 404 for what it was not given.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead_tests::control::*;
use bulkhead_tests::proxy::*;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};

/// `bulkhead-proxy run` for `shop/web` in front of `app`, with the probe
/// table in its environment, as the injector configures it. Waits for
/// `/live`, not `/ready`: the probe endpoints are the admin port's, and
/// must answer (404 at worst) even when the table is bad.
fn proxy(ca: &TestCa, cp: &ControlPlane, app: SocketAddr, probes: &Value) -> Sidecar {
    let spec = SidecarSpec::new("shop", "web", "1.0.0")
        .app_addr(app)
        .env("BULKHEAD_APP_PROBES", &probes.to_string());
    let mut proxy = Sidecar::launch(ca, cp, spec);
    proxy.wait_live();
    proxy
}

/// What the kubelet would see: the status code. (`http_get` blocks; the
/// apps answering the probe run on this runtime.)
async fn probe(proxy: &Sidecar, path: &str) -> u16 {
    let admin = proxy.admin;
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || http_get(admin, &path))
        .await
        .expect("probe task")
        .unwrap_or_else(|e| panic!("admin port: {e}"))
        .0
}

/// An app that answers `/status/<code>` with that code, and 400 unless
/// the probe's header came along.
async fn status_app(tls: Option<tokio_rustls::TlsAcceptor>) -> App {
    App::serve(move |tcp, _| {
        let tls = tls.clone();
        async move {
            let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let code = req
                    .uri()
                    .path()
                    .strip_prefix("/status/")
                    .and_then(|c| c.parse::<u16>().ok())
                    .unwrap_or(404);
                let probed = req.headers().get("x-probe").is_some_and(|v| v == "kubelet")
                    && req.uri().query() == Some("full=1");
                let mut resp = Response::new(Full::new(Bytes::from_static(b"app")));
                *resp.status_mut() = if probed {
                    StatusCode::from_u16(code).unwrap_or(StatusCode::IM_A_TEAPOT)
                } else {
                    StatusCode::BAD_REQUEST
                };
                Ok::<_, std::convert::Infallible>(resp)
            });
            let http = hyper::server::conn::http1::Builder::new();
            match tls {
                Some(tls) => {
                    if let Ok(stream) = tls.accept(tcp).await {
                        let _ = http.serve_connection(TokioIo::new(stream), service).await;
                    }
                }
                None => {
                    let _ = http.serve_connection(TokioIo::new(tcp), service).await;
                }
            }
        }
    })
    .await
}

/// A self-signed certificate nobody trusts: the kubelet does not check.
fn untrusted_tls() -> tokio_rustls::TlsAcceptor {
    bulkhead_tls::install_default_provider();
    let issued = rcgen::generate_simple_self_signed(vec!["app.invalid".to_owned()]).unwrap();
    let cert: CertificateDer<'static> = issued.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(issued.signing_key.serialize_der()));
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// A gRPC health server (h2c) answering `Check` with `status` (1 =
/// SERVING, 2 = NOT_SERVING) for the service "web", NOT_FOUND otherwise.
async fn grpc_health_app(status: u8) -> App {
    App::serve(move |tcp, _| async move {
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            async move {
                let ok_path = req.uri().path() == "/grpc.health.v1.Health/Check";
                let body = req.into_body().collect().await.map(|b| b.to_bytes());
                // HealthCheckRequest{service: "web"}, length-prefixed.
                let known = body.as_deref().ok() == Some(b"\0\0\0\0\x05\x0a\x03web");
                let mut trailers = http::HeaderMap::new();
                let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
                    if ok_path && known {
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        vec![
                            Ok(Frame::data(Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status]))),
                            Ok(Frame::trailers(trailers)),
                        ]
                    } else {
                        trailers.insert("grpc-status", "5".parse().unwrap());
                        vec![Ok(Frame::trailers(trailers))]
                    };
                let mut resp = Response::new(StreamBody::new(futures::stream::iter(frames)));
                resp.headers_mut()
                    .insert("content-type", "application/grpc".parse().unwrap());
                Ok::<_, std::convert::Infallible>(resp)
            }
        });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(tcp), service)
            .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn rewritten_probes_check_the_app_through_the_admin_port() {
    let ca = TestCa::init("cluster.local");
    let cp = ControlPlane::start(&ca, &StoreSpec::Memory, &[]);
    let app = App::http("web", "1.0.0").await;
    let plain = status_app(None).await;
    let tls = status_app(Some(untrusted_tls())).await;
    let serving = grpc_health_app(1).await;
    let not_serving = grpc_health_app(2).await;
    let headers = json!([{"name": "X-Probe", "value": "kubelet"}]);
    let probes = json!({
        "/app-health/app/readiness": {"port": app.addr.port(), "path": "/ready", "scheme": "HTTP"},
        "/app-health/app/liveness": {"tcp": app.addr.port()},
        "/app-health/plain/readiness": {"port": plain.addr.port(), "path": "/status/204?full=1", "headers": headers},
        "/app-health/plain/liveness": {"port": plain.addr.port(), "path": "/status/500?full=1", "headers": headers},
        "/app-health/plain/startup": {"port": plain.addr.port(), "path": "/status/302?full=1", "headers": headers},
        "/app-health/bare/readiness": {"port": plain.addr.port(), "path": "/status/200"},
        "/app-health/secure/readiness": {"port": tls.addr.port(), "path": "/status/200?full=1", "scheme": "HTTPS", "headers": headers},
        "/app-health/grpc/readiness": {"grpc": serving.addr.port(), "service": "web"},
        "/app-health/grpc/liveness": {"grpc": not_serving.addr.port(), "service": "web"},
        "/app-health/grpc/startup": {"grpc": serving.addr.port(), "service": "other"},
    });
    let proxy = proxy(&ca, &cp, app.addr, &probes);

    // The app answers: 200 for HTTP and TCP alike.
    assert_eq!(probe(&proxy, "/app-health/app/readiness").await, 200);
    assert!(app.seen() >= 1, "the probe reached the app");
    assert_eq!(probe(&proxy, "/app-health/app/liveness").await, 200);
    // The app's own status comes back, and its probe headers went along.
    assert_eq!(probe(&proxy, "/app-health/plain/readiness").await, 204);
    assert_eq!(probe(&proxy, "/app-health/plain/liveness").await, 500);
    assert_eq!(probe(&proxy, "/app-health/plain/startup").await, 302);
    assert_eq!(probe(&proxy, "/app-health/bare/readiness").await, 400);
    // HTTPS with a certificate nobody trusts, as the kubelet allows.
    assert_eq!(probe(&proxy, "/app-health/secure/readiness").await, 200);
    // gRPC health: SERVING → 200; NOT_SERVING or an unknown service → 503.
    assert_eq!(probe(&proxy, "/app-health/grpc/readiness").await, 200);
    assert_eq!(probe(&proxy, "/app-health/grpc/liveness").await, 503);
    assert_eq!(probe(&proxy, "/app-health/grpc/startup").await, 503);

    // What the table does not hold is not found, nor checked.
    for unknown in [
        "/app-health/app/other",
        "/app-health/nope/readiness",
        "/app-health/",
        "/app-health/app/readiness/x",
    ] {
        assert_eq!(probe(&proxy, unknown).await, 404, "{unknown}");
    }

    // The apps stop: every probe of them fails with 503, promptly.
    app.stop();
    for other in [&plain, &tls, &serving, &not_serving] {
        other.stop();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    for path in [
        "/app-health/app/readiness",
        "/app-health/app/liveness",
        "/app-health/plain/readiness",
        "/app-health/secure/readiness",
        "/app-health/grpc/readiness",
    ] {
        assert_eq!(probe(&proxy, path).await, 503, "{path}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused, not timed out"
    );
    // The proxy itself stays up.
    assert_eq!(http_get(proxy.admin, "/live").unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_probe_table_serves_404_and_the_proxy_still_runs() {
    let ca = TestCa::init("cluster.local");
    let cp = ControlPlane::start(&ca, &StoreSpec::Memory, &[]);
    let app = App::http("web", "1.0.0").await;
    let probes = json!({
        "/app-health/app/readiness": {"port": app.addr.port(), "path": "/ready"},
        "/app-health/app/liveness": {"tcp": 0},
    });
    let proxy = proxy(&ca, &cp, app.addr, &probes);
    assert_eq!(probe(&proxy, "/app-health/app/readiness").await, 404);
    assert_eq!(probe(&proxy, "/app-health/app/liveness").await, 404);
    assert_eq!(app.seen(), 0);
    assert!(
        proxy.log_text().contains("BULKHEAD_APP_PROBES"),
        "the bad table is logged:\n{}",
        proxy.log_text()
    );
}

/// The admin port holds 64 connections; clients that connect and send
/// nothing (or leave a keep-alive connection idle) give their slot back
/// after the header-read timeout, so the kubelet's probes still get in.
#[tokio::test(flavor = "multi_thread")]
async fn idle_admin_connections_do_not_starve_probes() {
    let ca = TestCa::init("cluster.local");
    let cp = ControlPlane::start(&ca, &StoreSpec::Memory, &[]);
    let app = App::http("web", "1.0.0").await;
    let proxy = proxy(&ca, &cp, app.addr, &json!({}));
    let mut idle = Vec::new();
    for _ in 0..64 {
        idle.push(
            tokio::net::TcpStream::connect(proxy.admin)
                .await
                .expect("connect"),
        );
    }
    // Each attempt is bounded to 5 s; the whole wait is a third of the
    // 60 s the connections would otherwise be held.
    let admin = proxy.admin;
    wait_for_async(
        "a probe past 64 idle connections",
        Duration::from_secs(20),
        || async move {
            let answer = tokio::task::spawn_blocking(move || http_get(admin, "/live")).await;
            matches!(answer, Ok(Ok((200, _)))).then_some(())
        },
    )
    .await;
    // The idle ones were closed by the sidecar.
    let mut buf = [0u8; 1];
    for conn in &mut idle[..1] {
        use tokio::io::AsyncReadExt;
        let read = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed: {read:?}");
    }
}
