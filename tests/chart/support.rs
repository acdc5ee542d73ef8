//! Support for `tests/tests/chart.rs`: runs `render_chart.py` (Helm 4's engine,
//! `helm lint --strict`, strict Kubernetes schemas) over every scenario at once,
//! reads the rendered objects, and checks the invariants every option must keep.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use super::access;

/// Kubernetes versions every object is validated against: the oldest the chart
/// supports, the oldest the brief asks for, and the newest the schemas ship.
const KUBE_VERSIONS: [&str; 3] = ["1.29", "1.30", "latest"];

// ---------------------------------------------------------------------------
// Running the tools
// ---------------------------------------------------------------------------

/// What the helper reported for all scenarios.
pub(crate) struct Rendered {
    /// Versions of Helm, helm-python-sdk and kubernetes-validate used.
    pub(crate) tools: Value,
    /// Chart.yaml, as Helm loaded it.
    pub(crate) chart: Value,
    /// Dotted paths of every leaf of the chart's default values.
    pub(crate) value_keys: Vec<String>,
    outcomes: BTreeMap<String, Outcome>,
}

/// One scenario: an error (bad values, failed template), or the objects with
/// whatever lint and schema validation found wrong with them.
pub(crate) struct Outcome {
    pub(crate) error: Option<String>,
    lint: Vec<String>,
    invalid: Vec<String>,
    pub(crate) objects: Vec<Value>,
}

impl Rendered {
    /// Renders every scenario (name, values) with one run of the helper.
    pub(crate) fn run(
        release: &str,
        namespace: &str,
        scenarios: impl IntoIterator<Item = (&'static str, Value)>,
    ) -> Self {
        let scenarios: Vec<Value> = scenarios
            .into_iter()
            .map(|(name, values)| json!({"name": name, "values": values}))
            .collect();
        let out = run_helper(&json!({
            "chart": chart_dir(),
            "release": release,
            "namespace": namespace,
            "kube_versions": KUBE_VERSIONS,
            "scenarios": scenarios,
        }));
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .expect("a list")
                .iter()
                .map(|s| s.as_str().expect("a string").to_owned())
                .collect()
        };
        let outcomes = out["results"]
            .as_object()
            .expect("results")
            .iter()
            .map(|(name, r)| {
                let outcome = Outcome {
                    error: r["error"].as_str().map(str::to_owned),
                    lint: strings(&r["lint"]),
                    invalid: strings(&r["invalid"]),
                    objects: r["objects"]
                        .as_array()
                        .expect("objects")
                        .iter()
                        .map(|o| o["object"].clone())
                        .collect(),
                };
                (name.clone(), outcome)
            })
            .collect();
        Rendered {
            tools: out["tools"].clone(),
            chart: out["chart"].clone(),
            value_keys: strings(&out["value_keys"]),
            outcomes,
        }
    }

    pub(crate) fn outcome(&self, scenario: &str) -> &Outcome {
        self.outcomes
            .get(scenario)
            .unwrap_or_else(|| panic!("no scenario {scenario}"))
    }

    /// A good scenario's objects, after checking it rendered, linted clean and
    /// validated against the strict schemas.
    pub(crate) fn objects(&self, scenario: &str) -> &[Value] {
        let outcome = self.outcome(scenario);
        if let Some(error) = &outcome.error {
            panic!("{scenario}: the chart did not render: {error}");
        }
        assert!(
            outcome.lint.is_empty(),
            "{scenario}: helm lint --strict:\n{}",
            outcome.lint.join("\n")
        );
        assert!(
            outcome.invalid.is_empty(),
            "{scenario}: objects fail strict Kubernetes schemas:\n{}",
            outcome.invalid.join("\n")
        );
        &outcome.objects
    }
}

/// The Python that has the tools: `BULKHEAD_CHART_PYTHON` (scripts/test sets
/// it), else the venv scripts/test makes under the target dir, else `python3`.
fn python() -> PathBuf {
    if let Some(path) = std::env::var_os("BULKHEAD_CHART_PYTHON") {
        return path.into();
    }
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("chart-venv/bin/python");
    if venv.exists() {
        venv
    } else {
        "python3".into()
    }
}

const INSTALL_HINT: &str = "run scripts/test (it installs them), or: \
    python3 -m venv target/tmp/chart-venv && \
    target/tmp/chart-venv/bin/pip install helm-python-sdk==0.2.2 kubernetes-validate==1.37.0";

/// Runs the helper; a missing Python or missing packages fail the test, loudly.
fn run_helper(request: &Value) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("chart/render_chart.py");
    let python = python();
    let mut child = Command::new(&python)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e}; the chart test needs Python with helm-python-sdk and \
                 kubernetes-validate: {INSTALL_HINT}",
                python.display()
            )
        });
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(request.to_string().as_bytes())
        .expect("write request");
    let output = child.wait_with_output().expect("helper");
    let stderr = String::from_utf8_lossy(&output.stderr);
    match output.status.code() {
        Some(0) => {}
        Some(3) => panic!(
            "the chart test's tools are missing for {}:\n{stderr}\n{INSTALL_HINT}",
            python.display()
        ),
        _ => panic!(
            "{} {} failed ({}):\n{stderr}",
            python.display(),
            script.display(),
            output.status
        ),
    }
    serde_json::from_slice(&output.stdout).expect("helper output is JSON")
}

