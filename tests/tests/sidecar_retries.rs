//! Retries when an endpoint dies mid-request: idempotent requests (by
//! method or Idempotency-Key) go to another endpoint, others are never sent
//! twice.
//!
//! Every call goes app → caller sidecar → mTLS → callee sidecar → app over
//! real loopback sockets, against the shop in `bulkhead_tests::shop`. Loads
//! are bounded in count and time; waits are bounded polls on a signal (a
//! metric, `/config`, a counter, an app's report), never bare sleeps.

use std::time::Duration;

use bulkhead_tests::mesh::blocking;
use bulkhead_tests::prom::metric;
use bulkhead_tests::proxy::*;
use bulkhead_tests::shop::{self, *};

// ---------------------------------------------------------------------------
// 3. Retries.

/// What happened to a request whose endpoint died under it.
struct KilledUnder {
    reply: Result<Reply, String>,
    /// Index of the app that held it (its sidecar is dead).
    held: usize,
    /// Requests the surviving app had seen when its peer died.
    survivor_seen: u64,
}

/// Holds one request at an app ([`hold_one`]), then SIGKILLs that
/// endpoint's sidecar with the request still in flight, and returns the
/// caller's reply.
async fn kill_mid_request(m: &mut HeldMesh, method: &str, headers: &[(&str, &str)]) -> KilledUnder {
    let (in_flight, held) = hold_one(m, method, headers).await;
    let survivor_seen = m.apps[1 - held].seen();
    blocking(|| m.sidecars[held].kill());
    let reply = tokio::time::timeout(Duration::from_secs(20), in_flight)
        .await
        .expect("the caller answers once the endpoint is gone")
        .expect("call task");
    KilledUnder {
        reply,
        held,
        survivor_seen,
    }
}

/// How long [`holding_app`]s hold a request in the retry tests: past the
/// kill, never past the test.
const LONG_HOLD: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gets_keep_succeeding_when_an_endpoint_is_killed_mid_traffic() {
    let mesh = shop::memory(&[]).await;
    let apps = [
        App::http("inventory", STABLE).await,
        App::http("inventory", STABLE).await,
    ];
    let mut sidecars = [0, 1].map(|i| mesh.inventory(STABLE, "node-1", &apps[i]));
    let web = mesh.web("node-1");
    until_endpoints(&web, &[&sidecars[0], &sidecars[1]]).await;
    let load = Load::start(web.upstream("inventory"), 3, Duration::from_millis(10));
    load.until_more(60, "before the kill").await;
    assert!(
        apps[0].seen() > 0 && apps[1].seen() > 0,
        "both endpoints serve"
    );

    blocking(|| sidecars[0].kill());
    load.until_more(100, "after the kill").await;
    let during = load.finish().await;
    assert!(
        during.failures.is_empty(),
        "{} of {} GETs failed: {:?}",
        during.failures.len(),
        during.ok() + during.failures.len(),
        during.failures
    );
    let retries = metric(&metrics_of(&web), "bulkhead_retries_total", &[]);
    assert!(retries >= 1.0, "retries are counted");
    // Settled: the dead endpoint is ejected, then gone.
    let settled = calls(web.upstream("inventory"), 100, 3, &[]).await;
    assert!(settled.failures.is_empty(), "{:?}", settled.failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_in_flight_on_a_killed_endpoint_is_retried_on_another() {
    let mut m = held_mesh(LONG_HOLD, &[]).await;
    let k = kill_mid_request(&mut m, "GET", &[]).await;
    let reply = k.reply.expect("the held GET is answered");
    assert_eq!(
        reply.status,
        200,
        "{reply:?}; caller log:\n{}",
        m.web.log_text()
    );
    assert!(
        reply.body.contains(&format!("app={}", 1 - k.held)),
        "answered by the survivor: {reply:?}"
    );
    let _ = &m.mesh;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_without_idempotency_key_is_not_sent_twice_when_its_endpoint_dies() {
    let mut m = held_mesh(LONG_HOLD, &[]).await;
    let retries = metric(&metrics_of(&m.web), "bulkhead_retries_total", &[]);
    let k = kill_mid_request(&mut m, "POST", &[]).await;
    let reply = k.reply.expect("the caller gets an answer, not a hang");
    assert_eq!(reply.status, 502, "{reply:?}");
    assert!(
        reply.headers.contains_key("x-bulkhead-error"),
        "the mesh marks its own error: {reply:?}"
    );
    assert_eq!(
        m.apps[1 - k.held].seen(),
        k.survivor_seen,
        "the POST may have been acted on: it must not be sent to another endpoint"
    );
    assert_eq!(
        metric(&metrics_of(&m.web), "bulkhead_retries_total", &[]),
        retries,
        "no retry"
    );
    let _ = &m.mesh;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_with_idempotency_key_in_flight_on_a_killed_endpoint_is_retried_on_another() {
    let mut m = held_mesh(LONG_HOLD, &[]).await;
    let k = kill_mid_request(&mut m, "POST", &[("idempotency-key", "order-7")]).await;
    let reply = k.reply.expect("the held POST is answered");
    assert_eq!(
        reply.status,
        200,
        "{reply:?}; caller log:\n{}",
        m.web.log_text()
    );
    assert!(
        reply.body.contains("method=POST")
            && reply.body.contains("path=/hold/order")
            && reply.body.contains(&format!("app={}", 1 - k.held)),
        "{reply:?}"
    );
    assert_eq!(
        m.apps[1 - k.held].seen(),
        k.survivor_seen + 1,
        "the keyed POST was sent once more, to the survivor"
    );
    let _ = &m.mesh;
}

/// The same rule, counted at the app: a reset after the request reached it
/// is retried (up to the attempt limit) only for idempotent requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_after_delivery_is_retried_only_for_idempotent_requests() {
    let mesh = shop::memory(&[]).await;
    let app = resetting_app().await;
    let mut spec = SidecarSpec::new("shop", "inventory", STABLE);
    spec.app = Some(app.addr);
    let inventory = mesh.sidecar(spec);
    let web = mesh.web("node-1");
    until_endpoints(&web, &[&inventory]).await;
    let addr = web.upstream("inventory");

    let attempts = |method: &'static str, headers: &'static [(&'static str, &'static str)]| {
        let app = &app;
        async move {
            let before = app.seen();
            let r = call(addr, method, "/orders", headers).await.expect("call");
            assert_eq!(r.status, 502, "{method} {headers:?}: {r:?}");
            assert!(r.headers.contains_key("x-bulkhead-error"), "{r:?}");
            app.seen() - before
        }
    };
    assert_eq!(
        attempts("POST", &[]).await,
        1,
        "POST without key: sent once"
    );
    let keyed = attempts("POST", &[("idempotency-key", "k-1")]).await;
    assert!(keyed > 1, "POST with a key is retried: {keyed} attempts");
    let get = attempts("GET", &[]).await;
    assert!(get > 1, "GET is retried: {get} attempts");
    assert!(keyed <= 3 && get <= 3, "bounded attempts: {keyed}, {get}");
}
