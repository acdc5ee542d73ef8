//! Transparent capture on pods made of network namespaces (see
//! `bulkhead_tests::netns`): `bulkhead-proxy init-iptables` runs in each
//! pod as the init container would, the sidecar runs as UID 2102, and the
//! apps are unmodified (`curl`, `python3 -m http.server`). Needs root; says
//! so loudly without it.
//!
//! - `init-iptables`: idempotent, `--dry-run` prints exactly what it
//!   installs, and every failure (no CAP_NET_ADMIN, a bad flag, a failing
//!   `iptables-restore`) exits non-zero with the nat table untouched.
//! - A call to a Service VIP from an app arrives over mTLS with the
//!   caller's identity; an unlisted caller gets the mesh's 403; a direct
//!   dial to another pod's app port (IPv4 or IPv6) lands on that pod's
//!   sidecar, never on the app; IPv6 is captured and routed; destinations
//!   outside the mesh are refused and counted.
//! - The proxy's own traffic is exempt only for its UID: the same proxy
//!   under another UID has its control-plane calls captured and refused.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::{Output, Stdio};
use std::time::Duration;

use bulkhead_tests::control::{TestCa, bin, wait_for};
use bulkhead_tests::netns::*;

const TRUST_DOMAIN: &str = "cluster.local";
const WEB_VIP: &str = "198.19.0.10";
/// The port apps listen on inside their pods (the Services declare 80).
const APP_PORT: u16 = 8080;
const WAIT: Duration = Duration::from_secs(20);

const MESH: &str = "
apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ports: [{port: 80, protocol: http}]
  vip: 198.19.0.10
---
apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: api, namespace: shop}
spec:
  ports: [{port: 80, protocol: http}]
---
apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: frontend, namespace: shop}
spec:
  ports: [{port: 80, protocol: http}]
---
apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: intruder, namespace: shop}
spec:
  ports: [{port: 80, protocol: http}]
---
apiVersion: bulkhead.dev/v1
kind: AllowList
metadata: {name: web-from-frontend, namespace: shop}
spec:
  target: web
  rules:
    - from: [frontend]
      ports: [80]
---
apiVersion: bulkhead.dev/v1
kind: AllowList
metadata: {name: api-from-frontend, namespace: shop}
spec:
  target: api
  rules:
    - from: [frontend]
      ports: [80]
";

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Feeds `rules` to `restore` (iptables-restore or ip6tables-restore) in `pod`.
fn restore(pod: &Pod, restore: &str, rules: &str) {
    let mut child = pod
        .command(None, restore, &[])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn restore");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(rules.as_bytes())
        .expect("write rules");
    let out = child.wait_with_output().expect("restore");
    assert_ok(&format!("{restore} of the dry-run rules"), &out);
}

/// The two sections `--dry-run` prints: (IPv4, IPv6) restore input.
fn dry_run_sections(out: &str) -> (String, String) {
    let (mut v4, mut v6, mut current) = (String::new(), String::new(), 0);
    for line in out.lines() {
        match line {
            "# iptables-restore (nat table)" => current = 4,
            "# ip6tables-restore (nat table)" => current = 6,
            _ if current == 4 => v4 += &format!("{line}\n"),
            _ if current == 6 => v6 += &format!("{line}\n"),
            _ => panic!("dry-run printed {line:?} before any section header:\n{out}"),
        }
    }
    (v4, v6)
}

