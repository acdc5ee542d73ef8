//! Resources end to end: the real `bulkheadctl` applying, showing and
//! deleting resources through the real control plane's admin API (mTLS,
//! operators only) into a real etcd.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bulkhead_proto::pb;
use bulkhead_tests::control::{ControlPlane, StoreSpec, TestCa, bin, workload};
use bulkhead_tests::etcd::EtcdServer;
use tonic::Code;

const TRUST_DOMAIN: &str = "resources.test";

/// The CLI's kind names, one per resource kind.
const KINDS: [&str; 4] = ["service", "allowlist", "trafficsplit", "rollout"];

/// What examples/shop.yaml holds, as `kind/namespace/name`.
const SHOP: [&str; 9] = [
    "service/shop/web",
    "service/shop/cart",
    "service/shop/inventory",
    "service/shop/pricing",
    "allowlist/shop/cart-from-web",
    "allowlist/shop/inventory-readers",
    "allowlist/shop/pricing-from-cart",
    "trafficsplit/shop/inventory",
    "rollout/shop/inventory",
];

// ---------------------------------------------------------------------------
// Scenario helpers
// ---------------------------------------------------------------------------

/// A control plane on its own etcd, and a folder for files the test writes
/// (fields drop in order: the control plane stops before its etcd).
struct Mesh {
    cp: ControlPlane,
    _etcd: EtcdServer,
    ca: TestCa,
    files: tempfile::TempDir,
}

impl Mesh {
    fn start(extra: &[&str]) -> Self {
        let ca = TestCa::init(TRUST_DOMAIN);
        let etcd = EtcdServer::start();
        let store = StoreSpec::Etcd {
            endpoints: vec![etcd.client_url()],
            prefix: "/bulkhead-resources/".into(),
        };
        let cp = ControlPlane::start(&ca, &store, extra);
        Self {
            cp,
            _etcd: etcd,
            ca,
            files: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// Runs `bulkheadctl` as the operator.
    fn ctl(&self, args: &[&str]) -> Run {
        Run::from(self.cp.ctl(&self.ca, args))
    }

    /// Runs `bulkheadctl` as the operator and insists it succeeds.
    fn ctl_ok(&self, args: &[&str]) -> Run {
        let run = self.ctl(args);
        assert_eq!(
            run.code,
            0,
            "bulkheadctl {} failed:\n{}",
            args.join(" "),
            run.stderr
        );
        run
    }

    /// Writes `text` to a file named `name` in the test's folder.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.files.path().join(name);
        std::fs::write(&path, text).expect("write test file");
        path
    }

    /// `apply -f path`, which must succeed: `kind/namespace/name` → outcome.
    fn apply(&self, path: &Path) -> Vec<(String, String)> {
        outcomes(&self.ctl_ok(&["apply", "-f", path_str(path)]).stdout)
    }

    /// `get KIND -o json` (every namespace), parsed.
    fn get_json(&self, kind: &str) -> Vec<serde_json::Value> {
        let run = self.ctl_ok(&["get", kind, "-o", "json"]);
        match serde_json::from_str(&run.stdout) {
            Ok(serde_json::Value::Array(items)) => items,
            other => panic!(
                "get {kind} -o json is not a JSON array: {other:?}\n{}",
                run.stdout
            ),
        }
    }

    /// Everything stored, as `kind/namespace/name`.
    fn stored(&self) -> BTreeSet<String> {
        KINDS
            .iter()
            .flat_map(|kind| {
                self.get_json(kind).into_iter().map(move |doc| {
                    format!(
                        "{kind}/{}/{}",
                        doc["metadata"]["namespace"].as_str().unwrap(),
                        doc["metadata"]["name"].as_str().unwrap()
                    )
                })
            })
            .collect()
    }
}

/// What a `bulkheadctl` run did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl From<Output> for Run {
    fn from(out: Output) -> Self {
        Self {
            code: out
                .status
                .code()
                .expect("bulkheadctl exited, not killed by a signal"),
            stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
            stderr: String::from_utf8(out.stderr).expect("stderr is UTF-8"),
        }
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

fn shop_yaml() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop.yaml")
}

fn shop() -> BTreeSet<String> {
    SHOP.iter().map(|s| s.to_string()).collect()
}

/// Parses `apply` output lines `kind/name namespace/name outcome` into
/// (`kind/namespace/name`, outcome).
fn outcomes(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [kind_name, ns_name, outcome] = fields[..] else {
                panic!("unexpected apply output line: {line:?}");
            };
            let (kind, _) = kind_name.split_once('/').expect("kind/name");
            (format!("{kind}/{ns_name}"), outcome.to_owned())
        })
        .collect()
}

