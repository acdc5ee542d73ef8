//! Egress allow-lists end to end, on pods made of network namespaces (see
//! `bulkhead_tests::netns`): apps with capture installed, sidecars as UID
//! 2102, and "the internet" as a pod without a sidecar on another node —
//! an HTTPS server with a certificate for `api.payments.example`, an HTTP
//! server, TCP servers that speak first, and a DNS server the sidecar of
//! `payments` resolves host rules with (`--resolv-conf`). Needs root.
//!
//! `payments` is named by two `Egress` resources (they add up); `web` by
//! none, under the default `--egress deny`; `reports` by none, under
//! `--egress allow`.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use bulkhead_tests::control::{TestCa, json_lines, wait_for};
use bulkhead_tests::netns::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);
/// Sidecars publish refusals once per 10 s window.
const EVENT_WAIT: Duration = Duration::from_secs(40);
/// The TTL of the answers for `api.payments.example`.
const TTL: u32 = 2;

/// The three Services, and the two Egress resources for `payments`;
/// `net` is the CIDR of the outside hosts it may reach on port 5432.
fn mesh(net: &str) -> String {
    let services: String = ["payments", "web", "reports"]
        .iter()
        .map(|name| {
            format!(
                "apiVersion: bulkhead.dev/v1\nkind: Service\n\
                 metadata: {{name: {name}, namespace: shop}}\n\
                 spec: {{ports: [{{port: 80, protocol: http}}]}}\n---\n"
            )
        })
        .collect();
    format!(
        "{services}
apiVersion: bulkhead.dev/v1
kind: Egress
metadata: {{name: payments-out, namespace: shop}}
spec:
  from: [payments]
  to:
  - {{host: api.payments.example, ports: [443]}}
  - {{cidr: {net}, ports: [5432]}}
  - {{cidr: 'fd00:bb:0:2::/64', ports: [5432]}}
---
apiVersion: bulkhead.dev/v1
kind: Egress
metadata: {{name: payments-partner, namespace: shop}}
spec:
  from: [payments]
  to:
  - {{host: www.partner.example, ports: [80]}}
"
    )
}

/// `curl -k` from the app of `pod` to `https://{name}/{path}` at `ip`.
fn https(pod: &Pod, name: &str, ip: Ipv4Addr, path: &str) -> Curl {
    let resolve = format!("{name}:443:{ip}");
    pod.curl_as(
        APP_UID,
        &format!("https://{name}/{path}"),
        &["-k", "--resolve", &resolve],
    )
}

/// Plain HTTP from the app of `pod` to `http://{name}/{path}` at `ip`.
fn http(pod: &Pod, name: &str, ip: Ipv4Addr, path: &str) -> Curl {
    let resolve = format!("{name}:80:{ip}");
    pod.curl_as(
        APP_UID,
        &format!("http://{name}/{path}"),
        &["--resolve", &resolve],
    )
}

fn refused(sidecar: &PodSidecar, service: &str, reason: &str) -> f64 {
    sidecar.metric(
        "bulkhead_egress_refused_total",
        &[("service", service), ("reason", reason)],
    )
}

/// `bulkheadctl events --type egress.refused -o json`, parsed.
fn egress_events(cp: &PodControlPlane) -> Vec<Value> {
    let args = [
        "events",
        "-o",
        "json",
        "--type",
        "egress.refused",
        "--since",
        "10m",
    ];
    json_lines("bulkheadctl events", &cp.ctl(&args))
}

