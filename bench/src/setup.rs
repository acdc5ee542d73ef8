//! The paths under test, all on loopback, all ending at the same backend:
//!
//! - direct: client → nginx (HTTP/1.1 port; a second port speaks h2c) or iperf3.
//! - bulkhead: client → sidecar A (`--upstream web:80`, an HTTP Service) →
//!   mTLS → sidecar B (`--app` nginx) with an AllowList in force, certificates
//!   from a real `bulkhead-control` (memory store).
//! - bulkhead-tcp: the same sidecars, `web:81`, a `tcp` port of the same
//!   Service (opaque TCP: one mTLS connection per client connection). Bulk
//!   TCP goes A → sidecar `bulk` (`--app` iperf3).
//! - haproxy-http / haproxy-tcp: HAProxy A (plaintext in, TLS 1.3 out with a
//!   client certificate, verifying the server) → HAProxy B (TLS 1.3 in,
//!   client certificate required and verified) → the same backends;
//!   `nbthread 1` each; certificates from the same issuer (openssl).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::loadgen;
use crate::procs::{Proc, free_port, loopback, run_bounded, wait_listening};

pub const TRUST_DOMAIN: &str = "cluster.local";
pub const NAMESPACE: &str = "bench";
/// Every HTTP request goes to this path (the AllowList allows `/bench/**`, GET).
pub const REQUEST_PATH: &str = "/bench/hello";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathId {
    Direct,
    Bulkhead,
    BulkheadTcp,
    HaproxyHttp,
    HaproxyTcp,
}

impl PathId {
    pub const ALL: [PathId; 5] = [
        PathId::Direct,
        PathId::Bulkhead,
        PathId::BulkheadTcp,
        PathId::HaproxyHttp,
        PathId::HaproxyTcp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PathId::Direct => "direct",
            PathId::Bulkhead => "bulkhead",
            PathId::BulkheadTcp => "bulkhead-tcp",
            PathId::HaproxyHttp => "haproxy-http",
            PathId::HaproxyTcp => "haproxy-tcp",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            PathId::Direct => "client → backend",
            PathId::Bulkhead => {
                "client → sidecar A (--upstream, HTTP Service) → mTLS (HTTP/2, pooled) → sidecar B (AllowList) → backend"
            }
            PathId::BulkheadTcp => {
                "client → sidecar A (--upstream, tcp Service port) → mTLS per connection → sidecar B (AllowList) → backend"
            }
            PathId::HaproxyHttp => {
                "client → HAProxy A (mode http) → TLS 1.3 mTLS → HAProxy B (mode http) → backend"
            }
            PathId::HaproxyTcp => {
                "client → HAProxy A (mode tcp) → TLS 1.3 mTLS → HAProxy B (mode tcp) → backend"
            }
        }
    }
}

/// Which binaries to run.
#[derive(Clone, Debug)]
pub struct Bins {
    pub proxy: PathBuf,
    pub control: PathBuf,
    pub ctl: PathBuf,
}

impl Bins {
    pub fn in_dir(dir: &Path) -> Result<Self, String> {
        let b = Self {
            proxy: dir.join("bulkhead-proxy"),
            control: dir.join("bulkhead-control"),
            ctl: dir.join("bulkheadctl"),
        };
        for p in [&b.proxy, &b.control, &b.ctl] {
            if !p.is_file() {
                return Err(format!(
                    "{} is missing: build with `cargo build --release` (bench/run does)",
                    p.display()
                ));
            }
        }
        Ok(b)
    }
}

fn step(text: &str) {
    eprintln!("bench: {text}");
}

/// Runs `bulkheadctl` as the operator of the CA in `ca`.
pub fn ctl(
    bins: &Bins,
    ca: &Path,
    control: &str,
    args: &[&str],
    scratch: &Path,
) -> Result<String, String> {
    let mut cmd = Command::new(&bins.ctl);
    cmd.args(args)
        .env("BULKHEAD_CREDENTIALS", ca)
        .env("BULKHEAD_CONTROL", control)
        .env("NO_COLOR", "1");
    let out = run_bounded(cmd, Duration::from_secs(30), scratch)?;
    if out.ok() {
        Ok(out.stdout)
    } else {
        Err(format!(
            "bulkheadctl {}: {}{}",
            args.join(" "),
            out.stderr,
            out.stdout
        ))
    }
}

