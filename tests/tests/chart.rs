//! The Helm chart `charts/bulkhead`, with no cluster: rendered by Helm 4's real
//! engine (PyPI `helm-python-sdk`), linted with `helm lint --strict`, and every
//! rendered object validated against Kubernetes' strict schemas (PyPI
//! `kubernetes-validate`) for 1.29, 1.30 and the newest version it ships — for the
//! default values and each documented option. Then the properties an install relies
//! on are checked on the rendered objects, and bad values must be refused by name.
//!
//! The values rendered are in `tests/chart/scenarios.rs`; `tests/chart/support.rs`
//! runs `tests/chart/render_chart.py` (which only runs the tools) and holds the
//! invariants every option keeps, `tests/chart/access.rs` those of RBAC, the webhook
//! and the issuer Secret; `tests/chart/install.rs` checks the install's inputs (the
//! two-command install: an inline issuer) and what they let the control plane do.
//! `scripts/test` installs the tools into a venv; without them this test fails and
//! says how to install them.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use serde_json::{Value, json};

#[path = "../chart/access.rs"]
mod access;
#[path = "../chart/install.rs"]
mod install;
#[path = "../chart/scenarios.rs"]
mod scenarios;
#[path = "../chart/support.rs"]
mod support;

use scenarios::{EXTERNAL_ETCD, bad_scenarios, good_scenarios, inputs};

/// The webhook configuration's name for release `bulkhead` in NAMESPACE.
pub(crate) const WEBHOOK_CONFIGURATION: &str = "bulkhead-mesh-system-injector";
use support::{
    Rendered, args, assert_etcd_cluster, assert_file_from, assert_invariants, base64, chart_dir,
    commented_keys, container_port, find, flag, name_of, of_kind,
};

const RELEASE: &str = "bulkhead";
/// Not the default `bulkhead`, so that a hard-coded namespace shows.
pub(crate) const NAMESPACE: &str = "mesh-system";

// ---------------------------------------------------------------------------
// Every option: renders, lints clean, validates strictly, holds the invariants
// ---------------------------------------------------------------------------

#[test]
fn chart_metadata_matches_the_workspace() {
    let chart = &rendered().chart;
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["name"], "bulkhead");
    assert_eq!(
        chart["appVersion"],
        env!("CARGO_PKG_VERSION"),
        "appVersion = workspace version"
    );
    assert_eq!(
        chart["kubeVersion"], ">=1.29.0-0",
        "native sidecars need 1.29+"
    );
}

#[test]
fn every_option_renders_lints_and_validates_strictly() {
    let tools = &rendered().tools;
    assert!(
        tools["helm"].as_str().is_some_and(|v| v.starts_with("v4.")),
        "expected Helm 4's engine, got {tools}"
    );
    for (name, _) in good_scenarios() {
        let objects = objects(name);
        assert!(objects.len() >= 6, "{name}: only {} objects", objects.len());
        assert_invariants(name, objects, RELEASE, NAMESPACE);
    }
}

