//! `bulkheadctl stat`: golden metrics from what sidecars report, checked
//! against a known load — exact counts, the success rate of an app that
//! fails one request in twenty (its own errors, not the mesh's), and the
//! edges (who calls whom).

use std::time::Duration;

use bulkhead_tests::control::*;
use bulkhead_tests::mesh::blocking;
use bulkhead_tests::proxy::*;
use bulkhead_tests::rollout::{FAST_REPORTS, failing_app};
use bulkhead_tests::shop::{self, *};
use serde_json::Value;

fn stat(mesh: &bulkhead_tests::mesh::Mesh, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["stat"];
    all.extend_from_slice(args);
    all.extend(["-o", "json"]);
    let out = blocking(|| mesh.cp.ctl(&mesh.ca, &all));
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice::<Vec<Value>>(&out.stdout).expect("a JSON list")
}

fn row<'a>(rows: &'a [Value], version: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["version"] == version)
        .unwrap_or_else(|| panic!("no row for {version}: {rows:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_matches_a_known_load_and_shows_who_calls_whom() {
    let mesh = shop::on_etcd(FAST_REPORTS).await;
    mesh.apply(&split(50, 50)).await;
    let stable_app = App::http("inventory", STABLE).await;
    let canary_app = failing_app(CANARY, 20).await;
    let stable = mesh.inventory(STABLE, "node-1", &stable_app);
    let canary = mesh.inventory(CANARY, "node-1", &canary_app);
    let web = mesh.web("node-1");
    until_endpoints(&web, &[&stable, &canary]).await;
    until_split(&web, 50, 50, Duration::from_secs(20)).await;
    let addr = web.upstream("inventory");
    // 400 to each version, pinned, so the counts are known exactly.
    let to_stable = calls(addr, 400, 4, &[("x-bulkhead-version", STABLE)]).await;
    let to_canary = calls(addr, 400, 4, &[("x-bulkhead-version", CANARY)]).await;
    assert!(to_stable.failures.is_empty(), "{:?}", to_stable.failures);
    assert_eq!(to_canary.failures.len(), 20, "{:?}", to_canary.failures);
    let before = stable_app.seen() + canary_app.seen();
    assert_eq!(before, 800, "only the counted calls reached the apps");
    // Every report is in once the sidecars reported and the flushes settled.
    let rows = wait_for_async(
        "stat to count all 800 calls",
        Duration::from_secs(20),
        || {
            let rows = stat(&mesh, &["inventory", "-n", "shop", "--window", "1m"]);
            let total: u64 = rows.iter().filter_map(|r| r["requests"].as_u64()).sum();
            async move { (total == 800).then_some(rows) }
        },
    )
    .await;
    let s = row(&rows, STABLE);
    let c = row(&rows, CANARY);
    assert_eq!(
        (s["requests"].as_u64(), c["requests"].as_u64()),
        (Some(400), Some(400))
    );
    assert_eq!(s["successRate"], 1.0);
    assert_eq!(c["successRate"], 0.95);
    assert_eq!(c["meshErrors"], 0, "the app's own 500s are not the mesh's");
    // 400 in a minute: 6.67 per second.
    let rps = c["rps"].as_f64().unwrap_or(0.0);
    assert!((rps - 400.0 / 60.0).abs() < 0.2, "{rps}");
    for q in ["p50Ms", "p95Ms", "p99Ms"] {
        let ms = c[q].as_f64().unwrap_or(-1.0);
        assert!((0.0..1000.0).contains(&ms), "{q} {ms}");
    }
    // The edges: web called both versions, nobody else called anything.
    let edges = stat(&mesh, &["--to", "shop/inventory", "--window", "1m"]);
    assert_eq!(edges.len(), 2, "{edges:?}");
    for e in &edges {
        assert_eq!(e["from"], "shop/web", "{e}");
        assert_eq!(e["requests"], 400, "{e}");
    }
    let from_web = stat(&mesh, &["--from", "shop/web", "--window", "1m"]);
    assert_eq!(from_web.len(), 2, "{from_web:?}");
    assert!(stat(&mesh, &["--from", "shop/cart", "--window", "1m"]).is_empty());

    // The same reports feed the control plane's per-version metrics (what
    // an autoscaler reads for one version's Deployment).
    let metrics = mesh.cp.metrics();
    let labels = [
        ("namespace", "shop"),
        ("service", "inventory"),
        ("version", CANARY),
    ];
    let count = bulkhead_tests::prom::metric(
        &metrics,
        "bulkhead_version_request_duration_seconds_count",
        &labels,
    );
    assert_eq!(count, 400.0, "{metrics}");
    assert!(
        bulkhead_tests::prom::metric_if_any(
            &metrics,
            "bulkhead_version_requests_per_second",
            &labels
        )
        .is_some(),
        "{metrics}"
    );
    // The table for people, and its usage errors.
    let out = blocking(|| {
        mesh.cp
            .ctl(&mesh.ca, &["stat", "-n", "shop", "--window", "1m"])
    });
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("inventory") && table.contains("95.00%"),
        "{table}"
    );
    let out = blocking(|| mesh.cp.ctl(&mesh.ca, &["stat", "--window", "2h"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--window"),
        "{out:?}"
    );
    let _ = (&stable, &canary);
}