/// Waits for `GET path` on `addr` to answer 200.
pub fn wait_http_ok(addr: SocketAddr, path: &str, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    while Instant::now() < deadline {
        match loadgen::probe(addr, "GET", path) {
            Ok((200, _)) => return Ok(()),
            Ok((s, body)) => last = format!("status {s}: {}", body.trim()),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "GET http://{addr}{path} did not answer 200 within {limit:?} (last: {last})"
    ))
}

/// A control plane process on the memory store.
pub struct ControlPlane {
    pub proc: Proc,
    pub url: String,
    pub admin: SocketAddr,
}

pub fn start_control(
    bins: &Bins,
    ca: &Path,
    name: &str,
    lease_ttl: &str,
    dir: &Path,
) -> Result<ControlPlane, String> {
    let listen = loopback(free_port());
    let admin = loopback(free_port());
    let mut cmd = Command::new(&bins.control);
    cmd.args(["--store", "memory", "--listen", &listen.to_string()])
        .args(["--admin", &admin.to_string()])
        .arg("--issuer-cert")
        .arg(ca.join("issuer.crt"))
        .arg("--issuer-key")
        .arg(ca.join("issuer.key"))
        .arg("--trust-bundle")
        .arg(ca.join("bundle.crt"))
        .args(["--trust-domain", TRUST_DOMAIN, "--lease-ttl", lease_ttl])
        .args(["--log-level", "warn"]);
    let mut proc = Proc::spawn(name, cmd, dir)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        proc.check_alive()?;
        if let Ok((200, _)) = loadgen::probe(admin, "GET", "/ready") {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("{name}: /ready not 200 within 20s"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(ControlPlane {
        proc,
        url: format!("https://{listen}"),
        admin,
    })
}

const MESH: &str = r#"apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: client, namespace: bench}
spec:
  ports: [{port: 80, protocol: http}]
---
apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: web, namespace: bench}
spec:
  ports: [{port: 80, protocol: http}, {port: 81, protocol: tcp}]
---
apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: bulk, namespace: bench}
spec:
  ports: [{port: 5201, protocol: tcp}]
---
apiVersion: bulkhead.dev/v1
kind: AllowList
metadata: {name: web-from-client, namespace: bench}
spec:
  target: web
  rules:
    - from: [client]
      ports: [80]
      http: {methods: [GET], paths: ["/bench/**"]}
    - from: [client]
      ports: [81]
---
apiVersion: bulkhead.dev/v1
kind: AllowList
metadata: {name: bulk-from-client, namespace: bench}
spec:
  target: bulk
  rules:
    - from: [client]
      ports: [5201]
"#;

/// Everything the data-path measurements run against.
pub struct DataPath {
    pub nginx: Proc,
    pub nginx_h1: SocketAddr,
    pub nginx_h2: SocketAddr,
    pub iperf: Proc,
    pub iperf_addr: SocketAddr,
    pub control: ControlPlane,
    pub sidecar_a: Proc,
    pub sidecar_web: Proc,
    pub sidecar_bulk: Proc,
    pub bh_http: SocketAddr,
    pub bh_tcp: SocketAddr,
    pub bh_bulk: SocketAddr,
    pub haproxy_a: Proc,
    pub haproxy_b: Proc,
    pub ha_http: SocketAddr,
    pub ha_tcp: SocketAddr,
    pub ha_bulk: SocketAddr,
    /// What a request outside the AllowList got (must be a 403 from the mesh).
    pub denied_probe: String,
}

/// Which kind of traffic a measurement sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Traffic {
    Http1,
    Http2,
    Bulk,
}

