//! Progressive rollouts end to end, on real etcd: sidecars report their
//! inbound traffic to the control plane, the leading replica judges each
//! interval on it and writes the TrafficSplit, and the operator watches
//! and steers with `bulkheadctl rollout`.
//!
//! Intervals are seconds long and loads bounded in count and time; waits
//! are bounded polls of `bulkheadctl rollout status -o json`.

use std::time::Duration;

use bulkhead_tests::control::*;
use bulkhead_tests::mesh::{Mesh, blocking};
use bulkhead_tests::proxy::*;
use bulkhead_tests::rollout::*;
use bulkhead_tests::shop::{self, *};

/// The shop on etcd with stable and canary inventory endpoints in front of
/// the given apps, and web calling inventory.
struct Shop {
    mesh: Mesh,
    stable: Sidecar,
    canary: Sidecar,
    web: Sidecar,
}

async fn shop_with(stable_app: &App, canary_app: &App, grpc: bool) -> Shop {
    shop_with_flags(stable_app, canary_app, grpc, &[]).await
}

async fn shop_with_flags(stable_app: &App, canary_app: &App, grpc: bool, extra: &[&str]) -> Shop {
    let mut flags = FAST_REPORTS.to_vec();
    flags.extend_from_slice(extra);
    let mesh = shop::on_etcd(&flags).await;
    if grpc {
        mesh.apply(GRPC_INVENTORY).await;
    }
    let stable = mesh.inventory(STABLE, "node-1", stable_app);
    let canary = mesh.inventory(CANARY, "node-1", canary_app);
    let web = mesh.web("node-1");
    until_endpoints(&web, &[&stable, &canary]).await;
    Shop {
        mesh,
        stable,
        canary,
        web,
    }
}

/// The shop with plain apps behind both versions (kept alive by the
/// caller holding the returned apps).
async fn healthy_shop(extra: &[&str]) -> (Shop, [App; 2]) {
    let apps = [
        App::http("inventory", STABLE).await,
        App::http("inventory", CANARY).await,
    ];
    let shop = shop_with_flags(&apps[0], &apps[1], false, extra).await;
    (shop, apps)
}

/// Steady load from web to inventory for the length of a rollout.
fn load(web: &Sidecar) -> Load {
    Load::start_bounded(
        web.upstream("inventory"),
        4,
        Duration::from_millis(5),
        20_000,
        Duration::from_secs(120),
    )
}

/// inventory served over gRPC instead.
const GRPC_INVENTORY: &str = "apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: inventory, namespace: shop}
spec:
  ports: [{port: 8080, protocol: grpc}]
";