#[test]
fn init_iptables_is_idempotent_and_dry_run_prints_what_it_installs() {
    if !require_root("init_iptables_is_idempotent_and_dry_run_prints_what_it_installs") {
        return;
    }
    let net = Net::new();
    let flags = [
        "--exclude-inbound-ports",
        "9901",
        "--exclude-outbound-ports",
        "5432",
        "--exclude-outbound-cidrs",
        "198.18.200.0/24,fd00:bb:0:c8::/64",
    ];
    let pod = net.pod("app");
    let untouched = pod.nat_rules();
    assert_ok("init-iptables", &pod.init_iptables(&flags));
    let installed = pod.nat_rules();
    for (family, rules) in [("IPv4", &installed.0), ("IPv6", &installed.1)] {
        for rule in [
            "-A PREROUTING -p tcp -j BULKHEAD_INBOUND",
            "-A OUTPUT -j BULKHEAD_OUTPUT",
            "--dport 4143 -j RETURN",
            "--dport 4191 -j RETURN",
            "--dport 9901 -j RETURN",
            "-A BULKHEAD_INBOUND -p tcp -j REDIRECT --to-ports 4143",
            "-m owner --uid-owner 2102 -j RETURN",
            "-A BULKHEAD_OUTPUT -o lo -j RETURN",
            "--dport 5432 -j RETURN",
            "-A BULKHEAD_OUTPUT -p tcp -j REDIRECT --to-ports 4140",
        ] {
            assert!(rules.contains(rule), "{family}: no {rule:?} in\n{rules}");
        }
    }
    assert!(installed.0.contains("-d 198.18.200.0/24 -j RETURN"));
    assert!(installed.1.contains("-d fd00:bb:0:c8::/64 -j RETURN"));
    assert!(!installed.0.contains("fd00:") && !installed.1.contains("198.18."));

    // Run twice (an init container restarts): the same table, no duplicates.
    assert_ok("second init-iptables", &pod.init_iptables(&flags));
    assert_eq!(pod.nat_rules(), installed, "a second run changed the rules");

    // --dry-run changes nothing, and restoring what it prints in a fresh
    // pod gives exactly the table the real run installed.
    let fresh = net.pod("dry-run");
    let mut dry_flags = flags.to_vec();
    dry_flags.push("--dry-run");
    let dry = fresh.init_iptables(&dry_flags);
    assert_ok("init-iptables --dry-run", &dry);
    assert_eq!(fresh.nat_rules(), untouched, "--dry-run installed rules");
    let (v4, v6) = dry_run_sections(&text(&dry.stdout));
    restore(&fresh, "iptables-restore", &v4);
    restore(&fresh, "ip6tables-restore", &v6);
    assert_eq!(
        fresh.nat_rules(),
        installed,
        "--dry-run printed other rules than it installs"
    );
}

/// `init-iptables` in `pod` with a stand-in for `tool` first in `PATH`: it
/// reads the rules, prints `message` and exits 4.
fn with_failing(pod: &Pod, tool: &str, message: &str) -> std::process::Command {
    let dir = pod.dir().join(format!("failing-{tool}"));
    std::fs::create_dir(&dir).expect("dir");
    let script = dir.join(tool);
    let body = format!("#!/bin/sh\ncat >/dev/null\necho '{tool}: {message}' >&2\nexit 4\n");
    std::fs::write(&script, body).expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut cmd = pod.command(None, bin("bulkhead-proxy"), &["init-iptables"]);
    cmd.env("PATH", format!("{}:{POD_PATH}", dir.display()));
    cmd
}

