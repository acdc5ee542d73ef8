//! `bulkheadctl explain` against the real sidecar: a table of callers,
//! targets, ports, methods and paths (the allow-list scenarios' policies,
//! `security::MESH`, plus a multi-port, multi-rule service) is sent through
//! each callee's real inbound by a hand-driven mesh client presenting each
//! caller's certificate, and what the sidecar did (forwarded, 403, 400,
//! closed, counted as audit) must be what `explain -o json` says, both
//! against the live control plane and offline on the same YAML. Also its
//! exit codes and `explain --to`.

use std::io::Write;
use std::process::{Output, Stdio};
use std::sync::Arc;

use bulkhead_tests::control::*;
use bulkhead_tests::mesh::{Mesh, blocking};
use bulkhead_tests::prom;
use bulkhead_tests::proxy::*;
use bulkhead_tests::security::*;
use bulkhead_tls::{CertSlot, ExpectedServer, TrustBundle};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A service declaring two HTTP ports, with rules naming ports, namespaces,
/// a full SPIFFE ID, methods and paths.
const STOCK: &str = "
apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: stock, namespace: shop}
spec:
  ports: [{port: 8080, protocol: http}, {port: 8081, protocol: http}]
---
apiVersion: bulkhead.dev/v1
kind: AllowList
metadata: {name: stock-readers, namespace: shop}
spec:
  target: stock
  rules:
    - from: [web, ops/*]
      ports: [8080]
      http: {methods: [GET, HEAD], paths: ['/v1/stock/*', '/v1/stock/*/history']}
    - from: ['spiffe://cluster.local/ns/batch/sa/sync']
      ports: [8081]
    - from: [inventory]
      http: {methods: [POST], paths: ['/v1/reserve/**']}
---
apiVersion: bulkhead.dev/v1
kind: AllowList
metadata: {name: cart-ops, namespace: shop}
spec:
  target: cart
  rules:
    - from: [ops/*, 'spiffe://cluster.local/ns/batch/sa/sync']
      http: {methods: [GET], paths: [/cart/health, '/cart/*/status']}
";

/// Callers of every case: service accounts of `shop`, other namespaces,
/// and a `web` that is not `shop`'s.
const CALLERS: &[&str] = &[
    "shop/web",
    "shop/inventory",
    "shop/cart",
    "ops/debug",
    "batch/sync",
    "other/web",
];

/// (target, declared port, method, path as sent): normalized, refused
/// and plain paths; allowed, denied, audit-only and no-allowlist targets.
const HTTP_REQUESTS: &[(&str, u16, &str, &str)] = &[
    ("cart", 8080, "GET", "/cart/items"),
    ("cart", 8080, "DELETE", "/cart/1"),
    ("cart", 8080, "GET", "//cart///x"),
    ("cart", 8080, "GET", "/cart/%2e%2e/admin"),
    ("cart", 8080, "GET", "/cart/x/..;/admin"),
    ("cart", 8080, "GET", "/../cart/x"),
    ("cart", 8080, "GET", "/cart/x/status"),
    ("search", 8080, "GET", "/search/q"),
    ("search", 8080, "DELETE", "/search/%71"),
    ("inventory", 8080, "GET", "/"),
    ("pricing", 9090, "POST", "/shop.Pricing/Quote"),
    ("pricing", 9090, "POST", "/shop.Admin/Reset"),
    ("stock", 8080, "GET", "/v1/stock/./x/history"),
    ("stock", 8080, "HEAD", "/v1/stock/x"),
    ("stock", 8081, "GET", "/v1/stock/x"),
    ("stock", 8080, "POST", "/v1/reserve/a/b"),
    ("stock", 8081, "POST", "/v1/reserve/%2Fa"),
];

/// (target, declared port) of the opaque TCP services.
const TCP_TARGETS: &[(&str, u16)] = &[("ledger", 7000), ("journal", 7001)];

/// What the sidecar did with one call.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// Forwarded to the app; `audited` when counted as a would-be denial.
    Through { audited: bool },
    /// Refused by the allow-list, with the rule label it gave.
    Denied(String),
    /// Refused as an ambiguous path (400).
    BadPath,
}

impl Seen {
    /// What `explain -o json` says, in the same terms.
    fn from_explain(json: &Value) -> Self {
        match json["decision"].as_str() {
            Some("allowed") => Seen::Through { audited: false },
            Some("audit") => Seen::Through { audited: true },
            Some("denied") if json["label"] == "bad-path" => Seen::BadPath,
            Some("denied") => Seen::Denied(json["label"].as_str().unwrap_or_default().to_owned()),
            other => panic!("no decision {other:?} in {json}"),
        }
    }
}

/// The mesh: every target behind its sidecar, and the YAML as files.
struct Fixture {
    mesh: Mesh,
    targets: Vec<(Sidecar, App)>,
    bundle: TrustBundle,
    files: tempfile::TempDir,
}

impl Fixture {
    async fn start() -> Self {
        let mesh = Mesh::memory(TRUST_DOMAIN, &format!("{MESH}---{STOCK}"), &[]).await;
        let mut targets = Vec::new();
        for (service, protocol) in [
            ("cart", "http"),
            ("search", "http"),
            ("inventory", "http"),
            ("pricing", "grpc"),
            ("stock", "http"),
            ("ledger", "tcp"),
            ("journal", "tcp"),
        ] {
            let app = if protocol == "tcp" {
                App::tcp_echo().await
            } else {
                App::http(service, "1.0.0").await
            };
            let sidecar = mesh.sidecar(
                SidecarSpec::new("shop", service, "1.0.0")
                    .protocol(protocol)
                    .app(&app),
            );
            targets.push((sidecar, app));
        }
        let files = tempfile::tempdir().expect("tempdir");
        std::fs::write(files.path().join("mesh.yaml"), MESH).expect("write");
        std::fs::write(files.path().join("stock.yaml"), STOCK).expect("write");
        let bundle = mesh.ca.bundle();
        Self {
            mesh,
            targets,
            bundle,
            files,
        }
    }

    fn sidecar(&self, service: &str) -> &Sidecar {
        &self
            .targets
            .iter()
            .find(|(s, _)| s.spec.service == service)
            .expect("a target")
            .0
    }

    /// A certificate for `ns/sa` from the mesh's real issuer.
    fn cert(&self, caller: &str) -> CertSlot {
        let (ns, sa) = caller.split_once('/').expect("ns/sa");
        let id = format!("spiffe://{TRUST_DOMAIN}/ns/{ns}/sa/{sa}");
        signed_by_issuer(
            &self.mesh.ca,
            client_params(|p| p.subject_alt_names = vec![uri_san(&id)]),
        )
    }

    fn ctl(&self, args: &[&str]) -> Output {
        blocking(|| self.mesh.cp.ctl(&self.mesh.ca, args))
    }

    /// `explain` against the live control plane, then offline on the same
    /// files: both must say the same; the exit status must match.
    fn explain(&self, args: &[&str]) -> Value {
        let live = self.ctl(&[&["explain", "-o", "json"], args].concat());
        let mesh_file = self.files.path().join("mesh.yaml");
        let stock_file = self.files.path().join("stock.yaml");
        let offline = self.ctl(
            &[
                &[
                    "explain",
                    "-o",
                    "json",
                    "-f",
                    mesh_file.to_str().expect("utf-8"),
                    "-f",
                    stock_file.to_str().expect("utf-8"),
                ],
                args,
            ]
            .concat(),
        );
        let live_json = json_of(&live, args);
        assert_eq!(
            live_json,
            json_of(&offline, args),
            "live and offline differ"
        );
        let code = if live_json["decision"] == "denied" {
            1
        } else {
            0
        };
        assert_eq!(live.status.code(), Some(code), "{args:?}: {live_json}");
        assert_eq!(offline.status.code(), Some(code), "{args:?}");
        live_json
    }

    /// Sends one HTTP/2 request to `target`'s inbound as `caller`.
    async fn http(&self, caller: &str, target: &str, port: u16, method: &str, path: &str) -> Seen {
        let callee = self.sidecar(target);
        let before = self.audited(callee, caller);
        let grpc = target == "pricing";
        let reply = h2_call(
            callee,
            &self.bundle,
            self.cert(caller),
            port,
            method,
            path,
            grpc,
        )
        .await;
        match header(&reply, "x-bulkhead-error") {
            None => {
                assert!(
                    reply.status == 200
                        && (method == "HEAD" || reply.body.contains(&format!("service={target}"))),
                    "not the app's answer: {reply:?}"
                );
                Seen::Through {
                    audited: self.audited(callee, caller) > before,
                }
            }
            Some("denied") => {
                let expected_status = if grpc { 200 } else { 403 };
                assert_eq!(reply.status, expected_status, "{reply:?}");
                let label = header(&reply, "x-bulkhead-denied").expect("a denial label");
                Seen::Denied(label.to_owned())
            }
            Some("bad-path") => {
                assert_eq!(reply.status, if grpc { 200 } else { 400 }, "{reply:?}");
                Seen::BadPath
            }
            Some(other) => panic!("unexpected mesh error {other}: {reply:?}"),
        }
    }

    /// Opens an opaque TCP stream to `target`'s inbound as `caller`.
    async fn tcp(&self, caller: &str, target: &str, port: u16) -> Seen {
        let callee = self.sidecar(target);
        let outcome = mesh_call(
            callee,
            &self.bundle,
            Some(self.cert(caller)),
            &preface(b"BHK1", 2, 0, port),
            b"ping",
        )
        .await;
        match outcome {
            Outcome::Answered(bytes) => {
                assert_eq!(bytes, b"ping");
                Seen::Through { audited: false }
            }
            Outcome::Refused(_) => {
                // The denial is counted before the stream is closed.
                let metrics = callee.metrics();
                let peer = peer_id(caller);
                let line = prom::find(
                    &metrics,
                    "bulkhead_authz_denied_total",
                    &[("target", target), ("peer", &peer)],
                )
                .unwrap_or_else(|| panic!("no denial counted for {peer}:\n{metrics}"));
                Seen::Denied(line.label("rule").unwrap_or_default().to_owned())
            }
        }
    }

    fn audited(&self, callee: &Sidecar, caller: &str) -> f64 {
        prom::metric(
            &callee.metrics(),
            "bulkhead_authz_audit_total",
            &[("target", &callee.spec.service), ("peer", &peer_id(caller))],
        )
    }
}

fn peer_id(caller: &str) -> String {
    let (ns, sa) = caller.split_once('/').expect("ns/sa");
    format!("spiffe://{TRUST_DOMAIN}/ns/{ns}/sa/{sa}")
}

fn json_of(out: &Output, args: &[&str]) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "explain {args:?}: not JSON ({e}); status {:?}, stderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// One HTTP/2 request on a fresh mesh connection to `callee`'s inbound
/// (preface protocol 1, declared `port`), the path sent as given.
async fn h2_call(
    callee: &Sidecar,
    bundle: &TrustBundle,
    client: CertSlot,
    port: u16,
    method: &str,
    path: &str,
    grpc: bool,
) -> Reply {
    let config = bulkhead_tls::client_config(
        bundle,
        ExpectedServer::Identity(identity(&callee.spec.service)),
        Some(client),
        &[ALPN],
    )
    .expect("client config");
    let tcp = TcpStream::connect(callee.inbound).await.expect("connect");
    let name = ServerName::IpAddress(callee.inbound.ip().into());
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("handshake");
    tls.write_all(&preface(b"BHK1", 1, 0, port))
        .await
        .expect("preface");
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let uri = http::Uri::builder()
        .scheme("http")
        .authority(format!("{}.shop", callee.spec.service))
        .path_and_query(path)
        .build()
        .expect("a request target");
    let mut req = http::Request::builder().method(method).uri(uri);
    if grpc {
        req = req
            .header("content-type", "application/grpc")
            .header("te", "trailers");
    }
    let req = req.body(Full::new(Bytes::new())).expect("request");
    let resp = tokio::time::timeout(WAIT, send.send_request(req))
        .await
        .expect("an answer in time")
        .expect("a response");
    if method == "HEAD" {
        // Only the head counts. (The sidecar's own 403 to a HEAD carries a
        // body, which an HTTP/2 client resets the stream over: its status
        // and headers are what it meant.)
        let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
        return Reply {
            status,
            headers,
            body: String::new(),
        };
    }
    Reply::read(resp).await.expect("a body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_agrees_with_the_sidecar_on_every_case() {
    let f = Fixture::start().await;
    // Sidecars are ready with their config; wait until one allowed call of
    // each kind goes through all the same.
    wait_for_async("cart to answer shop/web", WAIT, || async {
        let seen = f.http("shop/web", "cart", 8080, "GET", "/cart/items").await;
        (seen == Seen::Through { audited: false }).then_some(())
    })
    .await;
    // Every caller against every request: HTTP ones, then opaque TCP.
    let requests = HTTP_REQUESTS
        .iter()
        .map(|&(target, port, method, path)| (target, port, Some((method, path))))
        .chain(
            TCP_TARGETS
                .iter()
                .map(|&(target, port)| (target, port, None)),
        );
    let cases: Vec<_> = CALLERS
        .iter()
        .flat_map(|caller| requests.clone().map(move |request| (*caller, request)))
        .collect();
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for &(caller, (target, port, http)) in &cases {
        let (to, port_arg) = (format!("shop/{target}"), port.to_string());
        let mut args = vec!["--from", caller, "--to", &to, "--port", &port_arg];
        let seen = match http {
            Some((method, path)) => {
                args.extend(["--method", method, "--path", path]);
                f.http(caller, target, port, method, path).await
            }
            None => f.tcp(caller, target, port).await,
        };
        let json = f.explain(&args);
        assert_eq!(
            Seen::from_explain(&json),
            seen,
            "{caller} → {target}:{port} {http:?}: explain said {json:#}"
        );
        *outcomes.entry(format!("{seen:?}")).or_default() += 1;
    }
    let cases = cases.len();
    assert!(cases >= 50, "{cases} cases");
    // The table exercises every kind of outcome.
    for kind in [
        "Through { audited: false }",
        "Through { audited: true }",
        "Denied(\"no-matching-rule\")",
        "Denied(\"no-allowlist\")",
        "BadPath",
    ] {
        assert!(outcomes.contains_key(kind), "no {kind} case: {outcomes:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_names_the_rule_the_path_and_the_failing_fields() {
    let mesh = Mesh::memory(TRUST_DOMAIN, &format!("{MESH}---{STOCK}"), &[]).await;
    let ctl = |args: &[&str]| blocking(|| mesh.cp.ctl(&mesh.ca, args));

    // Allowed: the list and the 0-based rule, the path shown normalized.
    let out = ctl(&[
        "explain",
        "--from",
        "ops/debug",
        "--to",
        "shop/stock",
        "--port",
        "8080",
        "--path",
        "//v1/stock/./x",
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let json = json_of(&out, &[]);
    assert_eq!(json["decision"], "allowed");
    assert_eq!(json["allowList"], "stock-readers");
    assert_eq!(json["rule"], 0);
    assert_eq!(json["normalizedPath"], "/v1/stock/x");
    assert_eq!(json["reasons"], Value::Array(vec![]));

    // Denied: each closest rule's failing field, by name.
    let out = ctl(&[
        "explain",
        "--from",
        "shop/web",
        "--to",
        "shop/stock",
        "--port",
        "8080",
        "--method",
        "DELETE",
        "--path",
        "/v1/stock/x",
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let json = json_of(&out, &[]);
    assert_eq!(json["decision"], "denied");
    assert_eq!(json["allowList"], Value::Null);
    assert_eq!(json["rule"], Value::Null);
    let reasons = json["reasons"].as_array().expect("reasons");
    assert_eq!(reasons.len(), 1, "{json:#}");
    assert_eq!(reasons[0]["allowList"], "stock-readers");
    assert_eq!(reasons[0]["rule"], 0);
    assert_eq!(reasons[0]["field"], "method");
    assert_eq!(reasons[0]["got"], "DELETE");
    assert_eq!(reasons[0]["expected"], serde_json::json!(["GET", "HEAD"]));

    // A path the sidecar refuses.
    let out = ctl(&[
        "explain",
        "--from",
        "shop/web",
        "--to",
        "shop/cart",
        "--path",
        "/cart/%2e%2e/%2e%2e/x",
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let json = json_of(&out, &[]);
    assert_eq!(json["decision"], "denied");
    assert_eq!(json["reasons"][0]["code"], "bad-path");
    assert_eq!(json["normalizedPath"], Value::Null);

    // A SPIFFE ID works as --from; the table names the rule in words.
    let out = ctl(&[
        "explain",
        "--from",
        "spiffe://cluster.local/ns/batch/sa/sync",
        "--to",
        "shop/stock",
        "--port",
        "8081",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("ALLOWED"), "{text}");
    assert!(
        text.contains("by AllowList stock-readers, rule #1"),
        "{text}"
    );
    assert!(!text.contains('\x1b'), "no colour off a terminal: {text}");

    // Usage errors: exit 2, naming the flag.
    for (args, flag) in [
        (
            &["explain", "--from", "web", "--to", "shop/cart"][..],
            "--from web",
        ),
        (
            &["explain", "--from", "shop/web", "--to", "cart"][..],
            "--to cart",
        ),
        (
            &["explain", "--from", "shop/web", "--to", "shop/stock"][..],
            "--port",
        ),
        (
            &[
                "explain",
                "--from",
                "shop/web",
                "--to",
                "shop/cart",
                "--port",
                "9",
            ][..],
            "--port 9",
        ),
        (
            &["explain", "--from", "shop/web", "--to", "shop/nope"][..],
            "--to shop/nope",
        ),
        (
            &["explain", "--to", "shop/cart", "--method", "GET"][..],
            "--path",
        ),
    ] {
        let out = ctl(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_to_lists_who_may_call_on_what() {
    let mesh = Mesh::memory(TRUST_DOMAIN, &format!("{MESH}---{STOCK}"), &[]).await;
    let ctl = |args: &[&str]| blocking(|| mesh.cp.ctl(&mesh.ca, args));

    let out = ctl(&["explain", "--to", "shop/stock"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "a header and one line per rule:\n{text}");
    assert!(
        lines[1].contains("shop/web,ops/*") && lines[1].contains("GET,HEAD"),
        "{text}"
    );
    assert!(
        lines[1].contains("/v1/stock/*,/v1/stock/*/history"),
        "{text}"
    );
    assert!(
        lines[2].contains("spiffe://cluster.local/ns/batch/sa/sync"),
        "{text}"
    );
    assert!(
        lines[3].contains("shop/inventory") && lines[3].contains("POST"),
        "{text}"
    );

    let out = ctl(&[
        "explain",
        "--to",
        "shop/stock",
        "--port",
        "8081",
        "-o",
        "json",
    ]);
    let rows = json_of(&out, &[]);
    let rules: Vec<(String, u64)> = rows
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["allowList"].as_str().unwrap_or_default().to_owned(),
                r["rule"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        rules,
        [
            ("stock-readers".to_owned(), 1),
            ("stock-readers".to_owned(), 2)
        ]
    );
    assert_eq!(rows[1]["methods"], serde_json::json!(["POST"]));
    assert_eq!(rows[0]["paths"], Value::Null);

    // Offline from stdin: no control plane needed.
    let mut child = mesh
        .ca
        .ctl_command(
            "https://127.0.0.1:1",
            &["explain", "-f", "-", "--to", "shop/cart"],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bulkheadctl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{MESH}---{STOCK}").as_bytes())
        .expect("write stdin");
    let out = blocking(|| child.wait_with_output()).expect("bulkheadctl");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("cart-from-web") && text.contains("cart-ops"),
        "{text}"
    );

    // Nobody may call a service no list targets.
    let out = ctl(&["explain", "--to", "shop/inventory"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("default deny"),
        "{out:?}"
    );
}