impl DataPath {
    pub fn start(bins: &Bins, dir: &Path) -> Result<Self, String> {
        let ca = dir.join("ca");
        step("bulkheadctl ca init");
        ctl(
            bins,
            &ca,
            "https://127.0.0.1:1",
            &[
                "ca",
                "init",
                "--trust-domain",
                TRUST_DOMAIN,
                "--out",
                &ca.display().to_string(),
            ],
            dir,
        )?;

        step("backend: nginx (1 worker, keep-alive, fixed 200 \"ok\") and iperf3 -s");
        let (nginx, nginx_h1, nginx_h2) = start_nginx(dir)?;
        let iperf_addr = loopback(free_port());
        let mut cmd = Command::new("iperf3");
        cmd.args([
            "-s",
            "-B",
            "127.0.0.1",
            "-p",
            &iperf_addr.port().to_string(),
        ]);
        let iperf = Proc::spawn("iperf3-server", cmd, dir)?;
        if !wait_listening(iperf_addr, Duration::from_secs(10)) {
            return Err("iperf3 -s is not listening".into());
        }

        step("bulkhead-control --store memory; apply the bench mesh as the operator");
        let control = start_control(bins, &ca, "bulkhead-control", "10s", dir)?;
        let mesh = dir.join("mesh.yaml");
        std::fs::write(&mesh, MESH).map_err(|e| e.to_string())?;
        ctl(
            bins,
            &ca,
            &control.url,
            &["apply", "-f", &mesh.display().to_string()],
            dir,
        )?;

        step("sidecars: A (client, three --upstream), B (web → nginx), bulk (→ iperf3)");
        let web = start_sidecar(
            bins,
            &ca,
            &control.url,
            dir,
            "web",
            Some((nginx_h1, "http")),
            &[],
        )?;
        let bulk = start_sidecar(
            bins,
            &ca,
            &control.url,
            dir,
            "bulk",
            Some((iperf_addr, "tcp")),
            &[],
        )?;
        let bh_http = loopback(free_port());
        let bh_tcp = loopback(free_port());
        let bh_bulk = loopback(free_port());
        let a = start_sidecar(
            bins,
            &ca,
            &control.url,
            dir,
            "client",
            None,
            &[("web:80", bh_http), ("web:81", bh_tcp), ("bulk", bh_bulk)],
        )?;
        wait_http_ok(bh_http, REQUEST_PATH, Duration::from_secs(30))?;
        wait_http_ok(bh_tcp, REQUEST_PATH, Duration::from_secs(30))?;
        // The AllowList is in force: a path outside it is refused by B.
        let denied_probe = match loadgen::probe(bh_http, "GET", "/not-allowed") {
            Ok((403, body)) => format!("403 {}", body.trim()),
            Ok((s, body)) => {
                return Err(format!(
                    "GET /not-allowed through bulkhead answered {s} ({}), expected 403: is the AllowList in force?",
                    body.trim()
                ));
            }
            Err(e) => return Err(format!("GET /not-allowed through bulkhead: {e}")),
        };

        step(
            "haproxy A and B: certificates from the same issuer (openssl), TLS 1.3 mTLS, nbthread 1",
        );
        let a_pem = haproxy_cert(&ca, dir, "haproxy-a")?;
        let b_pem = haproxy_cert(&ca, dir, "haproxy-b")?;
        let (b_http, b_tcp, b_bulk) = (
            loopback(free_port()),
            loopback(free_port()),
            loopback(free_port()),
        );
        let (ha_http, ha_tcp, ha_bulk) = (
            loopback(free_port()),
            loopback(free_port()),
            loopback(free_port()),
        );
        let bundle = ca.join("bundle.crt");
        let b_cfg = haproxy_b_config(
            &b_pem,
            &bundle,
            [b_http, b_tcp, b_bulk],
            nginx_h1,
            iperf_addr,
        );
        let a_cfg = haproxy_a_config(
            &a_pem,
            &bundle,
            [ha_http, ha_tcp, ha_bulk],
            [b_http, b_tcp, b_bulk],
        );
        let haproxy_b = start_haproxy("haproxy-b", &b_cfg, dir)?;
        let haproxy_a = start_haproxy("haproxy-a", &a_cfg, dir)?;
        for addr in [b_http, b_tcp, b_bulk, ha_http, ha_tcp, ha_bulk] {
            if !wait_listening(addr, Duration::from_secs(10)) {
                return Err(format!("haproxy is not listening on {addr}"));
            }
        }
        wait_http_ok(ha_http, REQUEST_PATH, Duration::from_secs(10))?;
        wait_http_ok(ha_tcp, REQUEST_PATH, Duration::from_secs(10))?;

        Ok(Self {
            nginx,
            nginx_h1,
            nginx_h2,
            iperf,
            iperf_addr,
            control,
            sidecar_a: a,
            sidecar_web: web,
            sidecar_bulk: bulk,
            bh_http,
            bh_tcp,
            bh_bulk,
            haproxy_a,
            haproxy_b,
            ha_http,
            ha_tcp,
            ha_bulk,
            denied_probe,
        })
    }

