//! The demo's scenario: the mesh at work on loopback, no etcd needed.
//!
//! It makes a CA, starts a control plane on the embedded store, applies the
//! shop from `examples/shop.yaml` as an operator, and starts a small shop:
//! `web` → `cart` → `inventory` (3.0.0 on node-1, 3.1.0 on node-2, split
//! 90/10) and `pricing` (one endpoint on each node). Every app is a tiny
//! HTTP server in this process; every sidecar is a real `bulkhead-proxy`
//! process (this binary re-executed as `bulkhead-demo sidecar run ...`, the
//! sidecar's own code linked in), with its own certificate from a one-time token. The demo
//! drives traffic, including a call the allow-list forbids (web → inventory),
//! and prints a live table. Then two releases of inventory run on their own
//! ([`crate::rollouts`]): 3.1.0 promoted step by step, and 3.2.0 (a sidecar
//! in front of an app that fails one request in eight, idle until then)
//! rolled back. On exit every sidecar gets SIGTERM, the control plane stops
//! and the temporary folder is removed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bulkhead_control::ca;
use bulkhead_control::runtime::{self, Settings};
use bulkhead_control::store::MemoryStore;
use bulkhead_control::trust::{Trust, TrustFiles};
use bulkhead_proto::SpiffeId;
use bulkhead_proto::pb::{self, admin_client::AdminClient};
use bulkhead_tls::{CertSlot, TrustBundle};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::{DemoError, DemoResult};

const SHOP: &str = include_str!("../../examples/shop.yaml");

fn fail(what: &str) -> impl FnOnce(String) -> DemoError + '_ {
    move |e| DemoError::new(format!("demo: {what}: {e}"))
}

fn step(text: &str) {
    println!("== {text}");
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Latencies and outcomes of one kind of call.
#[derive(Default)]
struct Stats {
    ok: u64,
    failed: u64,
    denied: u64,
    latencies_ms: Vec<f64>,
    versions: BTreeMap<String, u64>,
}

impl Stats {
    fn record(&mut self, elapsed: Duration, status: Option<u16>, version: Option<String>) {
        match status {
            Some(s) if s < 400 => self.ok += 1,
            Some(403) => self.denied += 1,
            _ => self.failed += 1,
        }
        if self.latencies_ms.len() < 200_000 {
            self.latencies_ms.push(elapsed.as_secs_f64() * 1000.0);
        }
        if let Some(v) = version {
            *self.versions.entry(v).or_default() += 1;
        }
    }

    fn percentile(&self, p: f64) -> f64 {
        if self.latencies_ms.is_empty() {
            return 0.0;
        }
        let mut v = self.latencies_ms.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v[((v.len() - 1) as f64 * p).round() as usize]
    }
}

#[derive(Default)]
struct Board {
    rows: BTreeMap<&'static str, Stats>,
}

type Shared = Arc<Mutex<Board>>;

fn record(
    board: &Shared,
    row: &'static str,
    elapsed: Duration,
    status: Option<u16>,
    version: Option<String>,
) {
    board
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .rows
        .entry(row)
        .or_default()
        .record(elapsed, status, version);
}

async fn get(client: &HttpClient, addr: SocketAddr, path: &str) -> (Option<u16>, String) {
    let Ok(req) = http::Request::get(format!("http://{addr}{path}")).body(Full::new(Bytes::new()))
    else {
        return (None, String::new());
    };
    match tokio::time::timeout(Duration::from_secs(5), client.request(req)).await {
        Ok(Ok(resp)) => {
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            (Some(status), String::from_utf8_lossy(&body).into_owned())
        }
        _ => (None, String::new()),
    }
}

/// Stops every in-process app when set (their listeners close).
fn apps_stop() -> &'static tokio::sync::watch::Sender<bool> {
    static STOP: std::sync::OnceLock<tokio::sync::watch::Sender<bool>> = std::sync::OnceLock::new();
    STOP.get_or_init(|| tokio::sync::watch::channel(false).0)
}

