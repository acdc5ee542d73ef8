//! `bulkheadctl inject` on manifests, as a user runs it: the sidecar is
//! added to pod templates once, and what cannot be injected is refused by
//! name. Build the binaries first: `cargo build --workspace --bins`.

use std::process::{Command, Stdio};

use bulkhead_tests::admission::*;
use k8s_openapi::api::apps::v1::Deployment;
use serde_json::Value;

// ---------------------------------------------------------------------------
// bulkheadctl inject
// ---------------------------------------------------------------------------

const MANIFEST: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: cart
  namespace: shop
spec:
  replicas: 2
  selector:
    matchLabels: {app: cart}
  template:
    metadata:
      labels:
        app: cart
        app.kubernetes.io/name: cart
        app.kubernetes.io/version: "2.0.1"
    spec:
      serviceAccountName: cart
      initContainers:
      - name: migrate
        image: shop/cart:2.0.1
        args: [migrate]
      containers:
      - name: cart
        image: shop/cart:2.0.1
        ports:
        - {name: grpc, containerPort: 9090}
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  selector: {app: cart}
  ports: [{port: 9090, targetPort: grpc}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: report, namespace: shop}
spec:
  schedule: "0 * * * *"
  jobTemplate:
    spec:
      template:
        metadata:
          annotations: {bulkhead.dev/inject: disabled}
        spec:
          restartPolicy: OnFailure
          containers: [{name: report, image: shop/report:1}]
"#;

fn ctl_inject(input: &str, extra: &[&str]) -> (String, String) {
    let mut child = Command::new(bulkhead_tests::control::bin("bulkheadctl"))
        .args(["inject", "-f", "-"])
        .args(extra)
        .env_remove("BULKHEAD_CONTROL")
        .env("HOME", std::env::temp_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run bulkheadctl");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "bulkheadctl inject failed: {stderr}");
    (stdout, stderr)
}

#[test]
fn bulkheadctl_inject_adds_the_sidecar_to_pod_templates_once() {
    let (yaml, notes) = ctl_inject(
        MANIFEST,
        &[
            "--proxy-control",
            CONTROL_URL,
            "--proxy-image",
            "registry.test/p:1",
        ],
    );
    assert!(notes.contains("deployment/cart injected"), "{notes}");
    assert!(notes.contains("cronjob/report left alone"), "{notes}");
    let docs: Vec<Value> = serde_saphyr::from_multiple(&yaml).expect("YAML out");
    let input: Vec<Value> = serde_saphyr::from_multiple(MANIFEST).unwrap();
    assert_eq!(docs.len(), 3);
    // Other kinds and opted-out templates pass through unchanged.
    assert_eq!(docs[1], input[1]);
    assert_eq!(docs[2], input[2]);

    let deployment: Deployment = serde_json::from_value(docs[0].clone()).expect("a Deployment");
    let template = deployment.spec.unwrap().template;
    assert_eq!(
        template.metadata.unwrap().annotations.unwrap()["bulkhead.dev/injected"],
        "true"
    );
    let spec = template.spec.unwrap();
    let inits = spec.init_containers.as_deref().unwrap();
    let names: Vec<&str> = inits.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["bulkhead-init", "bulkhead-proxy", "migrate"]);
    let proxy = &inits[1];
    assert_eq!(proxy.image.as_deref(), Some("registry.test/p:1"));
    assert_eq!(inits[0].image.as_deref(), Some("registry.test/p:1"));
    assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
    assert_eq!(flag(proxy, "--control"), Some(CONTROL_URL));
    assert_eq!(value(proxy, "BULKHEAD_SERVICE"), "cart");
    assert_eq!(value(proxy, "BULKHEAD_VERSION"), "2.0.1");
    assert_eq!(flags(proxy, "--app"), ["9090=127.0.0.1:9090"]);
    assert_eq!(value(proxy, "BULKHEAD_APP_PROTOCOL"), "grpc");
    assert_eq!(
        field_ref(proxy, "BULKHEAD_SERVICE_ACCOUNT"),
        "spec.serviceAccountName"
    );
    let volumes: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(
        volumes,
        [
            "bulkhead-token",
            "bulkhead-trust-bundle",
            "bulkhead-xtables-lock",
            "bulkhead-state"
        ]
    );

    // Injecting the output again changes nothing.
    let (again, notes) = ctl_inject(&yaml, &[]);
    assert_eq!(again, yaml);
    assert!(
        notes.contains("deployment/cart left alone: already-injected"),
        "{notes}"
    );
}

#[test]
fn bulkheadctl_inject_refuses_what_it_cannot_inject() {
    let manifest = "apiVersion: v1\nkind: Pod\nmetadata: {name: x, labels: {app: Bad_Name}}\nspec: {containers: [{name: c}]}\n";
    let out = Command::new(bulkhead_tests::control::bin("bulkheadctl"))
        .args(["inject", "-f", "-"])
        .env("HOME", std::env::temp_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(manifest.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "nothing half-written to stdout");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("document 1") && stderr.contains("pod/x") && stderr.contains("Bad_Name"),
        "{stderr}"
    );
}

#[test]
fn bulkheadctl_inject_writes_the_trust_bundle_inline_when_given() {
    let ca = bulkhead_tests::control::TestCa::init("cluster.local");
    let bundle = ca.file("bundle.crt");
    let (yaml, _) = ctl_inject(MANIFEST, &["--trust-bundle", &bundle.display().to_string()]);
    let docs: Vec<Value> = serde_saphyr::from_multiple(&yaml).expect("YAML out");
    let deployment: Deployment = serde_json::from_value(docs[0].clone()).expect("a Deployment");
    let spec = deployment.spec.unwrap().template.spec.unwrap();
    let proxy = &spec.init_containers.as_deref().unwrap()[1];
    let pem = std::fs::read_to_string(&bundle).unwrap();
    assert_eq!(value(proxy, "BULKHEAD_TRUST_BUNDLE_PEM"), pem);
    // No ConfigMap to create in the pod's namespace.
    assert!(
        spec.volumes
            .iter()
            .flatten()
            .all(|v| v.name != "bulkhead-trust-bundle"),
        "{:?}",
        spec.volumes
    );

    // Something that is not a bundle is refused, naming the flag.
    let out = std::process::Command::new(bulkhead_tests::control::bin("bulkheadctl"))
        .args(["inject", "-f", "-", "--trust-bundle", "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run bulkheadctl");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--trust-bundle"),
        "{out:?}"
    );
}