#[test]
fn egress_rules_let_out_only_what_they_name() {
    if !require_root("egress_rules_let_out_only_what_they_name") {
        return;
    }
    let ca = TestCa::init("cluster.local");
    let net = Net::new();
    let internet = net.node("internet");
    let control = net.pod("control");
    let (payments, web, reports) = (net.pod("payments"), net.pod("web"), net.pod("reports"));

    // The internet: `api` is the HTTPS host's address; `spoofed` serves
    // the same certificate at an address its name does not resolve to
    // (until the DNS change); `far` is outside the CIDR rule.
    let outside = net.pod_on(&internet, "outside");
    let api = outside.ip;
    let spoofed = Ipv4Addr::new(198, 18, 2, 50);
    let far = Ipv4Addr::new(198, 18, 2, 200);
    for ip in [spoofed, far] {
        outside.add_address(ip);
    }
    // The HTTP app runs unprivileged, on port 80.
    let sysctl = outside.exec("sysctl", &["-qw", "net.ipv4.ip_unprivileged_port_start=0"]);
    assert!(sysctl.status.success(), "{sysctl:?}");
    let cidr = "198.18.2.0/25";
    let tls = outside.https_app(
        443,
        &["api.payments.example", "other.example"],
        &[
            ("sni", "hello over tls"),
            ("spoof", "x"),
            ("other", "x"),
            ("moved", "moved"),
        ],
    );
    let plain = outside.http_app(80, &[("host", "hello over http"), ("wrong-host", "x")]);
    let _db = outside.banner_server(5432, "db says hi");
    let _other_port = outside.banner_server(5433, "other port");
    let dns = outside.dns_server();
    dns.set("api.payments.example", &[api], TTL);
    dns.set("www.partner.example", &[api], 60);
    dns.set("other.example", &[api], 60);
    let resolv_conf = payments.dir().join("resolv.conf");
    std::fs::write(&resolv_conf, format!("nameserver {}\n", outside.ip)).expect("resolv.conf");

    let cp = PodControlPlane::start(&control, &ca);
    cp.apply(&mesh(cidr));
    // Bad Egress documents are refused on apply, naming the field.
    let bad = payments.dir().join("bad-egress.yaml");
    std::fs::write(
        &bad,
        "apiVersion: bulkhead.dev/v1\nkind: Egress\nmetadata: {name: bad, namespace: shop}\n\
         spec:\n  from: [payments]\n  to:\n  - {cidr: 198.18.2.1/24, ports: [5432]}\n  \
         - {host: api.example, cidr: 198.18.2.0/24, ports: [1]}\n  - {host: api.example, ports: []}\n",
    )
    .expect("bad yaml");
    let out = cp.ctl(&["apply", "-f", &bad.display().to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for expected in [
        "spec.to[0].cidr: expected a CIDR such as 198.18.5.0/24, got \"198.18.2.1/24\" with host bits set: did you mean 198.18.2.0/24?",
        "spec.to[1]: expected either host or cidr, got both",
        "spec.to[2].ports: expected at least one port",
    ] {
        assert!(stderr.contains(expected), "no {expected:?} in:\n{stderr}");
    }

    let listed = cp.ctl(&["get", "egress", "-n", "shop"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains("payments-out") && listed.contains("payments-partner"),
        "{listed}"
    );

    for pod in [&payments, &web, &reports] {
        pod.init_capture();
    }
    let spec = |service| PodSidecarSpec::new("shop", service);
    let resolv = resolv_conf.display().to_string();
    let mut pay = PodSidecar::start(
        &payments,
        &ca,
        &cp,
        spec("payments").arg("--resolv-conf").arg(&resolv),
    );
    let mut web_sidecar = PodSidecar::start(&web, &ca, &cp, spec("web"));
    let reports_spec = spec("reports").arg("--egress").arg("allow");
    let mut rep = PodSidecar::start(
        &reports,
        &ca,
        &cp,
        reports_spec.arg("--resolv-conf").arg(&resolv),
    );
    for sidecar in [&mut pay, &mut web_sidecar, &mut rep] {
        sidecar.wait_ready();
    }

    // Allowed by SNI: the name is a rule's host and the address is the one
    // it resolves to.
    let reply = wait_for("payments reaching api.payments.example", WAIT, || {
        let r = https(&payments, "api.payments.example", api, "sni");
        (r.status == Some(200)).then_some(r)
    });
    assert_eq!(reply.body, "hello over tls");
    // Allowed by Host, from the second Egress (they add up).
    let reply = http(&payments, "www.partner.example", api, "host");
    assert_eq!(reply.status, Some(200), "{reply:?}");
    assert_eq!(reply.body, "hello over http");
    // Allowed by CIDR and port, on the address alone: the server speaks
    // first, so a sidecar waiting for a name would hang here.
    assert_eq!(
        payments.talk_as(APP_UID, IpAddr::V4(api), 5432, ""),
        "read:db says hi"
    );
    // The same over IPv6, by a v6 CIDR rule.
    assert_eq!(
        payments.talk_as(APP_UID, IpAddr::V6(outside.ip6), 5432, ""),
        "read:db says hi"
    );
    let allowed = |rule| {
        pay.metric(
            "bulkhead_egress_allowed_total",
            &[("service", "payments"), ("rule", rule)],
        )
    };
    assert!(allowed("host") >= 2.0 && allowed("cidr") >= 2.0);

    // Refused: another host by SNI (at the right address), the right SNI
    // at an address it does not resolve to, HTTP with another Host, a
    // port no rule has, an address outside the CIDR.
    let r = https(&payments, "other.example", api, "other");
    assert!(
        r.status.is_none() && r.exit != 0,
        "other host by SNI: {r:?}"
    );
    let r = https(&payments, "api.payments.example", spoofed, "spoof");
    assert!(
        r.status.is_none() && r.exit != 0,
        "SNI to a wrong IP: {r:?}"
    );
    let r = http(&payments, "other.example", api, "wrong-host");
    assert!(r.status.is_none() && r.exit != 0, "other Host: {r:?}");
    // On a port only host rules name, a client that says nothing gets
    // nothing (after the sidecar's 5 s), and one that sends neither TLS nor
    // HTTP is refused at once.
    for (ip, port, send, case) in [
        (api, 5433, "", "a port no rule has"),
        (far, 5432, "", "an address outside the CIDR"),
        (api, 443, "", "a silent client"),
        (api, 443, "hello\n", "neither TLS nor HTTP"),
    ] {
        let heard = payments.talk_as(APP_UID, IpAddr::V4(ip), port, send);
        assert_eq!(heard, "read:", "{case}");
    }
    for path in ["/spoof", "/other"] {
        assert!(tls.requests(path).is_empty(), "{path} reached the server");
    }
    assert!(plain.requests("/wrong-host").is_empty());
    for reason in [
        "sni-mismatch",
        "address-mismatch",
        "host-mismatch",
        "port",
        "no-rule",
        "peek-timeout",
        "no-name",
    ] {
        assert!(
            refused(&pay, "payments", reason) >= 1.0,
            "{reason} not counted:\n{}",
            pay.metrics()
        );
    }
    assert!(
        !pay.metrics().contains("198.18.2."),
        "a destination became a label"
    );
    let log = pay.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("refused captured connection")
                && l.contains(&format!("{spoofed}:443"))
                && l.contains("address-mismatch")
                && l.contains("api.payments.example")),
        "the log names the destination:\n{log}"
    );

    // No Egress names web or reports: --egress decides.
    assert_eq!(
        web.talk_as(APP_UID, IpAddr::V4(api), 5432, ""),
        "read:",
        "--egress deny"
    );
    assert!(refused(&web_sidecar, "web", "default-deny") >= 1.0);
    assert_eq!(
        reports.talk_as(APP_UID, IpAddr::V4(api), 5432, ""),
        "read:db says hi",
        "--egress allow"
    );
    assert!(
        rep.metric(
            "bulkhead_egress_allowed_total",
            &[("service", "reports"), ("rule", "default")]
        ) >= 1.0
    );

    // A DNS change is followed: the name moves to the other address. The
    // new one is allowed once the sidecar asks again; the old one stops
    // being allowed when its TTL is over.
    dns.set("api.payments.example", &[spoofed], TTL);
    let reply = wait_for("the new address allowed", WAIT, || {
        let r = https(&payments, "api.payments.example", spoofed, "moved");
        (r.status == Some(200)).then_some(r)
    });
    assert_eq!(reply.body, "moved");
    wait_for("the old address refused", WAIT, || {
        let r = https(&payments, "api.payments.example", api, "sni");
        (r.status.is_none()).then_some(())
    });

    // The refusals reach the event stream, added up, with the destination.
    let events = wait_for("egress refusals as events", EVENT_WAIT, || {
        let events = egress_events(&cp);
        events
            .iter()
            .any(|e| {
                e["data"]["destination"] == format!("{spoofed}:443")
                    && e["data"]["reason"] == "address-mismatch"
            })
            .then_some(events)
    });
    let spoof = events
        .iter()
        .find(|e| e["data"]["reason"] == "address-mismatch")
        .expect("spoof event");
    assert_eq!(spoof["type"], "dev.bulkhead.egress.refused");
    assert_eq!(spoof["data"]["service"], "payments");
    assert_eq!(spoof["data"]["name"], "api.payments.example");
    assert!(spoof["data"]["count"].as_u64().unwrap_or(0) >= 1, "{spoof}");
    assert!(
        events.iter().any(|e| e["data"]["reason"] == "no-rule"
            && e["data"]["destination"] == format!("{far}:5432")),
        "{events:?}"
    );

    // Only the sidecars of the services an Egress names hold it; an edit
    // that moves one to another service takes it from the first and gives
    // it to the second (reports then has rules, and --egress allow no
    // longer applies to it).
    let holds = |s: &PodSidecar, name: &str| s.admin("/config").body.contains(name);
    assert!(holds(&pay, "payments-partner") && !holds(&web_sidecar, "payments-partner"));
    cp.apply(
        "apiVersion: bulkhead.dev/v1\nkind: Egress\n\
         metadata: {name: payments-partner, namespace: shop}\n\
         spec: {from: [reports], to: [{host: www.partner.example, ports: [80]}]}\n",
    );
    wait_for("payments losing the partner rule", WAIT, || {
        let r = http(&payments, "www.partner.example", api, "host");
        r.status.is_none().then_some(())
    });
    assert!(!holds(&pay, "payments-partner"));
    wait_for("reports getting the partner rule", WAIT, || {
        let r = http(&reports, "www.partner.example", api, "host");
        (r.status == Some(200)).then_some(())
    });
    assert_eq!(
        reports.talk_as(APP_UID, IpAddr::V4(api), 5432, ""),
        "read:",
        "reports is now held to its Egress"
    );
    // The address is one of the partner host's, on another port.
    assert!(refused(&rep, "reports", "port") >= 1.0);
    for sidecar in [&mut pay, &mut web_sidecar, &mut rep] {
        sidecar.assert_running();
    }
}
