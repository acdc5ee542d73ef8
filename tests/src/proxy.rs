//! Sidecars and sample apps: the real `bulkhead-proxy` binary beside tiny
//! in-process apps on loopback, and an HTTP client to call through them.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::control::{
    ControlPlane, TestCa, address, bin, http_get, read_addresses, wait_for_async,
};

/// An in-process app on a fresh loopback port, stopped on drop.
///
/// Every test app (the plain HTTP one, echoes, and apps that misbehave on
/// purpose) needs the same scaffolding: a listener the sidecar can be
/// pointed at, a task per connection, a counter the test can read while the
/// app runs, and a way to make it vanish mid-test. [`App::serve`] is that
/// scaffolding once; what a connection gets is the caller's.
pub struct App {
    pub addr: SocketAddr,
    /// What the app counts: requests for [`App::http`] and
    /// [`App::http_with`], received bytes for [`App::tcp_echo`], whatever
    /// the handler bumps for [`App::serve`].
    pub count: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl App {
    /// Accepts connections on 127.0.0.1 and hands each, with the shared
    /// counter, to `serve`. `serve` is called in the accept loop, so what it
    /// does before returning its future (counting an accept, say) happens
    /// before the next connection is taken; the future runs in its own task.
    pub async fn serve<F, Fut>(serve: F) -> Self
    where
        F: Fn(TcpStream, Arc<AtomicU64>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
        let addr = listener.local_addr().expect("addr");
        let count = Arc::new(AtomicU64::new(0));
        let counter = count.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve(tcp, counter.clone()));
            }
        });
        Self { addr, count, task }
    }

    /// An HTTP app (HTTP/1.1 and h2c, as a sidecar may speak either) whose
    /// every request is counted, then answered by `answer`. `answer` runs
    /// when the request arrives; the future it returns is the reply (and
    /// may drain the body, hold, or report first).
    pub async fn http_with<F, Fut>(answer: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        Self::serve(move |tcp, count| {
            let answer = answer.clone();
            async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    count.fetch_add(1, Ordering::SeqCst);
                    let reply = answer(req);
                    async move { Ok::<_, std::convert::Infallible>(reply.await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
            }
        })
        .await
    }

    /// A tiny HTTP app: answers every request with
    /// `service=<s> version=<v> method=<m> path=<p>` (so a caller can tell
    /// which endpoint and version served it) and counts what it saw.
    pub async fn http(service: &str, version: &str) -> Self {
        let (svc, ver) = (service.to_owned(), version.to_owned());
        Self::http_with(move |req: Request<Incoming>| {
            let body = format!(
                "service={svc} version={ver} method={} path={}",
                req.method(),
                req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("")
            );
            async move {
                // Drain the request body first (POSTs in tests).
                let _ = req.into_body().collect().await;
                Response::new(Full::new(Bytes::from(body)))
            }
        })
        .await
    }

    /// A TCP echo app that counts the bytes it receives. It counts bytes,
    /// not connections, because the sidecar's readiness check opens (empty)
    /// connections to the app: a connection count says nothing about
    /// whether a caller's bytes got through; a byte count does.
    pub async fn tcp_echo() -> Self {
        Self::serve(|mut tcp, count| async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                count.fetch_add(n as u64, Ordering::SeqCst);
                if tcp.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        })
        .await
    }

    /// The counter's value (see [`App::count`]).
    pub fn seen(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// Stops answering (the listener closes).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How to start one sidecar.
#[derive(Clone, Debug)]
pub struct SidecarSpec {
    pub namespace: String,
    pub service: String,
    pub version: String,
    pub app: Option<SocketAddr>,
    pub app_protocol: String,
    /// `NAME[.NS][:PORT]` → a local port is chosen.
    pub upstreams: Vec<String>,
    pub node: String,
    pub zone: String,
    pub region: String,
    pub extra: Vec<String>,
    /// Environment for the process, beyond `NO_COLOR`: what the injector
    /// passes only that way (e.g. `BULKHEAD_APP_PROBES`).
    pub env: Vec<(String, String)>,
    /// `bulkhead-proxy gateway --gateway NAME` instead of `run`.
    pub gateway: Option<String>,
}

impl SidecarSpec {
    pub fn new(namespace: &str, service: &str, version: &str) -> Self {
        Self {
            namespace: namespace.into(),
            service: service.into(),
            version: version.into(),
            app: None,
            app_protocol: "http".into(),
            upstreams: vec![],
            node: "node-1".into(),
            zone: "zone-a".into(),
            region: "region-1".into(),
            extra: vec![],
            env: vec![],
            gateway: None,
        }
    }

    /// The gateway serving the Gateway resource `name` in `namespace`, as
    /// the workload `gateway-<name>`; its outside listener is
    /// [`Sidecar::listen`].
    pub fn gateway(namespace: &str, name: &str) -> Self {
        Self {
            gateway: Some(name.into()),
            ..Self::new(namespace, &format!("gateway-{name}"), "0.0.0")
        }
    }

    pub fn app(mut self, app: &App) -> Self {
        self.app = Some(app.addr);
        self
    }

    /// The app's address when it is not an [`App`] (a tonic server, say).
    pub fn app_addr(mut self, addr: SocketAddr) -> Self {
        self.app = Some(addr);
        self
    }

    pub fn protocol(mut self, p: &str) -> Self {
        self.app_protocol = p.into();
        self
    }

    pub fn upstream(mut self, target: &str) -> Self {
        self.upstreams.push(target.into());
        self
    }

    pub fn node(mut self, node: &str) -> Self {
        self.node = node.into();
        self
    }

    pub fn zone(mut self, zone: &str) -> Self {
        self.zone = zone.into();
        self
    }

    pub fn arg(mut self, a: &str) -> Self {
        self.extra.push(a.into());
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }
}

/// A running `bulkhead-proxy`, killed on drop.
pub struct Sidecar {
    child: Option<Child>,
    pub spec: SidecarSpec,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
    /// Upstream target → the local address the app calls.
    pub upstreams: Vec<(String, SocketAddr)>,
    /// The mesh DNS server's addresses, when `--dns` was given.
    pub dns: Vec<SocketAddr>,
    /// A gateway's outside listener (`--listen`).
    pub listen: Option<SocketAddr>,
    /// Every flag but the listen addresses, which [`Sidecar::spawn`] adds.
    args: Vec<String>,
    dir: tempfile::TempDir,
}

/// `NAME[.NS][:PORT]` as the sidecar reports it: `NAME.NS[:PORT]`.
fn normalized_target(target: &str, namespace: &str) -> String {
    let (name, port) = match target.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (target, None),
    };
    let name = if name.contains('.') {
        name.to_owned()
    } else {
        format!("{name}.{namespace}")
    };
    match port {
        Some(port) => format!("{name}:{port}"),
        None => name,
    }
}

