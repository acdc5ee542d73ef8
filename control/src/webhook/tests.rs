use base64::Engine as _;
use json_patch::{Patch, PatchOperation};
use serde_json::{Value, json};

use super::inject::{Action, Unchanged};
use super::review::{MalformedReview, Verdict};
use super::sidecar::{INIT_CONTAINER, PROXY_CONTAINER};
use super::{Injector, InjectorSettings, ProxyPorts};

mod review;

fn injector() -> Injector {
    Injector::new(InjectorSettings::default()).unwrap()
}

fn pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web-1",
            "labels": {"app.kubernetes.io/name": "web", "app.kubernetes.io/version": "2.0.1"},
            "annotations": {"team": "shop"}
        },
        "spec": {
            "containers": [{"name": "web", "image": "web:2", "ports": [{"containerPort": 8080}]}],
            "initContainers": [{"name": "migrate", "image": "web:2"}],
            "volumes": [{"name": "data", "emptyDir": {}}]
        }
    })
}

fn patch_of(outcome: &super::Outcome) -> &Patch {
    match &outcome.action {
        Action::Inject(p) => p,
        other => panic!("expected a patch, got {other:?}"),
    }
}

fn paths(patch: &Patch) -> Vec<String> {
    patch.0.iter().map(|op| op.path().to_string()).collect()
}

fn applied(pod: &Value) -> Value {
    let outcome = injector().plan(pod, &[], None).unwrap();
    let mut doc = pod.clone();
    json_patch::patch(&mut doc, &patch_of(&outcome).0).unwrap();
    doc
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect()
}

#[test]
fn present_maps_and_arrays_are_extended_with_escaped_pointers() {
    let outcome = injector().plan(&pod(), &[], None).unwrap();
    assert_eq!(
        paths(patch_of(&outcome)),
        [
            "/metadata/annotations/bulkhead.dev~1injected",
            "/spec/initContainers/0",
            "/spec/initContainers/1",
            "/spec/volumes/-",
            "/spec/volumes/-",
            "/spec/volumes/-",
            "/spec/volumes/-",
        ]
    );
    let doc = applied(&pod());
    assert_eq!(
        names(&doc["spec"]["initContainers"]),
        [INIT_CONTAINER, PROXY_CONTAINER, "migrate"]
    );
    assert_eq!(
        names(&doc["spec"]["volumes"]),
        [
            "data",
            "bulkhead-token",
            "bulkhead-trust-bundle",
            "bulkhead-xtables-lock",
            "bulkhead-state"
        ]
    );
    assert_eq!(doc["metadata"]["annotations"]["team"], "shop");
    assert_eq!(
        doc["metadata"]["annotations"]["bulkhead.dev/injected"],
        "true"
    );
}

#[test]
fn absent_or_null_maps_and_arrays_are_added_whole() {
    let mut bare = pod();
    bare["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("annotations");
    bare["spec"]
        .as_object_mut()
        .unwrap()
        .remove("initContainers");
    bare["spec"]["volumes"] = Value::Null;
    let outcome = injector().plan(&bare, &[], None).unwrap();
    assert_eq!(
        paths(patch_of(&outcome)),
        [
            "/metadata/annotations",
            "/spec/initContainers",
            "/spec/volumes"
        ]
    );
    let doc = applied(&bare);
    assert_eq!(
        names(&doc["spec"]["initContainers"]),
        [INIT_CONTAINER, PROXY_CONTAINER]
    );
    assert_eq!(names(&doc["spec"]["volumes"]).len(), 4);

    let mut no_metadata = json!({"spec": {"containers": [{"name": "a"}]}});
    let outcome = injector().plan(&no_metadata, &[], Some("batch")).unwrap();
    assert_eq!(paths(patch_of(&outcome))[0], "/metadata");
    json_patch::patch(&mut no_metadata, &patch_of(&outcome).0).unwrap();
    assert_eq!(
        no_metadata["metadata"]["annotations"]["bulkhead.dev/injected"],
        "true"
    );
}

#[test]
fn template_paths_are_prefixed() {
    let template = json!({"metadata": {"labels": {"app": "cart"}}, "spec": {"containers": [{"name": "c",
            "readinessProbe": {"tcpSocket": {"port": 8080}}}]}});
    let outcome = injector()
        .plan(
            &template,
            &["spec", "jobTemplate", "spec", "template"],
            None,
        )
        .unwrap();
    assert!(
        paths(patch_of(&outcome))
            .iter()
            .all(|p| p.starts_with("/spec/jobTemplate/spec/template/"))
    );
    assert!(
        paths(patch_of(&outcome))
            .contains(&"/spec/jobTemplate/spec/template/spec/containers/0/readinessProbe".into())
    );
}

#[test]
fn injected_pods_are_left_alone() {
    let once = applied(&pod());
    let again = injector().plan(&once, &[], None).unwrap();
    assert_eq!(again.action, Action::Unchanged(Unchanged::AlreadyInjected));
    // Either sign is enough: the annotation, or a proxy container.
    let mut by_annotation = pod();
    by_annotation["metadata"]["annotations"]["bulkhead.dev/injected"] = json!("true");
    let mut by_container = pod();
    by_container["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": PROXY_CONTAINER}));
    for p in [by_annotation, by_container] {
        assert_eq!(
            injector().plan(&p, &[], None).unwrap().action,
            Action::Unchanged(Unchanged::AlreadyInjected)
        );
    }
}

