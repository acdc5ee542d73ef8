//! The contract between the injector and the sidecar, checked against the
//! real `bulkhead-proxy` binary: the containers the webhook adds run
//! commands the binary accepts, every `BULKHEAD_*` name they set is one the
//! binary reads, and once the downward API has filled in the pod's values
//! the configuration the binary reports (`run --check-config`) is the one
//! the pod needs.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::collections::BTreeSet;
use std::process::{Command, Output};

use bulkhead_control::webhook::{Action, Injector, InjectorSettings};
use bulkhead_tests::control::bin;
use serde_json::{Value, json};

const PROXY_CONTAINER: &str = "bulkhead-proxy";
const INIT_CONTAINER: &str = "bulkhead-init";

fn pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web-1",
            "labels": {"app.kubernetes.io/name": "web", "app.kubernetes.io/version": "2.0.1"},
            "annotations": {"bulkhead.dev/skip-inbound-ports": "8081"}
        },
        "spec": {
            "containers": [{"name": "web", "image": "web:2", "ports": [{"containerPort": 8080}]}],
        }
    })
}

/// The pod as the API server stores it once the injector's patch applied.
fn injected(settings: InjectorSettings, pod: &Value) -> Value {
    let outcome = Injector::new(settings)
        .expect("settings")
        .plan(pod, &[], None)
        .expect("plan");
    let Action::Inject(patch) = outcome.action else {
        panic!("expected a patch, got {:?}", outcome.action);
    };
    let mut doc = pod.clone();
    json_patch::patch(&mut doc, &patch.0).expect("patch applies");
    doc
}

fn container<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["spec"]["initContainers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no init container {name}: {doc:#}"))
}

/// What the downward API puts in a `fieldRef` for this pod.
fn downward(path: &str) -> &'static str {
    match path {
        "metadata.name" => "web-1-abcde",
        "metadata.namespace" => "shop",
        "spec.nodeName" => "node-1",
        "spec.serviceAccountName" => "web",
        "status.podIP" => "198.18.0.7",
        other => panic!("unexpected fieldRef {other}"),
    }
}

/// Runs a container's command and args with its env (downward values
/// filled in) and `extra` arguments, with nothing else from this process's
/// environment, so that only what the pod would see counts.
fn run_container(c: &Value, extra: &[&str]) -> Output {
    let command = c["command"].as_array().expect("command");
    assert_eq!(
        command[0], "bulkhead-proxy",
        "the image's entrypoint is the proxy binary"
    );
    let mut cmd = Command::new(bin("bulkhead-proxy"));
    cmd.env_clear();
    for arg in command[1..]
        .iter()
        .chain(c["args"].as_array().into_iter().flatten())
    {
        cmd.arg(arg.as_str().expect("string argument"));
    }
    cmd.args(extra);
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().expect("env name");
        let value = match e["value"].as_str() {
            Some(v) => v,
            None => downward(
                e["valueFrom"]["fieldRef"]["fieldPath"]
                    .as_str()
                    .expect("fieldRef"),
            ),
        };
        cmd.env(name, value);
    }
    cmd.output().expect("run bulkhead-proxy")
}

/// The `BULKHEAD_*` names a subcommand reads, from its own `--help`.
fn env_names(subcommand: &str) -> BTreeSet<String> {
    let out = Command::new(bin("bulkhead-proxy"))
        .args([subcommand, "--help"])
        .output()
        .expect("bulkhead-proxy --help");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split(['=', ']']).next())
        .map(str::to_owned)
        .collect()
}

fn assert_env_is_read(c: &Value, subcommand: &str) {
    let known = env_names(subcommand);
    assert!(
        known.contains("BULKHEAD_SERVICE") || subcommand != "run",
        "{known:?}"
    );
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().expect("env name");
        // For logs and humans; the proxy does not read it.
        if name == "POD_NAME" {
            continue;
        }
        assert!(
            known.contains(name),
            "bulkhead-proxy {subcommand} reads no {name} (it reads {known:?})"
        );
    }
}

fn stdout_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "exit {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn the_injected_proxy_runs_with_the_pods_identity_and_addresses() {
    let settings = InjectorSettings {
        redirect_dns: true,
        ..InjectorSettings::default()
    };
    let doc = injected(settings, &pod());
    let proxy = container(&doc, PROXY_CONTAINER);
    assert_env_is_read(proxy, "run");
    let config = stdout_json(&run_container(proxy, &["--check-config"]));
    for (field, want) in [
        ("service", json!("web")),
        ("version", json!("2.0.1")),
        ("namespace", json!("shop")),
        ("serviceAccount", json!("web")),
        ("attestation", json!("k8s-jwt")),
        ("advertise", json!("198.18.0.7")),
        ("app", json!(["8080=127.0.0.1:8080"])),
        ("admin", json!("0.0.0.0:4191")),
        ("dns", json!(["127.0.0.1:4153", "[::1]:4153"])),
        (
            "locality",
            json!({"node": "node-1", "zone": "", "region": ""}),
        ),
    ] {
        assert_eq!(config[field], want, "{field} in {config:#}");
    }
    assert_eq!(
        config["outbound"].as_array().map(Vec::len),
        Some(2),
        "{config:#}"
    );
}

#[test]
fn the_injected_init_container_captures_what_the_pod_asks() {
    let settings = InjectorSettings {
        redirect_dns: true,
        ..InjectorSettings::default()
    };
    let doc = injected(settings, &pod());
    let init = container(&doc, INIT_CONTAINER);
    assert_env_is_read(init, "init-iptables");
    // --dry-run prints the rules and needs no root or namespace.
    let out = run_container(init, &["--dry-run"]);
    let rules = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{rules}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "-A BULKHEAD_INBOUND -p tcp --dport 8081 -j RETURN",
        "-A BULKHEAD_INBOUND -p tcp -j REDIRECT --to-ports 4143",
        "-A BULKHEAD_OUTPUT -m owner --uid-owner 2102 -j RETURN",
        "-A BULKHEAD_OUTPUT -p udp --dport 53 -j REDIRECT --to-ports 4153",
        "-A BULKHEAD_OUTPUT -p tcp -j REDIRECT --to-ports 4140",
    ] {
        assert!(rules.contains(want), "no {want:?} in:\n{rules}");
    }
}

/// With the bundle handed to the injector, pods carry it inline, and the
/// real proxy takes it in place of `--trust-bundle`.
#[test]
fn the_inline_trust_bundle_is_what_the_proxy_reads() {
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let settings = InjectorSettings {
        trust_bundle_pem: Some(pem.to_owned()),
        ..InjectorSettings::default()
    };
    let doc = injected(settings, &pod());
    let proxy = container(&doc, PROXY_CONTAINER);
    assert_env_is_read(proxy, "run");
    let config = stdout_json(&run_container(proxy, &["--check-config"]));
    assert_eq!(
        config["trustBundle"],
        json!({"pemBytes": pem.len()}),
        "{config:#}"
    );
}

/// A value the proxy refuses is reported by flag, with the usage exit code,
/// before anything starts: what a bad annotation would show in the pod's
/// logs.
#[test]
fn a_bad_value_is_refused_by_name() {
    let doc = injected(InjectorSettings::default(), &pod());
    let proxy = container(&doc, PROXY_CONTAINER);
    let out = run_container(proxy, &["--check-config", "--version", "not a version"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--version"), "{stderr}");
    assert!(out.stdout.is_empty());
    // A log level that would silence every line ("warning" names a target,
    // not a level) is refused too, in one line.
    let out = run_container(proxy, &["--check-config", "--log-level", "warning"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--log-level") && stderr.contains("not a level"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}
