//! Registration follows the app's health (issue 9): an endpoint is
//! registered once its app passes its readiness probe (the one the
//! injector hands over in `BULKHEAD_APP_PROBES`), withdrawn when the app
//! stops being ready, so callers stop being sent there without waiting for
//! outlier ejection, and registered again when it recovers; each change
//! is a `dev.bulkhead.endpoint.unready` / `.ready` event (issue 12).

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use bulkhead_tests::control::{endpoints_of, registrations_of, wait_for_async};
use bulkhead_tests::events::until_events;
use bulkhead_tests::mesh::Mesh;
use bulkhead_tests::proxy::*;
use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use serde_json::json;

const SHOP: &str = "
apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ports: [{port: 8080, protocol: http}]
";

/// An app whose readiness endpoint answers the status the test stores.
async fn probed_app() -> (App, Arc<AtomicU16>) {
    let readiness = Arc::new(AtomicU16::new(200));
    let status = readiness.clone();
    let app = App::http_with(move |_req| {
        let code = status.load(Ordering::SeqCst);
        async move {
            Response::builder()
                .status(code)
                .body(Full::new(Bytes::from_static(b"ok")))
                .unwrap()
        }
    })
    .await;
    (app, readiness)
}

/// A web sidecar in front of `app` whose readiness probe (as the injector
/// hands it over) asks `probe`.
fn probed_web(app: &App, probe: &App) -> SidecarSpec {
    let probes =
        json!({"/app-health/web/readiness": {"port": probe.addr.port(), "path": "/ready"}});
    SidecarSpec::new("shop", "web", "1.0.0")
        .app(app)
        .env("BULKHEAD_APP_PROBES", &probes.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unready_app_is_withdrawn_and_registered_again_when_it_recovers() {
    let mesh = Mesh::memory("cluster.local", SHOP, &[]).await;
    let (app, readiness) = probed_app().await;
    let _web = mesh.sidecar(probed_web(&app, &app));
    let registered = |expected: usize| {
        let mesh = &mesh;
        async move {
            let listed = endpoints_of(&mesh.cp, &mesh.ca, "shop", "web").await;
            (listed.len() == expected).then_some(())
        }
    };
    let wait = Duration::from_secs(10);
    wait_for_async("web registered while ready", wait, || registered(1)).await;

    // The app says it is not ready: the endpoint is withdrawn ...
    readiness.store(503, Ordering::SeqCst);
    wait_for_async("web withdrawn while unready", wait, || registered(0)).await;
    // ... from callers, but the operator still sees it with --all.
    let all = registrations_of(&mesh.cp, &mesh.ca, "shop", "web").await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].ready, Some(false));
    let listed = |args: &[&str]| {
        let out = mesh.cp.ctl(&mesh.ca, args);
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).expect("JSON list")
    };
    assert!(listed(&["endpoints", "web", "-n", "shop", "-o", "json"]).is_empty());
    let everything = listed(&["endpoints", "web", "-n", "shop", "--all", "-o", "json"]);
    assert_eq!(everything.len(), 1, "{everything:?}");
    assert_eq!(everything[0]["ready"], false, "{everything:?}");
    // The mesh event stream says so, naming the endpoint.
    let web_endpoint =
        |e: &serde_json::Value| e["data"]["namespace"] == "shop" && e["data"]["service"] == "web";
    let unready = until_events(&mesh, "dev.bulkhead.endpoint.unready", wait, web_endpoint).await;
    assert_eq!(
        unready.len(),
        1,
        "one unready event per change: {unready:?}"
    );
    // ... and registered again once it recovers.
    readiness.store(200, Ordering::SeqCst);
    wait_for_async("web registered again", wait, || registered(1)).await;
    let everything = listed(&["endpoints", "web", "-n", "shop", "--all", "-o", "json"]);
    assert_eq!(everything[0]["ready"], true, "{everything:?}");
    let ready = until_events(&mesh, "dev.bulkhead.endpoint.ready", wait, web_endpoint).await;
    assert_eq!(ready.len(), 1, "one ready event per change: {ready:?}");
    assert!(
        ready[0]["id"].as_str().and_then(|i| i.parse::<i64>().ok())
            > unready[0]["id"]
                .as_str()
                .and_then(|i| i.parse::<i64>().ok()),
        "ready comes after unready: {unready:?} {ready:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_are_sent_only_to_ready_endpoints() {
    let shop = format!(
        "{SHOP}---
apiVersion: bulkhead.dev/v1
kind: AllowList
metadata: {{name: web, namespace: shop}}
spec:
  target: web
  rules: [{{from: [api]}}]
"
    );
    let mesh = Mesh::memory("cluster.local", &shop, &[]).await;
    // Two replicas of web; the first one's app will fail its probe.
    let (healthy, sick) = (
        App::http("web", "healthy").await,
        App::http("web", "sick").await,
    );
    let (probe_app, readiness) = probed_app().await;
    let _sick = mesh.sidecar(probed_web(&sick, &probe_app));
    let _healthy = mesh.sidecar(SidecarSpec::new("shop", "web", "1.0.0").app(&healthy));
    let caller = mesh.sidecar(SidecarSpec::new("shop", "api", "1.0.0").upstream("web"));
    let wait = Duration::from_secs(10);
    let balanced = || {
        let caller = &caller;
        async move {
            let n = caller.config()["balancers"]
                .as_array()?
                .iter()
                .filter(|b| b["service"] == "web")
                .map(|b| b["endpoints"].as_array().map_or(0, Vec::len))
                .sum::<usize>();
            Some(n)
        }
    };
    // A balancer is made on the first call.
    until_routable(&caller, "web", "/").await;
    wait_for_async("both replicas in the caller's balancer", wait, || async {
        (balanced().await? == 2).then_some(())
    })
    .await;
    readiness.store(503, Ordering::SeqCst);
    wait_for_async("the unready replica gone from the caller", wait, || async {
        (balanced().await? == 1).then_some(())
    })
    .await;
    // From here every call lands on the ready replica.
    let sick_before = sick.seen();
    for _ in 0..20 {
        let reply = call(caller.upstream("web"), "GET", "/", &[])
            .await
            .expect("call");
        assert_eq!(version_of(&reply.body), Some("healthy"), "{reply:?}");
    }
    assert_eq!(sick.seen(), sick_before);
}
