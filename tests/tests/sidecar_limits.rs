//! Limits before authentication, and after: each listener's connection
//! cap, the cap on TLS handshakes under way, the time an HTTP/1 head may
//! take, the requests that may wait for the app, idle HTTP/2 connections,
//! and streams reset as a flood does (rapid reset), from an app and from a
//! peer holding a mesh certificate. Each test breaks one limit on purpose
//! with a hand-written attacker (`bulkhead_tests::attack`) and checks that
//! the sidecar refuses, counts, and keeps serving everyone else.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bulkhead_tests::attack::{self, H2};
use bulkhead_tests::control::wait_for_async;
use bulkhead_tests::mesh::Mesh;
use bulkhead_tests::prom;
use bulkhead_tests::proxy::*;
use bulkhead_tests::security::{self, header};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// `web` calling `cart`; each sidecar given `extra` flags. The cart app
/// holds `/cart/slow` for 800 ms, answers anything else at once, and
/// counts the connections it accepts (not the requests).
struct Shop {
    mesh: Mesh,
    cart_app: App,
    cart: Sidecar,
    web: Sidecar,
}

async fn cart_app() -> App {
    App::serve(|tcp, accepted| async move {
        accepted.fetch_add(1, Ordering::SeqCst);
        let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
            let slow = req.uri().path() == "/cart/slow";
            let _ = req.into_body().collect().await;
            if slow {
                tokio::time::sleep(Duration::from_millis(800)).await;
            }
            Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("ok"))))
        });
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
    })
    .await
}

async fn shop(cart_flags: &[&str], web_flags: &[&str]) -> Shop {
    let mesh = security::mesh().await;
    let cart_app = cart_app().await;
    let mut spec = SidecarSpec::new("shop", "cart", "1.0.0").app(&cart_app);
    for flag in cart_flags {
        spec = spec.arg(flag);
    }
    let cart = mesh.sidecar(spec);
    let mut spec = SidecarSpec::new("shop", "web", "1.0.0").upstream("cart");
    for flag in web_flags {
        spec = spec.arg(flag);
    }
    let web = mesh.sidecar(spec);
    until_routable(&web, "cart", "/cart/probe").await;
    Shop {
        mesh,
        cart_app,
        cart,
        web,
    }
}

/// How long a rapid-reset attacker may go on.
const ATTACK: Duration = Duration::from_secs(10);

fn limit(sidecar: &Sidecar, listener: &str, limit: &str) -> f64 {
    prom::metric(
        &sidecar.metrics(),
        "bulkhead_limit_exceeded_total",
        &[("listener", listener), ("limit", limit)],
    )
}

/// TLS connections `web` opened to other sidecars.
fn sidecar_connections(web: &Sidecar) -> f64 {
    prom::metric(
        &web.metrics(),
        "bulkhead_tls_handshakes_total",
        &[("direction", "outbound"), ("result", "ok")],
    )
}

/// Whether a new connection to `addr` is refused at once: reset so fast
/// that the connect itself sees it, or ended within `within`.
async fn refused(addr: std::net::SocketAddr, within: Duration) -> bool {
    match TcpStream::connect(addr).await {
        Err(_) => true,
        Ok(mut tcp) => ended_within(&mut tcp, within).await,
    }
}

/// Whether the server ends `tcp` (EOF or reset) within `within`.
async fn ended_within(tcp: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    let read = async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read).await.is_ok()
}