#[track_caller]
fn assert_all(outcomes: &[(String, String)], expected: &str, resources: &BTreeSet<String>) {
    let names: BTreeSet<String> = outcomes.iter().map(|(r, _)| r.clone()).collect();
    assert_eq!(
        &names, resources,
        "apply reported other resources than expected"
    );
    assert_eq!(
        outcomes.len(),
        resources.len(),
        "each resource reported once: {outcomes:?}"
    );
    for (resource, outcome) in outcomes {
        assert_eq!(outcome, expected, "{resource}");
    }
}

/// Asserts a user-facing failure: exit `code`, and stderr one line saying each of `says`.
#[track_caller]
fn assert_one_line_error(run: &Run, code: i32, says: &[&str]) {
    assert_eq!(run.code, code, "exit code; stderr:\n{}", run.stderr);
    assert_eq!(
        run.stderr.trim_end().lines().count(),
        1,
        "one line on stderr:\n{}",
        run.stderr
    );
    for needle in says {
        assert!(
            run.stderr.contains(needle),
            "stderr should say {needle:?}:\n{}",
            run.stderr
        );
    }
}

// ---------------------------------------------------------------------------
// apply / get
// ---------------------------------------------------------------------------

#[test]
fn apply_shop_creates_every_resource_and_reapply_changes_nothing() {
    let mesh = Mesh::start(&[]);

    let first = mesh.apply(&shop_yaml());
    assert_all(&first, "created", &shop());
    assert_eq!(mesh.stored(), shop(), "every resource is stored");

    let again = mesh.apply(&shop_yaml());
    assert_all(&again, "unchanged", &shop());

    // A change to one document configures that one and leaves the rest.
    let text = std::fs::read_to_string(shop_yaml()).unwrap();
    let edited = text.replace("steps: [10, 25, 50, 100]", "steps: [5, 50, 100]");
    assert_ne!(
        edited, text,
        "the example still has the rollout steps this test edits"
    );
    let changed = mesh.apply(&mesh.write("shop-edited.yaml", &edited));
    for (resource, outcome) in &changed {
        let expected = if resource == "rollout/shop/inventory" {
            "configured"
        } else {
            "unchanged"
        };
        assert_eq!(outcome, expected, "{resource}");
    }
    let rollout = mesh.ctl_ok(&["get", "rollout", "inventory", "-n", "shop", "-o", "json"]);
    let rollout: serde_json::Value = serde_json::from_str(&rollout.stdout).expect("JSON");
    assert_eq!(rollout["spec"]["steps"], serde_json::json!([5, 50, 100]));
}

#[test]
fn get_yaml_output_reapplies_unchanged_for_every_kind() {
    let mesh = Mesh::start(&[]);
    mesh.apply(&shop_yaml());

    for kind in KINDS {
        let of_kind: BTreeSet<String> = shop()
            .into_iter()
            .filter(|r| r.starts_with(&format!("{kind}/")))
            .collect();

        // Lossless round trip: what `get -o yaml` prints is what was applied.
        let yaml = mesh.ctl_ok(&["get", kind, "-o", "yaml"]).stdout;
        let file = mesh.write(&format!("{kind}.yaml"), &yaml);
        assert_all(&mesh.apply(&file), "unchanged", &of_kind);

        // JSON parses, one document per resource, each a whole resource.
        let docs = mesh.get_json(kind);
        assert_eq!(docs.len(), of_kind.len(), "get {kind} -o json: {docs:?}");
        for doc in &docs {
            assert_eq!(doc["apiVersion"], "bulkhead.dev/v1");
            assert_eq!(
                doc["kind"].as_str().map(str::to_lowercase).as_deref(),
                Some(kind)
            );
            assert!(doc["spec"].is_object(), "{doc}");
        }

        // The default table names every resource.
        let table = mesh.ctl_ok(&["get", kind]).stdout;
        for resource in &of_kind {
            let name = resource.rsplit('/').next().unwrap();
            assert!(
                table
                    .lines()
                    .any(|l| l.split_whitespace().nth(1) == Some(name)),
                "{name} in:\n{table}"
            );
        }
    }

    // A single resource as JSON is one object.
    let one = mesh
        .ctl_ok(&["get", "service", "inventory", "-n", "shop", "-o", "json"])
        .stdout;
    let one: serde_json::Value = serde_json::from_str(&one).expect("JSON");
    assert_eq!(one["metadata"]["name"], "inventory");
    assert_eq!(one["spec"]["vip"], "198.19.0.10");
}