#[test]
fn init_iptables_that_cannot_install_fails_the_pod_and_installs_nothing() {
    if !require_root("init_iptables_that_cannot_install_fails_the_pod_and_installs_nothing") {
        return;
    }
    let net = Net::new();
    let pod = net.pod("app");
    let untouched = pod.nat_rules();

    // An init container without CAP_NET_ADMIN (an unprivileged UID here):
    // the real iptables-restore refuses.
    let out = pod.exec_as(APP_UID, bin("bulkhead-proxy"), &["init-iptables"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    // It reads the table it may have to restore first, so that is the step
    // that fails without the capability.
    assert!(
        text(&out.stderr).contains("iptables-save")
            || text(&out.stderr).contains("iptables-restore"),
        "the error names the failing step: {}",
        text(&out.stderr)
    );
    assert_eq!(pod.nat_rules(), untouched);

    // A bad value is refused before anything is written.
    let out = pod.init_iptables(&["--exclude-outbound-cidrs", "198.18.0.0/33"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--exclude-outbound-cidrs"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(pod.nat_rules(), untouched);

    // iptables-restore itself fails (e.g. a kernel without the REDIRECT
    // target): a stand-in that reads the rules, then exits 4.
    let mut cmd = with_failing(&pod, "iptables-restore", "line 12 failed");
    let out = cmd.output().expect("run init-iptables");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("line 12 failed"),
        "iptables-restore's own error is shown: {}",
        text(&out.stderr)
    );
    assert_eq!(pod.nat_rules(), untouched);
}

/// `init-iptables` installs IPv4, then IPv6, each in its own
/// `iptables-restore` transaction; when the IPv6 one fails the command
/// exits 1 (the pod does not start) but leaves the IPv4 rules behind,
/// although `proxy/src/capture.rs` promises a failure installs none.
#[test]
fn failed_ipv6_install_leaves_no_ipv4_rules() {
    if !require_root("failed_ipv6_install_leaves_no_ipv4_rules") {
        return;
    }
    let net = Net::new();
    let pod = net.pod("app");
    let untouched = pod.nat_rules();
    let mut cmd = with_failing(&pod, "ip6tables-restore", "no IPv6 nat");
    let out = cmd.output().expect("run init-iptables");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(pod.nat_rules(), untouched, "the pod was left half captured");
}

#[test]
fn captured_calls_go_through_the_mesh() {
    if !require_root("captured_calls_go_through_the_mesh") {
        return;
    }
    let ca = TestCa::init(TRUST_DOMAIN);
    let net = Net::new();
    let node2 = net.node("node-2");
    let control = net.pod("control");
    let (a, c, outsider) = (
        net.pod("frontend"),
        net.pod("intruder"),
        net.pod("outsider"),
    );
    let (b, d) = (net.pod_on(&node2, "web"), net.pod_on(&node2, "api"));
    let cp = PodControlPlane::start(&control, &ca);
    cp.apply(MESH);
    // The init container runs first, before the app and the sidecar.
    for pod in [&a, &b, &c, &d] {
        pod.init_capture();
    }
    let web_app = b.http_app(APP_PORT, &[("hello", "hello from web")]);
    let api_app = d.http_app(APP_PORT, &[("hello", "hello from api")]);
    let outside_app = outsider.http_app(9000, &[("hello", "outside the mesh")]);
    let spec = |service| PodSidecarSpec::new("shop", service);
    let mut front = PodSidecar::start(&a, &ca, &cp, spec("frontend"));
    let mut web = PodSidecar::start(&b, &ca, &cp, spec("web").app(APP_PORT));
    let mut intruder = PodSidecar::start(&c, &ca, &cp, spec("intruder"));
    let api_spec = spec("api").app(APP_PORT).advertise(IpAddr::V6(d.ip6));
    let mut api = PodSidecar::start(&d, &ca, &cp, api_spec);
    for sidecar in [&mut front, &mut web, &mut intruder, &mut api] {
        sidecar.wait_ready();
    }

    // (b) An unmodified app calls the Service VIP; it arrives at web's app
    // over mTLS, authorized as frontend's identity.
    let vip_url = format!("http://{WEB_VIP}/hello");
    let reply = wait_for("frontend's call to web's VIP answered", WAIT, || {
        let r = a.curl_as(APP_UID, &vip_url, &[]);
        (r.status == Some(200)).then_some(r)
    });
    assert_eq!(reply.body, "hello from web");
    let seen = web_app.requests("/hello");
    assert!(!seen.is_empty(), "web's app saw nothing");
    assert!(
        seen.iter().all(|l| l.starts_with("::ffff:127.0.0.1 ")),
        "web's app is only ever called by its sidecar, on loopback: {seen:?}"
    );
    let inbound_ok = [
        ("direction", "inbound"),
        ("service", "web"),
        ("peer", front.identity.as_str()),
        ("status_class", "2xx"),
    ];
    assert!(web.metric("bulkhead_requests_total", &inbound_ok) >= 1.0);
    let handshake_ok = [("direction", "inbound"), ("result", "ok")];
    assert!(web.metric("bulkhead_tls_handshakes_total", &handshake_ok) >= 1.0);
    let outbound_ok = [
        ("direction", "outbound"),
        ("service", "web"),
        ("peer", web.identity.as_str()),
    ];
    assert!(front.metric("bulkhead_requests_total", &outbound_ok) >= 1.0);

    // (c) A caller the allow-list does not name gets the mesh's 403.
    let app_calls = web_app.requests("/hello").len();
    let denied = wait_for("intruder's call to web's VIP answered", WAIT, || {
        let r = c.curl_as(APP_UID, &vip_url, &[]);
        r.status.is_some_and(|s| s != 503).then_some(r)
    });
    assert_eq!(denied.status, Some(403), "{denied:?}");
    assert!(
        denied
            .headers
            .to_ascii_lowercase()
            .contains("x-bulkhead-denied"),
        "{denied:?}"
    );
    let denial = [
        ("direction", "inbound"),
        ("peer", intruder.identity.as_str()),
    ];
    assert!(web.metric("bulkhead_authz_denied_total", &denial) >= 1.0);
    assert_eq!(web_app.requests("/hello").len(), app_calls);

    // (d) Dialling web's app port directly cannot bypass web's sidecar: from
    // a pod outside the mesh the plaintext lands on 4143 and is refused
    // there; from intruder's app it is captured on intruder's side first.
    let handshake_errors =
        |s: &PodSidecar| s.metric("bulkhead_tls_handshakes_total", &[("result", "error")]);
    let errors = handshake_errors(&web);
    let direct_v4 = format!("http://{}:{APP_PORT}/hello", b.ip);
    let r = outsider.curl_as(APP_UID, &direct_v4, &[]);
    assert!(r.status.is_none() && r.exit != 0, "{r:?}");
    wait_for("web's sidecar refusing the plaintext dial", WAIT, || {
        (handshake_errors(&web) > errors).then_some(())
    });
    let r = c.curl_as(APP_UID, &direct_v4, &[]);
    assert!(r.status.is_none() && r.exit != 0, "{r:?}");
    let r = c.curl_as(APP_UID, &format!("http://{}/hello", b.ip), &[]);
    assert_eq!(
        r.status,
        Some(403),
        "web's address and Service port: mesh, denied: {r:?}"
    );
    assert_eq!(web_app.requests("/hello").len(), app_calls);

    // (e) IPv6: the direct dial to web's app is captured the same way ...
    let errors = handshake_errors(&web);
    let direct_v6 = format!("http://[{}]:{APP_PORT}/hello", b.ip6);
    let r = outsider.curl_as(APP_UID, &direct_v6, &[]);
    assert!(r.status.is_none() && r.exit != 0, "{r:?}");
    wait_for(
        "web's sidecar refusing the IPv6 plaintext dial",
        WAIT,
        || (handshake_errors(&web) > errors).then_some(()),
    );
    assert_eq!(web_app.requests("/hello").len(), app_calls);
    // ... and an app's IPv6 call to an endpoint registered by its IPv6
    // address is captured on [::1]:4140 and routed over the mesh.
    let api_url = format!("http://[{}]/hello", d.ip6);
    let reply = wait_for("frontend's IPv6 call to api answered", WAIT, || {
        let r = a.curl_as(APP_UID, &api_url, &[]);
        (r.status == Some(200)).then_some(r)
    });
    assert_eq!(reply.body, "hello from api");
    let from_front = [
        ("direction", "inbound"),
        ("peer", front.identity.as_str()),
        ("status_class", "2xx"),
    ];
    assert!(api.metric("bulkhead_requests_total", &from_front) >= 1.0);
    assert!(!api_app.requests("/hello").is_empty());

    // (g) Destinations outside the mesh are refused and counted (default
    // --egress deny): a reachable server no Service names, and a VIP no
    // Service has.
    let unknown = [("reason", "unknown-destination")];
    let refused = front.metric("bulkhead_outbound_refused_total", &unknown);
    let outside_url = format!("http://{}:9000/hello", outsider.ip);
    for url in [outside_url.as_str(), "http://198.19.0.99/hello"] {
        let r = a.curl_as(APP_UID, url, &[]);
        assert!(r.status.is_none() && r.exit != 0, "{url}: {r:?}");
    }
    wait_for("both refusals counted", WAIT, || {
        (front.metric("bulkhead_outbound_refused_total", &unknown) >= refused + 2.0).then_some(())
    });
    assert!(outside_app.requests("/hello").is_empty());
    // The server was there: a pod without capture reaches it.
    assert_eq!(
        control.curl_as(APP_UID, &outside_url, &[]).status,
        Some(200)
    );

    // Capture subscribed frontend on demand, by VIP and by pod address, to
    // exactly the services its app dialled; intruder only to web.
    let subscribed = |s: &PodSidecar| -> serde_json::Value {
        let config: serde_json::Value =
            serde_json::from_str(&s.admin("/config").body).expect("config is JSON");
        config["subscribed"].clone()
    };
    assert_eq!(
        subscribed(&front),
        serde_json::json!(["api.shop", "web.shop"])
    );
    assert_eq!(subscribed(&intruder), serde_json::json!(["web.shop"]));

    // (h) frontend's admin port answers the pod network (the kubelet,
    // Prometheus) with probes and metrics, but its config dump only on
    // loopback.
    let admin_url = |path: &str| format!("http://{}:{ADMIN_PORT}{path}", a.ip);
    for path in ["/live", "/ready", "/metrics"] {
        let r = outsider.curl_as(APP_UID, &admin_url(path), &[]);
        assert_eq!(r.status, Some(200), "{path} from the pod network: {r:?}");
    }
    let r = outsider.curl_as(APP_UID, &admin_url("/config"), &[]);
    assert_eq!(r.status, Some(403), "/config from the pod network: {r:?}");
    assert!(r.body.contains("only on loopback"), "{r:?}");
    assert_eq!(
        front.admin("/config").status,
        Some(200),
        "/config on loopback"
    );

    // Control for (d) and (e): with web's capture removed, the same direct
    // dials reach the app, so it was the capture that stopped them.
    for cmd in ["iptables", "ip6tables"] {
        assert_ok("flush web's nat table", &b.exec(cmd, &["-t", "nat", "-F"]));
    }
    for url in [&direct_v4, &direct_v6] {
        let r = outsider.curl_as(APP_UID, url, &[]);
        assert_eq!(r.status, Some(200), "{url} without capture: {r:?}");
    }
    for sidecar in [&mut front, &mut web, &mut intruder, &mut api] {
        sidecar.assert_running();
    }
}

/// Whether a connection in `pod` to port `dport` elsewhere has its other
/// end on the pod's capture port 4140: the same connection seen from both
/// sides (the client keeps the original destination, the server end sits
/// at the redirect target).
fn looped_into_capture(pod: &Pod, dport: u16) -> bool {
    let ends = |filter: &str| -> Vec<(String, String)> {
        let out = pod.exec("ss", &["-Htn", "state", "established", filter]);
        text(&out.stdout)
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 2).then(|| (f[f.len() - 2].to_owned(), f[f.len() - 1].to_owned()))
            })
            .collect()
    };
    let clients = ends(&format!("dport = :{dport}"));
    let captured = ends("sport = :4140");
    clients.iter().any(|(local, _)| {
        let port = local.rsplit(':').next().unwrap_or_default();
        captured
            .iter()
            .any(|(_, peer)| peer.rsplit(':').next() == Some(port))
    })
}

