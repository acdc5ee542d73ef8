//! gRPC and timing tell the truth: a call's `grpc-status` (in trailers or
//! trailers-only) classifies it in both sidecars' metrics; `grpc-timeout`
//! is the call's deadline, for the head and for the stream after it; a
//! stream counts as in flight and is timed until its end; and a request
//! that times out counts against the endpoint that kept it waiting, up to
//! ejection.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bulkhead_tests::control::wait_for_async;
use bulkhead_tests::mesh::Mesh;
use bulkhead_tests::prom;
use bulkhead_tests::proxy::*;
use bulkhead_tests::security::WAIT;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};

const MESH: &str = "
apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: pricing, namespace: shop}
spec:
  ports: [{port: 9090, protocol: grpc}]
---
apiVersion: bulkhead.dev/v1
kind: AllowList
metadata: {name: pricing, namespace: shop}
spec:
  target: pricing
  rules:
  - from: [web]
";

type Frames = StreamBody<tokio_stream::wrappers::ReceiverStream<Result<Frame<Bytes>, Infallible>>>;

fn trailers(code: u32) -> Frame<Bytes> {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from(code));
    Frame::trailers(t)
}

/// A gRPC-speaking app (HTTP/2 only), one behaviour per path:
/// `/ok` (status 0 in trailers), `/unavailable` (a message, then 14),
/// `/not-found` (trailers-only 5), `/slow` (no head for 5 s), `/stall` (a
/// head and a message, then nothing), `/stream` (a message every 100 ms
/// for 1.5 s, then 0). Every path but `/slow` answers at once when `hang`
/// is false; with `hang`, every request waits 5 s first.
async fn grpc_app(hang: bool) -> App {
    App::serve(move |tcp, count| async move {
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                let (tx, rx) = tokio::sync::mpsc::channel(16);
                let path = req.uri().path().to_owned();
                let mut resp = Response::new(StreamBody::new(
                    tokio_stream::wrappers::ReceiverStream::new(rx),
                ));
                resp.headers_mut()
                    .insert("content-type", HeaderValue::from_static("application/grpc"));
                if hang || path == "/slow" {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                let message = || Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x01x")));
                match path.as_str() {
                    "/unavailable" => {
                        let _ = tx.send(message()).await;
                        let _ = tx.send(Ok(trailers(14))).await;
                    }
                    "/not-found" => {
                        resp.headers_mut()
                            .insert("grpc-status", HeaderValue::from_static("5"));
                    }
                    "/stall" => {
                        let _ = tx.send(message()).await;
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            drop(tx);
                        });
                    }
                    "/stream" => {
                        tokio::spawn(async move {
                            for _ in 0..15 {
                                let _ = tx.send(message()).await;
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            let _ = tx.send(Ok(trailers(0))).await;
                        });
                    }
                    _ => {
                        let _ = tx.send(message()).await;
                        let _ = tx.send(Ok(trailers(0))).await;
                    }
                }
                Ok::<Response<Frames>, Infallible>(resp)
            }
        });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(tcp), service)
            .await;
    })
    .await
}

/// What a gRPC call ended with, as its client saw it.
#[derive(Debug)]
struct Ended {
    status: u16,
    /// From the head (trailers-only) or the trailers.
    grpc_status: Option<String>,
    mesh_error: Option<String>,
}

