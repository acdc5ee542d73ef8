//! Two control-plane replicas on one etcd: the one that leads rollouts is
//! killed mid-rollout, and the other takes over within the lease TTL and
//! finishes it from the stored status — no step repeated, none skipped.

use std::time::Duration;

use bulkhead_tests::control::*;
use bulkhead_tests::mesh::blocking;
use bulkhead_tests::prom::metric_if_any;
use bulkhead_tests::proxy::*;
use bulkhead_tests::rollout::*;
use bulkhead_tests::shop::{self, *};

fn leading(cp: &ControlPlane) -> bool {
    metric_if_any(&cp.metrics(), "bulkhead_rollout_leader", &[]) == Some(1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_replica_finishes_a_rollout_when_the_leader_dies() {
    let mut flags = FAST_REPORTS.to_vec();
    flags.extend(["--leader-lease-ttl", "3s"]);
    let mut mesh = shop::on_etcd(&flags).await;
    wait_for("the first replica to lead", Duration::from_secs(10), || {
        leading(&mesh.cp).then_some(())
    });
    let etcd = mesh.etcd_server().expect("etcd").client_url();
    let store = StoreSpec::Etcd {
        endpoints: vec![etcd],
        prefix: "/bulkhead/".into(),
    };
    let second = blocking(|| ControlPlane::start(&mesh.ca, &store, &flags));
    assert!(!leading(&second), "two leaders");
    // Workloads talk to the second replica: they keep reporting when the
    // first dies.
    let (stable_app, canary_app) = (
        App::http("inventory", STABLE).await,
        App::http("inventory", CANARY).await,
    );
    let sidecar = |spec: SidecarSpec| blocking(|| Sidecar::start(&mesh.ca, &second, spec));
    let stable = sidecar(SidecarSpec::new("shop", "inventory", STABLE).app(&stable_app));
    let canary = sidecar(SidecarSpec::new("shop", "inventory", CANARY).app(&canary_app));
    let web = sidecar(SidecarSpec::new("shop", "web", "1.0.0").upstream("inventory"));
    until_endpoints(&web, &[&stable, &canary]).await;
    let load = Load::start_bounded(
        web.upstream("inventory"),
        4,
        Duration::from_millis(5),
        20_000,
        Duration::from_secs(120),
    );
    load.until_more(100, "traffic before the rollout").await;
    mesh.apply(&rollout(
        "  strategy: canary
  steps: [20, 40, 60]
  interval: 3s
  analysis: {minRequests: 30, minSuccessRate: 0.99}
",
    ))
    .await;
    until_status(&second, &mesh.ca, "step 1", Duration::from_secs(30), |st| {
        st["step"] == 1
    })
    .await;
    mesh.cp.kill();
    wait_for("the second replica to lead", Duration::from_secs(8), || {
        leading(&second).then_some(())
    });
    let done = until_status(
        &second,
        &mesh.ca,
        "promotion",
        Duration::from_secs(45),
        |st| phase(st) == "Promoted" || phase(st) == "Failed",
    )
    .await;
    let tally = load.finish().await;
    assert_eq!(phase(&done), "Promoted", "{done}");
    assert_eq!(
        steps_entered(&done),
        [0, 1, 2, 3],
        "no step repeated or skipped: {done}"
    );
    let replicas: std::collections::BTreeSet<&str> = done["transitions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["replica"].as_str())
        .collect();
    assert_eq!(replicas.len(), 2, "both replicas drove it: {replicas:?}");
    assert!(tally.failures.is_empty(), "{:?}", tally.failures);
    until_split(&web, 0, 100, Duration::from_secs(10)).await;
}
