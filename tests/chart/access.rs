//! Invariants of what the chart lets the control plane do and reach, for
//! `tests/tests/chart.rs`: least-privilege RBAC, the webhook aimed at the
//! control plane, the caBundle kept exactly when the control plane makes the
//! webhook's certificate, and no Secret but the issuer given inline.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::support::{args, container_port, find, flag, name_of, of_kind, selects, workloads};

/// Least privilege: no Role; the chart's own ClusterRoles grant exactly `get`
/// on nodes (node topology), or exactly `get` and `patch` on the rendered
/// MutatingWebhookConfiguration by name (its caBundle) — one role each, no
/// other rule, no other verb, no other object; bindings only to those or to
/// the built-in issuer discovery.
pub(crate) fn assert_least_privilege(scenario: &str, objs: &[Value]) {
    assert!(
        of_kind(objs, "Role").is_empty(),
        "{scenario}: the chart defines a Role"
    );
    let node_reader = json!([{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]);
    let webhook_keepers: Vec<Value> = of_kind(objs, "MutatingWebhookConfiguration")
        .iter()
        .map(|mwc| {
            json!([{
                "apiGroups": ["admissionregistration.k8s.io"],
                "resources": ["mutatingwebhookconfigurations"],
                "resourceNames": [name_of(mwc)],
                "verbs": ["get", "patch"],
            }])
        })
        .collect();
    let mut own = Vec::new();
    let mut grants = BTreeSet::new();
    for role in of_kind(objs, "ClusterRole") {
        let rules = &role["rules"];
        assert!(
            *rules == node_reader || webhook_keepers.contains(rules),
            "{scenario}: ClusterRole {} grants more than get on nodes or get and patch on \
             the chart's own webhook configuration: {rules}",
            name_of(role)
        );
        assert!(
            grants.insert(rules.to_string()),
            "{scenario}: two roles grant {rules}"
        );
        own.push(name_of(role));
    }
    for kind in ["RoleBinding", "ClusterRoleBinding"] {
        for binding in of_kind(objs, kind) {
            let role = &binding["roleRef"];
            let allowed = role["kind"] == "ClusterRole"
                && role["apiGroup"] == "rbac.authorization.k8s.io"
                && (role["name"] == "system:service-account-issuer-discovery"
                    || own.iter().any(|o| role["name"] == *o));
            assert!(
                allowed,
                "{scenario}: {kind} {} binds {role}",
                name_of(binding)
            );
        }
    }
}

/// Every webhook entry: the shape the API server requires of a side-effect-free
/// v1 webhook, fail-closed, never selecting the release namespace, aimed at the
/// control plane's Service port that reaches container port 9443.
pub(crate) fn assert_webhook_reaches_the_control_plane(
    scenario: &str,
    objs: &[Value],
    mwc: &Value,
    namespace: &str,
) {
    for hook in mwc["webhooks"].as_array().expect("webhooks") {
        let id = format!("{scenario}: webhook {}", hook["name"]);
        assert_eq!(hook["sideEffects"], "None", "{id}");
        assert_eq!(hook["admissionReviewVersions"], json!(["v1"]), "{id}");
        assert_eq!(hook["failurePolicy"], "Fail", "{id}");
        let timeout = hook["timeoutSeconds"].as_i64().expect("timeoutSeconds");
        assert!((1..=30).contains(&timeout), "{id}: timeout {timeout}");
        let excluded = hook["namespaceSelector"]["matchExpressions"]
            .as_array()
            .expect("matchExpressions")
            .iter()
            .find(|e| e["key"] == "kubernetes.io/metadata.name")
            .expect("namespace exclusions");
        assert_eq!(excluded["operator"], "NotIn", "{id}");
        assert!(
            excluded["values"]
                .as_array()
                .expect("values")
                .contains(&json!(namespace)),
            "{id}: the control plane must not wait on its own webhook"
        );

        let target = &hook["clientConfig"]["service"];
        assert_eq!(target["namespace"], namespace, "{id}");
        assert_eq!(target["path"], "/inject", "{id}");
        let service = find(objs, "Service", target["name"].as_str().expect("name"));
        let port = service["spec"]["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .find(|p| p["port"] == target["port"])
            .unwrap_or_else(|| panic!("{id}: Service has no port {}", target["port"]));
        let deploy = workloads(objs)
            .find(|w| w["kind"] == "Deployment" && selects(&service["spec"]["selector"], w))
            .expect("control plane");
        let container = &deploy["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container_port(container, &port["targetPort"]), 9443, "{id}");
    }
}

/// A Secret only for an issuer given inline: the one the control plane mounts
/// as its issuer, holding the three files `bulkheadctl ca init` wrote and
/// nothing else.
pub(crate) fn assert_only_the_issuer_secret(scenario: &str, objs: &[Value]) {
    let secrets = of_kind(objs, "Secret");
    assert!(secrets.len() <= 1, "{scenario}: {} Secrets", secrets.len());
    let Some(secret) = secrets.first() else {
        return;
    };
    let deploy = find(objs, "Deployment", &control_name(objs));
    let issuer_volume = deploy["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "issuer")
        .expect("issuer volume");
    assert_eq!(
        issuer_volume["secret"]["secretName"],
        name_of(secret),
        "{scenario}: the only Secret is the issuer's"
    );
    let mut keys: Vec<&String> = secret["data"].as_object().expect("data").keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        ["bundle.crt", "issuer.crt", "issuer.key"],
        "{scenario}: issuer Secret keys"
    );
}

/// The control plane's Deployment (the gateway's may be beside it).
fn control_name(objs: &[Value]) -> String {
    let deployments = of_kind(objs, "Deployment");
    let control = deployments
        .iter()
        .find(|d| d["metadata"]["labels"]["app.kubernetes.io/component"] == "control-plane")
        .expect("the control plane's Deployment");
    name_of(control).to_owned()
}

/// `--webhook-configuration` names the rendered webhook configuration, and the
/// control plane's ServiceAccount is bound to a role for exactly it, with the
/// API server and a token to reach it; without the flag there is no such role.
pub(crate) fn assert_ca_bundle_keeper_may_do_its_job(
    scenario: &str,
    objs: &[Value],
    namespace: &str,
) {
    let deploy = find(objs, "Deployment", &control_name(objs));
    let pod = &deploy["spec"]["template"]["spec"];
    let kept = flag(&args(deploy), "--webhook-configuration").map(str::to_owned);
    let roles: Vec<&Value> = of_kind(objs, "ClusterRole")
        .into_iter()
        .filter(|r| r["rules"][0]["resources"] == json!(["mutatingwebhookconfigurations"]))
        .collect();
    let Some(kept) = kept else {
        assert!(roles.is_empty(), "{scenario}: a webhook role nobody uses");
        return;
    };
    find(objs, "MutatingWebhookConfiguration", &kept);
    assert_eq!(roles.len(), 1, "{scenario}: webhook roles");
    assert_eq!(roles[0]["rules"][0]["resourceNames"], json!([kept]));
    let sa = pod["serviceAccountName"]
        .as_str()
        .expect("serviceAccountName");
    let bound = of_kind(objs, "ClusterRoleBinding").into_iter().any(|b| {
        b["roleRef"]["name"] == roles[0]["metadata"]["name"]
            && b["subjects"]
                == json!([{"kind": "ServiceAccount", "name": sa, "namespace": namespace}])
    });
    assert!(bound, "{scenario}: the webhook role is not bound to {sa}");
    assert_eq!(pod["automountServiceAccountToken"], true, "{scenario}");
    let env = pod["containers"][0]["env"].as_array().expect("env");
    assert!(
        env.iter().any(|e| e["name"] == "BULKHEAD_K8S_API"),
        "{scenario}: no API server for --webhook-configuration"
    );
}