impl Sidecar {
    /// Starts a sidecar with a fresh token for `ns/service` and waits for
    /// `/ready` (certificate, config, app) and for its registration to be
    /// visible to the operator.
    pub fn start(ca: &TestCa, cp: &ControlPlane, spec: SidecarSpec) -> Self {
        let mut sidecar = Self::launch(ca, cp, spec);
        sidecar.wait_ready();
        sidecar
    }

    /// Starts a sidecar like [`Sidecar::start`] but does not wait: for tests
    /// of what a sidecar serves before (or without) being ready, which wait
    /// with [`Sidecar::wait_live`] instead.
    pub fn launch(ca: &TestCa, cp: &ControlPlane, spec: SidecarSpec) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = ca.token(&format!("{}/{}", spec.namespace, spec.service), "10m", true);
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, token).expect("write token");
        // Port 0 everywhere: the sidecar reports what it bound.
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let (inbound, admin) = (any, any);
        let upstreams: Vec<(String, SocketAddr)> =
            spec.upstreams.iter().map(|t| (t.clone(), any)).collect();
        let mut args: Vec<String> = match &spec.gateway {
            None => vec!["run".into()],
            Some(name) => vec![
                "gateway".into(),
                "--gateway".into(),
                name.clone(),
                "--listen".into(),
                any.to_string(),
            ],
        };
        let common: Vec<String> = vec![
            "--control".into(),
            cp.url(),
            "--trust-bundle".into(),
            ca.file("bundle.crt").display().to_string(),
            "--token-file".into(),
            token_file.display().to_string(),
            "--namespace".into(),
            spec.namespace.clone(),
            "--service".into(),
            spec.service.clone(),
            "--version".into(),
            spec.version.clone(),
            "--app-protocol".into(),
            spec.app_protocol.clone(),
            "--node".into(),
            spec.node.clone(),
            "--zone".into(),
            spec.zone.clone(),
            "--region".into(),
            spec.region.clone(),
            "--state-dir".into(),
            dir.path().join("state").display().to_string(),
            "--log-level".into(),
            "info,bulkhead_proxy=debug".into(),
        ];
        args.extend(common);
        if let Some(app) = spec.app {
            args.extend(["--app".into(), app.to_string()]);
        }
        args.extend(spec.extra.iter().cloned());
        let mut sidecar = Self {
            child: None,
            spec,
            inbound,
            admin,
            upstreams,
            dns: Vec::new(),
            listen: None,
            args,
            dir,
        };
        sidecar.spawn();
        sidecar
    }

    /// The sidecar's `--state-dir` (last config and certificate).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Kills the process (a crashed pod) and starts it again with the same
    /// command line: same ports, token file and `--state-dir`. The log
    /// continues in the same file. Does not wait; see [`Sidecar::wait_ready`].
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Whether the process is still running; panics with its log if it
    /// exited.
    pub fn assert_running(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!(
                "bulkhead-proxy {} exited with {status}; log:\n{}",
                self.spec.service,
                self.log_text()
            );
        }
    }

    /// Waits (20 s at most) for the process to exit on its own; its status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "bulkhead-proxy {} still running; log:\n{}",
                self.spec.service,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("proxy.log")
    }

    /// Starts the process. The first start binds port 0 and learns the
    /// ports chosen from `--addresses-file`; a restart asks for the same
    /// ones again, as a pod keeps its ports.
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log");
        let addresses = self.dir.path().join("addresses.json");
        let _ = std::fs::remove_file(&addresses);
        let mut cmd = Command::new(bin("bulkhead-proxy"));
        cmd.args(&self.args)
            .arg("--inbound")
            .arg(self.inbound.to_string())
            .arg("--admin")
            .arg(self.admin.to_string())
            .arg("--addresses-file")
            .arg(&addresses);
        for (target, addr) in &self.upstreams {
            cmd.arg("--upstream").arg(format!("{target}={addr}"));
        }
        let mut child = cmd
            .envs(self.spec.env.iter().map(|(k, v)| (k, v)))
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn bulkhead-proxy");
        let log_path = self.log_path();
        let bound = read_addresses("bulkhead-proxy", &addresses, &mut child, &|| {
            std::fs::read_to_string(&log_path).unwrap_or_default()
        });
        // A gateway has no inbound side; it reports its outside listener.
        if bound.get("listen").is_some() {
            self.listen = Some(address(&bound, "listen"));
        } else {
            self.inbound = address(&bound, "inbound");
        }
        self.admin = address(&bound, "admin");
        self.dns = bound["dns"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str()?.parse().ok())
            .collect();
        let namespace = self.spec.namespace.clone();
        for (target, addr) in &mut self.upstreams {
            *addr = address(&bound["upstreams"], &normalized_target(target, &namespace));
        }
        self.child = Some(child);
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Waits for `/ready`: certificate, config and app.
    pub fn wait_ready(&mut self) {
        self.wait_admin("/ready", "ready");
    }

    /// Waits for `/live`: the admin port is up, whatever else is.
    pub fn wait_live(&mut self) {
        self.wait_admin("/live", "live");
    }

    /// Polls admin `path` until it answers 200 (20 s at most); fails at once,
    /// with the log, if the process exits meanwhile.
    fn wait_admin(&mut self, path: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            self.assert_running();
            if let Ok((200, _)) = http_get(self.admin, path) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sidecar {} not {what} after 20 s; log:\n{}",
                self.spec.service,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The local address the app uses for `target`.
    pub fn upstream(&self, target: &str) -> SocketAddr {
        self.upstreams
            .iter()
            .find(|(t, _)| t == target)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no upstream {target}"))
    }

    pub fn metrics(&self) -> String {
        http_get(self.admin, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    /// The sum of `name`'s samples carrying every label in `labels`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        crate::prom::metric(&self.metrics(), name, labels)
    }

    pub fn config(&self) -> serde_json::Value {
        let (_, body) = http_get(self.admin, "/config").expect("config");
        serde_json::from_str(&body).expect("config json")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM, then wait for exit (bounded); returns the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        terminate(&mut self.child)
    }

    /// SIGKILL: a crashed pod.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.kill();
    }
}

