//! Starting the real `bulkhead-control` and `bulkheadctl` binaries, with a
//! CA made by `bulkheadctl ca init`, and talking to them as operators and
//! workloads do.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bulkhead_proto::pb;
use bulkhead_tls::{CertSlot, TrustBundle};
use tonic::transport::Channel;

/// Path of a workspace binary (built by `cargo build --workspace --bins`,
/// which `scripts/test` runs before the tests).
pub fn bin(name: &str) -> PathBuf {
    // `BULKHEAD_BIN_DIR` first, when it holds the binary: the same tests
    // against other builds (bench/README.md runs the attack load test
    // against a release sidecar this way).
    if let Some(dir) = std::env::var_os("BULKHEAD_BIN_DIR") {
        let path = Path::new(&dir).join(name);
        if path.exists() {
            return path;
        }
    }
    // target/<profile>/deps/<test-exe> → target/<profile>/<name>
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build the binaries first (`cargo build --workspace --bins`, or run scripts/test)",
        path.display()
    );
    path
}

/// The output of a command that prints one JSON document a line (as
/// `bulkheadctl events -o json` does), parsed; panics with stderr when the
/// command failed.
pub fn json_lines(what: &str, out: &std::process::Output) -> Vec<serde_json::Value> {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {l}")))
        .collect()
}

/// A loopback port that was free a moment ago, chosen below Linux's
/// ephemeral range (32768-60999) so outgoing connections of other tests
/// cannot take it as their source port before our process binds it; a
/// per-process sequence keeps parallel tests of one binary apart.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = std::process::id().wrapping_mul(7919);
    for _ in 0..1000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (base.wrapping_add(n.wrapping_mul(37)) % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free loopback port in 20000-31999");
}

/// Polls `check` every 50 ms until it returns Some or `timeout` passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Async version of [`wait_for`].
pub async fn wait_for_async<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (20 s at most) for the `--addresses-file` a binary writes once its
/// listeners are bound, and returns it; fails at once, with the log, if the
/// process exits first.
pub fn read_addresses(
    what: &str,
    path: &Path,
    child: &mut Child,
    log: &dyn Fn() -> String,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(json) = serde_json::from_str(&text)
        {
            return json;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited with {status} before binding; log:\n{}",
                log()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{what} wrote no {} in 20 s; log:\n{}",
            path.display(),
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An address from an addresses file.
pub fn address(json: &serde_json::Value, field: &str) -> SocketAddr {
    json[field]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address {field} in {json}"))
}

/// `GET path` on `addr` over plain HTTP/1.1: status and body (lossy UTF-8).
/// Callable from sync code and from inside a tokio runtime alike (it runs
/// on a thread of its own); bounded to 2 s to connect and 5 s in all.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path, "")
}

/// Any method with a JSON body (empty: none), as [`http_get`].
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    http_exchange(addr, method, path, &[], body, Duration::from_secs(5))
}

/// As [`http_request`], with extra request headers (a `Host` given here
/// replaces the one from `addr`) and a bound on the whole exchange.
pub fn http_exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    use http_body_util::{BodyExt, Full};
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header(http::header::CONTENT_TYPE, "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(bytes::Bytes::from(body.to_owned())))
        .map_err(std::io::Error::other)?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
                    connector.set_connect_timeout(Some(Duration::from_secs(2)));
                    let client = hyper_util::client::legacy::Client::builder(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .build(connector);
                    let exchange = async {
                        let response = client
                            .request(request)
                            .await
                            .map_err(std::io::Error::other)?;
                        let status = response.status().as_u16();
                        let body = response
                            .into_body()
                            .collect()
                            .await
                            .map_err(std::io::Error::other)?
                            .to_bytes();
                        Ok::<_, std::io::Error>((
                            status,
                            String::from_utf8_lossy(&body).into_owned(),
                        ))
                    };
                    tokio::time::timeout(timeout, exchange)
                        .await
                        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
                })
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A CA folder made by the real `bulkheadctl ca init`.
pub struct TestCa {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
    pub trust_domain: String,
}

