//! A rolling restart of a service's pods costs its callers nothing (issue
//! 9): a client loop in another pod calls the service's VIP throughout,
//! every request carrying an id, while each old pod is replaced as a
//! Deployment with `maxSurge: 1, maxUnavailable: 0` does it: a new pod
//! starts and becomes ready, then the old one is stopped the way the
//! kubelet stops a pod with a native sidecar — the app first (here a plain
//! server that exits at once on SIGTERM, the least helpful app there is),
//! the sidecar once the app has exited. Every id must be answered 200 and
//! reach an app. Pods are network namespaces (`bulkhead_tests::netns`);
//! needs root, says so loudly without it.

use std::collections::BTreeMap;
use std::time::Duration;

use bulkhead_tests::control::{TestCa, wait_for};
use bulkhead_tests::netns::*;

const VIP: &str = "198.19.0.40";
const APP_PORT: u16 = 8080;
const WAIT: Duration = Duration::from_secs(20);

/// The caller: an unmodified app in the web pod calling the VIP on one
/// keep-alive connection (reopened after an error), `GET /hello?id=N` with
/// N counting up, one line per request (`N STATUS BODY` or `N ERR why`).
/// Stops after the request in flight on SIGTERM; bounded in count and time.
const CLIENT: &str = r#"
import http.client, signal, sys, time
stop = False
def on_term(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)
conn = None
started = time.monotonic()
for i in range(1, 20001):
    if stop or time.monotonic() - started > 120:
        break
    try:
        if conn is None:
            conn = http.client.HTTPConnection(sys.argv[1], 80, timeout=10)
        conn.request("GET", f"/hello?id={i}")
        r = conn.getresponse()
        body = r.read().decode(errors="replace").strip()
        print(f"{i} {r.status} {body}", flush=True)
    except Exception as e:
        print(f"{i} ERR {e!r}", flush=True)
        if conn is not None:
            conn.close()
        conn = None
    time.sleep(0.01)
"#;

/// One replica of orders: its pod, its app and its sidecar.
struct Replica {
    app: PodApp,
    sidecar: PodSidecar,
}

fn start_replica(net: &Net, ca: &TestCa, cp: &PodControlPlane, n: usize) -> Replica {
    let pod = net.pod(&format!("orders-{n}"));
    pod.init_capture();
    let app = pod.http_app(APP_PORT, &[("hello", &format!("orders-{n}"))]);
    let mut sidecar = PodSidecar::start(
        &pod,
        ca,
        cp,
        PodSidecarSpec::new("shop", "orders").app(APP_PORT),
    );
    sidecar.wait_ready();
    Replica { app, sidecar }
}

/// How many of the client's calls `replica`'s app has served.
fn served(replica: &Replica) -> usize {
    replica
        .app
        .process
        .log_text()
        .matches("\"GET /hello?id=")
        .count()
}

/// What the client saw: per id, the status (or `ERR ...`) and the body.
fn client_results(log: &str) -> BTreeMap<u64, String> {
    log.lines()
        .filter_map(|line| {
            let (id, rest) = line.split_once(' ')?;
            Some((id.parse().ok()?, rest.to_owned()))
        })
        .collect()
}

#[test]
fn a_rolling_restart_loses_no_request() {
    if !require_root("a_rolling_restart_loses_no_request") {
        return;
    }
    let ca = TestCa::init("cluster.local");
    let net = Net::new();
    let control = net.pod("control");
    let web_pod = net.pod("web");
    let cp = PodControlPlane::start(&control, &ca);
    cp.apply(&orders_behind_vip(VIP));
    web_pod.init_capture();
    let mut web = PodSidecar::start(&web_pod, &ca, &cp, PodSidecarSpec::new("shop", "web"));
    web.wait_ready();
    let mut old = [
        start_replica(&net, &ca, &cp, 0),
        start_replica(&net, &ca, &cp, 1),
    ];
    let url = format!("http://{VIP}/hello");
    wait_for("web's call to orders answered", WAIT, || {
        (web_pod.curl_as(APP_UID, &url, &[]).status == Some(200)).then_some(())
    });

    let mut client = web_pod.spawn_as(
        APP_UID,
        "client",
        "/usr/bin/python3",
        &["-u", "-c", CLIENT, VIP],
    );
    let answered = |client: &PodProcess| client_results(&client.log_text()).len();
    let more_answers = |client: &mut PodProcess, more: usize, what: &str| {
        let until = answered(client) + more;
        wait_for(what, WAIT, || {
            client.assert_running();
            (answered(client) >= until).then_some(())
        });
    };
    more_answers(&mut client, 50, "the client's first answers");

    let mut new = Vec::new();
    for (n, leaving) in old.iter_mut().enumerate() {
        // Surge: the replacement is up and ready first ...
        new.push(start_replica(&net, &ca, &cp, n + 2));
        more_answers(&mut client, 20, "answers with the new replica up");
        // ... then the old pod stops: its app at once, its sidecar once
        // the app has exited.
        assert!(
            served(leaving) > 0,
            "orders-{n} served before it was stopped"
        );
        leaving.app.process.terminate();
        let status = leaving
            .sidecar
            .terminate()
            .expect("the old sidecar was running");
        assert!(
            status.success(),
            "the old sidecar exited with {status}; log:\n{}",
            leaving.sidecar.log_text()
        );
        more_answers(&mut client, 50, "answers after an old pod stopped");
    }
    // Only the new replicas serve now.
    let served_by_new = |new: &[Replica]| -> usize { new.iter().map(served).sum() };
    let before = served_by_new(&new);
    more_answers(&mut client, 50, "answers after the rollout");
    assert!(served_by_new(&new) >= before + 50);

    let status = client.terminate().expect("the client was running");
    assert!(status.success(), "client: {status}\n{}", client.log_text());
    let results = client_results(&client.log_text());
    let last = *results.keys().last().expect("answers");
    assert_eq!(
        results.len() as u64,
        last,
        "every id from 1 to {last} has a line"
    );
    let failed: Vec<_> = results
        .iter()
        .filter(|(_, r)| !r.starts_with("200 orders-"))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {last} calls failed during the rolling restart: {failed:?}\nweb's log:\n{}",
        failed.len(),
        web.log_text()
    );
    // Each id reached an app (a retried GET may have reached two).
    let logs: String = old
        .iter()
        .chain(&new)
        .map(|r| r.app.process.log_text())
        .collect();
    let missing: Vec<u64> = (1..=last)
        .filter(|id| !logs.contains(&format!("GET /hello?id={id} ")))
        .collect();
    assert!(missing.is_empty(), "ids no app saw: {missing:?}");
    eprintln!(
        "{last} calls, none failed; web retried {} (requests that met a stopping pod) \
         and made {} TLS handshakes to orders' four pods",
        web.metric("bulkhead_retries_total", &[("service", "orders")]),
        web.metric(
            "bulkhead_tls_handshakes_total",
            &[("direction", "outbound"), ("result", "ok")]
        )
    );
    web.assert_running();
    for replica in &mut new {
        replica.sidecar.assert_running();
    }
}
