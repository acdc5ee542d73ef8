//! The install's inputs and what the control plane may do with them, for
//! `tests/tests/chart.rs`: the RBAC of the default install, the two-command
//! install (an inline issuer), the API server for the webhook alone, and
//! bringing one's own webhook certificate.

use serde_json::{Value, json};

use super::scenarios::inputs;
use super::support::{args, assert_file_from, base64, find, flag, name_of, of_kind};
use super::{NAMESPACE, WEBHOOK_CONFIGURATION, objects};

#[test]
fn defaults_grant_issuer_discovery_nodes_and_their_own_webhook_configuration_only() {
    let objs = objects("defaults");
    let deploy = find(objs, "Deployment", "bulkhead-control");
    let pod = &deploy["spec"]["template"]["spec"];
    let sa = pod["serviceAccountName"].as_str().unwrap();
    find(objs, "ServiceAccount", sa);
    assert_eq!(
        pod["automountServiceAccountToken"], true,
        "needed to read the JWKS"
    );
    let bindings = of_kind(objs, "ClusterRoleBinding");
    let roles: Vec<&str> = bindings
        .iter()
        .map(|b| b["roleRef"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(bindings.len(), 3, "{roles:?}");
    assert!(roles.contains(&"system:service-account-issuer-discovery"));
    for binding in &bindings {
        assert_eq!(
            binding["subjects"],
            json!([{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}])
        );
    }
    // The chart's roles of its own: `get` on nodes; `get` and `patch` on its
    // own webhook configuration, by name. Nothing else.
    let own = of_kind(objs, "ClusterRole");
    assert_eq!(own.len(), 2);
    for role in &own {
        assert!(roles.contains(&name_of(role)));
    }
    let rules: Vec<&Value> = own.iter().map(|r| &r["rules"]).collect();
    assert_eq!(
        rules,
        [
            &json!([{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]),
            &json!([{
                "apiGroups": ["admissionregistration.k8s.io"],
                "resources": ["mutatingwebhookconfigurations"],
                "resourceNames": [WEBHOOK_CONFIGURATION],
                "verbs": ["get", "patch"],
            }]),
        ]
    );
    let env = &pod["containers"][0]["env"];
    assert!(
        env.as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "BULKHEAD_K8S_API"
                && e["value"] == "https://kubernetes.default.svc"),
        "{env}"
    );
}

#[test]
fn an_inline_issuer_is_the_whole_input() {
    let objs = objects("inline-issuer");
    let secret = find(objs, "Secret", "bulkhead-issuer");
    for (key, given) in [
        ("issuer.crt", &inputs().issuer_cert),
        ("issuer.key", &inputs().issuer_key),
        ("bundle.crt", &inputs().trust_bundle),
    ] {
        assert_eq!(
            secret["data"][key].as_str().unwrap(),
            base64(given.as_bytes()),
            "{key} as given"
        );
    }
    let deploy = find(objs, "Deployment", "bulkhead-control");
    let args = args(deploy);
    for file_flag in ["--issuer-cert", "--issuer-key", "--trust-bundle"] {
        assert_file_from(
            deploy,
            flag(&args, file_flag).unwrap(),
            "secret",
            "bulkhead-issuer",
        );
    }
    // A changed issuer or bundle rolls the pods: they read it at start-up.
    let annotations = &deploy["spec"]["template"]["metadata"]["annotations"];
    assert!(
        annotations["checksum/issuer"]
            .as_str()
            .is_some_and(|c| c.len() == 64),
        "{annotations}"
    );
    // The caBundle is rendered from the bundle given: the API server can
    // verify the control plane's certificate from the first moment, and the
    // control plane finds nothing to patch.
    let mwc = find(objs, "MutatingWebhookConfiguration", WEBHOOK_CONFIGURATION);
    for hook in mwc["webhooks"].as_array().unwrap() {
        assert_eq!(
            hook["clientConfig"]["caBundle"].as_str().unwrap(),
            base64(inputs().trust_bundle.as_bytes())
        );
    }
    assert_eq!(
        flag(&args, "--webhook-configuration"),
        Some(WEBHOOK_CONFIGURATION)
    );
}

#[test]
fn without_node_topology_the_api_server_serves_the_webhook_only() {
    let objs = objects("no-node-topology");
    let deploy = find(objs, "Deployment", "bulkhead-control");
    let args = args(deploy);
    assert!(args.contains(&"--node-topology=false"), "{args:?}");
    let own = of_kind(objs, "ClusterRole");
    assert_eq!(own.len(), 1);
    assert_eq!(
        own[0]["rules"][0]["resources"],
        json!(["mutatingwebhookconfigurations"])
    );
    let defaults =
        super::support::args(find(objects("defaults"), "Deployment", "bulkhead-control"));
    assert!(!defaults.iter().any(|a| a.starts_with("--node-topology")));
}

#[test]
fn an_own_webhook_certificate_is_mounted_and_its_ca_rendered_with_no_webhook_rbac() {
    let objs = objects("own-webhook-certificate");
    let deploy = find(objs, "Deployment", "bulkhead-control");
    let args = args(deploy);
    for file_flag in ["--webhook-cert", "--webhook-key"] {
        assert_file_from(
            deploy,
            flag(&args, file_flag).unwrap(),
            "secret",
            "bulkhead-webhook-tls",
        );
    }
    assert!(flag(&args, "--webhook-configuration").is_none());
    assert!(flag(&args, "--webhook-dns-names").is_none());
    let mwc = &of_kind(objs, "MutatingWebhookConfiguration")[0];
    for hook in mwc["webhooks"].as_array().unwrap() {
        assert_eq!(
            hook["clientConfig"]["caBundle"].as_str().unwrap(),
            base64(format!("{}\n", inputs().webhook_ca.trim()).as_bytes()),
            "caBundle is the base64 of the given PEM"
        );
    }
    assert!(
        of_kind(objs, "ClusterRole")
            .iter()
            .all(|r| r["rules"][0]["resources"] == json!(["nodes"])),
        "no webhook role when the caBundle is not the control plane's"
    );
}
