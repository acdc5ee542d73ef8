//! The sidecar under change and fault: version splits and pins, local-first
//! balancing and failover, retries when an endpoint dies mid-request,
//! certificate renewal, a dead control plane, SIGTERM drain, and a restart
//! from `--state-dir` while the control plane is down.
//!
//! Every call goes app → caller sidecar → mTLS → callee sidecar → app over
//! real loopback sockets. Loads are bounded in count and time; waits are
//! bounded polls on a signal (a metric, `/config`, a counter, an app's
//! report), never bare sleeps.
//!
//! How "the endpoint died while the request was in flight" is made
//! deterministic: two replicas front [`holding_app`]s that share one hold, so
//! the first `/hold/...` request is held by whichever app it reaches (which
//! reports itself) while any retry of it is answered at once by the other.
//! The test then kills (or SIGTERMs) exactly that replica's sidecar. A
//! second, counting fault is [`resetting_app`]: it reads the request and
//! resets the connection, so the attempts each method gets are counted at
//! the app.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bulkhead_tests::control::*;
use bulkhead_tests::etcd::EtcdServer;
use bulkhead_tests::prom::{metric, metric_if_any};
use bulkhead_tests::proxy::*;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const MESH: &str = "
apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ports: [{port: 8080, protocol: http}]
---
apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: inventory, namespace: shop}
spec:
  ports: [{port: 8080, protocol: http}]
---
apiVersion: bulkhead.dev/v1
kind: AllowList
metadata: {name: inventory-from-web, namespace: shop}
spec:
  target: inventory
  rules:
    - from: [web]
      ports: [8080]
";

const CANARY: &str = "3.1.0";
const STABLE: &str = "3.0.0";