#[test]
fn only_the_proxy_uid_is_exempt_from_capture() {
    if !require_root("only_the_proxy_uid_is_exempt_from_capture") {
        return;
    }
    let ca = TestCa::init(TRUST_DOMAIN);
    let net = Net::new();
    let cp = PodControlPlane::start(&net.pod("control"), &ca);
    cp.apply(MESH);
    let pod = net.pod("frontend");
    pod.init_capture();

    // Under another UID the proxy's own call to the control plane is
    // captured back into its own 4140: seen as the two ends of one
    // connection in the pod (client: the proxy's socket to the control
    // plane; server: 127.0.0.1:4140), or, once the capture listener
    // accepts, as a refusal it counts. It never gets a certificate.
    let unknown = [("reason", "unknown-destination")];
    let mut looped = PodSidecar::start(
        &pod,
        &ca,
        &cp,
        PodSidecarSpec::new("shop", "frontend").uid(PROXY_UID + 1),
    );
    wait_for("the proxy's own traffic captured", WAIT, || {
        looped.assert_running();
        (looped_into_capture(&pod, CONTROL_GRPC_PORT)
            || looped.metric("bulkhead_outbound_refused_total", &unknown) >= 1.0)
            .then_some(())
    });
    wait_for("the proxy to give up one certificate request", WAIT, || {
        looped
            .log_text()
            .contains("control plane unreachable")
            .then_some(())
    });
    assert_ne!(looped.admin("/ready").status, Some(200));
    drop(looped);

    // As UID 2102 the same proxy in the same pod reaches the control plane.
    let mut exempt = PodSidecar::start(&pod, &ca, &cp, PodSidecarSpec::new("shop", "frontend"));
    exempt.wait_ready();
    assert_eq!(
        exempt.metric("bulkhead_outbound_refused_total", &unknown),
        0.0
    );
}
