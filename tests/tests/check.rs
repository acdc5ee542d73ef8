//! `bulkheadctl check` (issue 12): the preflight passes on a healthy mesh,
//! and fails, naming the line and what to do, on an issuer that expired
//! and on an etcd member that is down.

use std::process::Output;
use std::time::Duration;

use bulkhead_tests::control::{ControlPlane, StoreSpec, TestCa, wait_for};
use bulkhead_tests::etcd::EtcdCluster;
use bulkhead_tests::mesh::{Mesh, blocking};
use bulkhead_tests::proxy::{App, SidecarSpec};
use serde_json::Value;

const TRUST_DOMAIN: &str = "check.test";

const SHOP: &str = "\
apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  ports: [{port: 8080, protocol: http}]
";

/// The lines of `check -o json`, by name (status, message), and the exit code.
fn check(ca: &TestCa, cp: &ControlPlane) -> (Vec<(String, String, String)>, Option<i32>) {
    let out: Output = blocking(|| cp.ctl(ca, &["check", "-o", "json"]));
    let lines: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check -o json: {e}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let lines = lines
        .iter()
        .map(|l| {
            let field = |f: &str| l[f].as_str().unwrap_or_default().to_owned();
            (field("name"), field("status"), field("message"))
        })
        .collect();
    (lines, out.status.code())
}

fn line<'a>(lines: &'a [(String, String, String)], name: &str) -> &'a (String, String, String) {
    lines
        .iter()
        .find(|l| l.0 == name)
        .unwrap_or_else(|| panic!("no line {name} in {lines:#?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_healthy_mesh_passes_every_line() {
    let mesh = Mesh::etcd(TRUST_DOMAIN, "/bulkhead-check/", SHOP, &[]).await;
    let app = App::http("cart", "1.0.0").await;
    let _cart = mesh.sidecar(SidecarSpec::new("shop", "cart", "1.0.0").app(&app));

    // A sidecar registers once ready: wait until the registry holds it.
    let (lines, code) = wait_for(
        "the sidecar's registration",
        Duration::from_secs(20),
        || {
            let (lines, code) = check(&mesh.ca, &mesh.cp);
            line(&lines, "sidecars")
                .2
                .contains("1 endpoints registered")
                .then_some((lines, code))
        },
    );
    for (name, status, message) in &lines {
        assert!(
            status == "ok" || status == "warn",
            "{name}: {status}: {message}"
        );
    }
    assert_eq!(code, Some(0), "{lines:#?}");
    let names: Vec<&str> = lines.iter().map(|l| l.0.as_str()).collect();
    for name in [
        "control-plane",
        "replicas",
        "store",
        "credentials",
        "root-expiry",
        "issuer-expiry",
        "webhook",
        "sidecars",
        "clock-skew",
    ] {
        assert!(names.contains(&name), "no {name} in {names:?}");
    }
    assert!(
        names.iter().any(|n| n.starts_with("store-member ")),
        "{names:?}"
    );
    let sidecars = &line(&lines, "sidecars").2;
    assert!(sidecars.contains("1 endpoints registered"), "{sidecars}");
    assert!(sidecars.contains("1 sidecars watch"), "{sidecars}");

    // The table a person reads: one line each, nothing failed.
    let table = blocking(|| mesh.cp.ctl(&mesh.ca, &["check"]));
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(table.status.success(), "{text}");
    assert_eq!(text.lines().count(), lines.len(), "{text}");
    assert!(
        !text.contains('\x1b'),
        "no colour with NO_COLOR or off a terminal: {text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_issuer_fails_the_check() {
    let ca = TestCa::init(TRUST_DOMAIN);
    // An issuer nobody renewed: valid for a few seconds more.
    let left = Duration::from_secs(12);
    ca.shorten_issuer(left);
    let expires = std::time::Instant::now() + left;
    let cp = blocking(|| ControlPlane::start(&ca, &StoreSpec::Memory, &[]));

    let (lines, code) = check(&ca, &cp);
    let (_, status, message) = line(&lines, "issuer-expiry");
    assert_eq!(status, "warn", "expiring within 30 days: {message}");
    assert_eq!(
        code,
        Some(0),
        "a warning is no failure: {lines:#?}\n{}",
        cp.log_text()
    );

    std::thread::sleep(
        expires.saturating_duration_since(std::time::Instant::now()) + Duration::from_secs(2),
    );
    let (lines, code) = check(&ca, &cp);
    let (_, status, message) = line(&lines, "issuer-expiry");
    assert_eq!(status, "fail", "{lines:#?}");
    assert!(
        message.contains("expired at") && message.contains("--issuer-cert"),
        "{message}"
    );
    // Everything it signed died with it, the control plane's own certificate too.
    assert_eq!(line(&lines, "control-plane").1, "fail", "{lines:#?}");
    assert_eq!(code, Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_down_etcd_member_fails_the_check() {
    let mut cluster = blocking(|| EtcdCluster::start(3));
    let ca = TestCa::init(TRUST_DOMAIN);
    let store = StoreSpec::Etcd {
        endpoints: cluster.client_urls(),
        prefix: "/bulkhead-check/".into(),
    };
    let cp = blocking(|| ControlPlane::start(&ca, &store, &[]));
    let (lines, code) = check(&ca, &cp);
    assert_eq!(code, Some(0), "{lines:#?}");
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.0.starts_with("store-member ") && l.1 == "ok")
            .count(),
        3,
        "{lines:#?}"
    );

    // Kill: the fault of a crashed member.
    let down_url = cluster.client_urls()[2].clone();
    cluster.kill_member(2);
    let (lines, code) = wait_for(
        "the check to see the member down",
        Duration::from_secs(20),
        || {
            let (lines, code) = check(&ca, &cp);
            lines
                .iter()
                .any(|l| l.0 == "store-member m2" && l.1 == "fail")
                .then_some((lines, code))
        },
    );
    let (_, _, message) = line(&lines, "store-member m2");
    assert!(message.contains(&down_url), "{message}");
    assert_eq!(line(&lines, "store-member m0").1, "ok");
    assert_eq!(
        line(&lines, "store").1,
        "ok",
        "two of three still make a quorum"
    );
    assert_eq!(code, Some(1), "{lines:#?}");
}