#[test]
fn opt_out_and_host_network() {
    let mut annotated = pod();
    annotated["metadata"]["annotations"]["bulkhead.dev/inject"] = json!("disabled");
    let mut labelled = pod();
    labelled["metadata"]["labels"]["bulkhead.dev/inject"] = json!("disabled");
    for p in [annotated, labelled] {
        let o = injector().plan(&p, &[], None).unwrap();
        assert_eq!(o.action, Action::Unchanged(Unchanged::OptedOut));
        assert!(o.warnings.is_empty());
    }
    // The annotation wins over the label.
    let mut both = pod();
    both["metadata"]["labels"]["bulkhead.dev/inject"] = json!("disabled");
    both["metadata"]["annotations"]["bulkhead.dev/inject"] = json!("enabled");
    assert!(matches!(
        injector().plan(&both, &[], None).unwrap().action,
        Action::Inject(_)
    ));

    let mut odd = pod();
    odd["metadata"]["annotations"]["bulkhead.dev/inject"] = json!("true");
    let o = injector().plan(&odd, &[], None).unwrap();
    assert_eq!(o.action, Action::Unchanged(Unchanged::OptedOut));
    assert!(
        o.warnings[0].contains("neither enabled nor disabled"),
        "{o:?}"
    );

    let mut host = pod();
    host["spec"]["hostNetwork"] = json!(true);
    let o = injector().plan(&host, &[], None).unwrap();
    assert_eq!(o.action, Action::Unchanged(Unchanged::HostNetwork));
    assert!(o.warnings[0].contains("hostNetwork"), "{o:?}");
}