pub(crate) fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/bulkhead")
        .canonicalize()
        .expect("charts/bulkhead")
}

// ---------------------------------------------------------------------------
// Invariants every option keeps
// ---------------------------------------------------------------------------

const CLUSTER_SCOPED: [&str; 3] = [
    "ClusterRoleBinding",
    "ClusterRole",
    "MutatingWebhookConfiguration",
];

/// What must hold whatever the values: unique, labelled, namespaced objects; no
/// Secret but the issuer given inline (the chart never generates keys); hardened
/// workloads; Services and budgets that select pods; least privilege; a webhook
/// that reaches the control plane, and whose caBundle the control plane may keep
/// exactly when it makes the certificate.
pub(crate) fn assert_invariants(scenario: &str, objs: &[Value], release: &str, namespace: &str) {
    let mut seen = BTreeSet::new();
    for obj in objs {
        let kind = obj["kind"].as_str().expect("kind");
        let id = format!("{kind}/{}", name_of(obj));
        assert!(seen.insert(id.clone()), "{scenario}: {id} rendered twice");
        assert_eq!(
            obj["metadata"]["labels"]["app.kubernetes.io/instance"], release,
            "{scenario}: {id} lacks the instance label"
        );
        if !CLUSTER_SCOPED.contains(&kind) {
            assert_eq!(
                obj["metadata"]["namespace"], namespace,
                "{scenario}: {id} namespace"
            );
        }
    }
    access::assert_only_the_issuer_secret(scenario, objs);
    for workload in workloads(objs) {
        assert_hardened(scenario, workload);
    }
    for service in of_kind(objs, "Service") {
        assert_selects_a_workload(scenario, objs, service, &service["spec"]["selector"]);
        assert_target_ports_exist(scenario, objs, service);
    }
    for pdb in of_kind(objs, "PodDisruptionBudget") {
        let selector = &pdb["spec"]["selector"]["matchLabels"];
        assert_selects_a_workload(scenario, objs, pdb, selector);
    }
    access::assert_least_privilege(scenario, objs);
    if let Some(mwc) = of_kind(objs, "MutatingWebhookConfiguration").first() {
        access::assert_webhook_reaches_the_control_plane(scenario, objs, mwc, namespace);
    }
    access::assert_ca_bundle_keeper_may_do_its_job(scenario, objs, namespace);
}

/// Non-root, read-only root, no escalation, no capabilities, RuntimeDefault
/// seccomp, resources and probes on every container; never sent to the webhook.
fn assert_hardened(scenario: &str, workload: &Value) {
    let id = format!("{scenario}: {}/{}", workload["kind"], name_of(workload));
    let template = &workload["spec"]["template"];
    assert_eq!(
        template["metadata"]["labels"]["bulkhead.dev/inject"], "disabled",
        "{id}"
    );
    let pod = &template["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{id}");
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
        "{id}"
    );
    for container in pod["containers"].as_array().expect("containers") {
        let sc = &container["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true, "{id}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{id}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{id}");
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{id}");
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{id}");
        let resources = &container["resources"];
        assert!(resources["requests"].is_object(), "{id}: requests");
        assert!(
            resources["limits"]["memory"].is_string(),
            "{id}: memory limit"
        );
        for probe in ["livenessProbe", "readinessProbe"] {
            let port = &container[probe]["httpGet"]["port"];
            assert!(!port.is_null(), "{id}: {probe}");
            container_port(container, port);
        }
    }
}

pub(crate) fn selects(selector: &Value, workload: &Value) -> bool {
    let labels = &workload["spec"]["template"]["metadata"]["labels"];
    let selector = selector.as_object().expect("selector");
    selector.iter().all(|(k, v)| labels[k] == *v)
}

/// A Service's or budget's selector must pick some workload's pods.
fn assert_selects_a_workload(scenario: &str, objs: &[Value], obj: &Value, selector: &Value) {
    assert!(
        workloads(objs).any(|w| selects(selector, w)),
        "{scenario}: {} {} selects no pods",
        obj["kind"],
        name_of(obj)
    );
}

/// Named target ports must be declared by the pods the Service selects.
fn assert_target_ports_exist(scenario: &str, objs: &[Value], service: &Value) {
    let selector = &service["spec"]["selector"];
    let workload = workloads(objs)
        .find(|w| selects(selector, w))
        .expect("selected workload");
    let container = &workload["spec"]["template"]["spec"]["containers"][0];
    for port in service["spec"]["ports"].as_array().expect("ports") {
        assert!(
            container_port_opt(container, &port["targetPort"]).is_some(),
            "{scenario}: Service {} port {} targets {}, which the pod does not declare",
            name_of(service),
            port["name"],
            port["targetPort"]
        );
    }
}