#[test]
fn bad_values_are_refused_by_name() {
    for (name, _, expected) in bad_scenarios() {
        let outcome = outcome(name);
        let error = outcome.error.as_deref().unwrap_or_else(|| {
            panic!(
                "{name}: rendered {} objects, expected an error saying {expected:?}",
                outcome.objects.len()
            )
        });
        assert!(
            error.contains(expected),
            "{name}: error {error:?} does not say {expected:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// The default install
// ---------------------------------------------------------------------------

#[test]
fn defaults_run_two_hardened_probed_replicas_behind_a_budget() {
    let objs = objects("defaults");
    let deploy = find(objs, "Deployment", "bulkhead-control");
    assert_eq!(deploy["spec"]["replicas"], 2);
    let pdb = find(objs, "PodDisruptionBudget", "bulkhead-control");
    assert_eq!(pdb["spec"]["minAvailable"], 1);

    let pod = &deploy["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    for (probe, path) in [("livenessProbe", "/live"), ("readinessProbe", "/ready")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(container_port(container, &get["port"]), 9990, "{probe}");
    }
    assert_eq!(
        container["securityContext"],
        json!({
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        })
    );
    assert_eq!(
        pod["securityContext"],
        json!({
            "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"},
        })
    );
    let spread =
        &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"];
    assert_eq!(
        spread[0]["podAffinityTerm"]["topologyKey"], "kubernetes.io/hostname",
        "replicas spread across nodes"
    );

    let args = args(deploy);
    for expected in [
        "--store=etcd",
        "--listen=0.0.0.0:8443",
        "--admin=0.0.0.0:9990",
        "--webhook=0.0.0.0:9443",
        "--trust-domain=cluster.local",
        "--prefix=/bulkhead/",
    ] {
        assert!(args.contains(&expected), "missing {expected} in {args:?}");
    }
    let dns_names = flag(&args, "--dns-names").expect("--dns-names");
    let service_name = format!("bulkhead-control.{NAMESPACE}.svc");
    assert!(
        dns_names.split(',').any(|n| n == service_name),
        "{dns_names}"
    );
    assert!(
        flag(&args, "--etcd-ca").is_none(),
        "bundled etcd is plain by default"
    );

    // The webhook's certificate is the control plane's own, for the names the
    // API server dials; it keeps the caBundle of the chart's configuration.
    assert_eq!(
        flag(&args, "--webhook-dns-names"),
        Some(format!("{service_name},{service_name}.cluster.local").as_str())
    );
    assert_eq!(
        flag(&args, "--webhook-configuration"),
        Some(WEBHOOK_CONFIGURATION)
    );
    assert!(
        flag(&args, "--webhook-cert").is_none() && flag(&args, "--webhook-key").is_none(),
        "{args:?}"
    );

    // Every file flag points into the one issuer Secret: nothing else is needed.
    for file_flag in ["--issuer-cert", "--issuer-key", "--trust-bundle"] {
        assert_file_from(
            deploy,
            flag(&args, file_flag).expect(file_flag),
            "secret",
            "bulkhead-issuer",
        );
    }
    let items = &pod["volumes"].as_array().unwrap()[0]["secret"]["items"];
    assert_eq!(
        items,
        &json!([
            {"key": "issuer.crt", "path": "issuer.crt"},
            {"key": "issuer.key", "path": "issuer.key"},
            {"key": "bundle.crt", "path": "bundle.crt"},
        ])
    );
    assert!(
        of_kind(objs, "ConfigMap").is_empty(),
        "no trust-bundle ConfigMap"
    );
    assert!(
        of_kind(objs, "Secret").is_empty(),
        "the Secret is the user's"
    );

    // Service port → container port, by name.
    let service = find(objs, "Service", "bulkhead-control");
    let ports: Vec<(&str, i64, i64)> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let name = p["name"].as_str().unwrap();
            (
                name,
                p["port"].as_i64().unwrap(),
                container_port(container, &p["targetPort"]),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [
            ("grpc", 8443, 8443),
            ("webhook", 443, 9443),
            ("admin", 9990, 9990)
        ]
    );
}

#[test]
fn defaults_inject_labelled_namespaces_and_fail_closed() {
    let objs = objects("defaults");
    let mwc = &of_kind(objs, "MutatingWebhookConfiguration")[0];
    let hooks = mwc["webhooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 2, "namespace and pod opt-in");
    let ns_hook = &hooks[0];
    assert_eq!(ns_hook["failurePolicy"], "Fail");
    assert_eq!(
        ns_hook["namespaceSelector"]["matchLabels"]["bulkhead.dev/inject"],
        "enabled"
    );
    assert_eq!(
        ns_hook["objectSelector"]["matchExpressions"][0],
        json!({"key": "bulkhead.dev/inject", "operator": "NotIn", "values": ["disabled"]}),
        "opted-out pods are not sent"
    );
    assert_eq!(ns_hook["rules"][0]["resources"], json!(["pods"]));
    assert_eq!(ns_hook["rules"][0]["operations"], json!(["CREATE"]));
    assert_eq!(
        hooks[1]["objectSelector"]["matchLabels"]["bulkhead.dev/inject"],
        "enabled"
    );
    assert_eq!(mwc["metadata"]["name"], WEBHOOK_CONFIGURATION);
    for hook in hooks {
        // No cluster to `lookup` the live value in: left to the control plane.
        assert!(hook["clientConfig"]["caBundle"].is_null(), "{hook}");
    }
}

// ---------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------

#[test]
fn bundled_etcd_is_three_members_that_find_each_other() {
    let objs = objects("defaults");
    let sts = find(objs, "StatefulSet", "bulkhead-etcd");
    assert_eq!(sts["spec"]["replicas"], 3);
    assert_eq!(
        sts["spec"]["podManagementPolicy"], "Parallel",
        "first quorum needs all members up"
    );
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
        "4Gi"
    );
    let pod = &sts["spec"]["template"]["spec"];
    assert!(
        !pod["affinity"]["podAntiAffinity"].is_null(),
        "members spread across nodes"
    );

    let headless = find(
        objs,
        "Service",
        sts["spec"]["serviceName"].as_str().unwrap(),
    );
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert_eq!(headless["spec"]["publishNotReadyAddresses"], true);
    assert_eq!(
        find(objs, "PodDisruptionBudget", "bulkhead-etcd")["spec"]["maxUnavailable"],
        1
    );
    let policy = find(objs, "NetworkPolicy", "bulkhead-etcd");
    let control_labels =
        &find(objs, "Deployment", "bulkhead-control")["spec"]["selector"]["matchLabels"];
    assert_eq!(
        policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"], *control_labels,
        "only the control plane is an etcd client"
    );

    let members = assert_etcd_cluster(objs, "bulkhead-etcd", 3, "http", NAMESPACE);
    let control_args = args(find(objs, "Deployment", "bulkhead-control"));
    let endpoints: Vec<String> = members
        .iter()
        .map(|host| format!("http://{host}:2379"))
        .collect();
    assert_eq!(
        flag(&control_args, "--etcd-endpoints").unwrap(),
        endpoints.join(",")
    );
}

#[test]
fn bundled_etcd_with_tls_is_mutual_tls_for_peers_and_the_control_plane() {
    let objs = objects("bundled-etcd-tls");
    let members = assert_etcd_cluster(objs, "bulkhead-etcd", 3, "https", NAMESPACE);
    let etcd_args = args(find(objs, "StatefulSet", "bulkhead-etcd"));
    for expected in ["--client-cert-auth=true", "--peer-client-cert-auth=true"] {
        assert!(etcd_args.contains(&expected), "missing {expected}");
    }
    assert_file_from(
        find(objs, "StatefulSet", "bulkhead-etcd"),
        flag(&etcd_args, "--cert-file").unwrap(),
        "secret",
        "etcd-server-tls",
    );
    let deploy = find(objs, "Deployment", "bulkhead-control");
    let args = args(deploy);
    let endpoints: Vec<String> = members
        .iter()
        .map(|host| format!("https://{host}:2379"))
        .collect();
    assert_eq!(
        flag(&args, "--etcd-endpoints").unwrap(),
        endpoints.join(",")
    );
    for file_flag in ["--etcd-ca", "--etcd-cert", "--etcd-key"] {
        assert_file_from(
            deploy,
            flag(&args, file_flag).unwrap(),
            "secret",
            "etcd-client-tls",
        );
    }
}

#[test]
fn five_members_are_five_in_every_list() {
    let objs = objects("five-member-etcd");
    let members = assert_etcd_cluster(objs, "bulkhead-etcd", 5, "http", NAMESPACE);
    let sts = find(objs, "StatefulSet", "bulkhead-etcd");
    let claim = &sts["spec"]["volumeClaimTemplates"][0]["spec"];
    assert_eq!(claim["storageClassName"], "fast-ssd");
    assert_eq!(claim["resources"]["requests"]["storage"], "20Gi");
    assert!(!sts["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"].is_null());
    let args = args(find(objs, "Deployment", "bulkhead-control"));
    assert_eq!(
        flag(&args, "--etcd-endpoints").unwrap().split(',').count(),
        members.len()
    );
}

#[test]
fn external_etcd_with_tls_mounts_the_client_secret_and_runs_no_etcd() {
    let objs = objects("external-etcd-tls");
    assert!(of_kind(objs, "StatefulSet").is_empty());
    assert!(of_kind(objs, "NetworkPolicy").is_empty());
    assert_eq!(
        of_kind(objs, "PodDisruptionBudget").len(),
        1,
        "only the control plane's"
    );
    let deploy = find(objs, "Deployment", "bulkhead-control");
    let args = args(deploy);
    assert_eq!(
        flag(&args, "--etcd-endpoints").unwrap(),
        EXTERNAL_ETCD.join(",")
    );
    for file_flag in ["--etcd-ca", "--etcd-cert", "--etcd-key"] {
        assert_file_from(
            deploy,
            flag(&args, file_flag).unwrap(),
            "secret",
            "etcd-client-tls",
        );
    }

    let plain = support::args(find(
        objects("external-etcd-plain"),
        "Deployment",
        "bulkhead-control",
    ));
    assert_eq!(
        flag(&plain, "--etcd-endpoints").unwrap(),
        "http://etcd.storage.svc:2379"
    );
    assert_eq!(flag(&plain, "--prefix").unwrap(), "/mesh-a/");
    assert!(flag(&plain, "--etcd-ca").is_none());
}

// ---------------------------------------------------------------------------
// Other options
// ---------------------------------------------------------------------------

#[test]
fn custom_replicas_follow_through_to_budget_spread_and_flags() {
    let objs = objects("custom-replicas");
    let deploy = find(objs, "Deployment", "mesh-control");
    assert_eq!(deploy["spec"]["replicas"], 3);
    assert_eq!(
        find(objs, "PodDisruptionBudget", "mesh-control")["spec"]["minAvailable"],
        2
    );
    let pod = &deploy["spec"]["template"]["spec"];
    assert!(
        !pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            .is_null()
    );
    assert_eq!(
        deploy["spec"]["strategy"]["rollingUpdate"]["maxSurge"], 0,
        "no node for a surge pod"
    );
    assert!(
        pod["topologySpreadConstraints"].is_null(),
        "[] disables the zone spread"
    );
    assert_eq!(pod["priorityClassName"], "system-cluster-critical");
    assert_eq!(pod["nodeSelector"]["kubernetes.io/os"], "linux");
    assert_eq!(
        deploy["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"],
        "true"
    );

    let args = args(deploy);
    assert_eq!(
        flag(&args, "--operators").unwrap(),
        "ops/deployer,spiffe://prod.example/ns/ci/sa/pipeline"
    );
    assert_eq!(flag(&args, "--trust-domain").unwrap(), "prod.example");
    assert!(
        flag(&args, "--dns-names")
            .unwrap()
            .contains(&format!("mesh-control.{NAMESPACE}.svc"))
    );

    let mwc = find(
        objs,
        "MutatingWebhookConfiguration",
        "mesh-mesh-system-injector",
    );
    assert_eq!(
        mwc["webhooks"].as_array().unwrap().len(),
        1,
        "podOptIn: false"
    );
    assert_eq!(
        mwc["webhooks"][0]["clientConfig"]["caBundle"]
            .as_str()
            .unwrap(),
        base64(inputs().webhook_ca.as_bytes()),
        "a base64 caBundle is used as given"
    );
}

#[test]
fn webhook_and_token_review_can_be_turned_off() {
    let objs = objects("webhook-disabled");
    assert!(of_kind(objs, "MutatingWebhookConfiguration").is_empty());
    assert!(
        of_kind(objs, "ClusterRoleBinding").is_empty() && of_kind(objs, "ClusterRole").is_empty(),
        "no tokens, no node topology: no RBAC at all"
    );
    assert!(
        of_kind(objs, "ServiceAccount").is_empty(),
        "serviceAccount.create: false"
    );
    assert!(
        of_kind(objs, "PodDisruptionBudget")
            .iter()
            .all(|p| name_of(p) != "bulkhead-control"),
        "one replica: a minAvailable budget would block drains"
    );
    let deploy = find(objs, "Deployment", "bulkhead-control");
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "existing-sa");
    assert_eq!(pod["automountServiceAccountToken"], false);
    let args = args(deploy);
    assert!(!args.iter().any(|a| a.starts_with("--webhook")), "{args:?}");
    let service = find(objs, "Service", "bulkhead-control");
    assert!(
        service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["name"] != "webhook")
    );
    let env = pod["containers"][0]["env"].to_string();
    assert!(!env.contains("BULKHEAD_K8S_JWKS"), "{env}");

    let cert_manager = &of_kind(objects("cert-manager-ca"), "MutatingWebhookConfiguration")[0];
    assert_eq!(
        cert_manager["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "mesh-system/bulkhead-webhook"
    );
    assert!(
        cert_manager["webhooks"][0]["clientConfig"]["caBundle"].is_null(),
        "left to cert-manager"
    );
}

// ---------------------------------------------------------------------------
// Documentation
// ---------------------------------------------------------------------------

#[test]
fn every_value_is_documented_in_values_yaml_and_the_readme() {
    let chart_dir = chart_dir();
    let readme = std::fs::read_to_string(chart_dir.join("README.md")).expect("chart README");
    let documented: BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`'))
        .map(|(key, _)| key.to_owned())
        .filter(|key| !key.contains(' ') && !key.contains(':'))
        .collect();
    let values = std::fs::read_to_string(chart_dir.join("values.yaml")).expect("values.yaml");
    let commented = commented_keys(&values);

    let keys = &rendered().value_keys;
    for key in keys {
        let covered = key
            .match_indices('.')
            .map(|(i, _)| &key[..i])
            .chain([key.as_str()])
            .any(|prefix| documented.contains(prefix));
        assert!(covered, "value {key} is not in the README's values table");
    }
    for key in &documented {
        assert!(
            keys.iter()
                .any(|k| k == key || k.starts_with(&format!("{key}."))),
            "the README documents {key}, which values.yaml does not have"
        );
        assert!(
            commented.contains(key),
            "values.yaml has no comment above {key}"
        );
    }
}

// ---------------------------------------------------------------------------
// All scenarios, rendered once
#[test]
fn the_real_control_plane_accepts_every_rendered_command_line() {
    // The chart's flags and env names are a contract with bulkhead-control
    // (and bulkhead-proxy, for the gateway):
    // run the real binary with each scenario's args and env. Files do not
    // exist here, so it must stop on a missing file (exit 2 naming it),
    // never on a flag or value it does not know.
    for (name, _) in good_scenarios() {
        let objs = objects(name);
        for deployment in of_kind(objs, "Deployment") {
            let container = &deployment["spec"]["template"]["spec"]["containers"][0];
            let args = args(deployment);
            // The gateway's Deployment runs bulkhead-proxy (its `command`).
            let binary = container["command"][0]
                .as_str()
                .unwrap_or("bulkhead-control");
            let mut cmd = std::process::Command::new(bulkhead_tests::control::bin(binary));
            cmd.args(&args).env_clear();
            for env in container["env"].as_array().into_iter().flatten() {
                if let (Some(k), Some(v)) = (env["name"].as_str(), env["value"].as_str()) {
                    cmd.env(k, v);
                }
            }
            let out = cmd.output().expect("run bulkhead-control");
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{name}: {err}");
            assert!(
                err.contains("/etc/bulkhead/") || err.contains("/var/run/secrets/"),
                "{name}: must fail on a missing file, not a flag: {err}"
            );
            assert!(
                !err.contains("unexpected argument") && !err.contains("invalid value"),
                "{name}: {err}"
            );
        }
    }
}

// ---------------------------------------------------------------------------

fn rendered() -> &'static Rendered {
    static RENDERED: OnceLock<Rendered> = OnceLock::new();
    RENDERED.get_or_init(|| {
        let good = good_scenarios();
        let bad = bad_scenarios()
            .into_iter()
            .map(|(name, values, _)| (name, values));
        Rendered::run(RELEASE, NAMESPACE, good.into_iter().chain(bad))
    })
}

fn outcome(scenario: &str) -> &'static support::Outcome {
    rendered().outcome(scenario)
}

/// A good scenario's objects, after checking it rendered, linted and validated clean.
pub(crate) fn objects(scenario: &str) -> &'static [Value] {
    rendered().objects(scenario)
}

// ---------------------------------------------------------------------------
// The API gateway (off by default)
// ---------------------------------------------------------------------------

#[test]
fn the_gateway_is_off_by_default_and_runs_as_its_mesh_identity_when_on() {
    let is_gateway =
        |o: &&Value| o["metadata"]["labels"]["app.kubernetes.io/component"] == "gateway";
    assert!(
        objects("defaults").iter().filter(is_gateway).count() == 0,
        "no gateway by default"
    );
    for (scenario, name, tls) in [("gateway", "public", false), ("gateway-tls", "edge", true)] {
        let objs = objects(scenario);
        let sa = find(objs, "ServiceAccount", &format!("gateway-{name}"));
        assert_eq!(sa["automountServiceAccountToken"], false, "{scenario}");
        let deploy = find(objs, "Deployment", &format!("bulkhead-gateway-{name}"));
        let pod = &deploy["spec"]["template"]["spec"];
        assert_eq!(
            pod["serviceAccountName"],
            format!("gateway-{name}"),
            "{scenario}"
        );
        let args = args(deploy);
        assert_eq!(args[0], "gateway", "{scenario}: {args:?}");
        assert_eq!(flag(&args, "--gateway"), Some(name), "{scenario}");
        assert_eq!(flag(&args, "--attestation"), Some("k8s-jwt"), "{scenario}");
        assert_eq!(
            flag(&args, "--control"),
            Some(format!("https://bulkhead-control.{NAMESPACE}.svc:8443").as_str()),
            "{scenario}"
        );
        assert_eq!(flag(&args, "--tls-cert").is_some(), tls, "{scenario}");
        // The trust bundle only: the issuer's key never reaches the gateway.
        let trust = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "trust")
            .expect("trust volume");
        assert_eq!(
            trust["secret"]["items"],
            json!([{"key": "bundle.crt", "path": "bundle.crt"}]),
            "{scenario}"
        );
        let token = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "token")
            .expect("token volume");
        assert_eq!(
            token["projected"]["sources"][0]["serviceAccountToken"]["audience"], "bulkhead",
            "{scenario}"
        );
        let service = find(objs, "Service", &format!("bulkhead-gateway-{name}"));
        assert_eq!(
            service["spec"]["ports"][0]["targetPort"], "http",
            "{scenario}"
        );
    }
    let objs = objects("gateway-tls");
    let deploy = find(objs, "Deployment", "bulkhead-gateway-edge");
    assert_eq!(deploy["spec"]["replicas"], 3);
    let container = &deploy["spec"]["template"]["spec"]["containers"][0];
    assert!(container["image"].as_str().unwrap().ends_with(":edge-1"));
    assert!(args(deploy).contains(&"--request-timeout=30s"));
    let service = find(objs, "Service", "bulkhead-gateway-edge");
    assert_eq!(service["spec"]["type"], "ClusterIP");
    assert_eq!(service["spec"]["ports"][0]["port"], 443);
}