/// The proxy's `--app` values, in order.
fn apps_of(doc: &Value) -> Vec<String> {
    let Some(proxy) = doc["spec"]["initContainers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == PROXY_CONTAINER))
    else {
        return Vec::new();
    };
    let args: Vec<&str> = proxy["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    args.windows(2)
        .filter(|w| w[0] == "--app")
        .map(|w| w[1].to_owned())
        .collect()
}

fn env_of(doc: &Value, name: &str) -> Option<String> {
    let proxy = doc["spec"]["initContainers"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == PROXY_CONTAINER)?;
    proxy["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
        .map(str::to_owned)
}

#[test]
fn service_names_come_from_labels_then_the_workload() {
    let rs_owner = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "cart-7d9f8c6b5", "uid": "u", "controller": true}]);
    let sts_owner = json!([{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "u", "controller": true}]);
    let cases = [
        (
            json!({"labels": {"app.kubernetes.io/name": "web", "app": "x"}}),
            None,
            "web",
            false,
        ),
        (
            json!({"labels": {"app": "echo-server"}}),
            None,
            "echo-server",
            false,
        ),
        (
            json!({"generateName": "cart-7d9f8c6b5-", "labels": {"pod-template-hash": "7d9f8c6b5"}, "ownerReferences": rs_owner}),
            None,
            "cart",
            true,
        ),
        (
            json!({"name": "db-0", "ownerReferences": sts_owner}),
            None,
            "db",
            true,
        ),
        (json!({}), Some("batch"), "batch", true),
        (json!({"name": "lonely"}), None, "lonely", true),
    ];
    for (metadata, hint, want, warned) in cases {
        let p = json!({"metadata": metadata, "spec": {"containers": [{"name": "c"}]}});
        let o = injector().plan(&p, &[], hint).unwrap();
        let mut doc = p.clone();
        json_patch::patch(&mut doc, &patch_of(&o).0).unwrap();
        assert_eq!(
            env_of(&doc, "BULKHEAD_SERVICE").as_deref(),
            Some(want),
            "{p}"
        );
        assert_eq!(env_of(&doc, "BULKHEAD_VERSION").as_deref(), Some("0.0.0"));
        assert_eq!(
            o.warnings.iter().any(|w| w.contains("service name")),
            warned,
            "{o:?}"
        );
    }
    // Not a DNS label: refused with the reason, not injected broken.
    let p = json!({"metadata": {"labels": {"app": "Web_Frontend"}}, "spec": {"containers": [{"name": "c"}]}});
    match injector().plan(&p, &[], None).unwrap().action {
        Action::Refuse(m) => assert!(m.contains("Web_Frontend") && m.contains("label app"), "{m}"),
        other => panic!("{other:?}"),
    }
    let p = json!({"spec": {"containers": [{"name": "c"}]}});
    assert!(matches!(
        injector().plan(&p, &[], None).unwrap().action,
        Action::Refuse(_)
    ));
}

#[test]
fn app_port_and_protocol() {
    let with = |annotations: Value, ports: Value| {
        let p = json!({"metadata": {"labels": {"app": "a"}, "annotations": annotations},
                       "spec": {"containers": [{"name": "c", "ports": ports}]}});
        let o = injector().plan(&p, &[], None).unwrap();
        match o.action {
            Action::Inject(patch) => {
                let mut doc = p.clone();
                json_patch::patch(&mut doc, &patch.0).unwrap();
                Ok((
                    apps_of(&doc),
                    env_of(&doc, "BULKHEAD_APP_PROTOCOL"),
                    o.warnings,
                ))
            }
            Action::Refuse(m) => Err(m),
            other => panic!("{other:?}"),
        }
    };
    let s = |a: &str| Some(a.to_owned());
    let v = |a: &[&str]| a.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
    let (app, proto, _) = with(json!({}), json!([{"containerPort": 53, "protocol": "UDP"}, {"containerPort": 9090, "name": "grpc-api"}])).unwrap();
    assert_eq!((app, proto), (v(&["9090=127.0.0.1:9090"]), s("grpc")));
    // Every declared TCP port, each to its own local port, once; not those
    // left out of inbound capture.
    let (app, proto, _) = with(
        json!({"bulkhead.dev/skip-inbound-ports": "9100"}),
        json!([{"containerPort": 8080, "name": "http"}, {"containerPort": 9000}, {"containerPort": 8080}, {"containerPort": 9100}]),
    )
    .unwrap();
    assert_eq!(
        (app, proto),
        (
            v(&["8080=127.0.0.1:8080", "9000=127.0.0.1:9000"]),
            s("http")
        )
    );
    let (app, proto, _) = with(
        json!({"bulkhead.dev/app-port": "7000", "bulkhead.dev/app-protocol": "tcp"}),
        json!([{"containerPort": 8080}]),
    )
    .unwrap();
    assert_eq!((app, proto), (v(&["7000=127.0.0.1:7000"]), s("tcp")));
    let (app, _, warnings) = with(json!({}), json!([])).unwrap();
    assert!(app.is_empty());
    assert!(warnings.iter().any(|w| w.contains("forwards no inbound")));
    for bad in [
        json!({"bulkhead.dev/app-port": "http"}),
        json!({"bulkhead.dev/app-protocol": "h3"}),
        json!({"bulkhead.dev/skip-inbound-ports": "80,x"}),
    ] {
        assert!(with(bad.clone(), json!([])).is_err(), "{bad}");
    }
}