/// An in-process app: `handler(path)` gives the reply's status and body.
async fn app<F, Fut>(handler: F) -> Result<SocketAddr, DemoError>
where
    F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = (http::StatusCode, String)> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| fail("app")(e.to_string()))?;
    let addr = listener
        .local_addr()
        .map_err(|e| fail("app")(e.to_string()))?;
    let mut stopped = apps_stop().subscribe();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                // Dropping the listener: the app is gone (connections refused).
                _ = stopped.wait_for(|s| *s) => return,
            };
            let Ok((tcp, _)) = accepted else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let handler = handler.clone();
                    async move {
                        let (status, body) = handler(req.uri().path().to_owned()).await;
                        let mut resp = http::Response::new(Full::new(Bytes::from(body)));
                        *resp.status_mut() = status;
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
            });
        }
    });
    Ok(addr)
}

/// The operator's client certificate, from the files `ca init` wrote.
fn slot_from_files(cert: &Path, key: &Path) -> Result<CertSlot, DemoError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| fail("operator credentials")(format!("{}: {e}", p.display())))
    };
    let chain = bulkhead_tls::certs_from_pem(&read(cert)?, &cert.display().to_string())
        .map_err(|e| fail("operator certificate")(e.to_string()))?;
    let key = bulkhead_tls::key_from_pem(&read(key)?, &key.display().to_string())
        .map_err(|e| fail("operator key")(e.to_string()))?;
    let slot = CertSlot::empty();
    slot.set(CertSlot::certified_key(chain, key).map_err(|e| fail("operator key")(e.to_string()))?);
    Ok(slot)
}

/// One sidecar process. Its listeners bind port 0; the addresses are
/// known once it has written its `--addresses-file`.
struct Sidecar {
    name: String,
    child: Child,
    addresses_file: std::path::PathBuf,
    /// The `--upstream` targets it was given (`inventory`, ...).
    targets: Vec<String>,
    admin: SocketAddr,
    upstreams: BTreeMap<String, SocketAddr>,
}

impl Sidecar {
    /// Reads the addresses the sidecar bound, once it has written them.
    fn learn_addresses(&mut self) -> bool {
        let Some(json) = std::fs::read_to_string(&self.addresses_file)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        else {
            return false;
        };
        let addr = |v: &serde_json::Value| v.as_str().and_then(|a| a.parse().ok());
        let Some(admin) = addr(&json["admin"]) else {
            return false;
        };
        self.admin = admin;
        for target in &self.targets {
            if let Some(a) = addr(&json["upstreams"][format!("{target}.shop")]) {
                self.upstreams.insert(target.clone(), a);
            }
        }
        true
    }
}

struct SidecarPlan<'a> {
    service: &'a str,
    version: &'a str,
    node: &'a str,
    app: Option<SocketAddr>,
    protocol: &'a str,
    upstreams: &'a [&'a str],
}

