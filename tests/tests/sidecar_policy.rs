//! Allow-lists at the inbound port, end to end: opaque TCP services
//! (allowed callers echoed; callers not named, or named only by HTTP rules,
//! closed on and counted), HTTP/2 and gRPC-style calls allowed and denied,
//! `audit` mode, path normalization through both sidecars, and the
//! structured denial log line.

use std::time::Duration;

use bulkhead_tests::control::*;
use bulkhead_tests::prom;
use bulkhead_tests::proxy::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use bulkhead_tests::security::*;

// ---------------------------------------------------------------------------
// Opaque TCP services through both sidecars.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_tcp_caller_is_echoed() {
    let m = mesh().await;
    let (echo, _ledger) = ledger(&m).await;
    let web = m.sidecar(SidecarSpec::new("shop", "web", "1.0.0").upstream("ledger"));
    let reply = wait_for_async("ledger to echo through web's sidecar", WAIT, || async {
        tcp_exchange(web.upstream("ledger"), b"hello ledger")
            .await
            .ok()
    })
    .await;
    assert_eq!(reply, b"hello ledger");
    // A second connection, a larger payload: all of it comes back.
    let payload: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let reply = tcp_exchange(web.upstream("ledger"), &payload)
        .await
        .expect("echo");
    assert!(reply == payload, "echoed bytes differ");
    assert!(echo.seen() >= (payload.len() + 12) as u64);
}

