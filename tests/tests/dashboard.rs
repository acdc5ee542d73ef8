//! `bulkheadctl dashboard` in a real browser (headless Chromium over
//! WebDriver): a shop with traffic, the dashboard started as the operator
//! would, and each of the five views loaded and read back from the DOM —
//! the topology's services, edge and denied edge; a service's versions
//! and endpoints (a locality holding markup shows as text); the Events
//! view receiving a rollout's step live, with no reload; a promote from
//! the page through its confirmation; a denied call in Denials (and a
//! denial whose path is markup, published by a hostile sidecar, shown as
//! text); the Policy view's AllowLists and its "can X call this?" answer.
//! The event stream read raw: resumed after a `Last-Event-ID`, a ninth
//! follower refused, an abandoned one's place freed. Then what the
//! dashboard refuses (a foreign `Host`, a POST without the page's token or
//! from another origin) and the message when the control
//! plane is gone, on the open page and on a fresh load. Screenshots of
//! every view are saved under the test's target tmp dir. One mesh serves
//! every assertion. Apart: the demo's own mesh (`bulkhead-demo
//! --dashboard 0`) drawn with its services, calls and denied call.

use std::path::PathBuf;
use std::time::Duration;

use bulkhead_tests::browser::Browser;
use bulkhead_tests::control::wait_for;
use bulkhead_tests::dashboard::{DashboardProcess, DemoDashboard, EventStream, publish_event};
use bulkhead_tests::mesh::{Mesh, blocking};
use bulkhead_tests::proxy::{App, SidecarSpec};
use bulkhead_tests::rollout::{FAST_REPORTS, rollout, status, until_status};
use bulkhead_tests::shop::{self, CANARY, Load, OneConnection, STABLE, split, until_endpoints};

/// Markup in a locality label: the page must show it as these characters.
/// (Labels hold no spaces; `/` separates attributes just as well.)
const HOSTILE_NODE: &str = "<img/src=x/onerror=window.pwned=1>";

fn shots() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots")
}

const WAIT: Duration = Duration::from_secs(30);

