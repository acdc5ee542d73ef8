//! Certificate renewal under traffic: no failed request, the new expiry
//! visible in /config, renewal at about 70 % of the lifetime, each renewal
//! a `dev.bulkhead.certificate.renewed` event.
//!
//! Every call goes app → caller sidecar → mTLS → callee sidecar → app over
//! real loopback sockets, against the shop in `bulkhead_tests::shop`. Loads
//! are bounded in count and time; waits are bounded polls on a signal (a
//! metric, `/config`, a counter, an app's report), never bare sleeps.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bulkhead_tests::control::*;
use bulkhead_tests::events::until_events;
use bulkhead_tests::prom::{metric, metric_if_any};
use bulkhead_tests::proxy::*;
use bulkhead_tests::shop::{self, *};

// ---------------------------------------------------------------------------
// 4. Certificate renewal.

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn cert_not_after(sidecar: &Sidecar) -> Option<u64> {
    config_of(sidecar)["certificateNotAfterUnix"].as_u64()
}

fn renewals(sidecar: &Sidecar) -> f64 {
    metric(
        &metrics_of(sidecar),
        "bulkhead_cert_renewals_total",
        &[("result", "ok")],
    )
}

/// A 20 s certificate lifetime: renewals at ~14 s; the first certificates
/// expire at ~20 s. Calls flow across both, new connections are made with
/// the renewed certificates, and nothing fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_renew_under_traffic_with_no_failed_request() {
    let mesh = shop::memory(&["--cert-lifetime", "20s"]).await;
    let app = App::http("inventory", STABLE).await;
    let inventory = mesh.inventory(STABLE, "node-1", &app);
    let web = mesh.web("node-1");
    until_routable(&web, "inventory", "/probe").await;
    let first_expiry = metric_if_any(
        &metrics_of(&inventory),
        "bulkhead_cert_expiry_timestamp_seconds",
        &[],
    )
    .expect("bulkhead_cert_expiry_timestamp_seconds") as u64;

    let load = Load::start(web.upstream("inventory"), 2, Duration::from_millis(100));
    // Until the first certificates have expired (bounded: 20 s lifetime).
    wait_for_async(
        "the first certificates to expire",
        Duration::from_secs(40),
        || {
            let expired = unix_now() > first_expiry + 1;
            async move { expired.then_some(()) }
        },
    )
    .await;
    // A caller that connects now must meet the callee's renewed
    // certificate: the expired one would fail its handshake.
    let late = mesh.web("node-1");
    let r = call(late.upstream("inventory"), "GET", "/stock/late", &[])
        .await
        .expect("call");
    assert_eq!(r.status, 200, "a new connection after renewal: {r:?}");
    load.until_more(10, "after the first certificates expired")
        .await;
    let tally = load.finish().await;
    assert!(
        tally.failures.is_empty(),
        "{} of {} calls failed across renewal: {:?}",
        tally.failures.len(),
        tally.ok() + tally.failures.len(),
        tally.failures
    );
    assert!(tally.ok() >= 100, "traffic flowed: {}", tally.ok());
    for (name, s) in [("inventory", &inventory), ("web", &web)] {
        assert!(renewals(s) >= 1.0, "{name} renewed");
        let expiry = metric(
            &metrics_of(s),
            "bulkhead_cert_expiry_timestamp_seconds",
            &[],
        );
        assert!(
            expiry as u64 > first_expiry,
            "{name}'s certificate now expires later ({expiry} > {first_expiry})"
        );
        // Each renewal is an event naming the workload's identity.
        let renewed = until_events(
            &mesh,
            "dev.bulkhead.certificate.renewed",
            Duration::from_secs(5),
            |e| {
                e["subject"] == format!("spiffe://cluster.local/ns/shop/sa/{name}")
                    && e["data"]["method"] == "renew"
            },
        )
        .await;
        assert!(
            renewed.len() as f64 <= renewals(s),
            "{name}: at most one event per renewal: {renewed:?}"
        );
    }
}

/// `/config` shows the certificate in use, so it must follow renewals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_dump_shows_the_renewed_certificate_expiry() {
    let mesh = shop::memory(&["--cert-lifetime", "20s"]).await;
    let app = App::http("inventory", STABLE).await;
    let inventory = mesh.inventory(STABLE, "node-1", &app);
    let first = cert_not_after(&inventory).expect("certificateNotAfterUnix");
    wait_for_async("a renewal", Duration::from_secs(30), || {
        let renewed = renewals(&inventory) >= 1.0;
        async move { renewed.then_some(()) }
    })
    .await;
    wait_for_async(
        "/config certificateNotAfterUnix to advance",
        Duration::from_secs(5),
        || {
            let now = cert_not_after(&inventory);
            async move { now.filter(|&t| t > first) }
        },
    )
    .await;
}

/// Renewal at ~70 % of the lifetime: a 20 s certificate is first renewed
/// ~14 s after it was issued — not at once, and not over and over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_waits_for_seventy_percent_of_the_lifetime() {
    let mesh = shop::memory(&["--cert-lifetime", "20s"]).await;
    let app = App::http("inventory", STABLE).await;
    let started = Instant::now();
    let inventory = mesh.inventory(STABLE, "node-1", &app);
    // Watch the first 10 s of the certificate's life (bounded by the clock,
    // the renewal counter read throughout).
    let mut seen = Vec::new();
    wait_for_async(
        "10 s of the first certificate",
        Duration::from_secs(20),
        || {
            seen.push((started.elapsed(), renewals(&inventory)));
            let over = started.elapsed() > Duration::from_secs(10);
            async move { over.then_some(()) }
        },
    )
    .await;
    let total = renewals(&inventory);
    let first = seen.iter().find(|(_, n)| *n >= 1.0).map(|(t, _)| *t);
    assert_eq!(
        total, 0.0,
        "{total} renewals within 10 s of a 20 s certificate (the first after {first:?}); \
         expected the first at ~14 s"
    );
}
