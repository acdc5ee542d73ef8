//! SIGTERM drain: the endpoint deregisters and drains with no client error.
//!
//! Every call goes app → caller sidecar → mTLS → callee sidecar → app over
//! real loopback sockets, against the shop in `bulkhead_tests::shop`. Loads
//! are bounded in count and time; waits are bounded polls on a signal (a
//! metric, `/config`, a counter, an app's report), never bare sleeps.

use std::time::{Duration, Instant};

use bulkhead_tests::mesh::blocking;
use bulkhead_tests::shop::*;

// ---------------------------------------------------------------------------
// 6. SIGTERM drain.

/// Two replicas with a 5 s grace period; one request held 1 s at an app.
/// SIGTERM its endpoint's sidecar while traffic flows: the held request
/// finishes during the drain, the rest move to the other replica, and no
/// caller sees an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_drains_the_endpoint_with_no_client_error() {
    let grace = Duration::from_secs(5);
    let mut m = held_mesh(Duration::from_secs(1), &["--drain-timeout", "5s"]).await;
    let addr = m.web.upstream("inventory");
    // One sequential caller on a single keep-alive connection, and a few
    // concurrent ones on pooled clients.
    let load = Load::start(addr, 3, Duration::from_millis(20))
        .and_one_connection(addr, Duration::from_millis(10))
        .await;
    load.until_more(60, "before SIGTERM").await;

    let (in_flight, leaving) = hold_one(&mut m, "GET", &[]).await;
    let staying = 1 - leaving;
    let started = Instant::now();
    let status = blocking(|| m.sidecars[leaving].terminate()).expect("sidecar was running");
    let took = started.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        took < grace + Duration::from_secs(2),
        "exited after {took:?}"
    );
    let reply = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("the held request is answered")
        .expect("call task")
        .expect("call");
    assert_eq!(reply.status, 200, "finished during the drain: {reply:?}");
    assert!(reply.body.contains(&format!("app={leaving}")), "{reply:?}");
    let served_by_leaving = m.apps[leaving].seen();

    until_endpoints(&m.web, &[&m.sidecars[staying]]).await;
    load.until_more(60, "after the drain").await;
    let tally = load.finish().await;
    // A caller that dials the leaving sidecar after it stopped accepting
    // but before the deregistration reached it gets "connection refused";
    // that GET is retried, but (the retry bug) back to the same endpoint.
    assert!(
        tally.failures.is_empty() && tally.failures.iter().all(|f| f.contains("connect-failed")),
        "{} of {} calls failed: {:?}",
        tally.failures.len(),
        tally.ok() + tally.failures.len(),
        tally.failures
    );
    assert_eq!(
        m.apps[leaving].seen(),
        served_by_leaving,
        "nothing reached the drained endpoint after it exited"
    );
    let _ = &m.mesh;
}

const CALLER_SHOP: &str = "
apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: inventory, namespace: shop}
spec:
  ports: [{port: 8080, protocol: http}]
---
apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ports: [{port: 8080, protocol: http}]
---
apiVersion: bulkhead.dev/v1
kind: AllowList
metadata: {name: inventory-from-web, namespace: shop}
spec:
  target: inventory
  rules: [{from: [web]}]
";

/// A terminating pod's app may still be finishing work that calls its
/// upstreams: after SIGTERM the sidecar drains inbound, but keeps serving
/// the app's outbound calls until the app has exited (or the grace period
/// ends), then exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_serves_the_app_until_it_exits() {
    use bulkhead_tests::mesh::Mesh;
    use bulkhead_tests::proxy::{App, SidecarSpec, call};
    let mesh = Mesh::memory("cluster.local", CALLER_SHOP, &[]).await;
    let inventory_app = App::http("inventory", "1.0.0").await;
    let _inventory =
        mesh.sidecar(SidecarSpec::new("shop", "inventory", "1.0.0").app(&inventory_app));
    let web_app = App::http("web", "1.0.0").await;
    let mut web = mesh.sidecar(
        SidecarSpec::new("shop", "web", "1.0.0")
            .app(&web_app)
            .upstream("inventory")
            .arg("--drain-timeout")
            .arg("60s")
            .arg("--deregister-delay")
            .arg("0s"),
    );
    let upstream = web.upstream("inventory");
    let ok = || async {
        call(upstream, "GET", "/stock", &[])
            .await
            .is_ok_and(|r| r.status == 200)
    };
    bulkhead_tests::control::wait_for_async(
        "web's call answered",
        Duration::from_secs(20),
        || async { ok().await.then_some(()) },
    )
    .await;

    let pid = web.pid().expect("running").to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    // Inbound has drained (nothing was in flight) and the app is still up:
    // its calls keep being served, on new connections too.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert!(ok().await, "an outbound call during the drain failed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    web.assert_running();
    // The app exits: the sidecar follows, long before the 60 s grace.
    web_app.stop();
    let status = blocking(|| web.wait_exit());
    assert!(status.success(), "{status:?}\n{}", web.log_text());
}