/// Checks a bundled etcd's `--initial-cluster` and advertised peer URLs;
/// returns the members' DNS names in order.
pub(crate) fn assert_etcd_cluster(
    objs: &[Value],
    sts_name: &str,
    members: usize,
    scheme: &str,
    namespace: &str,
) -> Vec<String> {
    let sts = find(objs, "StatefulSet", sts_name);
    assert_eq!(sts["spec"]["replicas"], members);
    let service = sts["spec"]["serviceName"].as_str().expect("serviceName");
    let args = args(sts);
    let initial = flag(&args, "--initial-cluster").expect("--initial-cluster");
    let entries: Vec<(&str, &str)> = initial
        .split(',')
        .map(|e| e.split_once('=').expect("name=url"))
        .collect();
    assert_eq!(entries.len(), members, "{initial}");

    let advertised = flag(&args, "--initial-advertise-peer-urls").expect("advertised");
    let mut hosts = Vec::new();
    for (i, (name, url)) in entries.iter().enumerate() {
        let pod = format!("{sts_name}-{i}");
        assert_eq!(*name, pod, "member names are the pod names");
        let host = format!("{pod}.{service}.{namespace}.svc.cluster.local");
        assert_eq!(*url, format!("{scheme}://{host}:2380"));
        // What each member advertises, $(POD_NAME) expanded, is its own entry.
        assert_eq!(advertised.replace("$(POD_NAME)", &pod), *url);
        hosts.push(host);
    }
    assert_eq!(flag(&args, "--name"), Some("$(POD_NAME)"));
    assert_eq!(flag(&args, "--initial-cluster-state"), Some("new"));
    hosts
}

/// A file flag's path must lie in a volume mount of the named Secret or ConfigMap.
pub(crate) fn assert_file_from(workload: &Value, path: &str, source: &str, name: &str) {
    let pod = &workload["spec"]["template"]["spec"];
    let mount = pod["containers"][0]["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| path.starts_with(&format!("{}/", m["mountPath"].as_str().unwrap_or("?"))))
        .unwrap_or_else(|| panic!("{path} is in no volume mount"));
    let volume = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("mounted volume");
    let key = if source == "secret" {
        "secretName"
    } else {
        "name"
    };
    assert_eq!(volume[source][key], name, "{path} comes from {volume}");
}

// ---------------------------------------------------------------------------
// Reading objects and files
// ---------------------------------------------------------------------------

pub(crate) fn name_of(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or("?")
}

pub(crate) fn of_kind<'a>(objs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| o["kind"] == kind).collect()
}

pub(crate) fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && name_of(o) == name)
        .unwrap_or_else(|| {
            let present: Vec<String> = objs
                .iter()
                .map(|o| format!("{}/{}", o["kind"], name_of(o)))
                .collect();
            panic!("no {kind}/{name} among {present:?}")
        })
}

pub(crate) fn workloads(objs: &[Value]) -> impl Iterator<Item = &Value> {
    objs.iter()
        .filter(|o| o["kind"] == "Deployment" || o["kind"] == "StatefulSet")
}

/// The first container's arguments.
pub(crate) fn args(workload: &Value) -> Vec<&str> {
    workload["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string arg"))
        .collect()
}

/// The value of `--name=value` in an argument list.
pub(crate) fn flag<'a>(args: &[&'a str], name: &str) -> Option<&'a str> {
    args.iter()
        .find_map(|a| a.strip_prefix(name)?.strip_prefix('='))
}

fn container_port_opt(container: &Value, port: &Value) -> Option<i64> {
    if let Some(n) = port.as_i64() {
        return Some(n);
    }
    container["ports"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == *port)
        .and_then(|p| p["containerPort"].as_i64())
}

/// A probe's or Service's port (number or port name) as a container port number.
pub(crate) fn container_port(container: &Value, port: &Value) -> i64 {
    container_port_opt(container, port)
        .unwrap_or_else(|| panic!("container {} declares no port {port}", container["name"]))
}

/// Dotted paths of the keys in a values.yaml that have a `#` comment line right above.
pub(crate) fn commented_keys(values: &str) -> BTreeSet<String> {
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut commented = BTreeSet::new();
    let mut previous_is_comment = false;
    for line in values.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if trimmed.starts_with('#') {
            previous_is_comment = true;
            continue;
        }
        let key = trimmed
            .split_once(':')
            .map(|(k, _)| k)
            .filter(|k| !k.is_empty() && !k.starts_with('-') && !k.contains(' '));
        if let Some(key) = key {
            stack.retain(|(i, _)| *i < indent);
            stack.push((indent, key.to_owned()));
            if previous_is_comment {
                let path: Vec<&str> = stack.iter().map(|(_, k)| k.as_str()).collect();
                commented.insert(path.join("."));
            }
        }
        previous_is_comment = false;
    }
    commented
}

/// `overlay` merged into `base`, maps recursively (like `helm -f base -f overlay`).
pub(crate) fn merged(mut base: Value, overlay: Value) -> Value {
    match (&mut base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                let slot = b.remove(&k).unwrap_or(Value::Null);
                b.insert(k, if slot.is_object() { merged(slot, v) } else { v });
            }
            base
        }
        (_, overlay) => overlay,
    }
}

/// Standard base64 with padding (the tests crate has no base64 dependency).
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