/// An opaque stream with no data either way for `--tcp-idle-timeout` is
/// closed (and counted); one with traffic stays open well past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tcp_stream_is_closed_and_a_busy_one_is_not() {
    let m = mesh().await;
    let (_echo, _ledger) = ledger(&m).await;
    let web = m.sidecar(
        SidecarSpec::new("shop", "web", "1.0.0")
            .upstream("ledger")
            .arg("--tcp-idle-timeout")
            .arg("1s"),
    );
    wait_for_async("ledger to echo through web's sidecar", WAIT, || async {
        tcp_exchange(web.upstream("ledger"), b"hello").await.ok()
    })
    .await;

    // Busy: one byte every 300 ms for 3 s, each echoed.
    let mut busy = TcpStream::connect(web.upstream("ledger"))
        .await
        .expect("connect");
    for i in 0..10u8 {
        busy.write_all(&[i]).await.expect("write");
        let mut byte = [0u8; 1];
        tokio::time::timeout(WAIT, busy.read_exact(&mut byte))
            .await
            .expect("echo in time")
            .expect("echo on a busy stream");
        assert_eq!(byte[0], i);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Idle: one exchange, then nothing; the sidecar closes it.
    let mut idle = TcpStream::connect(web.upstream("ledger"))
        .await
        .expect("connect");
    idle.write_all(b"x").await.expect("write");
    let mut byte = [0u8; 1];
    idle.read_exact(&mut byte).await.expect("echo");
    let quiet_since = std::time::Instant::now();
    let after = read_until_closed(&mut idle).await;
    assert!(after.is_empty(), "{after:?}");
    let waited = quiet_since.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}"
    );
    wait_for_async("the idle close to be counted", WAIT, || async {
        prom::find(
            &web.metrics(),
            "bulkhead_tcp_connections_total",
            &[("direction", "outbound"), ("result", "idle-timeout")],
        )
        .map(|_| ())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_caller_the_allow_list_does_not_name_is_closed_before_the_app() {
    let m = mesh().await;
    let (echo, ledger) = ledger(&m).await;
    let inventory = m.sidecar(SidecarSpec::new("shop", "inventory", "1.0.0").upstream("ledger"));
    denied_tcp_until_counted(&inventory, "ledger", &ledger, "inventory").await;
    assert_eq!(echo.seen(), 0, "no byte may reach the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_only_rules_never_open_a_tcp_service() {
    let m = mesh().await;
    let echo = App::tcp_echo().await;
    let journal = m.sidecar(
        SidecarSpec::new("shop", "journal", "1.0.0")
            .protocol("tcp")
            .app(&echo),
    );
    let web = m.sidecar(SidecarSpec::new("shop", "web", "1.0.0").upstream("journal"));
    denied_tcp_until_counted(&web, "journal", &journal, "web").await;
    assert_eq!(echo.seen(), 0, "no byte may reach the app");
}

// ---------------------------------------------------------------------------
// HTTP/2 and gRPC-style calls.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_calls_are_allowed_and_denied_like_http1() {
    let s = Shop::start().await;
    let h2 = h2_client();
    let r = wait_for_async("cart to answer h2c through web", WAIT, || async {
        call_with(&h2, s.web.upstream("cart"), "GET", "/cart/items?id=7", &[])
            .await
            .ok()
            .filter(|r| r.status == 200)
    })
    .await;
    assert!(
        r.body.contains("service=cart") && r.body.contains("path=/cart/items?id=7"),
        "{}",
        r.body
    );
    let seen = s.cart_app.seen();
    // HEAD too: the denial crosses the sidecars' HTTP/2 connection with no
    // body (a body there would be a protocol error, and a 502 to the app).
    let h1 = client();
    for (method, path) in [("GET", "/admin"), ("DELETE", "/cart/1"), ("HEAD", "/admin")] {
        for client in [&h2, &h1] {
            let r = call_with(client, s.web.upstream("cart"), method, path, &[])
                .await
                .expect("call");
            assert_eq!(r.status, 403, "{method} {path}: {r:?}");
            assert_eq!(header(&r, "x-bulkhead-error"), Some("denied"), "{r:?}");
        }
    }
    assert_eq!(s.cart_app.seen(), seen, "nothing denied reached the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_are_allowed_or_answered_permission_denied() {
    let m = mesh().await;
    let app = App::http("pricing", "1.0.0").await;
    let _pricing = m.sidecar(
        SidecarSpec::new("shop", "pricing", "1.0.0")
            .app(&app)
            .protocol("grpc"),
    );
    let web = m.sidecar(SidecarSpec::new("shop", "web", "1.0.0").upstream("pricing"));
    let h2 = h2_client();
    let grpc = [("content-type", "application/grpc"), ("te", "trailers")];
    let r = wait_for_async("pricing to answer gRPC through web", WAIT, || async {
        call_with(
            &h2,
            web.upstream("pricing"),
            "POST",
            "/shop.Pricing/Quote",
            &grpc,
        )
        .await
        .ok()
        .filter(|r| r.status == 200 && r.body.contains("service=pricing"))
    })
    .await;
    assert!(r.body.contains("path=/shop.Pricing/Quote"), "{}", r.body);
    assert_eq!(
        header(&r, "grpc-status"),
        None,
        "the app answered, not the mesh: {r:?}"
    );

    let seen = app.seen();
    let r = call_with(
        &h2,
        web.upstream("pricing"),
        "POST",
        "/shop.Admin/Reset",
        &grpc,
    )
    .await
    .expect("call");
    // gRPC clients read the status from grpc-status, not the HTTP status.
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        header(&r, "grpc-status"),
        Some("7"),
        "PERMISSION_DENIED: {r:?}"
    );
    assert_eq!(header(&r, "x-bulkhead-error"), Some("denied"), "{r:?}");
    assert_eq!(app.seen(), seen, "nothing denied reached the app");
}

// ---------------------------------------------------------------------------
// Audit mode.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_mode_lets_an_unmatched_call_through_and_counts_it() {
    let m = mesh().await;
    let app = App::http("search", "1.0.0").await;
    let search = m.sidecar(SidecarSpec::new("shop", "search", "1.0.0").app(&app));
    // search-audit names only inventory: web's call matches no rule.
    let web = m.sidecar(SidecarSpec::new("shop", "web", "1.0.0").upstream("search"));
    let r = wait_for_async("search to answer through web", WAIT, || async {
        call(web.upstream("search"), "GET", "/search/q", &[])
            .await
            .ok()
            .filter(|r| r.status == 200)
    })
    .await;
    assert!(r.body.contains("path=/search/q"), "{}", r.body);
    assert!(app.seen() >= 1);
    let metrics = search.metrics();
    let line = prom::find(
        &metrics,
        "bulkhead_authz_audit_total",
        &[("target", "search"), ("peer", &spiffe("web"))],
    );
    assert!(
        line.is_some(),
        "no audit count for web → search:\n{metrics}"
    );
}

// ---------------------------------------------------------------------------
// Path normalization through both sidecars (more in sidecar_http.rs).
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percent_encoded_unreserved_characters_are_decoded_before_the_app() {
    let s = Shop::start().await;
    let r = s.get("/cart/%61bc").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body.contains("path=/cart/abc"),
        "the app sees the decoded path: {}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_dot_dot_cannot_leave_an_allowed_prefix() {
    let s = Shop::start().await;
    let seen = s.cart_app.seen();
    for path in [
        "/cart/%2e%2e/admin",
        "/cart/%2E%2E/admin",
        "/cart/x/%2e%2e/%2e%2e/admin",
    ] {
        let r = s.get(path).await;
        assert_eq!(r.status, 403, "{path}: {r:?}");
        assert_eq!(
            header(&r, "x-bulkhead-error"),
            Some("denied"),
            "{path}: {r:?}"
        );
    }
    assert_eq!(s.cart_app.seen(), seen, "nothing denied reached the app");
    // Staying inside the prefix is fine, and the app sees the resolved path.
    let r = s.get("/cart/a/%2e%2e/b").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("path=/cart/b"), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_slashes_are_merged_before_matching() {
    let s = Shop::start().await;
    let r = s.get("//cart///x").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("path=/cart/x"), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_dot_above_the_root_is_refused_with_400() {
    let s = Shop::start().await;
    let seen = s.cart_app.seen();
    for path in ["/../cart/x", "/cart/../../cart/x", "/%2e%2e/cart/x"] {
        let r = s.get(path).await;
        assert_eq!(r.status, 400, "{path}: {r:?}");
        assert_eq!(
            header(&r, "x-bulkhead-error"),
            Some("bad-path"),
            "{path}: {r:?}"
        );
    }
    assert_eq!(s.cart_app.seen(), seen, "nothing refused reached the app");
}

// ---------------------------------------------------------------------------
// The denial log line.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denial_is_logged_with_peer_target_and_rule() {
    let m = mesh().await;
    let app = App::http("cart", "1.0.0").await;
    let cart = m.sidecar(
        SidecarSpec::new("shop", "cart", "1.0.0")
            .app(&app)
            .arg("--log-format")
            .arg("json"),
    );
    let web = m.sidecar(SidecarSpec::new("shop", "web", "1.0.0").upstream("cart"));
    until_routable(&web, "cart", "/cart/probe").await;
    let r = call(web.upstream("cart"), "DELETE", "/cart/1", &[])
        .await
        .expect("call");
    assert_eq!(r.status, 403, "{r:?}");
    // One JSON object per line; the denial's fields name who, what and why.
    let web_id = spiffe("web");
    let line = wait_for_async("the denial log line", WAIT, || async {
        cart.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| {
                l["fields"]["peer"] == web_id.as_str() && l["fields"]["rule"] == "no-matching-rule"
            })
    })
    .await;
    let fields = &line["fields"];
    assert_eq!(fields["target"], "cart", "{line}");
    assert_eq!(fields["port"], 8080, "{line}");
    // Visible at the default level, not only when debugging.
    assert!(line["level"] == "INFO" || line["level"] == "WARN", "{line}");
    // And the same three in the counter.
    let metrics = cart.metrics();
    let counted = prom::find(
        &metrics,
        "bulkhead_authz_denied_total",
        &[
            ("target", "cart"),
            ("peer", &web_id),
            ("rule", "no-matching-rule"),
        ],
    );
    assert!(counted.is_some(), "{metrics}");
}
