//! The shop the sidecar scenarios run against (`web` calling `inventory`,
//! stable 3.0.0 and canary 3.1.0), and what they measure it with: tallies
//! of calls by version, a paced load, one kept-alive connection, apps that
//! hold or reset requests on purpose, and reads of a sidecar's metrics and
//! `/config`. The scenarios are `tests/tests/sidecar_{versions,locality,
//! retries,renewal,outage,drain}.rs`.
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
use std::time::{Duration, Instant};

use crate::control::*;
use crate::mesh::{Mesh, blocking};
use crate::prom::metric_if_any;
use crate::proxy::*;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

pub const MESH: &str = "
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

pub const CANARY: &str = "3.1.0";
pub const STABLE: &str = "3.0.0";

pub fn split(stable_weight: u32, canary_weight: u32) -> String {
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

/// The shop on the memory store, [`MESH`] applied.
pub async fn memory(extra: &[&str]) -> Mesh {
    Mesh::memory("cluster.local", MESH, extra).await
}

/// The shop on a real etcd (state survives a control-plane restart).
pub async fn on_etcd(extra: &[&str]) -> Mesh {
    Mesh::etcd("cluster.local", "/bulkhead/", MESH, extra).await
}

impl Mesh {
    /// An inventory endpoint: its sidecar in front of `app`.
    pub fn inventory(&self, version: &str, node: &str, app: &App) -> Sidecar {
        self.sidecar(
            SidecarSpec::new("shop", "inventory", version)
                .app(app)
                .node(node),
        )
    }

    /// The caller: `web`, with an upstream listener for inventory.
    pub fn web(&self, node: &str) -> Sidecar {
        self.sidecar(
            SidecarSpec::new("shop", "web", "1.0.0")
                .upstream("inventory")
                .node(node),
        )
    }
}

// ---------------------------------------------------------------------------
// What sidecars report.

pub fn metrics_of(sidecar: &Sidecar) -> String {
    blocking(|| sidecar.metrics())
}

pub fn config_of(sidecar: &Sidecar) -> serde_json::Value {
    blocking(|| sidecar.config())
}

/// The inventory endpoints the sidecar's `/config` lists, as `addr:port`.
pub fn inventory_endpoints(sidecar: &Sidecar) -> Vec<String> {
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

pub fn endpoint_key(sidecar: &Sidecar) -> String {
    format!("{}:{}", sidecar.inbound.ip(), sidecar.inbound.port())
}

/// The inventory TrafficSplit's weights as the sidecar knows them.
pub fn split_weights(sidecar: &Sidecar) -> Option<BTreeMap<String, u64>> {
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
pub async fn until_endpoints(caller: &Sidecar, expected: &[&Sidecar]) {
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
pub async fn until_split(caller: &Sidecar, stable: u64, canary: u64, within: Duration) {
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

pub async fn until_connected(caller: &Sidecar, connected: f64, within: Duration) {
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
pub struct Tally {
    /// Successful calls by the version that answered.
    pub versions: BTreeMap<String, usize>,
    /// Everything that was not a 200 from an app, described.
    pub failures: Vec<String>,
}

impl Tally {
    pub fn record(&mut self, result: Result<Reply, String>) {
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

    pub fn merge(&mut self, other: Tally) {
        for (v, n) in other.versions {
            *self.versions.entry(v).or_default() += n;
        }
        self.failures.extend(other.failures);
    }

    pub fn ok(&self) -> usize {
        self.versions.values().sum()
    }

    pub fn count(&self, version: &str) -> usize {
        self.versions.get(version).copied().unwrap_or(0)
    }

    pub fn share(&self, version: &str) -> f64 {
        self.count(version) as f64 / self.ok().max(1) as f64
    }
}

/// `n` GETs through `addr`, `concurrency` at a time, each worker on its own
/// pooled client.
pub async fn calls(
    addr: SocketAddr,
    n: usize,
    concurrency: usize,
    headers: &[(&str, &str)],
) -> Tally {
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
pub struct Load {
    pub stop: Arc<AtomicBool>,
    pub done: Arc<AtomicU64>,
    pub workers: Vec<tokio::task::JoinHandle<Tally>>,
}

pub const MAX_PER_WORKER: u64 = 400;
pub const MAX_LOAD_TIME: Duration = Duration::from_secs(60);

impl Load {
    /// `pace`: pause between one worker's calls (load shaping, not timing).
    pub fn start(addr: SocketAddr, workers: usize, pace: Duration) -> Self {
        Self::start_bounded(addr, workers, pace, MAX_PER_WORKER, MAX_LOAD_TIME)
    }

    /// [`Load::start`] with other bounds: at most `calls` per worker and
    /// `time` in all (for scenarios longer than the usual minute).
    pub fn start_bounded(
        addr: SocketAddr,
        workers: usize,
        pace: Duration,
        calls: u64,
        time: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let workers = (0..workers)
            .map(|w| {
                let (stop, done) = (stop.clone(), done.clone());
                tokio::spawn(async move {
                    let client = client();
                    let started = Instant::now();
                    let mut tally = Tally::default();
                    for i in 0..calls {
                        if stop.load(Ordering::SeqCst) || started.elapsed() > time {
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
    pub async fn and_one_connection(mut self, addr: SocketAddr, pace: Duration) -> Self {
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

    pub fn done(&self) -> u64 {
        self.done.load(Ordering::SeqCst)
    }

    /// Waits until `n` more calls have completed (the load is flowing).
    pub async fn until_more(&self, n: u64, what: &str) {
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

    pub async fn finish(self) -> Tally {
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
pub struct OneConnection {
    pub addr: SocketAddr,
    pub sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl OneConnection {
    pub async fn open(addr: SocketAddr) -> Self {
        let tcp = TcpStream::connect(addr).await.expect("connect upstream");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("HTTP/1.1 handshake");
        tokio::spawn(conn);
        Self { addr, sender }
    }

    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Reply, String> {
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

    pub async fn gets(&mut self, n: usize) -> Tally {
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
pub async fn holding_app(
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
pub async fn resetting_app() -> App {
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

/// Two inventory endpoints of one version, each in front of a
/// [`holding_app`] (sharing one hold); the caller knows both.
pub struct HeldMesh {
    pub mesh: Mesh,
    pub apps: [App; 2],
    pub arrivals: mpsc::UnboundedReceiver<(usize, String)>,
    pub sidecars: [Sidecar; 2],
    pub web: Sidecar,
}

pub async fn held_mesh(hold_for: Duration, sidecar_args: &[&str]) -> HeldMesh {
    let mesh = memory(&[]).await;
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
pub async fn hold_one(
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
