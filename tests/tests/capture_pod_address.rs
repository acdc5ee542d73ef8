//! A pod address stays that pod (issue 9): a captured connection to a
//! registered endpoint's own IP — what a StatefulSet client, a Kafka or
//! etcd peer does — reaches that endpoint and no other, over mTLS; only a
//! Service VIP is balanced. Pods are network namespaces
//! (`bulkhead_tests::netns`); needs root, says so loudly without it.

use std::time::Duration;

use bulkhead_tests::control::{TestCa, wait_for};
use bulkhead_tests::netns::*;

const VIP: &str = "198.19.0.20";
/// The port the app listens on inside its pod (the Service declares 80).
const APP_PORT: u16 = 8080;
const WAIT: Duration = Duration::from_secs(20);
const CALLS: usize = 100;

const MESH: &str = "
apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: kafka, namespace: shop}
spec:
  ports: [{port: 80, protocol: http}]
  vip: 198.19.0.20
---
apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: client, namespace: shop}
spec:
  ports: [{port: 80, protocol: http}]
---
apiVersion: bulkhead.dev/v1
kind: AllowList
metadata: {name: kafka-from-client, namespace: shop}
spec:
  target: kafka
  rules: [{from: [client]}]
";

/// `CALLS` requests from `pod`'s app to `url`, up to 20 at once (one curl,
/// a connection each): the status of each (0: no HTTP answer).
fn calls(pod: &Pod, url: &str) -> Vec<u16> {
    let mut args = vec![
        "-s",
        "-Z",
        "--parallel-immediate",
        "--parallel-max",
        "20",
        "--max-time",
        "10",
        "-w",
        "%{http_code}\n",
    ];
    // `-o` holds for one URL: each needs its own.
    for _ in 0..CALLS {
        args.extend(["-o", "/dev/null", url]);
    }
    let out = pod.exec_as(APP_UID, "curl", &args);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse().unwrap_or(0))
        .collect()
}

/// Calls the app has answered.
fn served(app: &PodApp) -> usize {
    app.requests("/hello").len()
}

#[test]
fn a_pod_address_reaches_that_pod_and_a_vip_spreads() {
    if !require_root("a_pod_address_reaches_that_pod_and_a_vip_spreads") {
        return;
    }
    let ca = TestCa::init("cluster.local");
    let net = Net::new();
    let control = net.pod("control");
    let (client, kafka_0, kafka_1) = (net.pod("client"), net.pod("kafka-0"), net.pod("kafka-1"));
    let cp = PodControlPlane::start(&control, &ca);
    cp.apply(MESH);
    for pod in [&client, &kafka_0, &kafka_1] {
        pod.init_capture();
    }
    let mut apps = [
        kafka_0.http_app(APP_PORT, &[("hello", "kafka-0")]),
        kafka_1.http_app(APP_PORT, &[("hello", "kafka-1")]),
    ];
    let mut sidecars = vec![PodSidecar::start(
        &client,
        &ca,
        &cp,
        PodSidecarSpec::new("shop", "client"),
    )];
    for pod in [&kafka_0, &kafka_1] {
        let spec = PodSidecarSpec::new("shop", "kafka").app(APP_PORT);
        sidecars.push(PodSidecar::start(pod, &ca, &cp, spec));
    }
    for sidecar in &mut sidecars {
        sidecar.wait_ready();
    }
    let vip_url = format!("http://{VIP}/hello");
    wait_for("both replicas registered and reachable", WAIT, || {
        let both = client.curl_as(APP_UID, &vip_url, &[]).status == Some(200)
            && client
                .curl_as(APP_UID, &format!("http://{}/hello", kafka_1.ip), &[])
                .status
                == Some(200);
        both.then_some(())
    });

    // The VIP, 100 times (20 at a time): spread over both. (First: the
    // pod-address calls below load kafka-0, and the balancer sees that.)
    let before = (served(&apps[0]), served(&apps[1]));
    let statuses = calls(&client, &vip_url);
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let spread = (served(&apps[0]) - before.0, served(&apps[1]) - before.1);
    assert_eq!(spread.0 + spread.1, CALLS);
    assert!(spread.0 > 0 && spread.1 > 0, "VIP calls spread: {spread:?}");

    // kafka-0's address, 100 times (ten at a time): kafka-0 serves all.
    let before = (served(&apps[0]), served(&apps[1]));
    let statuses = calls(&client, &format!("http://{}/hello", kafka_0.ip));
    assert_eq!(statuses.len(), CALLS);
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        served(&apps[0]) - before.0,
        CALLS,
        "kafka-0 served every call"
    );
    assert_eq!(served(&apps[1]), before.1, "kafka-1 served none");

    // kafka-0's app stops: calls to its address fail, as they would without
    // the mesh. None is moved to kafka-1 (a VIP call would be retried there).
    apps[0].process.kill();
    let before = served(&apps[1]);
    for _ in 0..10 {
        let r = client.curl_as(APP_UID, &format!("http://{}/hello", kafka_0.ip), &[]);
        assert_ne!(r.status, Some(200), "{r:?}");
    }
    assert_eq!(
        served(&apps[1]),
        before,
        "no call to kafka-0's address reached kafka-1"
    );
    // The VIP still answers, from kafka-1.
    assert_eq!(client.curl_as(APP_UID, &vip_url, &[]).status, Some(200));
    for sidecar in &mut sidecars {
        sidecar.assert_running();
    }
}
