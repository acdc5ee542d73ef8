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
