//! Local-first balancing: calls stay on the caller's node and fail over
//! when it dies; a retry after a connect failure goes to another endpoint.
//!
//! Every call goes app → caller sidecar → mTLS → callee sidecar → app over
//! real loopback sockets, against the shop in `bulkhead_tests::shop`. Loads
//! are bounded in count and time; waits are bounded polls on a signal (a
//! metric, `/config`, a counter, an app's report), never bare sleeps.

use bulkhead_tests::mesh::{Mesh, blocking};
use bulkhead_tests::prom::metric;
use bulkhead_tests::proxy::*;
use bulkhead_tests::shop::{self, *};

// ---------------------------------------------------------------------------
// 2. Local first.

/// Inventory on node-1 and node-2 (one zone), the caller on node-1.
struct Local {
    mesh: Mesh,
    local_app: App,
    remote_app: App,
    local: Sidecar,
    remote: Sidecar,
    web: Sidecar,
}

async fn local_first() -> Local {
    let mesh = shop::memory(&[]).await;
    let local_app = App::http("inventory", STABLE).await;
    let remote_app = App::http("inventory", STABLE).await;
    let local = mesh.inventory(STABLE, "node-1", &local_app);
    let remote = mesh.inventory(STABLE, "node-2", &remote_app);
    let web = mesh.web("node-1");
    until_endpoints(&web, &[&local, &remote]).await;
    Local {
        mesh,
        local_app,
        remote_app,
        local,
        remote,
        web,
    }
}

fn picks(caller: &Sidecar, tier: &str) -> f64 {
    metric(
        &metrics_of(caller),
        "bulkhead_lb_picks_total",
        &[("service", "inventory"), ("tier", tier)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_stay_on_the_local_node_and_fail_over_when_it_dies() {
    let mut l = local_first().await;
    let addr = l.web.upstream("inventory");
    let (node0, zone0) = (picks(&l.web, "node"), picks(&l.web, "zone"));
    let tally = calls(addr, 200, 2, &[]).await;
    assert!(tally.failures.is_empty(), "{:?}", tally.failures);
    assert_eq!(l.local_app.seen(), 200, "every call stays on node-1");
    assert_eq!(l.remote_app.seen(), 0);
    assert_eq!(picks(&l.web, "node") - node0, 200.0);
    assert_eq!(picks(&l.web, "zone") - zone0, 0.0);

    // Node-1's pod crashes: sidecar and app gone at once. Its endpoint stays
    // listed until its lease runs out; retries and ejection carry the calls.
    blocking(|| l.local.kill());
    l.local_app.stop();
    let during = calls(addr, 200, 2, &[]).await;
    assert!(
        during.failures.is_empty(),
        "GETs are retried on node-2: {} failed: {:?}",
        during.failures.len(),
        during.failures
    );
    assert_eq!(l.remote_app.seen() as usize, during.ok());
    assert!(
        picks(&l.web, "zone") - zone0 >= 200.0,
        "spilled over to the zone tier"
    );
    // Settled: node-1 is ejected; nothing fails any more.
    let settled = calls(addr, 100, 2, &[]).await;
    assert!(settled.failures.is_empty(), "{:?}", settled.failures);

    // The dead endpoint leaves the caller's config when its lease expires.
    until_endpoints(&l.web, &[&l.remote]).await;
    let after = calls(addr, 100, 2, &[]).await;
    assert!(after.failures.is_empty(), "{:?}", after.failures);
    let _ = &l.mesh;
}

/// The first GET after the local endpoint crashed: its connect fails, and
/// its retry must go to the healthy node-2 endpoint rather than back to the
/// dead one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_connect_failure_goes_to_another_endpoint() {
    let mut l = local_first().await;
    let addr = l.web.upstream("inventory");
    let r = call(addr, "GET", "/stock/warm", &[]).await.expect("call");
    assert_eq!(r.status, 200, "{r:?}");
    blocking(|| l.local.kill());
    l.local_app.stop();
    let r = call(addr, "GET", "/stock/after-crash", &[])
        .await
        .expect("call");
    assert_eq!(
        r.status,
        200,
        "retried on node-2: {r:?}; caller log:\n{}",
        l.web.log_text()
    );
    assert_eq!(l.remote_app.seen(), 1);
    let _ = (&l.mesh, &l.remote);
}
