//! A sidecar container restarted in its pod while the control plane is
//! down comes back serving on its last config and certificate, from its
//! state dir (an in-memory emptyDir when injected), as README promises
//! (issue 9). Pods are network namespaces (`bulkhead_tests::netns`); needs
//! root, says so loudly without it.

use std::time::Duration;

use bulkhead_tests::control::{TestCa, wait_for};
use bulkhead_tests::netns::*;

const VIP: &str = "198.19.0.30";
const APP_PORT: u16 = 8080;
const WAIT: Duration = Duration::from_secs(20);

#[test]
fn a_restarted_sidecar_serves_through_a_control_plane_outage() {
    if !require_root("a_restarted_sidecar_serves_through_a_control_plane_outage") {
        return;
    }
    let ca = TestCa::init("cluster.local");
    let net = Net::new();
    let control = net.pod("control");
    let (web_pod, orders_pod) = (net.pod("web"), net.pod("orders"));
    let mut cp = PodControlPlane::start(&control, &ca);
    cp.apply(&orders_behind_vip(VIP));
    for pod in [&web_pod, &orders_pod] {
        pod.init_capture();
    }
    let orders_app = orders_pod.http_app(APP_PORT, &[("hello", "orders")]);
    let mut orders = PodSidecar::start(
        &orders_pod,
        &ca,
        &cp,
        PodSidecarSpec::new("shop", "orders").app(APP_PORT),
    );
    let mut web = PodSidecar::start(&web_pod, &ca, &cp, PodSidecarSpec::new("shop", "web"));
    orders.wait_ready();
    web.wait_ready();
    let url = format!("http://{VIP}/hello");
    wait_for("web's call to orders answered", WAIT, || {
        (web_pod.curl_as(APP_UID, &url, &[]).status == Some(200)).then_some(())
    });
    // The saved state holds what web subscribed to (orders' endpoint).
    let saved = web.state_dir.join("mesh-state.pb");
    let orders_ip = orders_pod.ip.to_string();
    wait_for("web's state saved with orders' endpoint", WAIT, || {
        let bytes = std::fs::read(&saved).ok()?;
        bytes
            .windows(orders_ip.len())
            .any(|w| w == orders_ip.as_bytes())
            .then_some(())
    });

    // The control plane goes away; then web's sidecar container restarts.
    cp.stop();
    web.restart();
    web.wait_ready();
    let served = orders_app.requests("/hello").len();
    for _ in 0..5 {
        let r = web_pod.curl_as(APP_UID, &url, &[]);
        assert_eq!(r.status, Some(200), "{r:?}\nweb's log:\n{}", web.log_text());
        assert_eq!(r.body, "orders");
    }
    assert_eq!(orders_app.requests("/hello").len(), served + 5);
    let log = web.log_text();
    assert!(
        log.contains("using the certificate kept in the state dir")
            && log.contains("serving on the last saved config"),
        "{log}"
    );
    web.assert_running();
    orders.assert_running();
}