    /// Where a client of `path` connects for `traffic`; `None` when the
    /// path does not carry it (HTTP/2 through an opaque TCP hop would reach
    /// the HTTP/1.1 backend port; bulk TCP goes through the TCP paths only).
    pub fn addr(&self, path: PathId, traffic: Traffic) -> Option<SocketAddr> {
        use PathId::*;
        match (traffic, path) {
            (Traffic::Http1, Direct) => Some(self.nginx_h1),
            (Traffic::Http1, Bulkhead) => Some(self.bh_http),
            (Traffic::Http1, BulkheadTcp) => Some(self.bh_tcp),
            (Traffic::Http1, HaproxyHttp) => Some(self.ha_http),
            (Traffic::Http1, HaproxyTcp) => Some(self.ha_tcp),
            (Traffic::Http2, Direct) => Some(self.nginx_h2),
            (Traffic::Http2, Bulkhead) => Some(self.bh_http),
            (Traffic::Http2, HaproxyHttp) => Some(self.ha_http),
            (Traffic::Http2, _) => None,
            (Traffic::Bulk, Direct) => Some(self.iperf_addr),
            (Traffic::Bulk, BulkheadTcp) => Some(self.bh_bulk),
            (Traffic::Bulk, HaproxyTcp) => Some(self.ha_bulk),
            (Traffic::Bulk, _) => None,
        }
    }

    /// The proxy processes a path's traffic crosses (both hops).
    pub fn proxies(&self, path: PathId, traffic: Traffic) -> Vec<&Proc> {
        match path {
            PathId::Direct => vec![],
            PathId::Bulkhead | PathId::BulkheadTcp if traffic == Traffic::Bulk => {
                vec![&self.sidecar_a, &self.sidecar_bulk]
            }
            PathId::Bulkhead | PathId::BulkheadTcp => vec![&self.sidecar_a, &self.sidecar_web],
            PathId::HaproxyHttp | PathId::HaproxyTcp => vec![&self.haproxy_a, &self.haproxy_b],
        }
    }

    /// Every proxy process, for memory figures.
    pub fn all_proxies(&self) -> Vec<&Proc> {
        vec![
            &self.sidecar_a,
            &self.sidecar_web,
            &self.sidecar_bulk,
            &self.haproxy_a,
            &self.haproxy_b,
        ]
    }

    /// Fails if any process of the setup has died.
    pub fn check_alive(&mut self) -> Result<(), String> {
        for p in [
            &mut self.nginx,
            &mut self.iperf,
            &mut self.control.proc,
            &mut self.sidecar_a,
            &mut self.sidecar_web,
            &mut self.sidecar_bulk,
            &mut self.haproxy_a,
            &mut self.haproxy_b,
        ] {
            p.check_alive()?;
        }
        Ok(())
    }
}

