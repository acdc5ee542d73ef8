//! A dead control plane: calls keep flowing on the last config, the sidecar
//! reconnects, an outage longer than the lease loses no request, and a
//! sidecar restarted while the control plane is down serves from its
//! --state-dir.
//!
//! Every call goes app → caller sidecar → mTLS → callee sidecar → app over
//! real loopback sockets, against the shop in `bulkhead_tests::shop`. Loads
//! are bounded in count and time; waits are bounded polls on a signal (a
//! metric, `/config`, a counter, an app's report), never bare sleeps.

use std::time::{Duration, Instant};

use bulkhead_tests::control::*;
use bulkhead_tests::mesh::blocking;
use bulkhead_tests::prom::{metric, metric_if_any};
use bulkhead_tests::proxy::*;
use bulkhead_tests::shop::{self, *};

// ---------------------------------------------------------------------------
// 5. Control plane down.

/// Lets a fault that started at `since` last `length` (the load keeps
/// running meanwhile): the fault's duration is the scenario, not a guess at
/// how long something takes.
async fn lasts(since: Instant, length: Duration) {
    wait_for_async(
        &format!("a fault of {length:?}"),
        length + Duration::from_secs(10),
        || {
            let over = since.elapsed() >= length;
            async move { over.then_some(()) }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_keep_flowing_while_the_control_plane_is_down_and_it_reconnects() {
    // A lease TTL longer than the outage: this test is about the data path
    // riding out the outage, not about registrations expiring.
    let mut mesh = shop::on_etcd(&["--lease-ttl", "30s"]).await;
    let app = App::http("inventory", STABLE).await;
    let inventory = mesh.inventory(STABLE, "node-1", &app);
    let web = mesh.web("node-1");
    until_routable(&web, "inventory", "/probe").await;
    until_connected(&web, 1.0, Duration::from_secs(5)).await;

    let load = Load::start(web.upstream("inventory"), 3, Duration::from_millis(50));
    load.until_more(30, "before the kill").await;
    blocking(|| mesh.cp.kill());
    let killed = Instant::now();
    until_connected(&web, 0.0, Duration::from_secs(10)).await;
    until_connected(&inventory, 0.0, Duration::from_secs(10)).await;
    lasts(killed, Duration::from_secs(4)).await;
    load.until_more(20, "with the control plane down").await;

    blocking(|| mesh.cp.restart());
    until_connected(&web, 1.0, Duration::from_secs(30)).await;
    load.until_more(60, "after the restart").await;
    let tally = load.finish().await;
    assert!(
        tally.failures.is_empty(),
        "{} of {} calls failed: {:?}",
        tally.failures.len(),
        tally.ok() + tally.failures.len(),
        tally.failures
    );
    // Still routable, and the endpoint is still known after the resnapshot.
    assert_eq!(inventory_endpoints(&web), vec![endpoint_key(&inventory)]);
    let reconnects = metric(
        &metrics_of(&web),
        "bulkhead_control_plane_reconnects_total",
        &[],
    );
    assert!(reconnects >= 1.0, "reconnects are counted");
}

/// An outage longer than the registration lease: etcd expires the
/// registrations meanwhile (their keep-alives go through the control
/// plane). Once the control plane is back, callers must not lose endpoints
/// that never went away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_lease_causes_no_failed_request_after_the_restart() {
    let mut mesh = shop::on_etcd(&["--lease-ttl", "3s"]).await;
    let app = App::http("inventory", STABLE).await;
    let inventory = mesh.inventory(STABLE, "node-1", &app);
    let web = mesh.web("node-1");
    until_routable(&web, "inventory", "/probe").await;

    let load = Load::start(web.upstream("inventory"), 2, Duration::from_millis(100));
    load.until_more(10, "before the kill").await;
    blocking(|| mesh.cp.kill());
    let killed = Instant::now();
    until_connected(&web, 0.0, Duration::from_secs(10)).await;
    // Well past the 3 s lease.
    lasts(killed, Duration::from_secs(8)).await;
    blocking(|| mesh.cp.restart());
    until_connected(&web, 1.0, Duration::from_secs(30)).await;
    until_connected(&inventory, 1.0, Duration::from_secs(30)).await;
    until_endpoints(&web, &[&inventory]).await;
    load.until_more(20, "after the restart").await;
    let tally = load.finish().await;
    assert!(
        tally.failures.is_empty(),
        "{} of {} calls failed: {:?}",
        tally.failures.len(),
        tally.ok() + tally.failures.len(),
        tally.failures
    );
}

// ---------------------------------------------------------------------------
// 7. Restart from --state-dir with the control plane down.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_restarted_with_the_control_plane_down_serves_from_its_state_dir() {
    let mut mesh = shop::memory(&[]).await;
    let app = App::http("inventory", STABLE).await;
    let inventory = mesh.inventory(STABLE, "node-1", &app);
    let mut web = mesh.web("node-1");
    until_routable(&web, "inventory", "/probe").await;

    let state_dir = web.state_dir();
    let callee_id = "spiffe://cluster.local/ns/shop/sa/inventory";
    wait_for_async(
        "the snapshot on disk to hold the inventory endpoint",
        Duration::from_secs(10),
        || {
            let saved = std::fs::read(state_dir.join("mesh-state.pb")).unwrap_or_default();
            let has = saved
                .windows(callee_id.len())
                .any(|w| w == callee_id.as_bytes());
            async move { has.then_some(()) }
        },
    )
    .await;

    // The control plane dies, then the pod: the sidecar comes back with the
    // same command line (same ports, token file and --state-dir).
    blocking(|| mesh.cp.kill());
    blocking(|| web.restart());
    blocking(|| web.wait_ready());

    let tally = calls(web.upstream("inventory"), 50, 2, &[]).await;
    assert!(
        tally.failures.is_empty(),
        "{:?}; log:\n{}",
        tally.failures,
        web.log_text()
    );
    assert_eq!(tally.count(STABLE), 50);
    assert_eq!(
        metric_if_any(&metrics_of(&web), "bulkhead_control_plane_connected", &[]),
        Some(0.0),
        "the outage is reported"
    );
    web.assert_running();
    drop(inventory);
}