fn spawn_sidecar(
    dir: &Path,
    control: &str,
    bundle: &Path,
    token: String,
    plan: &SidecarPlan<'_>,
) -> Result<Sidecar, DemoError> {
    let name = format!("{}-{}-{}", plan.service, plan.version, plan.node);
    let own = dir.join(&name);
    std::fs::create_dir_all(&own).map_err(|e| fail("sidecar dir")(e.to_string()))?;
    let token_file = own.join("token");
    std::fs::write(&token_file, token).map_err(|e| fail("token file")(e.to_string()))?;
    let addresses_file = own.join("addresses.json");
    let exe = std::env::current_exe().map_err(|e| fail("own binary")(e.to_string()))?;
    let mut cmd = Command::new(exe);
    cmd.args([
        "sidecar",
        "run",
        "--control",
        control,
        "--namespace",
        "shop",
    ])
    .arg("--trust-bundle")
    .arg(bundle)
    .arg("--token-file")
    .arg(&token_file)
    .args([
        "--service",
        plan.service,
        "--version",
        plan.version,
        "--app-protocol",
        plan.protocol,
    ])
    .args([
        "--node", plan.node, "--zone", "zone-a", "--region", "region-1",
    ])
    .args(["--inbound", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
    .arg("--addresses-file")
    .arg(&addresses_file)
    .arg("--state-dir")
    .arg(own.join("state"))
    .args(["--log-level", "warn"]);
    if let Some(app) = plan.app {
        cmd.arg("--app").arg(app.to_string());
    }
    for target in plan.upstreams {
        cmd.arg("--upstream").arg(format!("{target}=127.0.0.1:0"));
    }
    let log =
        std::fs::File::create(own.join("proxy.log")).map_err(|e| fail("log")(e.to_string()))?;
    let child = cmd
        .stdout(Stdio::null())
        .stderr(log)
        .env("NO_COLOR", "1")
        .spawn()
        .map_err(|e| fail("start sidecar")(e.to_string()))?;
    Ok(Sidecar {
        name,
        child,
        addresses_file,
        targets: plan.upstreams.iter().map(|t| (*t).to_owned()).collect(),
        admin: SocketAddr::from(([127, 0, 0, 1], 0)),
        upstreams: BTreeMap::new(),
    })
}

async fn admin_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    match get(&client, addr, path).await {
        (Some(s), body) => Some((s, body)),
        _ => None,
    }
}

/// Sum of a Prometheus counter's samples whose labels contain every `want`.
fn metric_sum(text: &str, name: &str, want: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(|l| want.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub(crate) async fn run(duration: Duration, dashboard: Option<u16>) -> DemoResult {
    let dir = std::env::temp_dir().join(format!("bulkhead-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| fail("temp dir")(e.to_string()))?;
    let mut sidecars = Vec::new();
    let result = tokio::select! {
        r = scenario(&dir, duration, dashboard, &mut sidecars) => r,
        _ = tokio::signal::ctrl_c() => {
            println!("\n== interrupted: stopping");
            Ok(())
        }
    };
    step(
        "stopping: the apps, then SIGTERM to every sidecar (they deregister and drain, as when Kubernetes stops a pod), then the control plane",
    );
    // As in a pod, the app goes first: a sidecar keeps serving its app's
    // outbound calls until the app has exited.
    apps_stop().send_replace(true);
    for s in &mut sidecars {
        let _ = Command::new("kill")
            .args(["-TERM", &s.child.id().to_string()])
            .status();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for s in &mut sidecars {
        loop {
            match s.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = s.child.kill();
                    let _ = s.child.wait();
                    break;
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if result.is_ok() {
        println!("== done: nothing left running");
    }
    result
}

async fn scenario(
    dir: &Path,
    duration: Duration,
    dashboard: Option<u16>,
    sidecars: &mut Vec<Sidecar>,
) -> DemoResult {
    let started = Instant::now();
    let ca_dir = dir.join("ca");
    step("bulkheadctl ca init: root, issuer, trust bundle, operator certificate");
    let files =
        ca::init_ca("cluster.local", &ca_dir).map_err(|e| fail("ca init")(e.to_string()))?;
    let trust = Arc::new(
        Trust::load(&TrustFiles::in_dir(&ca_dir, "cluster.local"))
            .map_err(|e| fail("load CA")(e.to_string()))?,
    );
    let issuer_key = std::fs::read_to_string(&files.issuer_key)
        .map_err(|e| fail("issuer key")(e.to_string()))?;

    step("bulkhead-control on the embedded store (loopback, ephemeral ports)");
    let metrics = bulkhead_control::telemetry::init_metrics().map_err(fail("metrics"))?;
    let running = runtime::start(
        Settings {
            listen: "127.0.0.1:0".parse().expect("static addr"),
            admin: "127.0.0.1:0".parse().expect("static addr"),
            trust,
            replica: "demo".into(),
            operators: vec![],
            cert_lifetime: Duration::from_secs(3600),
            lease_ttl: Duration::from_secs(5),
            leader_lease_ttl: Duration::from_secs(10),
            // Rollouts in the demo take seconds per step: report often.
            report_interval: Duration::from_secs(1),
            stats_retention: Duration::from_secs(15 * 60),
            events: Default::default(),
            dns_names: vec!["localhost".into()],
            k8s: None,
            topology: None,
            webhook: None,
        },
        Arc::new(MemoryStore::new()),
        metrics,
    )
    .await
    .map_err(fail("start control plane"))?;
    let url = format!("https://{}", running.grpc_addr);
    let show = Show {
        duration,
        started,
        dashboard,
    };
    let result = shop(&url, &files, &issuer_key, dir, show, sidecars).await;
    running.shutdown().await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn shop(
    url: &str,
    files: &ca::CaFiles,
    issuer_key: &str,
    dir: &Path,
    show: Show,
    sidecars: &mut Vec<Sidecar>,
) -> DemoResult {
    let Show {
        duration,
        started,
        dashboard,
    } = show;
    let bundle_pem = std::fs::read(&files.bundle).map_err(|e| fail("bundle")(e.to_string()))?;
    let bundle = TrustBundle::from_pem(&bundle_pem, "bundle.crt", "cluster.local")
        .map_err(|e| fail("bundle")(e.to_string()))?;
    let operator = slot_from_files(&files.operator_cert, &files.operator_key)?;
    step("bulkheadctl apply -f examples/shop.yaml (as the operator, over mTLS)");
    let channel = bulkhead_tls::channel(url, &bundle, Some(operator))
        .map_err(|e| fail("channel")(e.to_string()))?;
    let mut admin = AdminClient::new(channel);
    // The dashboard reads the mesh as the operator, like `bulkheadctl
    // dashboard` (which cannot run the demo: it never links the proxy).
    let _dashboard = match dashboard {
        Some(port) => Some(start_dashboard(port, admin.clone()).await?),
        None => None,
    };
    let applied = admin
        .apply(pb::ApplyRequest {
            source: "examples/shop.yaml".into(),
            yaml: SHOP.into(),
            dry_run: false,
        })
        .await
        .map_err(|s| fail("apply")(s.message().to_owned()))?
        .into_inner();
    let names: Vec<String> = applied
        .results
        .iter()
        .map(|r| format!("{}/{}", r.kind.to_lowercase(), r.name))
        .collect();
    println!("   {}", names.join("  "));

    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    // Apps. cart calls inventory and pricing through its sidecar.
    let cart_upstreams: Arc<Mutex<BTreeMap<String, SocketAddr>>> = Arc::default();
    let board: Shared = Arc::default();
    let inventory = |version: &'static str| {
        move |_path: String| async move {
            (
                http::StatusCode::OK,
                format!("inventory version={version} stock=17"),
            )
        }
    };
    let bad_inventory = {
        let served = Arc::new(std::sync::atomic::AtomicU64::new(0));
        move |_path: String| {
            let n = served.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            async move {
                if n.is_multiple_of(8) {
                    (
                        http::StatusCode::INTERNAL_SERVER_ERROR,
                        "inventory version=3.2.0 error=database".to_owned(),
                    )
                } else {
                    (
                        http::StatusCode::OK,
                        "inventory version=3.2.0 stock=17".to_owned(),
                    )
                }
            }
        }
    };
    let pricing = |node: &'static str| {
        move |_path: String| async move {
            (
                http::StatusCode::OK,
                format!("pricing node={node} price=9.99"),
            )
        }
    };
    let cart_app = {
        let upstreams = cart_upstreams.clone();
        let board = board.clone();
        let client = client.clone();
        move |_path: String| {
            let upstreams = upstreams.clone();
            let board = board.clone();
            let client = client.clone();
            async move {
                let (inv, pri) = {
                    let u = upstreams.lock().unwrap_or_else(|e| e.into_inner());
                    (u.get("inventory").copied(), u.get("pricing").copied())
                };
                let mut parts = Vec::new();
                if let Some(addr) = inv {
                    let t = Instant::now();
                    let (status, body) = get(&client, addr, "/v1/stock/42").await;
                    let version = body
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("version="))
                        .map(str::to_owned);
                    record(&board, "cart → inventory", t.elapsed(), status, version);
                    parts.push(body);
                }
                if let Some(addr) = pri {
                    let t = Instant::now();
                    let (status, body) = get(&client, addr, "/price/42").await;
                    let node = body
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("node="))
                        .map(str::to_owned);
                    record(&board, "cart → pricing", t.elapsed(), status, node);
                    parts.push(body);
                }
                (http::StatusCode::OK, parts.join("; "))
            }
        }
    };
    let plans = [
        SidecarPlan {
            service: "inventory",
            version: "3.0.0",
            node: "node-1",
            app: Some(app(inventory("3.0.0")).await?),
            protocol: "http",
            upstreams: &[],
        },
        SidecarPlan {
            service: "inventory",
            version: "3.1.0",
            node: "node-2",
            app: Some(app(inventory("3.1.0")).await?),
            protocol: "http",
            upstreams: &[],
        },
        // A bad build: one request in eight fails. No traffic reaches it
        // until a rollout gives it some.
        SidecarPlan {
            service: "inventory",
            version: "3.2.0",
            node: "node-2",
            app: Some(app(bad_inventory).await?),
            protocol: "http",
            upstreams: &[],
        },
        SidecarPlan {
            service: "pricing",
            version: "1.0.0",
            node: "node-1",
            app: Some(app(pricing("node-1")).await?),
            protocol: "grpc",
            upstreams: &[],
        },
        SidecarPlan {
            service: "pricing",
            version: "1.0.0",
            node: "node-2",
            app: Some(app(pricing("node-2")).await?),
            protocol: "grpc",
            upstreams: &[],
        },
        SidecarPlan {
            service: "cart",
            version: "2.0.1",
            node: "node-1",
            app: Some(app(cart_app).await?),
            protocol: "http",
            upstreams: &["inventory", "pricing"],
        },
        SidecarPlan {
            service: "web",
            version: "1.4.0",
            node: "node-1",
            app: None,
            protocol: "http",
            upstreams: &["cart", "inventory"],
        },
    ];
    step("sidecars: one bulkhead-proxy process per workload, each with a one-time token");
    for plan in &plans {
        let id = SpiffeId::from_ns_sa("cluster.local", &format!("shop/{}", plan.service))
            .map_err(|e| fail("identity")(e.to_string()))?;
        let token = ca::mint_token(
            issuer_key,
            &id,
            Duration::from_secs(600),
            true,
            SystemTime::now(),
        )
        .map_err(|e| fail("token")(e.to_string()))?;
        let sidecar = spawn_sidecar(dir, url, &files.bundle, token, plan)?;
        println!(
            "   {:<28} {} on {}{}",
            sidecar.name,
            id,
            plan.node,
            if plan.upstreams.is_empty() {
                String::new()
            } else {
                format!(", calls {}", plan.upstreams.join(", "))
            }
        );
        sidecars.push(sidecar);
    }
    // Wait for every sidecar to be ready (certificate, config, app).
    let deadline = Instant::now() + Duration::from_secs(30);
    for s in sidecars.iter_mut() {
        loop {
            if let Ok(Some(status)) = s.child.try_wait() {
                return Err(DemoError::new(format!(
                    "demo: sidecar {} exited ({status}); see its log in {}",
                    s.name,
                    dir.display()
                )));
            }
            if s.learn_addresses() && matches!(admin_get(s.admin, "/ready").await, Some((200, _))) {
                break;
            }
            if Instant::now() > deadline {
                return Err(DemoError::new(format!(
                    "demo: sidecar {} not ready after 30 s",
                    s.name
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    if let Some(cart) = sidecars.iter().find(|s| s.name.starts_with("cart")) {
        *cart_upstreams.lock().unwrap_or_else(|e| e.into_inner()) = cart.upstreams.clone();
    }
    let web = sidecars
        .iter()
        .find(|s| s.name.starts_with("web"))
        .map(|s| s.upstreams.clone())
        .unwrap_or_default();
    let (Some(&web_cart), Some(&web_inventory)) = (web.get("cart"), web.get("inventory")) else {
        return Err(DemoError::new("demo: web sidecar has no upstreams"));
    };
    // Endpoints are pushed to callers asynchronously: wait for a first answer.
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(&client, web_cart, "/cart/items").await.0 != Some(200) {
        if Instant::now() > deadline {
            return Err(DemoError::new("demo: web cannot reach cart"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    board.lock().unwrap_or_else(|e| e.into_inner()).rows.clear();

    let run_for = duration
        .saturating_sub(started.elapsed())
        .max(Duration::from_secs(3));
    step(&format!(
        "traffic for {}s: web → cart (→ inventory, pricing), and web → inventory, which no allow-list permits",
        run_for.as_secs()
    ));
    let driver = {
        let board = board.clone();
        let client = client.clone();
        tokio::spawn(async move {
            let mut n: u64 = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            loop {
                tick.tick().await;
                n += 1;
                let (row, addr, path) = if n.is_multiple_of(25) {
                    ("web → inventory (forbidden)", web_inventory, "/v1/stock/42")
                } else {
                    ("web → cart", web_cart, "/cart/items")
                };
                let t = Instant::now();
                let (status, _) = get(&client, addr, path).await;
                record(&board, row, t.elapsed(), status, None);
            }
        })
    };
    let end = Instant::now() + run_for;
    let admins: Vec<(String, SocketAddr)> =
        sidecars.iter().map(|s| (s.name.clone(), s.admin)).collect();
    while Instant::now() < end {
        tokio::time::sleep(
            Duration::from_secs(2).min(end.saturating_duration_since(Instant::now())),
        )
        .await;
        print_table(&board, &admins).await;
    }
    step("rollout inventory 3.0.0 -> 3.1.0: steps of 3s, gated on what the sidecars report");
    let released = crate::rollouts::release(&mut admin, "3.0.0", "3.1.0", "Promoted").await;
    if released.is_ok() {
        step("rollout inventory 3.1.0 -> 3.2.0, a build that fails one request in eight");
    }
    let released = match released {
        Ok(()) => crate::rollouts::release(&mut admin, "3.1.0", "3.2.0", "Failed").await,
        failed => failed,
    };
    print_table(&board, &admins).await;
    if dashboard.is_some() && released.is_ok() {
        step("the shop keeps running for the dashboard: Ctrl-C stops the demo");
        std::future::pending::<()>().await;
    }
    driver.abort();
    released
}

/// How long the show runs, and whether a dashboard watches it.
struct Show {
    duration: Duration,
    started: Instant,
    dashboard: Option<u16>,
}

/// Aborts the dashboard's task when the demo ends.
struct DashboardTask(tokio::task::JoinHandle<()>);

impl Drop for DashboardTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn start_dashboard(
    port: u16,
    admin: AdminClient<tonic::transport::Channel>,
) -> Result<DashboardTask, DemoError> {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let dashboard = bulkhead_control::dashboard::Dashboard::bind(address, admin)
        .await
        .map_err(|e| fail("dashboard")(e.to_string()))?;
    step(&format!("Dashboard: {}", dashboard.url()));
    Ok(DashboardTask(tokio::spawn(
        dashboard.serve(std::future::pending()),
    )))
}

async fn print_table(board: &Shared, admins: &[(String, SocketAddr)]) {
    // Locality and denials come from the sidecars' own /metrics.
    let mut local = BTreeMap::new();
    let mut denied_at_inventory = 0.0;
    for (name, admin) in admins {
        let Some((_, text)) = admin_get(*admin, "/metrics").await else {
            continue;
        };
        if name.starts_with("cart") {
            for svc in ["inventory", "pricing"] {
                let s = format!("service=\"{svc}\"");
                let node = metric_sum(&text, "bulkhead_lb_picks_total", &[&s, "tier=\"node\""]);
                let all = metric_sum(&text, "bulkhead_lb_picks_total", &[&s]);
                local.insert(svc, if all > 0.0 { node / all * 100.0 } else { 0.0 });
            }
        }
        if name.starts_with("inventory") {
            denied_at_inventory += metric_sum(&text, "bulkhead_authz_denied_total", &[]);
        }
    }
    let board = board.lock().unwrap_or_else(|e| e.into_inner());
    println!();
    println!(
        "   {:<28} {:>8} {:>8} {:>8} {:>8} {:>7}  {:<26} {:>9}",
        "CALL", "REQS", "SUCCESS", "P50 ms", "P99 ms", "DENIED", "SPLIT", "LOCAL"
    );
    for (row, s) in &board.rows {
        let total = s.ok + s.failed + s.denied;
        let success = if total > 0 {
            s.ok as f64 / total as f64 * 100.0
        } else {
            0.0
        };
        let seen: u64 = s.versions.values().sum();
        let split: Vec<String> = s
            .versions
            .iter()
            .map(|(v, n)| format!("{v} {:.0}%", *n as f64 / seen.max(1) as f64 * 100.0))
            .collect();
        let target = if row.ends_with("inventory") {
            Some("inventory")
        } else if row.ends_with("pricing") {
            Some("pricing")
        } else {
            None
        };
        let local_share = target
            .and_then(|t| local.get(t))
            .map(|p| format!("{p:.0}% node"))
            .unwrap_or_default();
        println!(
            "   {:<28} {:>8} {:>7.1}% {:>8.2} {:>8.2} {:>7}  {:<26} {:>9}",
            row,
            total,
            success,
            s.percentile(0.5),
            s.percentile(0.99),
            s.denied,
            split.join("  "),
            local_share
        );
    }
    println!(
        "   denials counted by the inventory sidecars (bulkhead_authz_denied_total): {denied_at_inventory:.0}"
    );
}