fn split(stable_weight: u32, canary_weight: u32) -> String {
    format!(
        "
apiVersion: bulkhead.dev/v1
kind: TrafficSplit
metadata: {{name: inventory, namespace: shop}}
spec:
  service: inventory
  backends:
    - {{version: \"{STABLE}\", weight: {stable_weight}}}
    - {{version: \"{CANARY}\", weight: {canary_weight}}}
  match:
    - header: {{name: x-canary, value: \"true\"}}
      version: \"{CANARY}\"
"
    )
}

// ---------------------------------------------------------------------------
// The mesh under test.

/// Sidecar, control-plane and etcd helpers block (process spawns, bounded
/// polls); run them off the async workers so in-process apps keep answering.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

struct Mesh {
    ca: TestCa,
    cp: ControlPlane,
    // Dropped after the control plane (fields drop in order).
    _etcd: Option<EtcdServer>,
}

impl Mesh {
    /// A control plane on the in-memory store with `MESH` applied.
    async fn memory(extra: &[&str]) -> Self {
        let ca = TestCa::init("cluster.local");
        let cp = blocking(|| ControlPlane::start(&ca, &StoreSpec::Memory, extra));
        apply(&cp, &ca, MESH).await;
        Self {
            ca,
            cp,
            _etcd: None,
        }
    }

    /// A control plane on a real etcd (state survives its restart).
    async fn etcd(extra: &[&str]) -> Self {
        let etcd = blocking(EtcdServer::start);
        let ca = TestCa::init("cluster.local");
        let store = StoreSpec::Etcd {
            endpoints: vec![etcd.client_url()],
            prefix: "/bulkhead/".into(),
        };
        let cp = blocking(|| ControlPlane::start(&ca, &store, extra));
        apply(&cp, &ca, MESH).await;
        Self {
            ca,
            cp,
            _etcd: Some(etcd),
        }
    }

    fn sidecar(&self, spec: SidecarSpec) -> Sidecar {
        blocking(|| Sidecar::start(&self.ca, &self.cp, spec))
    }

    /// An inventory endpoint: its sidecar in front of `app`.
    fn inventory(&self, version: &str, node: &str, app: &App) -> Sidecar {
        self.sidecar(
            SidecarSpec::new("shop", "inventory", version)
                .app(app)
                .node(node),
        )
    }

    /// The caller: `web`, with an upstream listener for inventory.
    fn web(&self, node: &str) -> Sidecar {
        self.sidecar(
            SidecarSpec::new("shop", "web", "1.0.0")
                .upstream("inventory")
                .node(node),
        )
    }
}

// ---------------------------------------------------------------------------
// What sidecars report.

fn metrics_of(sidecar: &Sidecar) -> String {
    blocking(|| sidecar.metrics())
}

fn config_of(sidecar: &Sidecar) -> serde_json::Value {
    blocking(|| sidecar.config())
}

/// The inventory endpoints the sidecar's `/config` lists, as `addr:port`.
fn inventory_endpoints(sidecar: &Sidecar) -> Vec<String> {
    let mut eps: Vec<String> = config_of(sidecar)["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["service"] == "inventory")
        .map(|e| {
            format!(
                "{}:{}",
                e["address"].as_str().unwrap_or(""),
                e["inboundPort"]
            )
        })
        .collect();
    eps.sort();
    eps
}

fn endpoint_key(sidecar: &Sidecar) -> String {
    format!("{}:{}", sidecar.inbound.ip(), sidecar.inbound.port())
}

/// The inventory TrafficSplit's weights as the sidecar knows them.
fn split_weights(sidecar: &Sidecar) -> Option<BTreeMap<String, u64>> {
    let config = config_of(sidecar);
    let resources = config["resources"].as_array()?;
    let ts = resources
        .iter()
        .find(|r| r["kind"] == "TrafficSplit" && r["metadata"]["name"] == "inventory")?;
    Some(
        ts["spec"]["backends"]
            .as_array()?
            .iter()
            .filter_map(|b| Some((b["version"].as_str()?.to_owned(), b["weight"].as_u64()?)))
            .collect(),
    )
}

/// Waits until the caller's `/config` lists exactly `expected` inventory
/// endpoints.
async fn until_endpoints(caller: &Sidecar, expected: &[&Sidecar]) {
    let mut want: Vec<String> = expected.iter().map(|s| endpoint_key(s)).collect();
    want.sort();
    wait_for_async(
        &format!("the caller to list inventory endpoints {want:?}"),
        Duration::from_secs(20),
        || {
            let seen = inventory_endpoints(caller);
            let want = want.clone();
            async move { (seen == want).then_some(()) }
        },
    )
    .await;
}

/// Waits until the caller knows the split with these weights.
async fn until_split(caller: &Sidecar, stable: u64, canary: u64, within: Duration) {
    let want: BTreeMap<String, u64> = [(STABLE.to_owned(), stable), (CANARY.to_owned(), canary)]
        .into_iter()
        .collect();
    wait_for_async(
        &format!("the caller to know the split {want:?}"),
        within,
        || {
            let seen = split_weights(caller);
            let want = want.clone();
            async move { (seen == Some(want)).then_some(()) }
        },
    )
    .await;
}

async fn until_connected(caller: &Sidecar, connected: f64, within: Duration) {
    wait_for_async(
        &format!("bulkhead_control_plane_connected {connected}"),
        within,
        || {
            let m = metric_if_any(&metrics_of(caller), "bulkhead_control_plane_connected", &[]);
            async move { (m == Some(connected)).then_some(()) }
        },
    )
    .await;
}

// ---------------------------------------------------------------------------
// Traffic.

/// What a batch of calls returned.
#[derive(Debug, Default)]
struct Tally {
    /// Successful calls by the version that answered.
    versions: BTreeMap<String, usize>,
    /// Everything that was not a 200 from an app, described.
    failures: Vec<String>,
}

impl Tally {
    fn record(&mut self, result: Result<Reply, String>) {
        match result {
            Ok(r) if r.status == 200 => {
                let v = version_of(&r.body).unwrap_or("?").to_owned();
                *self.versions.entry(v).or_default() += 1;
            }
            Ok(r) => self.failures.push(format!(
                "{} {:?} {}",
                r.status,
                r.headers.get("x-bulkhead-error"),
                r.body
            )),
            Err(e) => self.failures.push(e),
        }
    }

    fn merge(&mut self, other: Tally) {
        for (v, n) in other.versions {
            *self.versions.entry(v).or_default() += n;
        }
        self.failures.extend(other.failures);
    }

    fn ok(&self) -> usize {
        self.versions.values().sum()
    }

    fn count(&self, version: &str) -> usize {
        self.versions.get(version).copied().unwrap_or(0)
    }

    fn share(&self, version: &str) -> f64 {
        self.count(version) as f64 / self.ok().max(1) as f64
    }
}

/// `n` GETs through `addr`, `concurrency` at a time, each worker on its own
/// pooled client.
async fn calls(addr: SocketAddr, n: usize, concurrency: usize, headers: &[(&str, &str)]) -> Tally {
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            let headers = headers.clone();
            let share = n / concurrency + usize::from(w < n % concurrency);
            tokio::spawn(async move {
                let client = client();
                let headers: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let mut tally = Tally::default();
                for i in 0..share {
                    let path = format!("/stock/{w}-{i}");
                    tally.record(call_with(&client, addr, "GET", &path, &headers).await);
                }
                tally
            })
        })
        .collect();
    let mut tally = Tally::default();
    for w in workers {
        tally.merge(w.await.expect("worker"));
    }
    tally
}

/// Steady background traffic: workers each sending GETs one after another
/// (paced), until stopped. Bounded: at most `MAX_PER_WORKER` calls and
/// `MAX_LOAD_TIME` per worker.
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    workers: Vec<tokio::task::JoinHandle<Tally>>,
}

const MAX_PER_WORKER: u64 = 400;
const MAX_LOAD_TIME: Duration = Duration::from_secs(60);

impl Load {
    /// `pace`: pause between one worker's calls (load shaping, not timing).
    fn start(addr: SocketAddr, workers: usize, pace: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let workers = (0..workers)
            .map(|w| {
                let (stop, done) = (stop.clone(), done.clone());
                tokio::spawn(async move {
                    let client = client();
                    let started = Instant::now();
                    let mut tally = Tally::default();
                    for i in 0..MAX_PER_WORKER {
                        if stop.load(Ordering::SeqCst) || started.elapsed() > MAX_LOAD_TIME {
                            break;
                        }
                        let path = format!("/stock/load-{w}-{i}");
                        tally.record(call_with(&client, addr, "GET", &path, &[]).await);
                        done.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(pace).await;
                    }
                    tally
                })
            })
            .collect();
        Self {
            stop,
            done,
            workers,
        }
    }

    /// Adds a worker sending its calls one after another on a single
    /// keep-alive connection (which must never break).
    async fn and_one_connection(mut self, addr: SocketAddr, pace: Duration) -> Self {
        let mut conn = OneConnection::open(addr).await;
        let (stop, done) = (self.stop.clone(), self.done.clone());
        self.workers.push(tokio::spawn(async move {
            let started = Instant::now();
            let mut tally = Tally::default();
            for i in 0..MAX_PER_WORKER {
                if stop.load(Ordering::SeqCst) || started.elapsed() > MAX_LOAD_TIME {
                    break;
                }
                tally.record(conn.get(&format!("/stock/seq-{i}"), &[]).await);
                done.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(pace).await;
            }
            tally
        }));
        self
    }

    fn done(&self) -> u64 {
        self.done.load(Ordering::SeqCst)
    }

    /// Waits until `n` more calls have completed (the load is flowing).
    async fn until_more(&self, n: u64, what: &str) {
        let target = self.done() + n;
        let done = self.done.clone();
        wait_for_async(
            &format!("{n} more calls ({what})"),
            Duration::from_secs(30),
            || {
                let reached = done.load(Ordering::SeqCst) >= target;
                async move { reached.then_some(()) }
            },
        )
        .await;
    }

    async fn finish(self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        let mut tally = Tally::default();
        for w in self.workers {
            tally.merge(w.await.expect("load worker"));
        }
        tally
    }
}

/// One HTTP/1.1 keep-alive connection from the app to its sidecar: if the
/// sidecar dropped it, the next request would fail.
struct OneConnection {
    addr: SocketAddr,
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl OneConnection {
    async fn open(addr: SocketAddr) -> Self {
        let tcp = TcpStream::connect(addr).await.expect("connect upstream");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("HTTP/1.1 handshake");
        tokio::spawn(conn);
        Self { addr, sender }
    }

    async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Reply, String> {
        tokio::time::timeout(Duration::from_secs(20), async {
            self.sender
                .ready()
                .await
                .map_err(|e| format!("connection lost: {e}"))?;
            let mut req = Request::get(path).header("host", self.addr.to_string());
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let req = req
                .body(Full::new(Bytes::new()))
                .map_err(|e| e.to_string())?;
            let resp = self
                .sender
                .send_request(req)
                .await
                .map_err(|e| format!("connection lost: {e}"))?;
            Reply::read(resp).await
        })
        .await
        .map_err(|_| "timed out".to_owned())?
    }

    async fn gets(&mut self, n: usize) -> Tally {
        let mut tally = Tally::default();
        for i in 0..n {
            tally.record(self.get(&format!("/stock/{i}"), &[]).await);
        }
        tally
    }
}

// ---------------------------------------------------------------------------
// Apps that misbehave on purpose.

/// An app that answers like [`App::http`], except that the first request
/// whose path starts with `/hold` among all apps sharing `hold` is held
/// (reported on `arrivals` with this app's index) for `hold_for`: one
/// request in flight at a known endpoint, while every retry of it is
/// answered at once.
async fn holding_app(
    index: usize,
    hold: Arc<AtomicBool>,
    hold_for: Duration,
    arrivals: mpsc::UnboundedSender<(usize, String)>,
) -> App {
    App::http_with(move |req: Request<Incoming>| {
        let path = req.uri().path().to_owned();
        let body = format!(
            "service=inventory version={STABLE} method={} path={path} app={index}",
            req.method()
        );
        let held = path.starts_with("/hold") && !hold.swap(true, Ordering::SeqCst);
        let arrivals = arrivals.clone();
        async move {
            let _ = req.into_body().collect().await;
            if held {
                let _ = arrivals.send((index, path));
                tokio::time::sleep(hold_for).await;
            }
            Response::new(Full::new(Bytes::from(body)))
        }
    })
    .await
}

/// An app that reads each request's head, counts it, and resets the
/// connection without answering: the fault "connection reset after the
/// request was delivered".
async fn resetting_app() -> App {
    App::serve(|mut tcp, count| async move {
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        let read_head = async {
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            true
        };
        if tokio::time::timeout(Duration::from_secs(5), read_head)
            .await
            .unwrap_or(false)
        {
            count.fetch_add(1, Ordering::SeqCst);
        }
        // Linger 0: close with RST, not FIN.
        let _ = tcp.set_zero_linger();
        drop(tcp);
    })
    .await
}

// ---------------------------------------------------------------------------
// 1. Versions.

/// The mesh with inventory 3.0.0 and 3.1.0 (one endpoint each), the split
/// applied, and the caller knowing all of it.
struct Versions {
    mesh: Mesh,
    stable_app: App,
    canary_app: App,
    stable: Sidecar,
    canary: Sidecar,
    web: Sidecar,
}

async fn versions(stable_weight: u32, canary_weight: u32) -> Versions {
    let mesh = Mesh::memory(&[]).await;
    apply(&mesh.cp, &mesh.ca, &split(stable_weight, canary_weight)).await;
    let stable_app = App::http("inventory", STABLE).await;
    let canary_app = App::http("inventory", CANARY).await;
    let stable = mesh.inventory(STABLE, "node-1", &stable_app);
    let canary = mesh.inventory(CANARY, "node-1", &canary_app);
    let web = mesh.web("node-1");
    until_endpoints(&web, &[&stable, &canary]).await;
    until_split(
        &web,
        stable_weight.into(),
        canary_weight.into(),
        Duration::from_secs(20),
    )
    .await;
    Versions {
        mesh,
        stable_app,
        canary_app,
        stable,
        canary,
        web,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_90_10_split_sends_about_a_tenth_of_calls_to_the_canary() {
    let v = versions(90, 10).await;
    let tally = calls(v.web.upstream("inventory"), 1000, 4, &[]).await;
    assert!(tally.failures.is_empty(), "{:?}", tally.failures);
    assert_eq!(tally.ok(), 1000);
    // Binomial(1000, 0.1): sd ≈ 0.0095, so 5 %..15 % is beyond ±5 sd.
    let share = tally.share(CANARY);
    assert!(
        (0.05..=0.15).contains(&share),
        "canary share {share:.3}: {:?}",
        tally.versions
    );
    assert_eq!(
        tally.count(STABLE) + tally.count(CANARY),
        1000,
        "only split versions answer: {:?}",
        tally.versions
    );
    // The apps saw what the replies say (plus the routability probes: none).
    assert_eq!(v.canary_app.seen() as usize, tally.count(CANARY));
    assert_eq!(v.stable_app.seen() as usize, tally.count(STABLE));
    let _ = (&v.mesh, &v.stable, &v.canary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_pins_and_header_matches_override_the_weights() {
    let v = versions(90, 10).await;
    let addr = v.web.upstream("inventory");

    // An exact pin: every call, whatever the weights.
    let pinned = calls(addr, 50, 2, &[("x-bulkhead-version", CANARY)]).await;
    assert!(pinned.failures.is_empty(), "{:?}", pinned.failures);
    assert_eq!(pinned.count(CANARY), 50, "{:?}", pinned.versions);

    // A partial version pins too (`3.0` means =3.0, so 3.0.0).
    let pinned = calls(addr, 20, 2, &[("x-bulkhead-version", "3.0")]).await;
    assert_eq!(
        pinned.count(STABLE),
        20,
        "{:?} {:?}",
        pinned.versions,
        pinned.failures
    );

    // A requirement narrower than the split: only 3.1.x satisfies ^3.1.
    let pinned = calls(addr, 20, 2, &[("x-bulkhead-version", "^3.1")]).await;
    assert_eq!(
        pinned.count(CANARY),
        20,
        "{:?} {:?}",
        pinned.versions,
        pinned.failures
    );

    // A requirement both versions satisfy: both serve (the balancer, not the
    // 90/10 weights, chooses among them).
    let both = calls(addr, 100, 4, &[("x-bulkhead-version", "^3")]).await;
    assert!(both.failures.is_empty(), "{:?}", both.failures);
    assert_eq!(both.ok(), 100);
    assert!(
        both.count(STABLE) > 0 && both.count(CANARY) > 0,
        "^3 accepts both versions: {:?}",
        both.versions
    );

    // The split's header route.
    let routed = calls(addr, 50, 2, &[("x-canary", "true")]).await;
    assert!(routed.failures.is_empty(), "{:?}", routed.failures);
    assert_eq!(routed.count(CANARY), 50, "{:?}", routed.versions);
    // Another value of the header is no match: the weights apply.
    let weighted = calls(addr, 100, 4, &[("x-canary", "false")]).await;
    assert!(weighted.failures.is_empty(), "{:?}", weighted.failures);
    assert!(
        weighted.count(STABLE) > weighted.count(CANARY),
        "{:?}",
        weighted.versions
    );

    // A pin no endpoint satisfies is refused by the mesh (never rerouted to
    // another version); a malformed pin is a 400.
    let r = call(addr, "GET", "/stock/1", &[("x-bulkhead-version", "4.0.0")])
        .await
        .expect("call");
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.headers.contains_key("x-bulkhead-error"), "{r:?}");
    let r = call(addr, "GET", "/stock/1", &[("x-bulkhead-version", "^^3")])
        .await
        .expect("call");
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.headers.contains_key("x-bulkhead-error"), "{r:?}");
    let _ = (&v.mesh, &v.stable, &v.canary, &v.stable_app, &v.canary_app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_change_applies_within_a_second_without_dropping_connections() {
    let v = versions(90, 10).await;
    // One app connection for the whole test: a dropped connection would
    // fail the next request on it.
    let mut conn = OneConnection::open(v.web.upstream("inventory")).await;
    let before = conn.gets(300).await;
    assert!(before.failures.is_empty(), "{:?}", before.failures);
    assert!(
        before.count(STABLE) > 0 && before.count(CANARY) > 0,
        "both versions served before the change: {:?}",
        before.versions
    );
    let handshakes = |s: &Sidecar| {
        metric(
            &metrics_of(s),
            "bulkhead_tls_handshakes_total",
            &[("direction", "outbound"), ("result", "ok")],
        )
    };
    let handshakes_before = handshakes(&v.web);

    apply(&v.mesh.cp, &v.mesh.ca, &split(50, 50)).await;
    let applied = Instant::now();
    until_split(&v.web, 50, 50, Duration::from_secs(1)).await;
    let propagated = applied.elapsed();

    let after = conn.gets(400).await;
    assert!(after.failures.is_empty(), "{:?}", after.failures);
    // Binomial(400, 0.5): sd = 0.025; 35 %..65 % is ±6 sd.
    let share = after.share(CANARY);
    assert!(
        (0.35..=0.65).contains(&share),
        "canary share after 50/50 (config arrived {propagated:?} after apply): {share:.3} {:?}",
        after.versions
    );
    // Neither the app's connection nor the sidecar-to-sidecar ones were
    // replaced.
    assert_eq!(
        handshakes(&v.web),
        handshakes_before,
        "no new mTLS connection for a weight change"
    );
    let _ = (&v.stable, &v.canary, &v.stable_app, &v.canary_app);
}

// ---------------------------------------------------------------------------
// 2. Local first.

/// Inventory on node-1 and node-2 (one zone), the caller on node-1.
struct Local {
    mesh: Mesh,
    local_app: App,
    remote_app: App,
    local: Sidecar,
    remote: Sidecar,
    web: Sidecar,
}

async fn local_first() -> Local {
    let mesh = Mesh::memory(&[]).await;
    let local_app = App::http("inventory", STABLE).await;
    let remote_app = App::http("inventory", STABLE).await;
    let local = mesh.inventory(STABLE, "node-1", &local_app);
    let remote = mesh.inventory(STABLE, "node-2", &remote_app);
    let web = mesh.web("node-1");
    until_endpoints(&web, &[&local, &remote]).await;
    Local {
        mesh,
        local_app,
        remote_app,
        local,
        remote,
        web,
    }
}

fn picks(caller: &Sidecar, tier: &str) -> f64 {
    metric(
        &metrics_of(caller),
        "bulkhead_lb_picks_total",
        &[("service", "inventory"), ("tier", tier)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_stay_on_the_local_node_and_fail_over_when_it_dies() {
    let mut l = local_first().await;
    let addr = l.web.upstream("inventory");
    let (node0, zone0) = (picks(&l.web, "node"), picks(&l.web, "zone"));
    let tally = calls(addr, 200, 2, &[]).await;
    assert!(tally.failures.is_empty(), "{:?}", tally.failures);
    assert_eq!(l.local_app.seen(), 200, "every call stays on node-1");
    assert_eq!(l.remote_app.seen(), 0);
    assert_eq!(picks(&l.web, "node") - node0, 200.0);
    assert_eq!(picks(&l.web, "zone") - zone0, 0.0);

    // Node-1's pod crashes: sidecar and app gone at once. Its endpoint stays
    // listed until its lease runs out; retries and ejection carry the calls.
    blocking(|| l.local.kill());
    l.local_app.stop();
    let during = calls(addr, 200, 2, &[]).await;
    assert!(
        during.failures.is_empty(),
        "GETs are retried on node-2: {} failed: {:?}",
        during.failures.len(),
        during.failures
    );
    assert_eq!(l.remote_app.seen() as usize, during.ok());
    assert!(
        picks(&l.web, "zone") - zone0 >= 200.0,
        "spilled over to the zone tier"
    );
    // Settled: node-1 is ejected; nothing fails any more.
    let settled = calls(addr, 100, 2, &[]).await;
    assert!(settled.failures.is_empty(), "{:?}", settled.failures);

    // The dead endpoint leaves the caller's config when its lease expires.
    until_endpoints(&l.web, &[&l.remote]).await;
    let after = calls(addr, 100, 2, &[]).await;
    assert!(after.failures.is_empty(), "{:?}", after.failures);
    let _ = &l.mesh;
}

/// The first GET after the local endpoint crashed: its connect fails, and
/// its retry must go to the healthy node-2 endpoint rather than back to the
/// dead one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_connect_failure_goes_to_another_endpoint() {
    let mut l = local_first().await;
    let addr = l.web.upstream("inventory");
    let r = call(addr, "GET", "/stock/warm", &[]).await.expect("call");
    assert_eq!(r.status, 200, "{r:?}");
    blocking(|| l.local.kill());
    l.local_app.stop();
    let r = call(addr, "GET", "/stock/after-crash", &[])
        .await
        .expect("call");
    assert_eq!(
        r.status,
        200,
        "retried on node-2: {r:?}; caller log:\n{}",
        l.web.log_text()
    );
    assert_eq!(l.remote_app.seen(), 1);
    let _ = (&l.mesh, &l.remote);
}

// ---------------------------------------------------------------------------
// 3. Retries.

/// Two inventory endpoints of one version, each in front of a
/// [`holding_app`] (sharing one hold); the caller knows both.
struct HeldMesh {
    mesh: Mesh,
    apps: [App; 2],
    arrivals: mpsc::UnboundedReceiver<(usize, String)>,
    sidecars: [Sidecar; 2],
    web: Sidecar,
}

async fn held_mesh(hold_for: Duration, sidecar_args: &[&str]) -> HeldMesh {
    let mesh = Mesh::memory(&[]).await;
    let hold = Arc::new(AtomicBool::new(false));
    let (tx, arrivals) = mpsc::unbounded_channel();
    let apps = [
        holding_app(0, hold.clone(), hold_for, tx.clone()).await,
        holding_app(1, hold, hold_for, tx).await,
    ];
    let sidecars = [0, 1].map(|i| {
        let mut spec = SidecarSpec::new("shop", "inventory", STABLE);
        spec.app = Some(apps[i].addr);
        for a in sidecar_args {
            spec = spec.arg(a);
        }
        mesh.sidecar(spec)
    });
    let web = mesh.web("node-1");
    until_endpoints(&web, &[&sidecars[0], &sidecars[1]]).await;
    until_routable(&web, "inventory", "/probe").await;
    HeldMesh {
        mesh,
        apps,
        arrivals,
        sidecars,
        web,
    }
}

/// Sends `method /hold/order` and waits until one of the apps holds it;
/// returns the call in flight and that app's index.
async fn hold_one(
    m: &mut HeldMesh,
    method: &str,
    headers: &[(&str, &str)],
) -> (tokio::task::JoinHandle<Result<Reply, String>>, usize) {
    let addr = m.web.upstream("inventory");
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let method = method.to_owned();
    let in_flight = tokio::spawn(async move {
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        call(addr, &method, "/hold/order", &headers).await
    });
    let (held, path) = tokio::time::timeout(Duration::from_secs(10), m.arrivals.recv())
        .await
        .expect("the request reaches an app")
        .expect("apps alive");
    assert_eq!(path, "/hold/order");
    (in_flight, held)
}

/// What happened to a request whose endpoint died under it.
struct KilledUnder {
    reply: Result<Reply, String>,
    /// Index of the app that held it (its sidecar is dead).
    held: usize,
    /// Requests the surviving app had seen when its peer died.
    survivor_seen: u64,
}

/// Holds one request at an app ([`hold_one`]), then SIGKILLs that
/// endpoint's sidecar with the request still in flight, and returns the
/// caller's reply.
async fn kill_mid_request(m: &mut HeldMesh, method: &str, headers: &[(&str, &str)]) -> KilledUnder {
    let (in_flight, held) = hold_one(m, method, headers).await;
    let survivor_seen = m.apps[1 - held].seen();
    blocking(|| m.sidecars[held].kill());
    let reply = tokio::time::timeout(Duration::from_secs(20), in_flight)
        .await
        .expect("the caller answers once the endpoint is gone")
        .expect("call task");
    KilledUnder {
        reply,
        held,
        survivor_seen,
    }
}

/// How long [`holding_app`]s hold a request in the retry tests: past the
/// kill, never past the test.
const LONG_HOLD: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gets_keep_succeeding_when_an_endpoint_is_killed_mid_traffic() {
    let mesh = Mesh::memory(&[]).await;
    let apps = [
        App::http("inventory", STABLE).await,
        App::http("inventory", STABLE).await,
    ];
    let mut sidecars = [0, 1].map(|i| mesh.inventory(STABLE, "node-1", &apps[i]));
    let web = mesh.web("node-1");
    until_endpoints(&web, &[&sidecars[0], &sidecars[1]]).await;
    let load = Load::start(web.upstream("inventory"), 3, Duration::from_millis(10));
    load.until_more(60, "before the kill").await;
    assert!(
        apps[0].seen() > 0 && apps[1].seen() > 0,
        "both endpoints serve"
    );

    blocking(|| sidecars[0].kill());
    load.until_more(100, "after the kill").await;
    let during = load.finish().await;
    assert!(
        during.failures.is_empty(),
        "{} of {} GETs failed: {:?}",
        during.failures.len(),
        during.ok() + during.failures.len(),
        during.failures
    );
    let retries = metric(&metrics_of(&web), "bulkhead_retries_total", &[]);
    assert!(retries >= 1.0, "retries are counted");
    // Settled: the dead endpoint is ejected, then gone.
    let settled = calls(web.upstream("inventory"), 100, 3, &[]).await;
    assert!(settled.failures.is_empty(), "{:?}", settled.failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_in_flight_on_a_killed_endpoint_is_retried_on_another() {
    let mut m = held_mesh(LONG_HOLD, &[]).await;
    let k = kill_mid_request(&mut m, "GET", &[]).await;
    let reply = k.reply.expect("the held GET is answered");
    assert_eq!(
        reply.status,
        200,
        "{reply:?}; caller log:\n{}",
        m.web.log_text()
    );
    assert!(
        reply.body.contains(&format!("app={}", 1 - k.held)),
        "answered by the survivor: {reply:?}"
    );
    let _ = &m.mesh;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_without_idempotency_key_is_not_sent_twice_when_its_endpoint_dies() {
    let mut m = held_mesh(LONG_HOLD, &[]).await;
    let retries = metric(&metrics_of(&m.web), "bulkhead_retries_total", &[]);
    let k = kill_mid_request(&mut m, "POST", &[]).await;
    let reply = k.reply.expect("the caller gets an answer, not a hang");
    assert_eq!(reply.status, 502, "{reply:?}");
    assert!(
        reply.headers.contains_key("x-bulkhead-error"),
        "the mesh marks its own error: {reply:?}"
    );
    assert_eq!(
        m.apps[1 - k.held].seen(),
        k.survivor_seen,
        "the POST may have been acted on: it must not be sent to another endpoint"
    );
    assert_eq!(
        metric(&metrics_of(&m.web), "bulkhead_retries_total", &[]),
        retries,
        "no retry"
    );
    let _ = &m.mesh;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_with_idempotency_key_in_flight_on_a_killed_endpoint_is_retried_on_another() {
    let mut m = held_mesh(LONG_HOLD, &[]).await;
    let k = kill_mid_request(&mut m, "POST", &[("idempotency-key", "order-7")]).await;
    let reply = k.reply.expect("the held POST is answered");
    assert_eq!(
        reply.status,
        200,
        "{reply:?}; caller log:\n{}",
        m.web.log_text()
    );
    assert!(
        reply.body.contains("method=POST")
            && reply.body.contains("path=/hold/order")
            && reply.body.contains(&format!("app={}", 1 - k.held)),
        "{reply:?}"
    );
    assert_eq!(
        m.apps[1 - k.held].seen(),
        k.survivor_seen + 1,
        "the keyed POST was sent once more, to the survivor"
    );
    let _ = &m.mesh;
}

/// The same rule, counted at the app: a reset after the request reached it
/// is retried (up to the attempt limit) only for idempotent requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_after_delivery_is_retried_only_for_idempotent_requests() {
    let mesh = Mesh::memory(&[]).await;
    let app = resetting_app().await;
    let mut spec = SidecarSpec::new("shop", "inventory", STABLE);
    spec.app = Some(app.addr);
    let inventory = mesh.sidecar(spec);
    let web = mesh.web("node-1");
    until_endpoints(&web, &[&inventory]).await;
    let addr = web.upstream("inventory");

    let attempts = |method: &'static str, headers: &'static [(&'static str, &'static str)]| {
        let app = &app;
        async move {
            let before = app.seen();
            let r = call(addr, method, "/orders", headers).await.expect("call");
            assert_eq!(r.status, 502, "{method} {headers:?}: {r:?}");
            assert!(r.headers.contains_key("x-bulkhead-error"), "{r:?}");
            app.seen() - before
        }
    };
    assert_eq!(
        attempts("POST", &[]).await,
        1,
        "POST without key: sent once"
    );
    let keyed = attempts("POST", &[("idempotency-key", "k-1")]).await;
    assert!(keyed > 1, "POST with a key is retried: {keyed} attempts");
    let get = attempts("GET", &[]).await;
    assert!(get > 1, "GET is retried: {get} attempts");
    assert!(keyed <= 3 && get <= 3, "bounded attempts: {keyed}, {get}");
}

// ---------------------------------------------------------------------------
// 4. Certificate renewal.

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn cert_not_after(sidecar: &Sidecar) -> Option<u64> {
    config_of(sidecar)["certificateNotAfterUnix"].as_u64()
}

fn renewals(sidecar: &Sidecar) -> f64 {
    metric(
        &metrics_of(sidecar),
        "bulkhead_cert_renewals_total",
        &[("result", "ok")],
    )
}

/// A 20 s certificate lifetime: renewals at ~14 s; the first certificates
/// expire at ~20 s. Calls flow across both, new connections are made with
/// the renewed certificates, and nothing fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_renew_under_traffic_with_no_failed_request() {
    let mesh = Mesh::memory(&["--cert-lifetime", "20s"]).await;
    let app = App::http("inventory", STABLE).await;
    let inventory = mesh.inventory(STABLE, "node-1", &app);
    let web = mesh.web("node-1");
    until_routable(&web, "inventory", "/probe").await;
    let first_expiry = metric_if_any(&metrics_of(&inventory), "bulkhead_cert_expiry_seconds", &[])
        .expect("bulkhead_cert_expiry_seconds") as u64;

    let load = Load::start(web.upstream("inventory"), 2, Duration::from_millis(100));
    // Until the first certificates have expired (bounded: 20 s lifetime).
    wait_for_async(
        "the first certificates to expire",
        Duration::from_secs(40),
        || {
            let expired = unix_now() > first_expiry + 1;
            async move { expired.then_some(()) }
        },
    )
    .await;
    // A caller that connects now must meet the callee's renewed
    // certificate: the expired one would fail its handshake.
    let late = mesh.web("node-1");
    let r = call(late.upstream("inventory"), "GET", "/stock/late", &[])
        .await
        .expect("call");
    assert_eq!(r.status, 200, "a new connection after renewal: {r:?}");
    load.until_more(10, "after the first certificates expired")
        .await;
    let tally = load.finish().await;
    assert!(
        tally.failures.is_empty(),
        "{} of {} calls failed across renewal: {:?}",
        tally.failures.len(),
        tally.ok() + tally.failures.len(),
        tally.failures
    );
    assert!(tally.ok() >= 100, "traffic flowed: {}", tally.ok());
    for (name, s) in [("inventory", &inventory), ("web", &web)] {
        assert!(renewals(s) >= 1.0, "{name} renewed");
        let expiry = metric(&metrics_of(s), "bulkhead_cert_expiry_seconds", &[]);
        assert!(
            expiry as u64 > first_expiry,
            "{name}'s certificate now expires later ({expiry} > {first_expiry})"
        );
    }
}

/// `/config` shows the certificate in use, so it must follow renewals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_dump_shows_the_renewed_certificate_expiry() {
    let mesh = Mesh::memory(&["--cert-lifetime", "20s"]).await;
    let app = App::http("inventory", STABLE).await;
    let inventory = mesh.inventory(STABLE, "node-1", &app);
    let first = cert_not_after(&inventory).expect("certificateNotAfterUnix");
    wait_for_async("a renewal", Duration::from_secs(30), || {
        let renewed = renewals(&inventory) >= 1.0;
        async move { renewed.then_some(()) }
    })
    .await;
    wait_for_async(
        "/config certificateNotAfterUnix to advance",
        Duration::from_secs(5),
        || {
            let now = cert_not_after(&inventory);
            async move { now.filter(|&t| t > first) }
        },
    )
    .await;
}

/// Renewal at ~70 % of the lifetime: a 20 s certificate is first renewed
/// ~14 s after it was issued — not at once, and not over and over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_waits_for_seventy_percent_of_the_lifetime() {
    let mesh = Mesh::memory(&["--cert-lifetime", "20s"]).await;
    let app = App::http("inventory", STABLE).await;
    let started = Instant::now();
    let inventory = mesh.inventory(STABLE, "node-1", &app);
    // Watch the first 10 s of the certificate's life (bounded by the clock,
    // the renewal counter read throughout).
    let mut seen = Vec::new();
    wait_for_async(
        "10 s of the first certificate",
        Duration::from_secs(20),
        || {
            seen.push((started.elapsed(), renewals(&inventory)));
            let over = started.elapsed() > Duration::from_secs(10);
            async move { over.then_some(()) }
        },
    )
    .await;
    let total = renewals(&inventory);
    let first = seen.iter().find(|(_, n)| *n >= 1.0).map(|(t, _)| *t);
    assert_eq!(
        total, 0.0,
        "{total} renewals within 10 s of a 20 s certificate (the first after {first:?}); \
         expected the first at ~14 s"
    );
}

// ---------------------------------------------------------------------------
// 5. Control plane down.

/// Lets a fault that started at `since` last `length` (the load keeps
/// running meanwhile): the fault's duration is the scenario, not a guess at
/// how long something takes.
async fn lasts(since: Instant, length: Duration) {
    wait_for_async(
        &format!("a fault of {length:?}"),
        length + Duration::from_secs(10),
        || {
            let over = since.elapsed() >= length;
            async move { over.then_some(()) }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_keep_flowing_while_the_control_plane_is_down_and_it_reconnects() {
    // A lease TTL longer than the outage: this test is about the data path
    // riding out the outage, not about registrations expiring.
    let mut mesh = Mesh::etcd(&["--lease-ttl", "30s"]).await;
    let app = App::http("inventory", STABLE).await;
    let inventory = mesh.inventory(STABLE, "node-1", &app);
    let web = mesh.web("node-1");
    until_routable(&web, "inventory", "/probe").await;
    until_connected(&web, 1.0, Duration::from_secs(5)).await;

    let load = Load::start(web.upstream("inventory"), 3, Duration::from_millis(50));
    load.until_more(30, "before the kill").await;
    blocking(|| mesh.cp.kill());
    let killed = Instant::now();
    until_connected(&web, 0.0, Duration::from_secs(10)).await;
    until_connected(&inventory, 0.0, Duration::from_secs(10)).await;
    lasts(killed, Duration::from_secs(4)).await;
    load.until_more(20, "with the control plane down").await;

    blocking(|| mesh.cp.restart());
    until_connected(&web, 1.0, Duration::from_secs(30)).await;
    load.until_more(60, "after the restart").await;
    let tally = load.finish().await;
    assert!(
        tally.failures.is_empty(),
        "{} of {} calls failed: {:?}",
        tally.failures.len(),
        tally.ok() + tally.failures.len(),
        tally.failures
    );
    // Still routable, and the endpoint is still known after the resnapshot.
    assert_eq!(inventory_endpoints(&web), vec![endpoint_key(&inventory)]);
    let reconnects = metric(
        &metrics_of(&web),
        "bulkhead_control_plane_reconnects_total",
        &[],
    );
    assert!(reconnects >= 1.0, "reconnects are counted");
}

/// An outage longer than the registration lease: etcd expires the
/// registrations meanwhile (their keep-alives go through the control
/// plane). Once the control plane is back, callers must not lose endpoints
/// that never went away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_lease_causes_no_failed_request_after_the_restart() {
    let mut mesh = Mesh::etcd(&["--lease-ttl", "3s"]).await;
    let app = App::http("inventory", STABLE).await;
    let inventory = mesh.inventory(STABLE, "node-1", &app);
    let web = mesh.web("node-1");
    until_routable(&web, "inventory", "/probe").await;

    let load = Load::start(web.upstream("inventory"), 2, Duration::from_millis(100));
    load.until_more(10, "before the kill").await;
    blocking(|| mesh.cp.kill());
    let killed = Instant::now();
    until_connected(&web, 0.0, Duration::from_secs(10)).await;
    // Well past the 3 s lease.
    lasts(killed, Duration::from_secs(8)).await;
    blocking(|| mesh.cp.restart());
    until_connected(&web, 1.0, Duration::from_secs(30)).await;
    until_connected(&inventory, 1.0, Duration::from_secs(30)).await;
    until_endpoints(&web, &[&inventory]).await;
    load.until_more(20, "after the restart").await;
    let tally = load.finish().await;
    assert!(
        tally.failures.is_empty(),
        "{} of {} calls failed: {:?}",
        tally.failures.len(),
        tally.ok() + tally.failures.len(),
        tally.failures
    );
}

// ---------------------------------------------------------------------------
// 6. SIGTERM drain.

/// Two replicas with a 5 s grace period; one request held 1 s at an app.
/// SIGTERM its endpoint's sidecar while traffic flows: the held request
/// finishes during the drain, the rest move to the other replica, and no
/// caller sees an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_drains_the_endpoint_with_no_client_error() {
    let grace = Duration::from_secs(5);
    let mut m = held_mesh(Duration::from_secs(1), &["--drain-timeout", "5s"]).await;
    let addr = m.web.upstream("inventory");
    // One sequential caller on a single keep-alive connection, and a few
    // concurrent ones on pooled clients.
    let load = Load::start(addr, 3, Duration::from_millis(20))
        .and_one_connection(addr, Duration::from_millis(10))
        .await;
    load.until_more(60, "before SIGTERM").await;

    let (in_flight, leaving) = hold_one(&mut m, "GET", &[]).await;
    let staying = 1 - leaving;
    let started = Instant::now();
    let status = blocking(|| m.sidecars[leaving].terminate()).expect("sidecar was running");
    let took = started.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        took < grace + Duration::from_secs(2),
        "exited after {took:?}"
    );
    let reply = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("the held request is answered")
        .expect("call task")
        .expect("call");
    assert_eq!(reply.status, 200, "finished during the drain: {reply:?}");
    assert!(reply.body.contains(&format!("app={leaving}")), "{reply:?}");
    let served_by_leaving = m.apps[leaving].seen();

    until_endpoints(&m.web, &[&m.sidecars[staying]]).await;
    load.until_more(60, "after the drain").await;
    let tally = load.finish().await;
    // A caller that dials the leaving sidecar after it stopped accepting
    // but before the deregistration reached it gets "connection refused";
    // that GET is retried, but (the retry bug) back to the same endpoint.
    assert!(
        tally.failures.is_empty() && tally.failures.iter().all(|f| f.contains("connect-failed")),
        "{} of {} calls failed: {:?}",
        tally.failures.len(),
        tally.ok() + tally.failures.len(),
        tally.failures
    );
    assert_eq!(
        m.apps[leaving].seen(),
        served_by_leaving,
        "nothing reached the drained endpoint after it exited"
    );
    let _ = &m.mesh;
}

// ---------------------------------------------------------------------------
// 7. Restart from --state-dir with the control plane down.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_restarted_with_the_control_plane_down_serves_from_its_state_dir() {
    let mut mesh = Mesh::memory(&[]).await;
    let app = App::http("inventory", STABLE).await;
    let inventory = mesh.inventory(STABLE, "node-1", &app);
    let mut web = mesh.web("node-1");
    until_routable(&web, "inventory", "/probe").await;

    let state_dir = web.state_dir();
    let callee_id = "spiffe://cluster.local/ns/shop/sa/inventory";
    wait_for_async(
        "the snapshot on disk to hold the inventory endpoint",
        Duration::from_secs(10),
        || {
            let saved = std::fs::read(state_dir.join("mesh-state.pb")).unwrap_or_default();
            let has = saved
                .windows(callee_id.len())
                .any(|w| w == callee_id.as_bytes());
            async move { has.then_some(()) }
        },
    )
    .await;

    // The control plane dies, then the pod: the sidecar comes back with the
    // same command line (same ports, token file and --state-dir).
    blocking(|| mesh.cp.kill());
    blocking(|| web.restart());
    blocking(|| web.wait_ready());

    let tally = calls(web.upstream("inventory"), 50, 2, &[]).await;
    assert!(
        tally.failures.is_empty(),
        "{:?}; log:\n{}",
        tally.failures,
        web.log_text()
    );
    assert_eq!(tally.count(STABLE), 50);
    assert_eq!(
        metric_if_any(&metrics_of(&web), "bulkhead_control_plane_connected", &[]),
        Some(0.0),
        "the outage is reported"
    );
    web.assert_running();
    drop(inventory);
}