#[test]
fn invalid_file_reports_every_bad_document_and_writes_nothing() {
    let mesh = Mesh::start(&[]);
    let file = mesh.write(
        "staging.yaml",
        "\
apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: good, namespace: staging}
spec:
  ports: [{port: 8080, protocol: http}]
---
apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: huge-port, namespace: staging}
spec:
  ports: [{port: 70000, protocol: http}]
---
apiVersion: bulkhead.dev/v1
kind: AllowList
metadata: {name: typo, namespace: staging}
spec:
  target: good
  rules:
    - from: [web]
      methods: [GET]
",
    );

    let run = mesh.ctl(&["apply", "-f", path_str(&file)]);
    assert_eq!(
        run.code, 1,
        "invalid input is a failure; stderr:\n{}",
        run.stderr
    );
    let port_error = run
        .stderr
        .lines()
        .find(|l| l.contains("document 2"))
        .unwrap_or_else(|| panic!("no error for document 2:\n{}", run.stderr));
    for needle in ["staging.yaml", "spec.ports[0].port", "1-65535", "70000"] {
        assert!(
            port_error.contains(needle),
            "document 2's error should say {needle:?}: {port_error}"
        );
    }
    let field_error = run
        .stderr
        .lines()
        .find(|l| l.contains("document 3"))
        .unwrap_or_else(|| panic!("no error for document 3:\n{}", run.stderr));
    for needle in [
        "staging.yaml",
        "spec.rules[0]",
        "unknown field `methods`",
        "expected one of",
    ] {
        assert!(
            field_error.contains(needle),
            "document 3's error should say {needle:?}: {field_error}"
        );
    }
    assert!(
        !run.stderr.contains("document 1"),
        "the valid document is not blamed:\n{}",
        run.stderr
    );

    // All or nothing: the valid document was not written either.
    let missing = mesh.ctl(&["get", "service", "good", "-n", "staging"]);
    assert_eq!(missing.code, 1, "{missing:?}");
    assert!(missing.stderr.contains("not found"), "{}", missing.stderr);
    assert!(
        mesh.stored().is_empty(),
        "nothing stored: {:?}",
        mesh.stored()
    );
}

#[test]
fn apply_is_one_transaction_and_refuses_more_than_etcd_takes_in_one() {
    let mesh = Mesh::start(&[]);
    let service = |i: usize| {
        format!(
            "apiVersion: bulkhead.dev/v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: bulk}}\nspec:\n  ports: [{{port: 80, protocol: http}}]\n"
        )
    };
    // 128 resources (etcd's default transaction limit) go in at once...
    let at_limit: Vec<String> = (0..128).map(service).collect();
    let path = mesh.write("at-limit.yaml", &at_limit.join("---\n"));
    assert_eq!(mesh.apply(&path).len(), 128);
    assert_eq!(mesh.get_json("service").len(), 128);
    // ...one more changed resource is refused before anything is written,
    // with a message that says what to do.
    let over: Vec<String> = (0..257).map(service).collect();
    let path = mesh.write("over.yaml", &over.join("---\n"));
    let run = mesh.ctl(&["apply", "-f", path_str(&path)]);
    assert_one_line_error(
        &run,
        1,
        &["over.yaml", "129 resources would change", "split the file"],
    );
    assert_eq!(
        mesh.get_json("service").len(),
        128,
        "nothing of the refused file was written"
    );
}

// ---------------------------------------------------------------------------
// delete
// ---------------------------------------------------------------------------