impl TestCa {
    pub fn init(trust_domain: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ca");
        let out = Command::new(bin("bulkheadctl"))
            .args(["ca", "init", "--trust-domain", trust_domain, "--out"])
            .arg(&path)
            .output()
            .expect("run bulkheadctl ca init");
        assert!(
            out.status.success(),
            "ca init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            _dir: dir,
            path,
            trust_domain: trust_domain.to_owned(),
        }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn bundle(&self) -> TrustBundle {
        let pem = std::fs::read(self.file("bundle.crt")).expect("read bundle");
        TrustBundle::from_pem(&pem, "bundle.crt", &self.trust_domain).expect("parse bundle")
    }

    /// This CA's roots and `other`'s, as one bundle (what a client trusts
    /// during a root rotation).
    pub fn bundle_with(&self, other: &TestCa) -> TrustBundle {
        let mut roots = self.bundle().roots_der().to_vec();
        roots.extend(other.bundle().roots_der().iter().cloned());
        TrustBundle::new(roots, &self.trust_domain).expect("bundle")
    }

    /// The operator certificate `ca init` wrote.
    pub fn operator(&self) -> CertSlot {
        slot_from_files(&self.file("operator.crt"), &self.file("operator.key"))
    }

    /// Mints a token with the real CLI.
    pub fn token(&self, identity: &str, ttl: &str, once: bool) -> String {
        let mut args = vec!["token", "create", "--identity", identity, "--ttl", ttl];
        if once {
            args.push("--once");
        }
        let out = self.ctl_at("https://127.0.0.1:1", &args);
        assert!(
            out.status.success(),
            "token create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_owned()
    }

    /// Replaces the issuer with one of the same key that expires `left`
    /// from now (signed by the same root), in issuer.crt and in the chain
    /// of operator.crt: what a CA whose issuer nobody renewed looks like.
    pub fn shorten_issuer(&self, left: Duration) {
        let read = |name: &str| std::fs::read_to_string(self.file(name)).expect(name);
        // Names written as `ca init` writes them (UTF8String): a name
        // parsed back from the PEM may be encoded otherwise, and names
        // are compared byte for byte when chains are built.
        let name = |role: &str| {
            let mut dn = rcgen::DistinguishedName::new();
            dn.push(rcgen::DnType::OrganizationName, "Bulkhead");
            dn.push(
                rcgen::DnType::CommonName,
                format!("Bulkhead {role} CA {}", self.trust_domain),
            );
            dn
        };
        let mut root_params = rcgen::CertificateParams::default();
        root_params.distinguished_name = name("root");
        root_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let root_key = rcgen::KeyPair::from_pem(&read("root.key")).expect("root key");
        let root = rcgen::Issuer::new(root_params, root_key);
        let key = rcgen::KeyPair::from_pem(&read("issuer.key")).expect("issuer key");
        let mut params = rcgen::CertificateParams::default();
        let now = std::time::SystemTime::now();
        params.not_before = (now - Duration::from_secs(60)).into();
        params.not_after = (now + left).into();
        // The same name as `ca init`'s issuer: the operator's certificate
        // names its issuer by it.
        params.distinguished_name = name("issuer");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        params.use_authority_key_identifier_extension = true;
        let issuer = params.signed_by(&key, &root).expect("sign issuer");
        std::fs::write(self.file("issuer.crt"), issuer.pem()).expect("write issuer.crt");
        let operator = read("operator.crt");
        let leaf_end = operator
            .find("-----END CERTIFICATE-----")
            .expect("operator leaf")
            + "-----END CERTIFICATE-----\n".len();
        let chain = format!("{}{}", &operator[..leaf_end], issuer.pem());
        std::fs::write(self.file("operator.crt"), chain).expect("write operator.crt");
    }

    /// Runs `bulkheadctl` with this CA's credentials against `control`.
    pub fn ctl_at(&self, control: &str, args: &[&str]) -> Output {
        self.ctl_command(control, args)
            .output()
            .expect("run bulkheadctl")
    }

    /// `bulkheadctl ARGS` as the operator against `control`, not started
    /// yet (for commands that run a while, like `-w`).
    pub fn ctl_command(&self, control: &str, args: &[&str]) -> Command {
        let mut command = Command::new(bin("bulkheadctl"));
        command
            .env("BULKHEAD_CONTROL", control)
            .env("BULKHEAD_CREDENTIALS", &self.path)
            .env("XDG_CONFIG_HOME", &self.path) // never read the developer's own config
            .env("NO_COLOR", "1")
            .args(args);
        command
    }
}

pub fn slot_from_files(cert: &Path, key: &Path) -> CertSlot {
    let chain = bulkhead_tls::certs_from_pem(&std::fs::read(cert).expect("read cert"), "cert")
        .expect("certs");
    let key =
        bulkhead_tls::key_from_pem(&std::fs::read(key).expect("read key"), "key").expect("key");
    let slot = CertSlot::empty();
    slot.set(CertSlot::certified_key(chain, key).expect("certified key"));
    slot
}

/// Where a control plane keeps its state.
#[derive(Clone, Debug)]
pub enum StoreSpec {
    Memory,
    Etcd {
        endpoints: Vec<String>,
        prefix: String,
    },
}

/// A running `bulkhead-control` process, killed on drop.
pub struct ControlPlane {
    child: Option<Child>,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    /// The admission webhook's address, when `--webhook` was given.
    pub webhook: Option<SocketAddr>,
    args: Vec<String>,
    log: PathBuf,
    _logdir: tempfile::TempDir,
}

impl ControlPlane {
    pub fn start(ca: &TestCa, store: &StoreSpec, extra: &[&str]) -> Self {
        let logdir = tempfile::tempdir().expect("tempdir");
        let log = logdir.path().join("control.log");
        let mut args: Vec<String> = vec![
            "--trust-domain".into(),
            ca.trust_domain.clone(),
            "--issuer-cert".into(),
            ca.file("issuer.crt").display().to_string(),
            "--issuer-key".into(),
            ca.file("issuer.key").display().to_string(),
            "--trust-bundle".into(),
            ca.file("bundle.crt").display().to_string(),
            "--log-level".into(),
            "info,bulkhead_control=debug".into(),
        ];
        match store {
            StoreSpec::Memory => args.extend(["--store".into(), "memory".into()]),
            StoreSpec::Etcd { endpoints, prefix } => args.extend([
                "--store".into(),
                "etcd".into(),
                "--etcd-endpoints".into(),
                endpoints.join(","),
                "--prefix".into(),
                prefix.clone(),
            ]),
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut cp = Self {
            child: None,
            grpc: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            webhook: None,
            args,
            log,
            _logdir: logdir,
        };
        cp.spawn();
        cp
    }

    /// The URL operators and workloads use.
    pub fn url(&self) -> String {
        format!("https://{}", self.grpc)
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        // The first start binds port 0 and reports the ports chosen; a
        // restart asks for the same ones again, so clients keep their URL.
        let addresses = self._logdir.path().join("addresses.json");
        let _ = std::fs::remove_file(&addresses);
        let mut child = Command::new(bin("bulkhead-control"))
            .args(&self.args)
            .arg("--listen")
            .arg(self.grpc.to_string())
            .arg("--admin")
            .arg(self.admin.to_string())
            .arg("--addresses-file")
            .arg(&addresses)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn bulkhead-control");
        let log_path = self.log.clone();
        let bound = read_addresses("bulkhead-control", &addresses, &mut child, &|| {
            std::fs::read_to_string(&log_path).unwrap_or_default()
        });
        self.grpc = address(&bound, "grpc");
        self.admin = address(&bound, "admin");
        self.webhook = bound.get("webhook").map(|_| address(&bound, "webhook"));
        self.child = Some(child);
        self.wait_ready();
    }

    /// Waits until `/ready` says 200 (state loaded, store reachable).
    pub fn wait_ready(&mut self) {
        let admin = self.admin;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "bulkhead-control exited with {status}; log:\n{}",
                    self.log_text()
                );
            }
            if let Ok((200, _)) = http_get(admin, "/ready") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "bulkhead-control not ready after 20 s; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: the fault of a crashed replica.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kill, then start again on the same ports with the same flags.
    pub fn restart(&mut self) {
        self.kill();
        // The old socket may linger briefly; binding is retried by the wait.
        self.spawn();
    }

    pub fn metrics(&self) -> String {
        http_get(self.admin, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    /// A gRPC channel presenting `client_cert` (None: no client certificate).
    pub fn channel(&self, ca: &TestCa, client_cert: Option<CertSlot>) -> Channel {
        bulkhead_tls::channel(&self.url(), ca.bundle(), client_cert).expect("channel")
    }

    pub fn admin_client(&self, ca: &TestCa) -> pb::admin_client::AdminClient<Channel> {
        pb::admin_client::AdminClient::new(self.channel(ca, Some(ca.operator())))
    }

    /// Runs `bulkheadctl` against this control plane as the operator.
    pub fn ctl(&self, ca: &TestCa, args: &[&str]) -> Output {
        ca.ctl_at(&self.url(), args)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A workload certificate obtained the way a sidecar does it: a key made
/// here, a CSR, a token.
#[derive(Debug)]
pub struct Workload {
    pub slot: CertSlot,
    pub chain_der: Vec<Vec<u8>>,
    pub spiffe_id: String,
}

/// Makes a key pair and a CSR (optionally asking for SANs).
pub fn key_and_csr(uri_sans: &[&str]) -> (rcgen::KeyPair, Vec<u8>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("keygen");
    let mut params = rcgen::CertificateParams::default();
    for uri in uri_sans {
        params
            .subject_alt_names
            .push(rcgen::SanType::URI((*uri).try_into().expect("ia5")));
    }
    let csr = params.serialize_request(&key).expect("csr");
    (key, csr.der().to_vec())
}

pub async fn certify(
    cp: &ControlPlane,
    ca: &TestCa,
    token: &str,
) -> Result<Workload, tonic::Status> {
    let (key, csr) = key_and_csr(&[]);
    let resp = pb::identity_client::IdentityClient::new(cp.channel(ca, None))
        .certify(pb::CertifyRequest {
            csr_der: csr,
            attestation: Some(pb::certify_request::Attestation::BootstrapToken(
                token.to_owned(),
            )),
        })
        .await?
        .into_inner();
    Ok(workload_from(key, resp))
}

pub fn workload_from(key: rcgen::KeyPair, resp: pb::CertifyResponse) -> Workload {
    let chain: Vec<rustls_pki_types::CertificateDer<'static>> =
        resp.chain_der.iter().map(|c| c.clone().into()).collect();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let slot = CertSlot::empty();
    slot.set(CertSlot::certified_key(chain, key).expect("certified key"));
    Workload {
        slot,
        chain_der: resp.chain_der,
        spiffe_id: resp.spiffe_id,
    }
}

/// Certifies `ns/sa` with a fresh token.
pub async fn workload(cp: &ControlPlane, ca: &TestCa, ns_sa: &str) -> Workload {
    let token = ca.token(ns_sa, "10m", false);
    certify(cp, ca, &token).await.expect("certify")
}

/// A Watch stream and what it has delivered so far.
pub struct Watcher {
    stream: tonic::Streaming<pb::WatchUpdate>,
    pub updates: Vec<pb::WatchUpdate>,
}

impl Watcher {
    /// Subscribes as `workload`, for `services`, with `own_service` for policy.
    pub async fn start(
        cp: &ControlPlane,
        ca: &TestCa,
        workload: &Workload,
        services: &[&str],
        own_service: &str,
    ) -> Self {
        let request = pb::WatchRequest {
            services: services.iter().map(|s| s.to_string()).collect(),
            own_service: own_service.to_owned(),
            directory: false,
            ..Default::default()
        };
        Self::start_with(cp, ca, workload, request).await
    }

    /// Subscribes as `workload` with `request` as written.
    pub async fn start_with(
        cp: &ControlPlane,
        ca: &TestCa,
        workload: &Workload,
        request: pb::WatchRequest,
    ) -> Self {
        let mut client =
            pb::discovery_client::DiscoveryClient::new(cp.channel(ca, Some(workload.slot.clone())));
        let stream = client.watch(request).await.expect("watch").into_inner();
        Self {
            stream,
            updates: Vec::new(),
        }
    }

    /// The next update (bounded wait).
    pub async fn next(&mut self) -> pb::WatchUpdate {
        let update = tokio::time::timeout(Duration::from_secs(20), self.stream.message())
            .await
            .expect("no watch update within 20 s")
            .expect("watch stream failed")
            .expect("watch stream ended");
        self.updates.push(update.clone());
        update
    }

    /// The next message as the stream gives it: an update, the end, or
    /// the error that ended it (not bounded in time).
    pub async fn try_next(&mut self) -> Result<Option<pb::WatchUpdate>, tonic::Status> {
        self.stream.message().await
    }

    /// Reads updates until one satisfies `pred`; returns it.
    pub async fn until(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&pb::WatchUpdate) -> bool,
    ) -> pb::WatchUpdate {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "watch never delivered {what}"
            );
            let u = self.next().await;
            if pred(&u) {
                return u;
            }
        }
    }
}

/// The resources named in an update: (op, kind, namespace, name).
pub fn resource_changes(u: &pb::WatchUpdate) -> Vec<(i32, String, String, String)> {
    u.changes
        .iter()
        .filter_map(|c| match &c.item {
            Some(pb::change::Item::Resource(r)) => {
                Some((c.op, r.kind.clone(), r.namespace.clone(), r.name.clone()))
            }
            _ => None,
        })
        .collect()
}

/// The endpoints in an update: (op, service, address).
pub fn endpoint_changes(u: &pb::WatchUpdate) -> Vec<(i32, String, String)> {
    u.changes
        .iter()
        .filter_map(|c| match &c.item {
            Some(pb::change::Item::Endpoint(e)) => {
                Some((c.op, e.service.clone(), e.address.clone()))
            }
            _ => None,
        })
        .collect()
}

/// An endpoint record as a sidecar would send it.
pub fn endpoint(
    namespace: &str,
    service: &str,
    version: &str,
    address: &str,
    node: &str,
) -> pb::Endpoint {
    pb::Endpoint {
        namespace: namespace.into(),
        service: service.into(),
        version: version.into(),
        address: address.into(),
        inbound_port: 4143,
        ports: vec![pb::Port {
            port: 8080,
            protocol: "http".into(),
        }],
        locality: Some(pb::Locality {
            node: node.into(),
            zone: "zone-a".into(),
            region: "region-1".into(),
        }),
        ..Default::default()
    }
}

/// Applies YAML through the admin API as the operator; panics on error.
pub async fn apply(cp: &ControlPlane, ca: &TestCa, yaml: &str) -> pb::ApplyResponse {
    cp.admin_client(ca)
        .apply(pb::ApplyRequest {
            source: "test.yaml".into(),
            yaml: yaml.into(),
            dry_run: false,
        })
        .await
        .expect("apply")
        .into_inner()
}

/// The ready endpoints of `namespace/service`, as the operator lists them
/// (callers are sent only to these); panics on error.
pub async fn endpoints_of(
    cp: &ControlPlane,
    ca: &TestCa,
    namespace: &str,
    service: &str,
) -> Vec<pb::Endpoint> {
    list_endpoints(cp, ca, namespace, service, false).await
}

/// Every registration of `namespace/service`, ready or not (`--all`);
/// panics on error.
pub async fn registrations_of(
    cp: &ControlPlane,
    ca: &TestCa,
    namespace: &str,
    service: &str,
) -> Vec<pb::Endpoint> {
    list_endpoints(cp, ca, namespace, service, true).await
}

async fn list_endpoints(
    cp: &ControlPlane,
    ca: &TestCa,
    namespace: &str,
    service: &str,
    all: bool,
) -> Vec<pb::Endpoint> {
    cp.admin_client(ca)
        .list_endpoints(pb::ListEndpointsRequest {
            service: service.into(),
            namespace: namespace.into(),
            all,
        })
        .await
        .expect("list endpoints")
        .into_inner()
        .endpoints
}

/// Path of a file in the repository's examples/.
pub fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("examples")
        .join(name)
}