async fn get_ok(s: &Shop) {
    let r = call(s.web.upstream("cart"), "GET", "/cart/ok", &[])
        .await
        .expect("call");
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_a_new_app_connection_is_refused_at_once() {
    let s = shop(&[], &["--max-connections", "3"]).await;
    let addr = s.web.upstream("cart");
    // The calls that waited for the route may still hold a connection for
    // a moment: a connection counts as held once it stays open.
    let mut held = Vec::new();
    for _ in 0..3 {
        let tcp = wait_for_async(
            "a connection the sidecar keeps",
            Duration::from_secs(20),
            || async {
                let mut tcp = TcpStream::connect(addr).await.ok()?;
                let mut byte = [0u8; 1];
                let read =
                    tokio::time::timeout(Duration::from_millis(300), tcp.read(&mut byte)).await;
                read.is_err().then_some(tcp)
            },
        )
        .await;
        held.push(tcp);
    }
    wait_for_async(
        "a connection over the limit to be refused",
        Duration::from_secs(20),
        || async move { refused(addr, Duration::from_secs(1)).await.then_some(()) },
    )
    .await;
    assert!(limit(&s.web, "outbound", "connections") >= 1.0);
    drop(held);
    // Room again: calls go through.
    wait_for_async(
        "a call once there is room",
        Duration::from_secs(20),
        || async {
            let r = call(addr, "GET", "/cart/ok", &[]).await.ok()?;
            (r.status == 200).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_that_never_finish_hold_at_most_max_handshakes_and_never_the_pool() {
    let s = shop(&["--max-handshakes", "2"], &[]).await;
    // Two connections to the inbound port that never send a ClientHello.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        stalled.push(TcpStream::connect(s.cart.inbound).await.expect("connect"));
    }
    // The third is closed at once, not after the 10 s handshake timeout.
    wait_for_async(
        "a third handshake to be refused at once",
        Duration::from_secs(5),
        || async {
            let inbound = s.cart.inbound;
            refused(inbound, Duration::from_millis(500))
                .await
                .then_some(())
        },
    )
    .await;
    assert!(limit(&s.cart, "inbound", "handshakes") >= 1.0);
    // The pooled connection from web was up before: unaffected.
    for _ in 0..5 {
        get_ok(&s).await;
    }
    // The stalled ones end at the handshake timeout.
    for mut tcp in stalled {
        assert!(ended_within(&mut tcp, Duration::from_secs(15)).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_closed_within_the_header_read_timeout_on_every_http1_listener() {
    let s = shop(&[], &["--header-read-timeout", "1s"]).await;
    for (listener, addr) in [("outbound", s.web.upstream("cart")), ("admin", s.web.admin)] {
        let started = Instant::now();
        let (opened, closed) = attack::slowloris(addr, 5, Duration::from_secs(10)).await;
        assert_eq!(opened, 5);
        assert_eq!(closed, 5, "{listener}: every slow client is closed");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{listener}: closed after {:?}",
            started.elapsed()
        );
        assert!(limit(&s.web, listener, "header-read-timeout") >= 5.0);
    }
    // A client that connects and sends nothing (no version to sniff) too.
    let mut silent = TcpStream::connect(s.web.upstream("cart"))
        .await
        .expect("connect");
    assert!(ended_within(&mut silent, Duration::from_secs(5)).await);
    get_ok(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_pending_requests_the_app_is_spared_and_callers_get_503_overloaded() {
    let s = shop(&["--max-pending-requests", "2"], &[]).await;
    let addr = s.web.upstream("cart");
    // POSTs: never retried, so each answer is the first endpoint's.
    let calls: Vec<_> = (0..5)
        .map(|_| tokio::spawn(async move { call(addr, "POST", "/cart/slow", &[]).await }))
        .collect();
    let mut statuses = Vec::new();
    for c in calls {
        let r = c.await.expect("task").expect("answer");
        if r.status == 503 {
            assert_eq!(header(&r, "x-bulkhead-error"), Some("overloaded"), "{r:?}");
        }
        statuses.push(r.status);
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 503, 503, 503]);
    assert_eq!(limit(&s.cart, "inbound", "pending-requests"), 3.0);
    get_ok(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_between_sidecars_is_closed_and_opened_again_on_demand() {
    let s = shop(&["--idle-timeout", "1s"], &[]).await;
    let before = sidecar_connections(&s.web);
    wait_for_async(
        "cart to close the idle connection",
        Duration::from_secs(10),
        || {
            let closed = limit(&s.cart, "inbound", "idle-timeout");
            async move { (closed >= 1.0).then_some(()) }
        },
    )
    .await;
    // Every request after finds a connection: a new one.
    for _ in 0..3 {
        get_ok(&s).await;
    }
    assert!(sidecar_connections(&s.web) > before);
}

/// Requests through web while `attack` runs: all must succeed.
async fn while_legitimate_calls_succeed<F: std::future::Future>(s: &Shop, attack: F) -> F::Output {
    let addr = s.web.upstream("cart");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let calls = tokio::spawn({
        let stop = stop.clone();
        async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                match call(addr, "POST", "/cart/ok", &[]).await {
                    Ok(r) if r.status == 200 => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok, failed)
        }
    });
    let out = attack.await;
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = calls.await.expect("calls");
    assert!(ok > 0, "no legitimate call completed");
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        ok as usize + failed.len()
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_from_an_app_stays_on_the_apps_own_connection() {
    let s = shop(&[], &[]).await;
    let connections = sidecar_connections(&s.web);
    let app_connections = s.cart_app.seen();
    let addr = s.web.upstream("cart");
    let app = || H2::plain(addr, &[]);
    let attack = attack::rapid_reset(app, "cart", "/cart/slow", 20, 5_000, ATTACK);
    let tally = while_legitimate_calls_succeed(&s, attack).await;
    assert!(tally.streams >= 1_000, "{tally:?}");
    assert!(
        tally.goaways >= 1,
        "the resetting app connection is closed: {tally:?}"
    );
    // The shared connection to cart saw no flood and was never lost.
    assert_eq!(limit(&s.cart, "inbound", "resets"), 0.0);
    assert_eq!(sidecar_connections(&s.web), connections);
    let dialled = s.cart_app.seen() - app_connections;
    eprintln!("rapid reset from an app: {tally:?}; cart's app dialled {dialled} times");
    assert!(dialled < 50, "cart's app was dialled {dialled} times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_from_a_peer_is_sent_away_and_never_dials_the_app_per_stream() {
    let s = shop(&[], &[]).await;
    let app_connections = s.cart_app.seen();
    let (mesh, cart) = (&s.mesh, &s.cart);
    let peer = || attack::mesh_peer(mesh, cart, 8080);
    let attack = attack::rapid_reset(peer, "cart.shop:8080", "/cart/slow", 10, 5_000, ATTACK);
    let tally = while_legitimate_calls_succeed(&s, attack).await;
    assert!(tally.streams >= 1_000, "{tally:?}");
    assert!(
        tally.goaways >= 1,
        "the resetting peer is sent GOAWAY: {tally:?}"
    );
    let dialled = s.cart_app.seen() - app_connections;
    eprintln!("rapid reset from a peer: {tally:?}; cart's app dialled {dialled} times");
    assert!(
        dialled < 100,
        "cart's app was dialled {dialled} times for {} reset streams",
        tally.streams
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_may_connect_ahead_of_its_first_call_until_the_idle_timeout() {
    // A gRPC channel connects before its first call: past the header-read
    // timeout (which times a client whose protocol is not known yet) it
    // stays, takes calls, and is sent GOAWAY only once idle.
    let s = shop(
        &[],
        &["--header-read-timeout", "1s", "--idle-timeout", "4s"],
    )
    .await;
    let mut channel = H2::plain(s.web.upstream("cart"), &[]).await.expect("h2c");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !channel.seen.closed() && channel.seen.goaway().is_none(),
        "an HTTP/2 client was closed at the header-read timeout"
    );
    channel.get("cart", "/cart/ok").await.expect("request");
    channel.flush().await.expect("flush");
    wait_for_async("the call's answer", Duration::from_secs(10), || {
        let answered = channel.seen.headers.load(Ordering::SeqCst) >= 1;
        async move { answered.then_some(()) }
    })
    .await;
    wait_for_async("GOAWAY once idle", Duration::from_secs(10), || {
        let goaway = channel.seen.goaway();
        async move { goaway }
    })
    .await;
    assert!(limit(&s.web, "outbound", "idle-timeout") >= 1.0);
    assert_eq!(limit(&s.web, "outbound", "header-read-timeout"), 0.0);
}