/// SIGTERM to `child`, then wait for it to exit (30 s at most, then
/// SIGKILL); returns its exit status. `None` when there was no process.
pub fn terminate(child: &mut Option<std::process::Child>) -> Option<std::process::ExitStatus> {
    let running = child.as_mut()?;
    let _ = Command::new("kill")
        .args(["-TERM", &running.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Ok(Some(status)) = running.try_wait() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = running.kill();
            break running.wait().ok();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    *child = None;
    status
}

/// A plain HTTP/1.1 client, as an app would use it.
pub fn client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
> {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

/// A plain HTTP/2 (h2c) client.
pub fn h2_client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
> {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// What a call returned.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Reply {
    /// Reads a whole response (the body as lossy UTF-8), whichever client
    /// sent the request: the pooled [`client`]s here, or a test's own
    /// connection when what it checks is that one connection survives.
    pub async fn read(resp: Response<Incoming>) -> Result<Self, String> {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Self {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// GET (or any method) through an upstream address.
pub async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    call_with(&client(), addr, method, path, headers).await
}

pub async fn call_with(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| format!("{e:?}"))?;
    Reply::read(resp).await
}

/// The version an app reply names.
pub fn version_of(body: &str) -> Option<&str> {
    body.split_whitespace()
        .find_map(|w| w.strip_prefix("version="))
}

/// Waits (20 s at most) until `caller` gets a 200 for `GET path` from
/// `target`. A sidecar learns endpoints from the control plane a moment
/// after it is ready; tests wait for this before they count or assert on
/// calls, so that catching up is not mistaken for a failure.
pub async fn until_routable(caller: &Sidecar, target: &str, path: &str) {
    let addr = caller.upstream(target);
    wait_for_async(
        &format!("{target} to be routable from {}", caller.spec.service),
        Duration::from_secs(20),
        || async move {
            let r = call(addr, "GET", path, &[]).await.ok()?;
            (r.status == 200).then_some(())
        },
    )
    .await;
}
