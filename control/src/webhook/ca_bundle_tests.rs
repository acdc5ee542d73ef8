//! The `caBundle` patch decision, on webhook configurations shaped as the
//! API server returns them.

use super::*;

fn root(name: &str) -> CertificateDer<'static> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().der().clone()
}

fn pem_b64(roots: &[&CertificateDer<'_>]) -> String {
    let pem: String = roots
        .iter()
        .map(|r| crate::ca::pem_block("CERTIFICATE", r))
        .collect();
    STANDARD.encode(pem)
}

/// The chart's configuration: two webhooks, with the given caBundles.
fn config(bundles: [Option<&str>; 2]) -> Value {
    let hook = |name: &str, bundle: Option<&str>| {
        let mut client = json!({"service": {"name": "bulkhead-control", "namespace": "bulkhead", "path": "/inject", "port": 443}});
        if let Some(b) = bundle {
            client["caBundle"] = json!(b);
        }
        json!({"name": name, "clientConfig": client, "sideEffects": "None", "admissionReviewVersions": ["v1"]})
    };
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "bulkhead-bulkhead-injector", "resourceVersion": "4711"},
        "webhooks": [
            hook("namespace.inject.bulkhead.dev", bundles[0]),
            hook("pod.inject.bulkhead.dev", bundles[1]),
        ],
    })
}

#[test]
fn blank_ca_bundles_are_set_after_a_test_of_the_resource_version() {
    let r = root("root-a");
    let want = WantedBundle::new(std::slice::from_ref(&r));
    let plan = plan(&config([None, Some("")]), &want).unwrap();
    assert_eq!(
        plan.stale,
        ["namespace.inject.bulkhead.dev", "pod.inject.bulkhead.dev"]
    );
    assert_eq!(
        plan.patch.unwrap(),
        json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": "4711"},
            {"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": want.base64()},
            {"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": want.base64()},
        ])
    );
    // What is written is base64 of the roots' PEM.
    assert_eq!(want.base64(), pem_b64(&[&r]));
}

#[test]
fn nothing_is_patched_when_every_ca_bundle_holds_the_roots() {
    let (a, b) = (root("root-a"), root("root-b"));
    let want = WantedBundle::new(&[a.clone(), b.clone()]);
    let same = pem_b64(&[&a, &b]);
    assert_eq!(
        plan(&config([Some(&same), Some(&same)]), &want).unwrap(),
        Plan::current()
    );
    // The same roots in another order or PEM layout (what `helm
    // --set-file` of a hand-made bundle.crt renders) are the same bundle:
    // replicas and the chart agree instead of patching back and forth.
    let reordered = pem_b64(&[&b, &a]);
    let mut pem = String::from_utf8(STANDARD.decode(&same).unwrap()).unwrap();
    pem.insert_str(0, "# roots of the mesh\n");
    pem.push('\n');
    let relaid = STANDARD.encode(pem);
    assert_eq!(
        plan(&config([Some(&reordered), Some(&relaid)]), &want)
            .unwrap()
            .patch,
        None
    );
}

#[test]
fn only_the_webhooks_that_differ_are_patched() {
    let (a, b) = (root("root-a"), root("root-b"));
    let want = WantedBundle::new(&[a.clone(), b.clone()]);
    let current = pem_b64(&[&a, &b]);
    for wrong in [
        pem_b64(&[&a]),       // a root missing (mid-rotation bundle)
        pem_b64(&[&a, &a]),   // a duplicate is not the bundle
        "not base64!".into(), // garbage
        STANDARD.encode("no PEM here"),
    ] {
        let plan = plan(&config([Some(&current), Some(&wrong)]), &want).unwrap();
        assert_eq!(plan.stale, ["pod.inject.bulkhead.dev"], "{wrong}");
        let ops = plan.patch.unwrap();
        assert_eq!(ops.as_array().unwrap().len(), 2, "test + one add");
        assert_eq!(ops[1]["path"], "/webhooks/1/clientConfig/caBundle");
    }
}

#[test]
fn a_patched_configuration_needs_no_further_patch() {
    let want = WantedBundle::new(&[root("root-a")]);
    let mut object = config([None, None]);
    let patch = plan(&object, &want).unwrap().patch.unwrap();
    let patch: json_patch::Patch = serde_json::from_value(patch).unwrap();
    json_patch::patch(&mut object, &patch.0).unwrap();
    assert_eq!(plan(&object, &want).unwrap(), Plan::current());
}

#[test]
fn no_resource_version_no_test_and_no_webhooks_nothing_to_do() {
    let want = WantedBundle::new(&[root("root-a")]);
    let mut object = config([None, None]);
    object["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    let ops = plan(&object, &want).unwrap().patch.unwrap();
    assert!(ops.as_array().unwrap().iter().all(|op| op["op"] == "add"));

    for empty in [
        json!({"kind": "MutatingWebhookConfiguration", "metadata": {"name": "x"}}),
        json!({"kind": "MutatingWebhookConfiguration", "webhooks": null}),
        json!({"kind": "MutatingWebhookConfiguration", "webhooks": []}),
    ] {
        assert_eq!(plan(&empty, &want).unwrap(), Plan::current(), "{empty}");
    }
}

#[test]
fn malformed_objects_are_clear_errors_never_panics() {
    let want = WantedBundle::new(&[root("root-a")]);
    let cases = [
        (json!([1, 2]), "(object)"),
        (json!("text"), "(object)"),
        (json!({"kind": "Pod", "webhooks": []}), "kind"),
        (json!({"webhooks": {"name": "x"}}), "webhooks"),
        (
            json!({"metadata": {"resourceVersion": 12}, "webhooks": []}),
            "metadata.resourceVersion",
        ),
        (json!({"webhooks": [7]}), "webhooks[0].name"),
        (
            json!({"webhooks": [{"clientConfig": {}}]}),
            "webhooks[0].name",
        ),
        (
            json!({"webhooks": [{"name": "a"}]}),
            "webhooks[0].clientConfig",
        ),
        (
            json!({"webhooks": [{"name": "a", "clientConfig": "x"}]}),
            "webhooks[0].clientConfig",
        ),
        (
            json!({"webhooks": [{"name": "a", "clientConfig": {"caBundle": 5}}]}),
            "webhooks[0].clientConfig.caBundle",
        ),
    ];
    for (object, field) in cases {
        let err = plan(&object, &want).unwrap_err();
        assert_eq!(err.field, field, "{object}");
        assert!(
            err.to_string()
                .starts_with("not a usable MutatingWebhookConfiguration"),
            "{err}"
        );
    }
}
