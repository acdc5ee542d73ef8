//! `bulkheadctl dashboard` in a real browser (headless Chromium over
//! WebDriver): a shop with traffic, the dashboard started as the operator
//! would, and each view loaded and read back from the DOM — the topology's
//! services and edge, a service's versions and endpoints (a locality
//! holding markup shows as text), a rollout's pause step and an operator's
//! promote from the page; then what the dashboard refuses (a foreign
//! `Host`, a POST without the page's token or from another origin) and the
//! message when the control plane is gone. Screenshots of every view are
//! saved under the test's target tmp dir.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use bulkhead_tests::browser::Browser;
use bulkhead_tests::control::http_exchange;
use bulkhead_tests::mesh::{Mesh, blocking};
use bulkhead_tests::proxy::{App, SidecarSpec};
use bulkhead_tests::rollout::{FAST_REPORTS, rollout, status, until_status};
use bulkhead_tests::shop::{self, CANARY, Load, STABLE, split, until_endpoints};

/// Markup in a locality label: the page must show it as these characters.
/// (Labels hold no spaces; `/` separates attributes just as well.)
const HOSTILE_NODE: &str = "<img/src=x/onerror=window.pwned=1>";

/// `bulkheadctl dashboard --port 0 --no-open`, stopped on drop.
struct DashboardProcess {
    child: Child,
    /// Kept open: the process may print more.
    _stdout: BufReader<std::process::ChildStdout>,
    url: String,
    addr: SocketAddr,
}