const GATES: &str = "  analysis:
    minRequests: 30
    minSuccessRate: 0.99
    maxP99LatencyMs: 500
    compareToStable: {maxSuccessRateDrop: 0.01, maxP99Ratio: 20}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_is_promoted_through_every_step() {
    let (s, _apps) = healthy_shop(&[]).await;
    let load = load(&s.web);
    load.until_more(100, "traffic before the rollout").await;
    s.mesh
        .apply(&rollout(&format!(
            "  strategy: canary\n  steps: [20, 50]\n  interval: 3s\n  threshold: 2\n{GATES}"
        )))
        .await;
    // A script following it: one JSON line per change, exit 0 once promoted.
    let watcher = s
        .mesh
        .ca
        .ctl_command(
            &s.mesh.cp.url(),
            &[
                "rollout",
                "status",
                "inventory",
                "-n",
                "shop",
                "-w",
                "-o",
                "json",
            ],
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("bulkheadctl rollout status -w");
    let at_50 = until_status(
        &s.mesh.cp,
        &s.mesh.ca,
        "step 1 at 50 %",
        Duration::from_secs(30),
        |st| st["step"] == 1 && st["canaryWeight"] == 50,
    )
    .await;
    assert_eq!(phase(&at_50), "Progressing", "{at_50}");
    until_split(&s.web, 50, 50, Duration::from_secs(10)).await;
    let done = until_status(
        &s.mesh.cp,
        &s.mesh.ca,
        "promotion",
        Duration::from_secs(30),
        |st| phase(st) == "Promoted",
    )
    .await;
    let tally = load.finish().await;
    assert_eq!(done["canaryWeight"], 100);
    assert_eq!(
        done["stable"], CANARY,
        "after promotion stable names the new version"
    );
    assert_eq!(done["canary"], CANARY);
    assert_eq!(steps_entered(&done), [0, 1, 2], "every step once: {done}");
    let intervals = done["intervals"].as_array().expect("intervals");
    assert!(intervals.len() >= 2, "{done}");
    for i in intervals {
        assert_eq!(i["verdict"], "passed", "{i}");
        assert!(i["requests"].as_u64().unwrap_or(0) >= 30, "{i}");
        assert!(i["successRate"].as_f64().unwrap_or(0.0) >= 0.99, "{i}");
        assert!(i["p99Ms"].as_f64().is_some(), "{i}");
        // The thresholds judged against sit beside the measurements.
        let gates: Vec<&str> = i["gates"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|g| g["gate"].as_str())
            .collect();
        assert_eq!(
            gates,
            [
                "minRequests",
                "minSuccessRate",
                "maxP99LatencyMs",
                "maxSuccessRateDrop",
                "maxP99Ratio"
            ]
        );
    }
    until_split(&s.web, 0, 100, Duration::from_secs(10)).await;
    assert!(tally.failures.is_empty(), "{:?}", tally.failures);
    let watched = blocking(|| watcher.wait_with_output()).expect("watcher");
    assert!(watched.status.success(), "{watched:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&watched.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert!(lines.len() >= 3, "{lines:?}");
    assert_eq!(
        lines.last().map(|l| phase(l).to_owned()),
        Some("Promoted".into())
    );
    // Counted on the control plane.
    let metrics = s.mesh.cp.metrics();
    assert!(
        metrics.contains("bulkhead_rollout_transitions_total{namespace=\"shop\",rollout=\"inventory\",phase=\"Promoted\"} 1"),
        "{metrics}"
    );
    let _ = (&s.stable, &s.canary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_failing_5_percent_is_rolled_back_and_stable_callers_see_no_errors() {
    let stable_app = App::http("inventory", STABLE).await;
    let canary_app = failing_app(CANARY, 20).await;
    let s = shop_with(&stable_app, &canary_app, false).await;
    let load = load(&s.web);
    load.until_more(100, "traffic before the rollout").await;
    s.mesh
        .apply(&rollout(&format!(
            "  strategy: canary\n  steps: [20, 50]\n  interval: 3s\n  threshold: 2\n{GATES}"
        )))
        .await;
    let failed = until_status(
        &s.mesh.cp,
        &s.mesh.ca,
        "the rollback",
        Duration::from_secs(40),
        |st| phase(st) != "Progressing" && phase(st) != "InsufficientData",
    )
    .await;
    assert_eq!(phase(&failed), "Failed", "{failed}");
    assert_eq!(failed["canaryWeight"], 0);
    assert_eq!(failed["stable"], STABLE);
    assert_eq!(failed["step"], 0, "never got past the first step: {failed}");
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("rolled back after 2 failed interval"),
        "{reason}"
    );
    assert!(
        reason.contains("minSuccessRate"),
        "the failing gate is named: {reason}"
    );
    let intervals = failed["intervals"].as_array().expect("intervals");
    let verdicts: Vec<&str> = intervals
        .iter()
        .filter_map(|i| i["verdict"].as_str())
        .collect();
    assert_eq!(
        verdicts.iter().filter(|v| **v == "failed").count(),
        2,
        "{verdicts:?}"
    );
    // Stable gets everything at once...
    until_split(&s.web, 100, 0, Duration::from_secs(10)).await;
    load.until_more(200, "traffic after the rollback").await;
    let tally = load.finish().await;
    // ...and the only errors callers saw were the canary's own 500s.
    for f in &tally.failures {
        assert!(f.starts_with("500") && f.contains(CANARY), "{f}");
    }
    let canary_share = tally.count(CANARY) + tally.failures.len();
    assert!(
        tally.failures.len() * 10 <= canary_share.max(10),
        "errors beyond the canary's 5 %: {} of {canary_share}",
        tally.failures.len()
    );
    let _ = (&s.stable, &s.canary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_without_traffic_is_insufficient_data_then_fails_at_its_deadline() {
    let (s, _apps) = healthy_shop(&[]).await;
    // No load at all: the canary gets no requests.
    s.mesh
        .apply(&rollout(&format!(
            "  strategy: canary\n  steps: [20, 50]\n  interval: 2s\n  progressDeadline: 9s\n{GATES}"
        )))
        .await;
    let held = until_status(
        &s.mesh.cp,
        &s.mesh.ca,
        "insufficient data",
        Duration::from_secs(20),
        |st| phase(st) == "InsufficientData",
    )
    .await;
    assert_eq!(held["canaryWeight"], 20, "the weight holds: {held}");
    let reason = held["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("0 of 30"),
        "says how many requests: {reason}"
    );
    assert_eq!(held["intervals"][0]["verdict"], "insufficient-data");
    let failed = until_status(
        &s.mesh.cp,
        &s.mesh.ca,
        "the deadline",
        Duration::from_secs(20),
        |st| phase(st) == "Failed",
    )
    .await;
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("progress deadline 9s"), "{reason}");
    assert_eq!(failed["canaryWeight"], 0);
    until_split(&s.web, 100, 0, Duration::from_secs(10)).await;
    let _ = (&s.stable, &s.canary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_promotes_past_a_pause_and_aborts() {
    let (s, _apps) = healthy_shop(&[]).await;
    s.mesh
        .apply(&rollout(
            "  strategy: canary\n  steps: [10, pause, 40, 60]\n  interval: 2s\n",
        ))
        .await;
    let paused = until_status(
        &s.mesh.cp,
        &s.mesh.ca,
        "the pause step",
        Duration::from_secs(20),
        |st| phase(st) == "Paused",
    )
    .await;
    assert_eq!(
        (paused["step"].as_u64(), paused["canaryWeight"].as_u64()),
        (Some(1), Some(10))
    );
    let ctl = |args: &[&str]| blocking(|| s.mesh.cp.ctl(&s.mesh.ca, args));
    // An unknown rollout is named.
    let out = ctl(&["rollout", "promote", "nosuch", "-n", "shop"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("shop/nosuch"),
        "{out:?}"
    );
    let out = ctl(&["rollout", "promote", "inventory", "-n", "shop"]);
    assert!(out.status.success(), "{out:?}");
    let promoted = status(&s.mesh.cp, &s.mesh.ca, "inventory").expect("status");
    assert_eq!(
        (promoted["step"].as_u64(), promoted["canaryWeight"].as_u64()),
        (Some(2), Some(40))
    );
    assert!(
        promoted["lastAction"]["by"]
            .as_str()
            .unwrap_or_default()
            .ends_with("/sa/operator")
    );
    until_split(&s.web, 60, 40, Duration::from_secs(10)).await;
    // Abort: stable takes everything within a second of the answer.
    let out = ctl(&["rollout", "abort", "inventory", "-n", "shop"]);
    assert!(out.status.success(), "{out:?}");
    let aborted = status(&s.mesh.cp, &s.mesh.ca, "inventory").expect("status");
    assert_eq!(phase(&aborted), "Aborted");
    let written = ctl(&[
        "get",
        "trafficsplit",
        "inventory",
        "-n",
        "shop",
        "-o",
        "json",
    ]);
    let written = String::from_utf8_lossy(&written.stdout);
    assert!(
        written.contains(&format!("\"version\":\"{STABLE}\",\"weight\":100"))
            || written.contains("\"weight\": 100"),
        "{written}"
    );
    until_split(&s.web, 100, 0, Duration::from_secs(5)).await;
    // A second abort is refused with the reason; retry starts over.
    let out = ctl(&["rollout", "abort", "inventory", "-n", "shop"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Aborted"),
        "{out:?}"
    );
    let out = ctl(&["rollout", "retry", "inventory", "-n", "shop"]);
    assert!(out.status.success(), "{out:?}");
    let again = status(&s.mesh.cp, &s.mesh.ca, "inventory").expect("status");
    assert_eq!(
        (
            phase(&again),
            again["step"].as_u64(),
            again["canaryWeight"].as_u64()
        ),
        ("Progressing", Some(0), Some(10))
    );
    // Promote --full: the canary takes everything now.
    let out = ctl(&["rollout", "promote", "--full", "inventory", "-n", "shop"]);
    assert!(out.status.success(), "{out:?}");
    until_split(&s.web, 0, 100, Duration::from_secs(5)).await;
    // The table view renders the whole story.
    let out = ctl(&["rollout", "status", "inventory", "-n", "shop"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("Promoted") && table.contains("promote --full"),
        "{table}"
    );
    // Over: the split is the operator's again, and an edit of it stays.
    until_status(
        &s.mesh.cp,
        &s.mesh.ca,
        "the split released",
        Duration::from_secs(10),
        |st| st["splitReleased"] == true,
    )
    .await;
    s.mesh.apply(&split(90, 10)).await;
    until_split(&s.web, 90, 10, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        shop::split_weights(&s.web).and_then(|w| w.get(STABLE).copied()),
        Some(90),
        "the ended rollout left the operator's split alone"
    );
    let _ = (&s.stable, &s.canary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_callers_stay_on_one_version() {
    let (s, _apps) = healthy_shop(&[]).await;
    // Held at 50 % (the interval outlasts the test).
    s.mesh
        .apply(&rollout(
            "  strategy: canary\n  steps: [50]\n  interval: 10m\n  stickiness: header:x-user-id\n",
        ))
        .await;
    until_split(&s.web, 50, 50, Duration::from_secs(20)).await;
    let addr = s.web.upstream("inventory");
    let mut users_on = std::collections::BTreeMap::<&str, usize>::new();
    for user in 0..40 {
        let id = format!("user-{user}");
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..8 {
            let r = call(addr, "GET", "/v1/stock/1", &[("x-user-id", &id)])
                .await
                .expect("call");
            assert_eq!(r.status, 200, "{r:?}");
            seen.insert(version_of(&r.body).unwrap_or("?").to_owned());
        }
        assert_eq!(seen.len(), 1, "{id} flipped between versions: {seen:?}");
        let v = if seen.contains(CANARY) {
            CANARY
        } else {
            STABLE
        };
        *users_on.entry(v).or_default() += 1;
    }
    // Across callers the split still holds (40 users at 50 %: both sides).
    assert!(
        users_on.get(CANARY).copied().unwrap_or(0) >= 8,
        "{users_on:?}"
    );
    assert!(
        users_on.get(STABLE).copied().unwrap_or(0) >= 8,
        "{users_on:?}"
    );
    // `caller`: web's own identity decides, so every call lands on one version.
    s.mesh
        .apply(&rollout(
            "  strategy: canary\n  steps: [50]\n  interval: 10m\n  stickiness: caller\n",
        ))
        .await;
    wait_for_async(
        "the split to say stickiness: caller",
        Duration::from_secs(20),
        || {
            let config = shop::config_of(&s.web);
            let sticky = config["resources"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["kind"] == "TrafficSplit" && r["spec"]["stickiness"] == "caller");
            async move { sticky.then_some(()) }
        },
    )
    .await;
    let tally = calls(addr, 60, 2, &[]).await;
    assert!(tally.failures.is_empty(), "{:?}", tally.failures);
    assert_eq!(
        tally.versions.len(),
        1,
        "one caller, one version: {:?}",
        tally.versions
    );
    let _ = (&s.stable, &s.canary);
}

/// gRPC calls from web to inventory until stopped: (grpc-status, version)
/// of each.
fn grpc_load(
    web: &Sidecar,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(String, String)>> {
    let addr = web.upstream("inventory");
    tokio::spawn(async move {
        let client = h2_client();
        let mut seen = Vec::new();
        let started = std::time::Instant::now();
        while !stop.load(std::sync::atomic::Ordering::SeqCst)
            && started.elapsed() < Duration::from_secs(90)
            && seen.len() < 30_000
        {
            let req = http::Request::post(format!("http://{addr}/shop.Inventory/Stock"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(http_body_util::Full::new(bytes::Bytes::from_static(&[
                    0, 0, 0, 0, 0,
                ])))
                .expect("request");
            let outcome =
                match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
                    Ok(Ok(resp)) => {
                        let header = |name: &str| {
                            resp.headers()
                                .get(name)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-")
                                .to_owned()
                        };
                        (header("grpc-status"), header("x-version"))
                    }
                    Ok(Err(e)) => (format!("error {e}"), String::new()),
                    Err(_) => ("timeout".to_owned(), String::new()),
                };
            seen.push(outcome);
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        seen
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_canary_failing_by_grpc_status_is_rolled_back() {
    let stable_app = grpc_app(STABLE, 0).await;
    let canary_app = grpc_app(CANARY, 10).await;
    let s = shop_with(&stable_app, &canary_app, true).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..3).map(|_| grpc_load(&s.web, stop.clone())).collect();
    wait_for_async("gRPC calls answered", Duration::from_secs(20), || {
        let n = stable_app.seen() + canary_app.seen();
        async move { (n > 50).then_some(()) }
    })
    .await;
    s.mesh
        .apply(&rollout(&format!(
            "  strategy: canary\n  steps: [30, 60]\n  interval: 3s\n  threshold: 1\n{GATES}"
        )))
        .await;
    let failed = until_status(
        &s.mesh.cp,
        &s.mesh.ca,
        "the rollback",
        Duration::from_secs(40),
        |st| phase(st) == "Failed" || phase(st) == "Promoted",
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut seen = Vec::new();
    for w in workers {
        seen.extend(w.await.expect("worker"));
    }
    assert_eq!(phase(&failed), "Failed", "{failed}");
    let last = &failed["intervals"]
        .as_array()
        .expect("intervals")
        .last()
        .cloned()
        .unwrap_or_default();
    assert_eq!(last["verdict"], "failed", "{last}");
    // HTTP said 200 every time; grpc-status 14 on a tenth is what failed it.
    let rate = last["successRate"].as_f64().unwrap_or(1.0);
    assert!((0.8..0.95).contains(&rate), "{last}");
    // The callers' own view: failures were the canary's UNAVAILABLEs only.
    for (code, version) in &seen {
        assert!(
            code == "0" || (code == "14" && version == CANARY),
            "{code} from {version}"
        );
    }
    let _ = (&s.stable, &s.canary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_analyses_pinned_requests_then_switches_at_once() {
    let (s, _apps) = healthy_shop(&[]).await;
    s.mesh
        .apply(&rollout(
            "  strategy: blue-green\n  interval: 3s\n  analysis: {minRequests: 20, minSuccessRate: 0.99}\n",
        ))
        .await;
    until_split(&s.web, 100, 0, Duration::from_secs(20)).await;
    let addr = s.web.upstream("inventory");
    // While it is analysed, only pinned requests reach the canary.
    let unpinned = calls(addr, 100, 2, &[]).await;
    assert_eq!(
        unpinned.count(STABLE),
        100,
        "{:?} {:?}",
        unpinned.versions,
        unpinned.failures
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pinned = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tally = Tally::default();
            let started = std::time::Instant::now();
            while !stop.load(std::sync::atomic::Ordering::SeqCst)
                && started.elapsed() < Duration::from_secs(60)
            {
                tally.merge(calls(addr, 4, 2, &[("x-bulkhead-version", CANARY)]).await);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tally
        })
    };
    let done = until_status(
        &s.mesh.cp,
        &s.mesh.ca,
        "the switch",
        Duration::from_secs(40),
        |st| phase(st) == "Promoted" || phase(st) == "Failed",
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(phase(&done), "Promoted", "{done}");
    assert_eq!(done["intervals"][0]["verdict"], "passed", "{done}");
    assert_eq!(
        done["intervals"][0]["canaryWeight"], 0,
        "judged on pinned traffic: {done}"
    );
    // All traffic switches in one write.
    until_split(&s.web, 0, 100, Duration::from_secs(10)).await;
    let after = calls(addr, 100, 2, &[]).await;
    assert_eq!(after.count(CANARY), 100, "{:?}", after.versions);
    let pinned = pinned.await.expect("pinned calls");
    assert!(pinned.failures.is_empty(), "{:?}", pinned.failures);
    assert_eq!(pinned.count(STABLE), 0, "{:?}", pinned.versions);
    let _ = (&s.stable, &s.canary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_stops_reporting_freezes_the_rollout() {
    // Registrations outlive the freeze, so the silent endpoint is still
    // one the rollout expects to hear from.
    let (s, _apps) = healthy_shop(&["--lease-ttl", "60s"]).await;
    // No traffic and a high bar: every interval is insufficient data until
    // the canary goes silent.
    s.mesh
        .apply(&rollout(
            "  strategy: canary\n  steps: [20, 50]\n  interval: 3s\n  threshold: 1\n  analysis: {minRequests: 100000, minSuccessRate: 0.5}\n",
        ))
        .await;
    until_split(&s.web, 80, 20, Duration::from_secs(20)).await;
    // The canary's sidecar freezes (as a stalled pod would): no reports,
    // no answers, its registration still alive for a while.
    let pid = s.canary.pid().expect("canary pid").to_string();
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill");
        assert!(ok.success());
    };
    signal("-STOP");
    let frozen = until_status(
        &s.mesh.cp,
        &s.mesh.ca,
        "the freeze",
        Duration::from_secs(20),
        |st| {
            st["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("measurements incomplete")
        },
    )
    .await;
    signal("-CONT");
    assert_eq!(frozen["step"].as_u64(), Some(0), "{frozen}");
    assert_ne!(phase(&frozen), "Failed", "{frozen}");
    assert!(
        frozen["reason"]
            .as_str()
            .unwrap_or_default()
            .contains(CANARY),
        "names the silent endpoint: {frozen}"
    );
    assert!(
        frozen["intervals"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|i| i["verdict"] != "failed"),
        "unknown is not counted as bad: {frozen}"
    );
    let _ = (&s.stable, &s.web);
}