/// The README's demo with `--dashboard`: the page shows the demo's own
/// mesh (its four services, the calls between them, and the forbidden
/// web → inventory drawn as denied), and Ctrl-C still leaves nothing
/// running.
#[test]
fn the_demo_mesh_is_on_its_dashboard() {
    let demo = DemoDashboard::start("20s");
    assert!(demo.url.starts_with("http://127.0.0.1:"), "{}", demo.url);
    let browser = Browser::start(&shots());
    browser.goto(&format!("{}#/topology", demo.url));
    let calls = [
        ("shop/web", "shop/cart"),
        ("shop/cart", "shop/inventory"),
        ("shop/cart", "shop/pricing"),
    ];
    browser.wait("the demo's calls", Duration::from_secs(60), |b| {
        calls
            .iter()
            .all(|(from, to)| {
                b.count(&format!(r#"path.edge[data-from="{from}"][data-to="{to}"]"#)) == 1
            })
            .then_some(())
    });
    for service in ["shop/web", "shop/cart", "shop/inventory", "shop/pricing"] {
        assert_eq!(
            browser.count(&format!(r#"a.node[data-service="{service}"]"#)),
            1,
            "{service}"
        );
    }
    // Sidecars report denials every 10 s, added up.
    browser.wait(
        "the forbidden call drawn as denied",
        Duration::from_secs(60),
        |b| {
            (b.count(r#"path.edge.denied[data-from="shop/web"][data-to="shop/inventory"]"#) == 1)
                .then_some(())
        },
    );
    browser.screenshot("demo-topology");
    let printed = demo.stop();
    assert!(printed.contains("done: nothing left running"), "{printed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_mesh_live_and_steers_a_rollout_in_a_real_browser() {
    let mut mesh = shop::memory(FAST_REPORTS).await;
    mesh.apply(&split(100, 0)).await;
    mesh.apply(INTRUDER).await;
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
    let intruder = mesh.sidecar(
        SidecarSpec::new("shop", "intruder", "1.0.0")
            .upstream("inventory")
            .node("node-1"),
    );
    until_endpoints(&web, &[&stable, &canary]).await;
    until_endpoints(&intruder, &[&stable, &canary]).await;
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
        assert_eq!(nav, ["Topology", "Services", "Policy", "Denials", "Events"]);
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
        let calls = browser.wait_text(r#"table.calls tr[data-from="shop/web"]"#, "%", WAIT);
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
        clear_filter(&browser);
    });

    // A service in detail, reached by clicking its node: versions and
    // endpoints (healthy, in rotation), the hostile locality as text and
    // nothing made of it.
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
        assert!(
            endpoints.contains("ready") && endpoints.contains("in rotation"),
            "{endpoints}"
        );
        assert_no_markup_made(&browser);
        browser.wait_text("table.versions", STABLE, WAIT);
        let split = browser.wait_text("table.weights", STABLE, WAIT);
        assert!(split.contains(STABLE) && split.contains("100"), "{split}");
        browser.screenshot("2-service");
    });

    // Web's sidecar ejects the stable endpoint, then readmits it: the
    // open page follows both.
    let stable_endpoint = stable.inbound.to_string();
    let ejection = serde_json::json!({
        "service": "inventory", "address": stable.inbound.ip().to_string(),
        "inboundPort": stable.inbound.port(), "ejectedForSeconds": 600,
        "reason": "consecutive_failures",
    });
    publish_event(
        &mesh,
        "shop/web",
        "dev.bulkhead.endpoint.ejected",
        "inventory",
        ejection.clone(),
    )
    .await;
    let row = format!(r#"table.endpoints tr[data-endpoint="{stable_endpoint}"] td.ejection"#);
    blocking(|| {
        browser.wait_text(&row, "ejected by shop/web", WAIT);
        browser.screenshot("2b-service-endpoint-ejected");
    });
    publish_event(
        &mesh,
        "shop/web",
        "dev.bulkhead.endpoint.readmitted",
        "inventory",
        ejection,
    )
    .await;
    blocking(|| browser.wait_text(&row, "in rotation", WAIT));

    // Events: the view is open when a rollout starts; its first step
    // arrives pushed over the event stream, with no reload.
    blocking(|| {
        browser
            .click(r#"nav a[data-view="events"]"#)
            .expect("Events");
        browser.wait("the event stream's backlog", WAIT, |b| {
            (b.count("table.events tbody tr") > 0).then_some(())
        });
        let marked = browser.script("window.sameDocument = 1; return true;");
        assert_eq!(marked, true);
    });
    mesh.apply(&rollout(
        "  strategy: canary\n  steps: [10, pause, 50]\n  interval: 2s\n",
    ))
    .await;
    blocking(|| {
        let step = browser.wait("a rollout step in Events", WAIT, |b| {
            let text = b.text(r#"table.events tr[data-type="dev.bulkhead.rollout.step"]"#);
            (!text.is_empty()).then_some(text)
        });
        assert!(step.contains("inventory"), "{step}");
        assert_eq!(
            browser.script("return window.sameDocument === 1;"),
            true,
            "pushed, not reloaded"
        );
        // The type filter keeps rollout events only.
        event_type(&browser, "rollout");
        browser.wait("only rollout events", WAIT, |b| {
            let types = b.texts("table.events td.type");
            (!types.is_empty() && types.iter().all(|t| t.starts_with("rollout."))).then_some(())
        });
        browser.screenshot("3-events-rollout-step");
    });

    // The rollout waits at its pause step; promote from the page, through
    // the confirmation.
    until_status(&mesh.cp, &mesh.ca, "the pause step", WAIT, |s| {
        s["phase"] == "Paused"
    })
    .await;
    blocking(|| {
        browser.goto(&format!("{}#/services/shop/inventory", dashboard.url));
        browser.wait_text(".rollout .phase", "Paused", WAIT);
        // Steps count from 1 for people.
        browser.wait_text(".rollout .steps li.current", "2. pause", WAIT);
        browser.wait_text(".rollout", "step 2 of 4", WAIT);
        browser.screenshot("4-rollout-paused");
        browser
            .click(r#".rollout button[data-action="promote"]"#)
            .expect("click Promote");
        browser.wait("the confirmation dialog", WAIT, |b| {
            (b.script("return document.getElementById('confirm').open;") == true).then_some(())
        });
        assert!(browser.text("#confirm-text").contains("shop/inventory"));
        browser.screenshot("5-confirm-promote");
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
            current.contains("■ 2. pause").then_some(())
        });
        browser.screenshot("6-rollout-promoted");
    });

    // Denials: a call no AllowList lets through, and a denial whose path
    // is markup, as a hostile sidecar could publish it.
    let mut conn = OneConnection::open(intruder.upstream("inventory")).await;
    let reply = conn
        .get("/v1/stock/denied-item", &[])
        .await
        .expect("an answer");
    assert_eq!(reply.status, 403, "no AllowList names intruder");
    publish_event(
        &mesh,
        "shop/inventory",
        "dev.bulkhead.authz.denied",
        "inventory",
        serde_json::json!({
            "caller": "spiffe://cluster.local/ns/shop/sa/<i>web</i>",
            "target": "inventory", "rule": HOSTILE_RULE, "path": HOSTILE_PATH,
            "count": 3, "windowSeconds": 10,
        }),
    )
    .await;
    blocking(|| {
        browser
            .click(r#"nav a[data-view="denials"]"#)
            .expect("Denials");
        let row = browser.wait("the intruder's denial", WAIT, |b| {
            let text =
                b.text(r#"table.denials tr[data-from="shop/intruder"][data-to="shop/inventory"]"#);
            text.contains("/v1/stock/denied-item").then_some(text)
        });
        assert!(
            row.contains("no-matching-rule"),
            "the rule or reason: {row}"
        );
        let hostile = browser.wait_text("table.denials", HOSTILE_PATH, WAIT);
        assert!(hostile.contains(HOSTILE_RULE), "{hostile}");
        assert_no_markup_made(&browser);
        browser.screenshot("7-denials");
        // The Events view lists the same hostile event, as text too.
        browser
            .click(r#"nav a[data-view="events"]"#)
            .expect("Events");
        event_type(&browser, "authz");
        browser.wait_text(
            r#"table.events tr[data-type="dev.bulkhead.authz.denied"]"#,
            HOSTILE_PATH,
            WAIT,
        );
        assert_no_markup_made(&browser);
        // The topology draws the denied edge apart from the allowed ones.
        browser
            .click(r#"nav a[data-view="topology"]"#)
            .expect("Topology");
        browser.wait("the denied edge", WAIT, |b| {
            (b.count(r#"path.edge.denied[data-from="shop/intruder"][data-to="shop/inventory"]"#)
                == 1)
                .then_some(())
        });
        assert_no_markup_made(&browser);
        browser.screenshot("8-topology-denied-edge");
    });

    // Policy: the AllowLists targeting inventory, and "can X call this?"
    // answered as `bulkheadctl explain` answers it.
    blocking(|| {
        browser
            .click(r#"nav a[data-view="policy"]"#)
            .expect("Policy");
        browser.wait("the policy's service list", WAIT, |b| {
            b.find_all(r#"tr[data-service="shop/inventory"] a"#)
                .into_iter()
                .next()
        });
        browser
            .click(r#"tr[data-service="shop/inventory"] a"#)
            .expect("inventory's policy");
        let rules = browser.wait_text("table.allow-rules", "inventory-from-web", WAIT);
        assert!(rules.contains("shop/web"), "{rules}");
        let ask = |from: &str, path: &str| {
            browser.script(&format!(
                "document.getElementById('explain-from').value = {from:?}; \
                 document.getElementById('explain-from').dispatchEvent(new Event('input')); \
                 document.getElementById('explain-path').value = {path:?}; \
                 document.getElementById('explain-path').dispatchEvent(new Event('input')); \
                 return true;"
            ));
            browser
                .click(r#"form.explain button[type="submit"]"#)
                .expect("Explain");
        };
        ask("shop/intruder", "/v1/stock/x");
        browser.wait("a denied answer", WAIT, |b| {
            (b.count(r#".answer[data-decision="denied"]"#) == 1).then_some(())
        });
        assert!(browser.text(".answer").contains("DENIED"));
        browser.screenshot("9-policy-denied");
        ask("shop/web", "/v1/stock/../stock/x");
        let allowed = browser.wait_text(".answer", "ALLOWED", WAIT);
        assert!(allowed.contains("inventory-from-web"), "{allowed}");
        assert!(allowed.contains("/v1/stock/x"), "normalized: {allowed}");
        browser.screenshot("10-policy-allowed");
    });

    // The event stream as any client sees it: resumable after an id, and
    // bounded in how many follow it at once.
    blocking(|| {
        let (code, mut first) = EventStream::open(dashboard.addr, None);
        assert_eq!(code, 200);
        let ids = first.ids(3);
        let (_, mut resumed) = EventStream::open(dashboard.addr, Some(ids[1]));
        assert_eq!(
            resumed.ids(1),
            [ids[2]],
            "resumes right after Last-Event-ID"
        );
        // The page holds one stream, these two more: at most
        // MAX_STREAMS (8) are served at once.
        let mut held = vec![first, resumed];
        let busy = (0..8).find_map(|_| {
            let (code, stream) = EventStream::open(dashboard.addr, None);
            held.push(stream);
            (code == 503).then_some(())
        });
        assert!(busy.is_some(), "a ninth stream is refused");
        drop(held);
        wait_for("an abandoned stream's place freed", WAIT, || {
            (EventStream::open(dashboard.addr, None).0 == 200).then_some(())
        });
    });

    // What the dashboard refuses.
    blocking(|| {
        for path in ["/api/overview", "/api/events", "/api/denials"] {
            let (code, body) = dashboard.request("GET", path, &[("host", "evil.example:80")], "");
            assert_eq!(code, 403, "DNS rebinding on {path}: {body}");
        }
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

    // The control plane goes away: the open page says so, and so does a
    // page loaded afterwards (a message, not a blank page).
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
        browser.screenshot("11-control-plane-unreachable");
        browser.goto(&format!("{}#/services", dashboard.url));
        browser.script("location.reload(); return true;");
        browser.wait_text("main", "control plane unreachable", WAIT);
        browser.wait_text("#banner", "control plane unreachable", WAIT);
        browser.screenshot("12-fresh-load-unreachable");
    });
    let _ = (load, &stable, &canary, &intruder);
}

/// A caller no AllowList names.
const INTRUDER: &str = "
apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: intruder, namespace: shop}
spec:
  ports: [{port: 8080, protocol: http}]
";

/// Markup in a denial's path and rule, as a compromised sidecar could
/// publish them.
const HOSTILE_PATH: &str = "/<img src=x onerror=window.pwned=1>";
const HOSTILE_RULE: &str = "<b>rule</b>";

/// Nothing the mesh sent became an element, nor ran.
fn assert_no_markup_made(browser: &Browser) {
    assert_eq!(
        browser.count("main img, main b, main i"),
        0,
        "markup from the mesh became elements"
    );
    assert_eq!(browser.script("return window.pwned === undefined;"), true);
}

/// Picks `kind` in the Events view's Type filter.
fn event_type(browser: &Browser, kind: &str) {
    browser.script(&format!(
        "const s = document.getElementById('events-type'); s.value = {kind:?}; \
         s.dispatchEvent(new Event('change')); return true;"
    ));
}

fn clear_filter(browser: &Browser) {
    browser.script(
        "document.getElementById('filter').value = ''; \
         document.getElementById('filter').dispatchEvent(new Event('input')); return true;",
    );
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