impl DashboardProcess {
    fn start(mesh: &Mesh) -> Self {
        let mut child = mesh
            .ca
            .ctl_command(&mesh.cp.url(), &["dashboard", "--port", "0", "--no-open"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn bulkheadctl dashboard");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        let mut stdout = BufReader::new(stdout);
        stdout
            .read_line(&mut line)
            .expect("read the dashboard's first line");
        let url = line
            .trim()
            .strip_prefix("Dashboard: ")
            .unwrap_or_else(|| panic!("expected `Dashboard: URL`, got {line:?}"))
            .to_owned();
        let addr = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .expect("a loopback address in the URL");
        Self {
            child,
            _stdout: stdout,
            url,
            addr,
        }
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String) {
        http_exchange(
            self.addr,
            method,
            path,
            headers,
            body,
            Duration::from_secs(10),
        )
        .expect("dashboard answers")
    }
}

impl Drop for DashboardProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn shots() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots")
}

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_mesh_and_steers_a_rollout_in_a_real_browser() {
    let mut mesh = shop::memory(FAST_REPORTS).await;
    mesh.apply(&split(100, 0)).await;
    let stable_app = App::http("inventory", STABLE).await;
    let canary_app = App::http("inventory", CANARY).await;
    let stable = mesh.sidecar(
        SidecarSpec::new("shop", "inventory", STABLE)
            .app(&stable_app)
            .node(HOSTILE_NODE)
            .zone("<b>zone-a</b>"),
    );
    let canary = mesh.inventory(CANARY, "node-2", &canary_app);
    let web = mesh.web("node-1");
    until_endpoints(&web, &[&stable, &canary]).await;
    let load = Load::start_bounded(
        web.upstream("inventory"),
        2,
        Duration::from_millis(10),
        20_000,
        Duration::from_secs(180),
    );
    let dashboard = blocking(|| DashboardProcess::start(&mesh));
    assert!(
        dashboard.url.starts_with("http://127.0.0.1:"),
        "{}",
        dashboard.url
    );
    let browser = blocking(|| Browser::start(&shots()));

    // Topology: both services, and web → inventory with its figures.
    blocking(|| {
        browser.goto(&format!("{}#/topology", dashboard.url));
        let nav = browser.texts("nav a");
        assert_eq!(
            nav,
            ["Topology", "Services"],
            "only working views are linked"
        );
        browser.wait("the web → inventory edge", WAIT, |b| {
            (b.count(r#"path.edge[data-from="shop/web"][data-to="shop/inventory"]"#) == 1)
                .then_some(())
        });
        for service in ["shop/web", "shop/inventory"] {
            assert_eq!(
                browser.count(&format!(r#"a.node[data-service="{service}"]"#)),
                1,
                "{service}"
            );
        }
        let calls = browser.text(r#"table.calls tr[data-from="shop/web"]"#);
        assert!(
            calls.contains("shop/inventory") && calls.contains("100.00%"),
            "{calls}"
        );
        browser.screenshot("1-topology");
        // The filter narrows: nothing matches a name no service has.
        browser
            .type_into("#filter", "nosuch")
            .expect("type into Filter");
        browser.wait_text("main", "No service matches the filter", WAIT);
        browser.script("document.getElementById('filter').value = ''; document.getElementById('filter').dispatchEvent(new Event('input')); return true;");
    });

    // A service in detail, reached by clicking its node: versions and
    // endpoints, the hostile locality as text and nothing made of it.
    blocking(|| {
        browser
            .click(r#"a.node[data-service="shop/inventory"]"#)
            .expect("click inventory");
        browser.wait_text("main h2", "Service shop/inventory", WAIT);
        let endpoints = browser.wait_text("table.endpoints", "node-2", WAIT);
        assert!(endpoints.contains(HOSTILE_NODE), "{endpoints}");
        assert!(endpoints.contains("<b>zone-a</b>"), "{endpoints}");
        assert!(
            endpoints.contains(STABLE) && endpoints.contains(CANARY),
            "{endpoints}"
        );
        assert_eq!(
            browser.count("main img, main b"),
            0,
            "markup from the mesh became elements"
        );
        assert_eq!(browser.script("return window.pwned === undefined;"), true);
        browser.wait_text("table.versions", STABLE, WAIT);
        let split = browser.text("table.weights");
        assert!(split.contains(STABLE) && split.contains("100"), "{split}");
        browser.screenshot("2-service");
    });

    // A rollout with a pause step: the page shows the step it waits at.
    mesh.apply(&rollout(
        "  strategy: canary\n  steps: [10, pause, 50]\n  interval: 2s\n",
    ))
    .await;
    until_status(&mesh.cp, &mesh.ca, "the pause step", WAIT, |s| {
        s["phase"] == "Paused"
    })
    .await;
    blocking(|| {
        browser.wait_text(".rollout .phase", "Paused", WAIT);
        let current = browser.text(".rollout .steps li.current");
        assert!(current.contains("pause"), "{current}");
        browser.screenshot("3-rollout-paused");
        // Promote from the page, through the confirmation.
        browser
            .click(r#".rollout button[data-action="promote"]"#)
            .expect("click Promote");
        browser.wait("the confirmation dialog", WAIT, |b| {
            (b.script("return document.getElementById('confirm').open;") == true).then_some(())
        });
        assert!(browser.text("#confirm-text").contains("shop/inventory"));
        browser.screenshot("4-confirm-promote");
        browser.click("#confirm-ok").expect("confirm");
        browser.wait_text("#notice", "promote done", WAIT);
        browser.wait_text(".rollout .last-action", "promote by spiffe://", WAIT);
    });
    let promoted = status(&mesh.cp, &mesh.ca, "inventory").expect("rollout status");
    assert!(
        promoted["step"].as_u64() >= Some(2),
        "past the pause: {promoted}"
    );
    assert_eq!(promoted["lastAction"]["action"], "promote", "{promoted}");
    assert!(
        promoted["lastAction"]["by"]
            .as_str()
            .unwrap_or_default()
            .ends_with("/sa/operator"),
        "carried out as the operator: {promoted}"
    );
    blocking(|| {
        browser.wait("the page to leave the pause step", WAIT, |b| {
            let current = b.text(".rollout .steps li.current, .rollout .steps li.done");
            current.contains("■ pause").then_some(())
        });
        browser.screenshot("5-rollout-promoted");
    });

    // What the dashboard refuses.
    blocking(|| {
        let (code, body) =
            dashboard.request("GET", "/api/overview", &[("host", "evil.example:80")], "");
        assert_eq!(code, 403, "DNS rebinding: {body}");
        let (code, _) = dashboard.request("GET", "/", &[("host", "evil.example")], "");
        assert_eq!(code, 403, "the page (and its token) only for our own Host");
        let action = r#"{"namespace":"shop","name":"inventory","action":"abort"}"#;
        let (code, body) = dashboard.request("POST", "/api/rollout-action", &[], action);
        assert_eq!(code, 403, "a POST without the page's token: {body}");
        let page = dashboard.request("GET", "/", &[], "").1;
        let token = page
            .split("name=\"bulkhead-token\" content=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("the token in the page");
        let (code, body) = dashboard.request(
            "POST",
            "/api/rollout-action",
            &[
                ("x-bulkhead-token", token),
                ("origin", "http://evil.example"),
            ],
            action,
        );
        assert_eq!(code, 403, "a POST from another origin: {body}");
        let (code, _) = dashboard.request("GET", "/api/overview", &[], "");
        assert_eq!(code, 200);
    });
    let still = status(&mesh.cp, &mesh.ca, "inventory").expect("rollout status");
    assert_ne!(
        still["phase"], "Aborted",
        "no refused request acted: {still}"
    );

    // The control plane goes away: the page says so.
    blocking(|| mesh.cp.kill());
    blocking(|| {
        browser.wait("the unreachable banner", WAIT, |b| {
            let shown = b.script("return !document.getElementById('banner').hidden;") == true;
            let text = b.text("#banner");
            (shown && text.contains("control plane unreachable")).then_some(text)
        });
        assert!(
            browser.count("main h2") > 0,
            "the last figures stay on the page"
        );
        browser.screenshot("6-control-plane-unreachable");
    });
    let _ = (load, &stable, &canary);
}

/// 200 services in four namespaces: every one drawn, grouped by
/// namespace, and the Filter narrows them to the few asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_services_stay_legible_and_filterable() {
    let mesh = Mesh::memory("cluster.local", "", &[]).await;
    // One apply per namespace: an apply changes at most 128 resources.
    for ns in ["team-a", "team-b", "team-c", "team-d"] {
        let mut yaml = String::new();
        for i in 0..50 {
            yaml.push_str(&format!(
                "apiVersion: bulkhead.dev/v1\nkind: Service\nmetadata: {{name: svc-{i:03}, namespace: {ns}}}\n\
                 spec:\n  ports: [{{port: 8080, protocol: http}}]\n---\n"
            ));
        }
        mesh.apply(&yaml).await;
    }
    let dashboard = blocking(|| DashboardProcess::start(&mesh));
    let browser = blocking(|| Browser::start(&shots()));
    blocking(|| {
        browser.goto(&format!("{}#/topology", dashboard.url));
        browser.wait("all 200 services drawn", WAIT, |b| {
            (b.count("a.node") == 200).then_some(())
        });
        let bands = browser.texts(".ns-label");
        assert_eq!(
            bands,
            [
                "namespace team-a",
                "namespace team-b",
                "namespace team-c",
                "namespace team-d"
            ]
        );
        browser.screenshot("7-topology-200-services");
        browser
            .type_into("#filter", "team-b/svc-01")
            .expect("type into Filter");
        browser.wait("the filter to keep ten", WAIT, |b| {
            (b.count("a.node") == 10).then_some(())
        });
        let names = browser.texts("a.node .name");
        assert!(names.iter().all(|n| n.starts_with("svc-01")), "{names:?}");
        browser.screenshot("8-topology-filtered");
        // The Services view honours the same filter.
        browser
            .click(r#"nav a[data-view="services"]"#)
            .expect("Services");
        browser.wait("the services list filtered", WAIT, |b| {
            (b.count("table.services tbody tr") == 10).then_some(())
        });
    });
}