#[test]
fn skipped_ports_reach_init_iptables_and_keep_their_probes() {
    let mut p = pod();
    p["spec"]["containers"][0]["livenessProbe"] =
        json!({"httpGet": {"path": "/healthz", "port": 8081}});
    p["spec"]["containers"][0]["readinessProbe"] = json!({"tcpSocket": {"port": 8080}});
    // Rewriting off: the old warnings, one per port.
    let mut off = p.clone();
    off["metadata"]["annotations"]["bulkhead.dev/rewrite-probes"] = json!("false");
    let o = injector().plan(&off, &[], None).unwrap();
    assert_eq!(o.warnings.len(), 2, "{o:?}");
    assert!(!paths(patch_of(&o)).iter().any(|p| p.contains("Probe")));
    p["metadata"]["annotations"]["bulkhead.dev/skip-inbound-ports"] = json!("8081, 8080");
    p["metadata"]["annotations"]["bulkhead.dev/skip-outbound-ports"] = json!("5432");
    let o = injector().plan(&p, &[], None).unwrap();
    assert!(o.warnings.is_empty(), "{o:?}");
    // Skipped ports are reachable in plaintext: their probes stay as written.
    assert!(!paths(patch_of(&o)).iter().any(|p| p.contains("Probe")));
    let op = patch_of(&o)
        .0
        .iter()
        .find_map(|op| match op {
            PatchOperation::Add(add) if add.path.as_str() == "/spec/initContainers/0" => {
                Some(add.value.clone())
            }
            _ => None,
        })
        .unwrap();
    let args: Vec<&str> = op["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.windows(2)
            .any(|w| w == ["--exclude-inbound-ports", "8081,8080"]),
        "{args:?}"
    );
    assert!(
        args.windows(2)
            .any(|w| w == ["--exclude-outbound-ports", "5432"]),
        "{args:?}"
    );
}

/// Makes one setting bad.
type Spoil = fn(&mut InjectorSettings);

#[test]
fn settings_are_checked_by_name() {
    let cases: Vec<(Spoil, &str)> = vec![
        (|s| s.proxy_image = String::new(), "proxy image"),
        (|s| s.init_image = "a b".into(), "init image"),
        (|s| s.control_url = "http://x:8443".into(), "control URL"),
        (
            |s| s.trust_bundle_config_map = "Bundle".into(),
            "trust bundle ConfigMap",
        ),
        (|s| s.proxy_uid = 0, "proxy UID"),
        (
            |s| {
                s.ports = ProxyPorts {
                    admin: 4143,
                    ..ProxyPorts::default()
                }
            },
            "ports",
        ),
        (
            |s| s.resources.memory_limit = Some("lots".into()),
            "proxy memory limit",
        ),
        (
            |s| s.image_pull_policy = Some("Sometimes".into()),
            "image pull policy",
        ),
        (|s| s.log_level = String::new(), "log level"),
    ];
    for (spoil, setting) in cases {
        let mut s = InjectorSettings::default();
        spoil(&mut s);
        assert_eq!(Injector::new(s).unwrap_err().setting, setting);
    }
    let mut s = InjectorSettings::default();
    s.resources.cpu_limit = Some("0.5".into());
    s.resources.memory_request = Some("1Gi".into());
    s.redirect_dns = true;
    Injector::new(s).unwrap();
}