#[test]
fn delete_removes_a_resource_and_a_missing_one_is_not_found() {
    let mesh = Mesh::start(&[]);
    mesh.apply(&shop_yaml());

    // (Not the TrafficSplit: the shop's running Rollout owns it, and puts
    // it back.)
    let deleted = mesh.ctl_ok(&["delete", "allowlist", "inventory-readers", "-n", "shop"]);
    assert!(deleted.stdout.contains("deleted"), "{}", deleted.stdout);
    let mut remaining = shop();
    remaining.remove("allowlist/shop/inventory-readers");
    assert_eq!(mesh.stored(), remaining);

    let gone = mesh.ctl(&["get", "allowlist", "inventory-readers", "-n", "shop"]);
    assert_one_line_error(&gone, 1, &["not found"]);

    let again = mesh.ctl(&["delete", "allowlist", "inventory-readers", "-n", "shop"]);
    assert_one_line_error(&again, 1, &["not found", "shop/inventory-readers"]);
    let never = mesh.ctl(&["delete", "service", "ghost", "-n", "shop"]);
    assert_one_line_error(&never, 1, &["not found", "shop/ghost"]);
    assert_eq!(mesh.stored(), remaining, "failed deletes change nothing");
}

// ---------------------------------------------------------------------------
// Who may use the admin API
// ---------------------------------------------------------------------------

#[tokio::test]
async fn admin_api_is_for_operators_only() {
    let release = format!("spiffe://{TRUST_DOMAIN}/ns/ops/sa/release");
    let mesh = Mesh::start(&["--operators", &format!("ci/deployer,{release}")]);
    let get = || pb::GetRequest {
        kind: "Service".into(),
        namespace: String::new(),
        name: String::new(),
    };
    let shop = std::fs::read_to_string(shop_yaml()).unwrap();
    let apply = || pb::ApplyRequest {
        source: "shop.yaml".into(),
        yaml: shop.clone(),
        dry_run: false,
    };
    let admin_as = |slot| pb::admin_client::AdminClient::new(mesh.cp.channel(&mesh.ca, slot));

    // A workload is not an operator.
    let cart = workload(&mesh.cp, &mesh.ca, "shop/cart").await;
    let denied = admin_as(Some(cart.slot.clone()))
        .apply(apply())
        .await
        .expect_err("a workload may not apply");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(
        denied.message().contains(&cart.spiffe_id) && denied.message().contains("not an operator"),
        "{denied:?}"
    );
    let denied = admin_as(Some(cart.slot))
        .get(get())
        .await
        .expect_err("nor read");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");

    // Nobody at all.
    let anonymous = admin_as(None)
        .get(get())
        .await
        .expect_err("no client certificate");
    assert_eq!(anonymous.code(), Code::Unauthenticated, "{anonymous:?}");
    assert!(
        anonymous.message().contains("client certificate"),
        "{anonymous:?}"
    );
    assert!(mesh.stored().is_empty(), "the refused apply wrote nothing");

    // Identities named by --operators, in both spellings, may.
    let deployer = workload(&mesh.cp, &mesh.ca, "ci/deployer").await;
    let applied = admin_as(Some(deployer.slot))
        .apply(apply())
        .await
        .expect("ci/deployer is an operator");
    assert_eq!(applied.into_inner().results.len(), SHOP.len());
    let releaser = workload(&mesh.cp, &mesh.ca, "ops/release").await;
    assert_eq!(releaser.spiffe_id, release);
    let listed = admin_as(Some(releaser.slot))
        .get(get())
        .await
        .expect("ops/release is an operator");
    assert_eq!(listed.into_inner().resources.len(), 4);
    // The built-in operator still is one.
    mesh.cp
        .admin_client(&mesh.ca)
        .get(get())
        .await
        .expect("the built-in operator may call the admin API");

    // Through the CLI: a workload certificate used as CLI credentials is refused.
    let creds = workload_credentials(&mesh, "shop/web");
    let run = mesh.ctl(&["--credentials", path_str(&creds), "get", "services"]);
    assert_one_line_error(&run, 1, &["permission denied", "not an operator"]);
}

