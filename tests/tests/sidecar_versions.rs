//! Version routing through real sidecars: a 90/10 split, pins and header
//! matches over the weights, and a weight change applied live without
//! dropping connections.
//!
//! Every call goes app → caller sidecar → mTLS → callee sidecar → app over
//! real loopback sockets, against the shop in `bulkhead_tests::shop`. Loads
//! are bounded in count and time; waits are bounded polls on a signal (a
//! metric, `/config`, a counter, an app's report), never bare sleeps.

use std::time::{Duration, Instant};

use bulkhead_tests::control::*;
use bulkhead_tests::mesh::Mesh;
use bulkhead_tests::prom::metric;
use bulkhead_tests::proxy::*;
use bulkhead_tests::shop::{self, *};

// ---------------------------------------------------------------------------
// 1. Versions.

/// The mesh with inventory 3.0.0 and 3.1.0 (one endpoint each), the split
/// applied, and the caller knowing all of it.
struct Versions {
    mesh: Mesh,
    stable_app: App,
    canary_app: App,
    stable: Sidecar,
    canary: Sidecar,
    web: Sidecar,
}

async fn versions(stable_weight: u32, canary_weight: u32) -> Versions {
    let mesh = shop::memory(&[]).await;
    apply(&mesh.cp, &mesh.ca, &split(stable_weight, canary_weight)).await;
    let stable_app = App::http("inventory", STABLE).await;
    let canary_app = App::http("inventory", CANARY).await;
    let stable = mesh.inventory(STABLE, "node-1", &stable_app);
    let canary = mesh.inventory(CANARY, "node-1", &canary_app);
    let web = mesh.web("node-1");
    until_endpoints(&web, &[&stable, &canary]).await;
    until_split(
        &web,
        stable_weight.into(),
        canary_weight.into(),
        Duration::from_secs(20),
    )
    .await;
    Versions {
        mesh,
        stable_app,
        canary_app,
        stable,
        canary,
        web,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_90_10_split_sends_about_a_tenth_of_calls_to_the_canary() {
    let v = versions(90, 10).await;
    let tally = calls(v.web.upstream("inventory"), 1000, 4, &[]).await;
    assert!(tally.failures.is_empty(), "{:?}", tally.failures);
    assert_eq!(tally.ok(), 1000);
    // Binomial(1000, 0.1): sd ≈ 0.0095, so 5 %..15 % is beyond ±5 sd.
    let share = tally.share(CANARY);
    assert!(
        (0.05..=0.15).contains(&share),
        "canary share {share:.3}: {:?}",
        tally.versions
    );
    assert_eq!(
        tally.count(STABLE) + tally.count(CANARY),
        1000,
        "only split versions answer: {:?}",
        tally.versions
    );
    // The apps saw what the replies say (plus the routability probes: none).
    assert_eq!(v.canary_app.seen() as usize, tally.count(CANARY));
    assert_eq!(v.stable_app.seen() as usize, tally.count(STABLE));
    let _ = (&v.mesh, &v.stable, &v.canary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_pins_and_header_matches_override_the_weights() {
    let v = versions(90, 10).await;
    let addr = v.web.upstream("inventory");

    // An exact pin: every call, whatever the weights.
    let pinned = calls(addr, 50, 2, &[("x-bulkhead-version", CANARY)]).await;
    assert!(pinned.failures.is_empty(), "{:?}", pinned.failures);
    assert_eq!(pinned.count(CANARY), 50, "{:?}", pinned.versions);

    // A partial version pins too (`3.0` means =3.0, so 3.0.0).
    let pinned = calls(addr, 20, 2, &[("x-bulkhead-version", "3.0")]).await;
    assert_eq!(
        pinned.count(STABLE),
        20,
        "{:?} {:?}",
        pinned.versions,
        pinned.failures
    );

    // A requirement narrower than the split: only 3.1.x satisfies ^3.1.
    let pinned = calls(addr, 20, 2, &[("x-bulkhead-version", "^3.1")]).await;
    assert_eq!(
        pinned.count(CANARY),
        20,
        "{:?} {:?}",
        pinned.versions,
        pinned.failures
    );

    // A requirement both versions satisfy: both serve (the balancer, not the
    // 90/10 weights, chooses among them).
    let both = calls(addr, 100, 4, &[("x-bulkhead-version", "^3")]).await;
    assert!(both.failures.is_empty(), "{:?}", both.failures);
    assert_eq!(both.ok(), 100);
    assert!(
        both.count(STABLE) > 0 && both.count(CANARY) > 0,
        "^3 accepts both versions: {:?}",
        both.versions
    );

    // The split's header route.
    let routed = calls(addr, 50, 2, &[("x-canary", "true")]).await;
    assert!(routed.failures.is_empty(), "{:?}", routed.failures);
    assert_eq!(routed.count(CANARY), 50, "{:?}", routed.versions);
    // Another value of the header is no match: the weights apply.
    let weighted = calls(addr, 100, 4, &[("x-canary", "false")]).await;
    assert!(weighted.failures.is_empty(), "{:?}", weighted.failures);
    assert!(
        weighted.count(STABLE) > weighted.count(CANARY),
        "{:?}",
        weighted.versions
    );

    // A pin no endpoint satisfies is refused by the mesh (never rerouted to
    // another version); a malformed pin is a 400.
    let r = call(addr, "GET", "/stock/1", &[("x-bulkhead-version", "4.0.0")])
        .await
        .expect("call");
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.headers.contains_key("x-bulkhead-error"), "{r:?}");
    let r = call(addr, "GET", "/stock/1", &[("x-bulkhead-version", "^^3")])
        .await
        .expect("call");
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.headers.contains_key("x-bulkhead-error"), "{r:?}");
    let _ = (&v.mesh, &v.stable, &v.canary, &v.stable_app, &v.canary_app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_change_applies_within_a_second_without_dropping_connections() {
    let v = versions(90, 10).await;
    // One app connection for the whole test: a dropped connection would
    // fail the next request on it.
    let mut conn = OneConnection::open(v.web.upstream("inventory")).await;
    let before = conn.gets(300).await;
    assert!(before.failures.is_empty(), "{:?}", before.failures);
    assert!(
        before.count(STABLE) > 0 && before.count(CANARY) > 0,
        "both versions served before the change: {:?}",
        before.versions
    );
    let handshakes = |s: &Sidecar| {
        metric(
            &metrics_of(s),
            "bulkhead_tls_handshakes_total",
            &[("direction", "outbound"), ("result", "ok")],
        )
    };
    let handshakes_before = handshakes(&v.web);

    apply(&v.mesh.cp, &v.mesh.ca, &split(50, 50)).await;
    let applied = Instant::now();
    until_split(&v.web, 50, 50, Duration::from_secs(1)).await;
    let propagated = applied.elapsed();

    let after = conn.gets(400).await;
    assert!(after.failures.is_empty(), "{:?}", after.failures);
    // Binomial(400, 0.5): sd = 0.025; 35 %..65 % is ±6 sd.
    let share = after.share(CANARY);
    assert!(
        (0.35..=0.65).contains(&share),
        "canary share after 50/50 (config arrived {propagated:?} after apply): {share:.3} {:?}",
        after.versions
    );
    // Neither the app's connection nor the sidecar-to-sidecar ones were
    // replaced.
    assert_eq!(
        handshakes(&v.web),
        handshakes_before,
        "no new mTLS connection for a weight change"
    );
    let _ = (&v.stable, &v.canary, &v.stable_app, &v.canary_app);
}