fn proxy_env(doc: &Value, name: &str) -> Option<String> {
    doc["spec"]["initContainers"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == PROXY_CONTAINER)?["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .map(|e| e["value"].as_str().unwrap_or_default().to_owned())
}

#[test]
fn app_probes_are_rewritten_to_the_admin_port_with_a_table_for_the_proxy() {
    let mut p = pod();
    let c = &mut p["spec"]["containers"][0];
    c["ports"] =
        json!([{"containerPort": 8080, "name": "http"}, {"containerPort": 9090, "name": "grpc"}]);
    c["readinessProbe"] = json!({"httpGet": {"path": "ready", "port": "http", "scheme": "HTTPS",
        "httpHeaders": [{"name": "X-Probe", "value": "1"}]}, "periodSeconds": 7, "timeoutSeconds": 2});
    c["livenessProbe"] = json!({"tcpSocket": {"port": 8080}, "failureThreshold": 9});
    c["startupProbe"] = json!({"grpc": {"port": 9090, "service": "web"}});
    let o = injector().plan(&p, &[], None).unwrap();
    assert!(o.warnings.is_empty(), "{o:?}");
    let doc = applied(&p);
    let c = &doc["spec"]["containers"][0];
    for (field, kind) in [
        ("readinessProbe", "readiness"),
        ("livenessProbe", "liveness"),
        ("startupProbe", "startup"),
    ] {
        assert_eq!(
            c[field]["httpGet"],
            json!({"port": 4191, "path": format!("/app-health/web/{kind}"), "scheme": "HTTP"}),
            "{field}"
        );
        for gone in ["tcpSocket", "grpc"] {
            assert!(c[field].get(gone).is_none(), "{field}.{gone}");
        }
    }
    assert_eq!(c["readinessProbe"]["periodSeconds"], 7);
    assert_eq!(c["readinessProbe"]["timeoutSeconds"], 2);
    assert_eq!(c["livenessProbe"]["failureThreshold"], 9);
    let table: Value =
        serde_json::from_str(&proxy_env(&doc, "BULKHEAD_APP_PROBES").unwrap()).unwrap();
    assert_eq!(
        table,
        json!({
            "/app-health/web/readiness": {"port": 8080, "path": "/ready", "scheme": "HTTPS",
                "headers": [{"name": "X-Probe", "value": "1"}]},
            "/app-health/web/liveness": {"tcp": 8080},
            "/app-health/web/startup": {"grpc": 9090, "service": "web"},
        })
    );
    // Idempotent: the injected pod is left alone.
    let again = injector().plan(&doc, &[], None).unwrap();
    assert_eq!(again.action, Action::Unchanged(Unchanged::AlreadyInjected));
}

#[test]
fn probes_that_cannot_be_rewritten_are_left_and_said() {
    let mut p = pod();
    let c = &mut p["spec"]["containers"][0];
    c["readinessProbe"] = json!({"httpGet": {"path": "/", "port": "nope"}});
    c["livenessProbe"] = json!({"httpGet": {"path": "/", "port": 80, "host": "example.com"}});
    c["startupProbe"] = json!({"exec": {"command": ["true"]}});
    p["spec"]["initContainers"][0]["restartPolicy"] = json!("Always");
    p["spec"]["initContainers"][0]["readinessProbe"] = json!({"tcpSocket": {"port": 7000}});
    let o = injector().plan(&p, &[], None).unwrap();
    assert_eq!(o.warnings.len(), 2, "{o:?}");
    assert!(o.warnings[0].contains("\"nope\""), "{o:?}");
    assert!(o.warnings[1].contains("port 7000 (migrate)"), "{o:?}");
    assert!(!paths(patch_of(&o)).iter().any(|p| p.contains("Probe")));
    assert_eq!(proxy_env(&applied(&p), "BULKHEAD_APP_PROBES"), None);
    p["metadata"]["annotations"]["bulkhead.dev/rewrite-probes"] = json!("maybe");
    assert!(matches!(
        injector().plan(&p, &[], None).unwrap().action,
        Action::Refuse(_)
    ));
}

/// With the bundle handed to the injector, pods carry it inline: no
/// ConfigMap volume, which would have to exist in every namespace.
#[test]
fn the_trust_bundle_travels_inline_when_the_injector_has_it() {
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let settings = InjectorSettings {
        trust_bundle_pem: Some(pem.to_owned()),
        ..InjectorSettings::default()
    };
    let p = pod();
    let outcome = Injector::new(settings)
        .unwrap()
        .plan(&p, &[], None)
        .unwrap();
    let mut doc = p.clone();
    json_patch::patch(&mut doc, &patch_of(&outcome).0).unwrap();
    assert!(
        !names(&doc["spec"]["volumes"]).contains(&"bulkhead-trust-bundle"),
        "{}",
        doc["spec"]["volumes"]
    );
    let proxy = &doc["spec"]["initContainers"][1];
    assert_eq!(
        proxy_env(&doc, "BULKHEAD_TRUST_BUNDLE_PEM").as_deref(),
        Some(pem)
    );
    assert!(proxy_env(&doc, "BULKHEAD_TRUST_BUNDLE").is_none());
    assert!(
        !proxy["volumeMounts"]
            .to_string()
            .contains("bulkhead-trust-bundle")
    );
    // That the real proxy takes it in place of --trust-bundle is checked
    // against the binary: tests/tests/injected_sidecar.rs.
}