/// A CLI credentials folder holding a workload's certificate, obtained with
/// `bulkheadctl cert request` as a CI job outside the mesh would.
fn workload_credentials(mesh: &Mesh, ns_sa: &str) -> PathBuf {
    let issued = mesh
        .files
        .path()
        .join(format!("{}-certs", ns_sa.replace('/', "-")));
    let token = mesh.ca.token(ns_sa, "10m", true);
    let bundle = mesh.ca.file("bundle.crt");
    mesh.ctl_ok(&[
        "cert",
        "request",
        "--trust-bundle",
        path_str(&bundle),
        "--token",
        &token,
        "--out",
        path_str(&issued),
    ]);
    let creds = mesh
        .files
        .path()
        .join(format!("{}-credentials", ns_sa.replace('/', "-")));
    std::fs::create_dir(&creds).unwrap();
    for (from, to) in [
        ("tls.crt", "operator.crt"),
        ("tls.key", "operator.key"),
        ("bundle.crt", "bundle.crt"),
    ] {
        std::fs::copy(issued.join(from), creds.join(to)).unwrap();
    }
    creds
}

// ---------------------------------------------------------------------------
// CLI usage errors
// ---------------------------------------------------------------------------

#[test]
fn usage_errors_exit_2_with_one_clear_line() {
    let mesh = Mesh::start(&[]);

    let unknown_kind = mesh.ctl(&["get", "widgets"]);
    assert_one_line_error(
        &unknown_kind,
        2,
        &["unknown kind", "widgets", "service, allowlist"],
    );
    let unknown_kind = mesh.ctl(&["delete", "widget", "x"]);
    assert_one_line_error(&unknown_kind, 2, &["unknown kind", "widget"]);

    let no_file = mesh.ctl(&["apply", "-f", "/nonexistent/shop.yaml"]);
    assert_one_line_error(&no_file, 2, &["/nonexistent/shop.yaml"]);

    let plain_http = mesh.ctl(&["--control", "http://127.0.0.1:1", "get", "services"]);
    assert_one_line_error(&plain_http, 2, &["http://127.0.0.1:1", "https://"]);

    // No credentials anywhere: no flag, no env, no config file.
    let empty_home = tempfile::tempdir().unwrap();
    let out = Command::new(bin("bulkheadctl"))
        .env_remove("BULKHEAD_CREDENTIALS")
        .env_remove("BULKHEAD_CONFIG")
        .env("BULKHEAD_CONTROL", mesh.cp.url())
        .env("XDG_CONFIG_HOME", empty_home.path())
        .env("HOME", empty_home.path())
        .env("NO_COLOR", "1")
        .args(["get", "services"])
        .output()
        .expect("run bulkheadctl");
    assert_one_line_error(
        &Run::from(out),
        2,
        &["--credentials", "BULKHEAD_CREDENTIALS"],
    );

    // Flags clap rejects: exit 2, the problem on the first line.
    let missing_flag = mesh.ctl(&["apply"]);
    assert_eq!(missing_flag.code, 2, "{missing_flag:?}");
    let first = missing_flag.stderr.lines().next().unwrap_or_default();
    assert!(
        first.contains("required") || missing_flag.stderr.contains("--filename"),
        "{}",
        missing_flag.stderr
    );
    let bad_output = mesh.ctl(&["get", "services", "-o", "xml"]);
    assert_eq!(bad_output.code, 2, "{bad_output:?}");
    assert!(
        bad_output
            .stderr
            .lines()
            .next()
            .unwrap_or_default()
            .contains("xml"),
        "{}",
        bad_output.stderr
    );

    assert!(mesh.stored().is_empty(), "usage errors write nothing");
}

// ---------------------------------------------------------------------------
// Durability
// ---------------------------------------------------------------------------

#[test]
fn control_plane_restart_on_the_same_etcd_loses_nothing() {
    let mut mesh = Mesh::start(&[]);
    mesh.apply(&shop_yaml());
    let before: Vec<Vec<serde_json::Value>> = KINDS.iter().map(|k| mesh.get_json(k)).collect();

    // Fault: the control plane crashes (SIGKILL) and starts again on the same etcd.
    mesh.cp.restart();

    let after: Vec<Vec<serde_json::Value>> = KINDS.iter().map(|k| mesh.get_json(k)).collect();
    assert_eq!(
        after, before,
        "every resource, field for field, survives the restart"
    );
    assert_eq!(mesh.stored(), shop());
    assert_all(&mesh.apply(&shop_yaml()), "unchanged", &shop());
}
