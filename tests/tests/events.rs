//! The mesh event stream end to end, on real etcd and real processes:
//! each event type produced by a real cause, read back the way scripts
//! and programs read it (`bulkheadctl events -o json`, `WatchEvents`,
//! `GET /v1/events`); resuming after a disconnect with no gap and no
//! duplicate; the retention's count bound, and a consumer behind it told
//! what it lost; etcd compaction cutting no resume short.
//!
//! Waits are bounded polls of `bulkheadctl events`.

use std::collections::BTreeSet;
use std::time::Duration;

use bulkhead_proto::pb;
use bulkhead_tests::control::*;
use bulkhead_tests::events::{events, until_events};
use bulkhead_tests::mesh::{Mesh, blocking};
use bulkhead_tests::proxy::*;
use bulkhead_tests::rollout::rollout;
use bulkhead_tests::shop::{self, *};
use serde_json::Value;

fn id(event: &Value) -> i64 {
    event["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("id is not a revision: {event}"))
}

fn assert_cloudevent(e: &Value) {
    assert_eq!(e["specversion"], "1.0", "{e}");
    for field in ["id", "source", "type", "time"] {
        assert!(
            e[field].as_str().is_some_and(|s| !s.is_empty()),
            "{field} in {e}"
        );
    }
    assert!(
        e["type"].as_str().unwrap().starts_with("dev.bulkhead."),
        "{e}"
    );
    assert!(e["data"].is_object(), "{e}");
}

const OPERATOR: &str = "spiffe://cluster.local/ns/bulkhead/sa/operator";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_control_plane_event_comes_from_a_real_cause() {
    let mesh = shop::on_etcd(&["--lease-ttl", "2s", "--leader-lease-ttl", "2s"]).await;

    // Applied by the operator, in the apply's own transaction.
    let applied = until_events(
        &mesh,
        "dev.bulkhead.resource.applied",
        Duration::from_secs(5),
        |e| e["subject"] == "AllowList/shop/inventory-from-web",
    )
    .await;
    assert_eq!(applied[0]["data"]["by"], OPERATOR);
    assert_eq!(applied[0]["data"]["outcome"], "created");
    assert_eq!(applied[0]["namespace"], "shop");

    // A sidecar starts: a certificate issued, an endpoint registered.
    let app = App::http("inventory", STABLE).await;
    let mut inventory = mesh.inventory(STABLE, "node-1", &app);
    let mut web = mesh.web("node-1");
    until_events(
        &mesh,
        "dev.bulkhead.certificate.issued",
        Duration::from_secs(5),
        |e| e["data"]["identity"] == "spiffe://cluster.local/ns/shop/sa/inventory",
    )
    .await;
    let registered = until_events(
        &mesh,
        "dev.bulkhead.endpoint.registered",
        Duration::from_secs(5),
        |e| e["data"]["service"] == "inventory",
    )
    .await;
    assert_eq!(registered[0]["data"]["version"], STABLE);
    assert_eq!(
        registered[0]["data"]["identity"],
        "spiffe://cluster.local/ns/shop/sa/inventory"
    );

    // Bad tokens: refused, added up into one event per reason and window.
    for _ in 0..20 {
        assert!(certify(&mesh.cp, &mesh.ca, "not-a-token").await.is_err());
    }
    let refused = until_events(
        &mesh,
        "dev.bulkhead.certificate.refused",
        Duration::from_secs(15),
        |e| e["data"]["reason"] == "token",
    )
    .await;
    let counted: u64 = refused
        .iter()
        .map(|e| e["data"]["count"].as_u64().unwrap())
        .sum();
    // The window may close mid-burst: at most a few events, every refusal counted.
    wait_for_async(
        "all 20 refusals counted",
        Duration::from_secs(15),
        || async {
            let refused: Vec<Value> = events(&mesh, &["--type", "certificate.refused"]);
            let n: u64 = refused
                .iter()
                .map(|e| e["data"]["count"].as_u64().unwrap_or(0))
                .sum();
            (n == 20 && refused.len() <= 3).then_some(())
        },
    )
    .await;
    assert!(counted <= 20);

    // SIGTERM: the sidecar deregisters (an event in the delete's transaction).
    web.terminate();
    until_events(
        &mesh,
        "dev.bulkhead.endpoint.deregistered",
        Duration::from_secs(10),
        |e| e["data"]["service"] == "web",
    )
    .await;

    // SIGKILL: nobody deregisters; the lease expires, the leader says so.
    inventory.kill();
    let expired = until_events(
        &mesh,
        "dev.bulkhead.endpoint.expired",
        Duration::from_secs(15),
        |e| e["data"]["service"] == "inventory",
    )
    .await;
    assert_eq!(expired.len(), 1, "written once, by the leader: {expired:?}");
    // web deregistered: its deletion is not mistaken for an expiry.
    assert!(
        events(&mesh, &["--type", "endpoint.expired"])
            .iter()
            .all(|e| e["data"]["service"] != "web")
    );

    // A rollout starts: its first step is an event.
    mesh.apply(&rollout(
        "  strategy: canary\n  steps: [20, 50]\n  interval: 3s\n",
    ))
    .await;
    let step = until_events(
        &mesh,
        "dev.bulkhead.rollout.step",
        Duration::from_secs(15),
        |e| e["data"]["rollout"] == "inventory",
    )
    .await;
    assert_eq!(step[0]["subject"], "Rollout/shop/inventory");

    // Deleted by the operator.
    let out = blocking(|| {
        mesh.cp.ctl(
            &mesh.ca,
            &["delete", "allowlist", "inventory-from-web", "-n", "shop"],
        )
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deleted = until_events(
        &mesh,
        "dev.bulkhead.resource.deleted",
        Duration::from_secs(5),
        |e| e["data"]["name"] == "inventory-from-web",
    )
    .await;
    assert_eq!(deleted[0]["data"]["by"], OPERATOR);

    // Everything is a CloudEvent with a unique, increasing id.
    let all = events(&mesh, &[]);
    all.iter().for_each(assert_cloudevent);
    let ids: Vec<i64> = all.iter().map(id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    // Filters: by namespace and by type prefix.
    assert!(
        events(&mesh, &["-n", "shop", "--type", "endpoint"])
            .iter()
            .all(|e| {
                e["namespace"] == "shop"
                    && e["type"]
                        .as_str()
                        .unwrap()
                        .starts_with("dev.bulkhead.endpoint.")
            })
    );
}

/// A `WatchEvents` stream as the operator.
async fn watch_events(mesh: &Mesh, after: i64) -> tonic::Streaming<pb::MeshEvent> {
    mesh.cp
        .admin_client(&mesh.ca)
        .watch_events(pb::WatchEventsRequest {
            after_id: after,
            since_unix_ms: if after == 0 { 1 } else { 0 },
            follow: true,
            ..Default::default()
        })
        .await
        .expect("watch events")
        .into_inner()
}

async fn take(stream: &mut tonic::Streaming<pb::MeshEvent>, n: usize) -> Vec<pb::MeshEvent> {
    let mut out = Vec::new();
    while out.len() < n {
        let next = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("an event within 10 s")
            .expect("stream ok")
            .expect("stream open");
        out.push(next);
    }
    out
}

/// Applies `n` services named `prefix-i`, one apply (one event) each.
async fn apply_services(mesh: &Mesh, prefix: &str, n: usize) {
    for i in 0..n {
        mesh.apply(&format!(
            "apiVersion: bulkhead.dev/v1\nkind: Service\nmetadata: {{name: {prefix}-{i}, namespace: load}}\nspec:\n  ports: [{{port: 8080, protocol: http}}]\n"
        ))
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_resume_after_a_disconnect_with_no_gap_and_no_duplicate() {
    let mut mesh = Mesh::etcd("cluster.local", "/bulkhead/", "", &[]).await;
    apply_services(&mesh, "a", 10).await;

    // gRPC: read 10, disconnect, 10 more happen, resume after the last id.
    let mut stream = watch_events(&mesh, 0).await;
    let first = take(&mut stream, 10).await;
    drop(stream);
    apply_services(&mesh, "b", 10).await;
    // etcd compacts its history meanwhile: the resume reads kept events,
    // not watch history, so nothing is lost.
    // An id is the revision × 1000 plus its place in the transaction.
    let head = id(events(&mesh, &[]).last().unwrap()) / 1000;
    if let Some(etcd) = mesh.etcd_server() {
        etcd.compact(head);
    }
    let mut stream = watch_events(&mesh, first.last().unwrap().id).await;
    let second = take(&mut stream, 10).await;
    let ids: Vec<i64> = first.iter().chain(&second).map(|e| e.id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "no duplicate, in order: {ids:?}"
    );
    let names: BTreeSet<String> = first
        .iter()
        .chain(&second)
        .map(|e| {
            serde_json::from_str::<Value>(&e.cloudevent_json).unwrap()["data"]["name"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(names.len(), 20, "no gap: {names:?}");
    assert!(
        first
            .iter()
            .chain(&second)
            .all(|e| e.r#type != "dev.bulkhead.events.lost")
    );
    // Live: a new event reaches the open stream.
    apply_services(&mesh, "c", 1).await;
    let live = take(&mut stream, 1).await;
    assert!(live[0].id > second.last().unwrap().id);

    // Server-Sent Events: resume by Last-Event-ID from the 5th event, over
    // HTTP/2 (what curl negotiates) and over HTTP/1.1 (what a browser's
    // EventSource behind an HTTP/1.1 proxy uses).
    let after = first[4].id;
    let expected: Vec<i64> = first[5..]
        .iter()
        .chain(&second)
        .chain(&live)
        .map(|e| e.id)
        .collect();
    for http in ["--http2", "--http1.1"] {
        let sse = blocking(|| sse_events(&mesh, http, after, 16));
        let sse_ids: Vec<i64> = sse.iter().map(|(id, _, _)| *id).collect();
        assert_eq!(sse_ids, expected, "over {http}");
        for (id, kind, data) in &sse {
            let e: Value = serde_json::from_str(data).unwrap();
            assert_eq!(e["id"], id.to_string());
            assert_eq!(e["type"], *kind);
        }
    }

    // Without an operator certificate: 403.
    let out = blocking(|| {
        std::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
            ])
            .arg("--cacert")
            .arg(mesh.ca.file("bundle.crt"))
            .arg(format!(
                "https://127.0.0.1:{}/v1/events",
                mesh.cp.grpc.port()
            ))
            .output()
            .expect("curl")
    });
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403");
}

/// `GET /v1/events` with `Last-Event-ID: after` over `http` (curl's
/// `--http2` or `--http1.1`), until `n` events came: (id, event, data) of
/// each.
fn sse_events(mesh: &Mesh, http: &str, after: i64, n: usize) -> Vec<(i64, String, String)> {
    let out = std::process::Command::new("curl")
        .args(["-s", "-N", http, "--max-time", "4"])
        .arg("--cacert")
        .arg(mesh.ca.file("bundle.crt"))
        .arg("--cert")
        .arg(mesh.ca.file("operator.crt"))
        .arg("--key")
        .arg(mesh.ca.file("operator.key"))
        .args(["-H", &format!("Last-Event-ID: {after}")])
        .arg(format!(
            "https://127.0.0.1:{}/v1/events",
            mesh.cp.grpc.port()
        ))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut events = Vec::new();
    for block in text.split("\n\n") {
        let field = |name: &str| {
            block
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::to_owned)
        };
        if let (Some(id), Some(kind), Some(data)) =
            (field("id: "), field("event: "), field("data: "))
        {
            events.push((id.parse().expect("numeric id"), kind, data));
        }
    }
    assert!(events.len() >= n, "{n} events expected in:\n{text}");
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_count_bound_holds_and_a_consumer_behind_it_is_told_what_it_lost() {
    let mesh = Mesh::etcd("cluster.local", "/bulkhead/", "", &["--events-max", "100"]).await;
    apply_services(&mesh, "a", 5).await;
    let oldest = id(&events(&mesh, &[])[0]);
    apply_services(&mesh, "b", 140).await;
    // The leader trims every few seconds.
    let kept = wait_for_async("the count bound", Duration::from_secs(20), || async {
        let all = events(&mesh, &[]);
        (all.len() <= 101).then_some(all)
    })
    .await;
    assert!(kept.len() >= 95, "the newest are kept: {}", kept.len());
    // Behind the retention: an events.lost marker first, never a silent gap.
    let resumed = events(&mesh, &["--after", &oldest.to_string()]);
    assert_eq!(
        resumed[0]["type"], "dev.bulkhead.events.lost",
        "{}",
        resumed[0]
    );
    assert_eq!(resumed[0]["data"]["afterId"], oldest);
    let lost_through = resumed[0]["data"]["lostThroughId"].as_i64().unwrap();
    assert!(lost_through > oldest);
    assert!(resumed[1..].iter().all(|e| id(e) > lost_through));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulkheadctl_events_watch_resumes_by_itself_across_a_control_plane_restart() {
    let mut mesh = Mesh::etcd("cluster.local", "/bulkhead/", "", &[]).await;
    apply_services(&mesh, "a", 3).await;
    let out_file = tempfile::NamedTempFile::new().unwrap();
    let mut follower = blocking(|| {
        mesh.ca
            .ctl_command(
                &mesh.cp.url(),
                &["events", "-w", "-o", "json", "--type", "resource"],
            )
            .stdout(out_file.reopen().unwrap())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    });
    let lines = || {
        std::fs::read_to_string(out_file.path())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    wait_for("3 events", Duration::from_secs(10), || {
        (lines().len() >= 3).then_some(())
    });
    blocking(|| mesh.cp.restart());
    apply_services(&mesh, "b", 3).await;
    wait_for(
        "6 events after the restart",
        Duration::from_secs(30),
        || (lines().len() >= 6).then_some(()),
    );
    let _ = follower.kill();
    let _ = follower.wait();
    let ids: Vec<i64> = lines().iter().map(id).collect();
    assert_eq!(ids.len(), 6, "no duplicate after reconnecting: {ids:?}");
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
}

/// inventory's allow-list admitting cart only: web's calls are denied.
const INVENTORY_FROM_CART_ONLY: &str = "apiVersion: bulkhead.dev/v1
kind: AllowList
metadata: {name: inventory-from-web, namespace: shop}
spec:
  target: inventory
  rules:
    - from: [cart]
      ports: [8080]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_report_ejections_and_a_denial_flood_as_a_bounded_number_of_events() {
    let mesh = shop::on_etcd(&[]).await;
    // The only inventory endpoint answers 500s: web's outlier detection
    // ejects it (five failures in a row) and says so.
    let broken = bulkhead_tests::rollout::failing_app(CANARY, 1).await;
    let canary = mesh.inventory(CANARY, "node-1", &broken);
    let web = mesh.web("node-1");
    until_endpoints(&web, &[&canary]).await;
    let mut conn = OneConnection::open(web.upstream("inventory")).await;
    conn.gets(20).await;
    let ejected = until_events(
        &mesh,
        "dev.bulkhead.endpoint.ejected",
        Duration::from_secs(15),
        |_| true,
    )
    .await;
    assert_eq!(
        ejected[0]["source"], "spiffe://cluster.local/ns/shop/sa/web",
        "{}",
        ejected[0]
    );
    assert_eq!(ejected[0]["namespace"], "shop");
    assert!(ejected[0]["data"]["ejectedForSeconds"].as_f64() > Some(0.0));

    // A flood of denied requests: counted in full, in a few events.
    mesh.apply(INVENTORY_FROM_CART_ONLY).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while conn.get("/probe", &[]).await.map(|r| r.status) != Ok(403) {
        assert!(std::time::Instant::now() < deadline, "web is still let in");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let flood = conn.gets(2000).await;
    assert_eq!(flood.ok(), 0);
    let denied = wait_for_async("every denial counted", Duration::from_secs(30), || async {
        let denied: Vec<Value> = events(&mesh, &["--type", "authz.denied"]);
        let n: u64 = denied
            .iter()
            .map(|e| e["data"]["count"].as_u64().unwrap_or(0))
            .sum();
        (n >= 2000).then_some(denied)
    })
    .await;
    // 10 s windows, one event per (caller, target, rule) in each.
    assert!(
        denied.len() <= 4,
        "bounded: {} events: {denied:?}",
        denied.len()
    );
    let web_id = "spiffe://cluster.local/ns/shop/sa/web";
    let from_web = denied
        .iter()
        .find(|e| e["data"]["caller"] == web_id)
        .expect("web named");
    assert_eq!(from_web["data"]["target"], "inventory", "{from_web}");
    assert!(
        from_web["data"]["rule"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{from_web}"
    );
    assert!(
        from_web["source"]
            .as_str()
            .unwrap()
            .ends_with("/sa/inventory"),
        "{from_web}"
    );
    assert!(
        from_web["data"]["path"]
            .as_str()
            .is_some_and(|p| p.starts_with('/')),
        "{from_web}"
    );

    // Once the ejection has run out, web's next pick readmits the endpoint
    // and says so, once.
    let ejected_for = ejected[0]["data"]["ejectedForSeconds"]
        .as_f64()
        .unwrap_or(30.0);
    let limit = Duration::from_secs_f64(ejected_for) + Duration::from_secs(20);
    let deadline = std::time::Instant::now() + limit;
    let readmitted = loop {
        let _ = conn.get("/probe", &[]).await;
        let seen = events(&mesh, &["--type", "endpoint.readmitted", "--since", "10m"]);
        if !seen.is_empty() {
            break seen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no readmission within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(readmitted.len(), 1, "{readmitted:?}");
    assert_eq!(
        readmitted[0]["source"], "spiffe://cluster.local/ns/shop/sa/web",
        "{}",
        readmitted[0]
    );
    assert_eq!(
        readmitted[0]["data"]["service"], "inventory",
        "{}",
        readmitted[0]
    );
}