async fn grpc_call(addr: SocketAddr, path: &str, timeout: Option<&str>) -> Result<Ended, String> {
    let mut req = Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(t) = timeout {
        req = req.header("grpc-timeout", t);
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = h2_client().request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let head = resp.headers().clone();
    let collected = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    let from =
        |h: &HeaderMap, name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    Ok(Ended {
        status,
        grpc_status: collected
            .trailers()
            .and_then(|t| from(t, "grpc-status"))
            .or_else(|| from(&head, "grpc-status")),
        mesh_error: from(&head, "x-bulkhead-error"),
    })
}

async fn pricing_and_web(mesh: &Mesh, app: &App, web_extra: &[&str]) -> (Sidecar, Sidecar) {
    let pricing = mesh.sidecar(
        SidecarSpec::new("shop", "pricing", "1.0.0")
            .protocol("grpc")
            .app(app),
    );
    let mut spec = SidecarSpec::new("shop", "web", "1.0.0").upstream("pricing");
    for a in web_extra {
        spec = spec.arg(a);
    }
    let web = mesh.sidecar(spec);
    wait_for_async("pricing routable from web", WAIT, || async {
        grpc_call(web.upstream("pricing"), "/ok", None)
            .await
            .ok()
            .filter(|e| e.grpc_status.as_deref() == Some("0"))
    })
    .await;
    (pricing, web)
}

fn grpc_series<'a>(
    direction: &'a str,
    classification: &'a str,
    code: &'a str,
) -> [(&'a str, &'a str); 4] {
    [
        ("direction", direction),
        ("service", "pricing"),
        ("classification", classification),
        ("grpc_status", code),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_status_classifies_calls_in_both_sidecars() {
    let mesh = Mesh::memory("cluster.local", MESH, &[]).await;
    let app = grpc_app(false).await;
    let (pricing, web) = pricing_and_web(&mesh, &app, &[]).await;
    // Counts from here on (waiting for routes counted the mesh's own
    // UNAVAILABLE answers).
    let before = |sidecar: &Sidecar, direction, classification, code| {
        sidecar.metric(
            "bulkhead_requests_total",
            &grpc_series(direction, classification, code),
        )
    };
    let baseline: Vec<f64> = [(&web, "outbound"), (&pricing, "inbound")]
        .iter()
        .flat_map(|(s, d)| {
            [
                before(s, d, "success", "0"),
                before(s, d, "failure", "14"),
                before(s, d, "failure", "5"),
            ]
        })
        .collect();
    for (path, times, code) in [
        ("/ok", 3, "0"),
        ("/unavailable", 2, "14"),
        ("/not-found", 1, "5"),
    ] {
        for _ in 0..times {
            let ended = grpc_call(web.upstream("pricing"), path, None)
                .await
                .expect("call");
            // The app's status reaches the caller as the app sent it.
            assert_eq!(
                (ended.status, ended.grpc_status.as_deref()),
                (200, Some(code)),
                "{path}"
            );
        }
    }
    for (i, (sidecar, direction)) in [(&web, "outbound"), (&pricing, "inbound")]
        .into_iter()
        .enumerate()
    {
        let text = sidecar.metrics();
        let count = |classification, code| {
            prom::metric(
                &text,
                "bulkhead_requests_total",
                &grpc_series(direction, classification, code),
            )
        };
        let base = &baseline[i * 3..];
        assert_eq!(count("success", "0") - base[0], 3.0, "{direction}");
        assert_eq!(count("failure", "14") - base[1], 2.0, "{direction}");
        assert_eq!(count("failure", "5") - base[2], 1.0, "{direction}");
        // The histogram carries the same labels.
        let timed = prom::metric(
            &text,
            "bulkhead_request_duration_seconds_count",
            &grpc_series(direction, "failure", "5"),
        );
        assert_eq!(timed, count("failure", "5"), "{direction}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_is_the_calls_deadline() {
    let mesh = Mesh::memory("cluster.local", MESH, &[]).await;
    let app = grpc_app(false).await;
    let (_pricing, web) = pricing_and_web(&mesh, &app, &[]).await;
    // No head before the deadline: DEADLINE_EXCEEDED from the mesh, not
    // the app's OK five seconds later.
    let ended = grpc_call(web.upstream("pricing"), "/slow", Some("300m"))
        .await
        .expect("call");
    assert_eq!(ended.grpc_status.as_deref(), Some("4"), "{ended:?}");
    assert_eq!(ended.mesh_error.as_deref(), Some("timeout"), "{ended:?}");
    // A head in time, then a stream that stalls: cut at the deadline and
    // ended with DEADLINE_EXCEEDED trailers.
    let ended = grpc_call(web.upstream("pricing"), "/stall", Some("500m"))
        .await
        .expect("call");
    assert_eq!(
        (ended.status, ended.grpc_status.as_deref()),
        (200, Some("4")),
        "{ended:?}"
    );
    // Without a grpc-timeout, a slow head is waited for (the default
    // --request-timeout is longer than 5 s).
    let ended = grpc_call(web.upstream("pricing"), "/slow", None)
        .await
        .expect("call");
    assert_eq!(ended.grpc_status.as_deref(), Some("0"), "{ended:?}");
    assert!(
        web.metric(
            "bulkhead_requests_total",
            &grpc_series("outbound", "failure", "4")
        ) >= 2.0
    );
}

/// The endpoint `sidecar`'s balancer entry in `caller`'s `/config`.
fn endpoint_status(caller: &Sidecar, callee: &Sidecar) -> Option<serde_json::Value> {
    let config = caller.config();
    config["balancers"]
        .as_array()?
        .iter()
        .filter(|b| b["service"] == callee.spec.service)
        .flat_map(|b| b["endpoints"].as_array().cloned().unwrap_or_default())
        .find(|e| e["inboundPort"] == callee.inbound.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_load_until_its_end_and_is_timed_to_it() {
    let mesh = Mesh::memory("cluster.local", MESH, &[]).await;
    let app = grpc_app(false).await;
    let (pricing, web) = pricing_and_web(&mesh, &app, &[]).await;
    let series = grpc_series("outbound", "success", "0");
    let sum_before = web.metric("bulkhead_request_duration_seconds_sum", &series);

    let req = Request::post(format!("http://{}/stream", web.upstream("pricing")))
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = h2_client().request(req).await.expect("head");
    // The head is here, the stream is not over: the endpoint is loaded.
    let status = endpoint_status(&web, &pricing).expect("pricing in web's balancer");
    assert_eq!(status["inFlight"], 1, "{status}");
    let collected = resp.into_body().collect().await.expect("stream");
    assert_eq!(
        collected
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
    let status = endpoint_status(&web, &pricing).expect("pricing in web's balancer");
    assert_eq!(status["inFlight"], 0, "{status}");
    // Its duration is the whole stream (1.5 s of messages), not its head.
    let streamed = web.metric("bulkhead_request_duration_seconds_sum", &series) - sum_before;
    assert!(streamed >= 1.4, "recorded {streamed} s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_requests_count_against_the_endpoint_until_it_is_ejected() {
    let mesh = Mesh::memory("cluster.local", MESH, &[]).await;
    let (good_app, hung_app) = (grpc_app(false).await, grpc_app(true).await);
    let hung = mesh.sidecar(
        SidecarSpec::new("shop", "pricing", "1.0.0")
            .protocol("grpc")
            .app(&hung_app),
    );
    let web = mesh.sidecar(
        SidecarSpec::new("shop", "web", "1.0.0")
            .upstream("pricing")
            .arg("--request-timeout")
            .arg("200ms"),
    );
    // Every call times out at the mesh (the app takes 5 s); five in a row
    // eject the endpoint, and its latency estimate is at least the wait.
    let timeouts = std::sync::atomic::AtomicU32::new(0);
    let ejected = wait_for_async("the hung endpoint to be ejected", WAIT, || {
        let (web, hung, timeouts) = (&web, &hung, &timeouts);
        async move {
            let ended = grpc_call(web.upstream("pricing"), "/ok", None).await.ok()?;
            if ended.mesh_error.as_deref() == Some("timeout") {
                assert_eq!(ended.grpc_status.as_deref(), Some("4"), "{ended:?}");
                timeouts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            let status = endpoint_status(web, hung)?;
            status["ejectedForMs"].as_u64().map(|_| status)
        }
    })
    .await;
    let timeouts = timeouts.into_inner();
    assert!(timeouts >= 5, "{timeouts} timeouts before the ejection");
    assert!(ejected["latencyMs"].as_f64() >= Some(200.0), "{ejected}");
    assert!(hung_app.seen() >= 5, "the hung app saw {}", hung_app.seen());

    // A healthy sibling arrives: every call goes to it, none to the
    // ejected one.
    let good = mesh.sidecar(
        SidecarSpec::new("shop", "pricing", "1.0.0")
            .protocol("grpc")
            .app(&good_app),
    );
    wait_for_async("the good endpoint in web's balancer", WAIT, || async {
        endpoint_status(&web, &good).map(|_| ())
    })
    .await;
    let hung_before = hung_app.seen();
    for _ in 0..10 {
        let ended = grpc_call(web.upstream("pricing"), "/ok", None)
            .await
            .expect("call");
        assert_eq!(ended.grpc_status.as_deref(), Some("0"), "{ended:?}");
    }
    assert_eq!(hung_app.seen(), hung_before);
    assert!(
        web.metric(
            "bulkhead_mesh_errors_total",
            &[("direction", "outbound"), ("reason", "timeout")]
        ) >= 5.0
    );
}