fn start_nginx(dir: &Path) -> Result<(Proc, SocketAddr, SocketAddr), String> {
    let h1 = loopback(free_port());
    let h2 = loopback(free_port());
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(prefix.join("tmp")).map_err(|e| e.to_string())?;
    let p = prefix.display();
    let conf = format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {p}/tmp/body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
    default_type text/plain;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {{ listen {h1} backlog=4096; location / {{ return 200 "ok\n"; }} }}
    server {{ listen {h2} http2 backlog=4096; location / {{ return 200 "ok\n"; }} }}
}}
"#
    );
    let path = prefix.join("nginx.conf");
    std::fs::write(&path, conf).map_err(|e| e.to_string())?;
    let mut cmd = Command::new("nginx");
    cmd.arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&path)
        .args(["-e", "stderr"]);
    let mut proc = Proc::spawn("nginx", cmd, dir)?;
    if !wait_listening(h1, Duration::from_secs(10)) || !wait_listening(h2, Duration::from_secs(1)) {
        proc.check_alive()?;
        return Err("nginx is not listening".into());
    }
    wait_http_ok(h1, REQUEST_PATH, Duration::from_secs(5))?;
    Ok((proc, h1, h2))
}

fn start_sidecar(
    bins: &Bins,
    ca: &Path,
    control: &str,
    dir: &Path,
    service: &str,
    app: Option<(SocketAddr, &str)>,
    upstreams: &[(&str, SocketAddr)],
) -> Result<Proc, String> {
    let token = ctl(
        bins,
        ca,
        control,
        &[
            "token",
            "create",
            "--identity",
            &format!("{NAMESPACE}/{service}"),
            "--ttl",
            "1h",
            "--once",
        ],
        dir,
    )?;
    let own = dir.join(format!("sidecar-{service}"));
    std::fs::create_dir_all(&own).map_err(|e| e.to_string())?;
    let token_file = own.join("token");
    std::fs::write(&token_file, token.trim()).map_err(|e| e.to_string())?;
    let admin = loopback(free_port());
    let mut cmd = Command::new(&bins.proxy);
    cmd.args([
        "run",
        "--control",
        control,
        "--namespace",
        NAMESPACE,
        "--service",
        service,
    ])
    .arg("--trust-bundle")
    .arg(ca.join("bundle.crt"))
    .arg("--token-file")
    .arg(&token_file)
    .args([
        "--version",
        "1.0.0",
        "--node",
        "node-1",
        "--zone",
        "zone-a",
        "--region",
        "region-1",
    ])
    .args(["--inbound", &loopback(free_port()).to_string()])
    .args(["--admin", &admin.to_string()])
    .args(["--log-level", "warn"]);
    if let Some((addr, protocol)) = app {
        cmd.args(["--app", &addr.to_string(), "--app-protocol", protocol]);
    }
    for (target, addr) in upstreams {
        cmd.arg("--upstream").arg(format!("{target}={addr}"));
    }
    let mut proc = Proc::spawn(&format!("sidecar-{service}"), cmd, dir)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        proc.check_alive()?;
        if let Ok((200, _)) = loadgen::probe(admin, "GET", "/ready") {
            return Ok(proc);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "sidecar {service}: /ready not 200 within 30s; log:\n{}",
                crate::procs::tail(&proc.log, 15)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A key and certificate for one HAProxy, signed by the mesh issuer with
/// openssl: a SPIFFE URI SAN like a sidecar's, plus a DNS SAN for
/// HAProxy's `verifyhost`. Returns the PEM HAProxy loads (leaf, issuer, key).
fn haproxy_cert(ca: &Path, dir: &Path, name: &str) -> Result<PathBuf, String> {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let crt = dir.join(format!("{name}.crt"));
    let ext = dir.join(format!("{name}.ext"));
    std::fs::write(
        &ext,
        format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=URI:spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{name},DNS:{name}.{NAMESPACE}\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let run = |args: &[&str]| -> Result<(), String> {
        let mut cmd = Command::new("openssl");
        cmd.args(args);
        let out = run_bounded(cmd, Duration::from_secs(20), dir)?;
        if out.ok() {
            Ok(())
        } else {
            Err(format!("openssl {}: {}", args.join(" "), out.stderr))
        }
    };
    let s = |p: &Path| p.display().to_string();
    run(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        &s(&key),
    ])?;
    run(&[
        "req",
        "-new",
        "-key",
        &s(&key),
        "-subj",
        &format!("/CN={name}"),
        "-out",
        &s(&csr),
    ])?;
    run(&[
        "x509",
        "-req",
        "-in",
        &s(&csr),
        "-CA",
        &s(&ca.join("issuer.crt")),
        "-CAkey",
        &s(&ca.join("issuer.key")),
        "-set_serial",
        &format!("{}", std::process::id() as u64 * 1000 + name.len() as u64),
        "-days",
        "2",
        "-sha256",
        "-extfile",
        &s(&ext),
        "-out",
        &s(&crt),
    ])?;
    let pem = dir.join(format!("{name}.pem"));
    let mut all = std::fs::read_to_string(&crt).map_err(|e| e.to_string())?;
    all += &std::fs::read_to_string(ca.join("issuer.crt")).map_err(|e| e.to_string())?;
    all += &std::fs::read_to_string(&key).map_err(|e| e.to_string())?;
    std::fs::write(&pem, all).map_err(|e| e.to_string())?;
    Ok(pem)
}

const HAPROXY_GLOBAL: &str = "global
    nbthread 1
    maxconn 8000
    ssl-default-bind-options ssl-min-ver TLSv1.3
    ssl-default-server-options ssl-min-ver TLSv1.3
defaults
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
";

/// HAProxy B: mTLS in (client certificate required, verified against the
/// bundle), plain out to the backends.
fn haproxy_b_config(
    pem: &Path,
    bundle: &Path,
    [http, tcp, bulk]: [SocketAddr; 3],
    nginx: SocketAddr,
    iperf: SocketAddr,
) -> String {
    let tls = format!(
        "ssl crt {} ca-file {} verify required",
        pem.display(),
        bundle.display()
    );
    format!(
        "{HAPROXY_GLOBAL}
frontend http_in
    mode http
    bind {http} {tls}
    default_backend app_http
backend app_http
    mode http
    http-reuse always
    server nginx {nginx}
frontend tcp_in
    mode tcp
    bind {tcp} {tls}
    default_backend app_tcp
backend app_tcp
    mode tcp
    server nginx {nginx}
frontend bulk_in
    mode tcp
    bind {bulk} {tls}
    default_backend app_bulk
backend app_bulk
    mode tcp
    server iperf {iperf}
"
    )
}

/// HAProxy A: plaintext in, TLS 1.3 out with a client certificate,
/// verifying B's chain and name.
fn haproxy_a_config(
    pem: &Path,
    bundle: &Path,
    [http, tcp, bulk]: [SocketAddr; 3],
    [b_http, b_tcp, b_bulk]: [SocketAddr; 3],
) -> String {
    let tls = format!(
        "ssl crt {} ca-file {} verify required verifyhost haproxy-b.{NAMESPACE}",
        pem.display(),
        bundle.display()
    );
    format!(
        "{HAPROXY_GLOBAL}
frontend http_in
    mode http
    bind {http}
    default_backend to_b_http
backend to_b_http
    mode http
    http-reuse always
    server b {b_http} {tls}
frontend tcp_in
    mode tcp
    bind {tcp}
    default_backend to_b_tcp
backend to_b_tcp
    mode tcp
    server b {b_tcp} {tls}
frontend bulk_in
    mode tcp
    bind {bulk}
    default_backend to_b_bulk
backend to_b_bulk
    mode tcp
    server b {b_bulk} {tls}
"
    )
}

fn start_haproxy(name: &str, config: &str, dir: &Path) -> Result<Proc, String> {
    let path = dir.join(format!("{name}.cfg"));
    std::fs::write(&path, config).map_err(|e| e.to_string())?;
    let mut check = Command::new("haproxy");
    check.arg("-c").arg("-f").arg(&path);
    let out = run_bounded(check, Duration::from_secs(20), dir)?;
    if !out.ok() {
        return Err(format!(
            "haproxy -c {}: {}{}",
            path.display(),
            out.stdout,
            out.stderr
        ));
    }
    let mut cmd = Command::new("haproxy");
    // -db: foreground, one process (its pid is the one measured).
    cmd.arg("-db").arg("-f").arg(&path);
    Proc::spawn(name, cmd, dir)
}
