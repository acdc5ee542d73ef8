//! Control-plane figures, against a fresh `bulkhead-control` process on the
//! memory store, through its real gRPC API with workload certificates:
//!
//! - push latency: N lightweight watchers (one TLS connection and one Watch
//!   stream each, N = 10, 100, 1,000); a registrar registers an endpoint;
//!   the time from sending `Register` to the change's arrival at each
//!   watcher (the store write happens inside that window);
//! - certificate issuances per second: concurrent `Certify` calls with a
//!   reusable bootstrap token and fresh P-256 CSRs;
//! - memory: the process's RSS idle and after 10,000 registered endpoints,
//!   and how long one new watcher takes to receive a snapshot of them.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bulkhead_proto::pb::{
    self, discovery_client::DiscoveryClient, identity_client::IdentityClient,
};
use bulkhead_tls::{self as tls, CertSlot, TrustBundle};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::procs::Memory;
use crate::setup::{self, Bins, NAMESPACE, TRUST_DOMAIN};

#[derive(Clone, Debug)]
pub struct Plan {
    pub watchers: Vec<usize>,
    pub changes: usize,
    pub issuance: Duration,
    pub issuance_concurrency: usize,
    pub endpoints: usize,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Results {
    pub fanout: Vec<FanOut>,
    pub issuance: Issuance,
    pub endpoints: Endpoints,
    pub rss_idle_kb: u64,
    pub errors: Vec<String>,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct FanOut {
    pub watchers: usize,
    pub changes: usize,
    /// (watcher, change) pairs that arrived / never arrived within 10 s.
    pub delivered: u64,
    pub missing: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Per change: until the last watcher had it.
    pub last_p50_ms: f64,
    pub last_p99_ms: f64,
    pub subscribe_s: f64,
    pub rss_kb: u64,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Issuance {
    pub concurrency: usize,
    pub seconds: f64,
    pub issued: u64,
    pub errors: u64,
    pub per_second: f64,
    pub cpu_s: f64,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Endpoints {
    pub count: usize,
    pub registered: u64,
    pub errors: u64,
    pub register_s: f64,
    pub per_second: f64,
    pub rss_before: Memory,
    pub rss_after: Memory,
    pub snapshot_ms: f64,
    pub snapshot_endpoints: usize,
}

const MESH: &str = r#"apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: fanout, namespace: bench}
spec:
  ports: [{port: 80, protocol: http}]
  serviceAccounts: [registrar]
---
apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: many, namespace: bench}
spec:
  ports: [{port: 80, protocol: http}]
  serviceAccounts: [registrar]
"#;

fn workload(bins: &Bins, ca: &Path, url: &str, dir: &Path, sa: &str) -> Result<CertSlot, String> {
    let token = setup::ctl(
        bins,
        ca,
        url,
        &[
            "token",
            "create",
            "--identity",
            &format!("{NAMESPACE}/{sa}"),
            "--ttl",
            "1h",
        ],
        dir,
    )?;
    let out = dir.join(format!("cert-{sa}"));
    setup::ctl(
        bins,
        ca,
        url,
        &[
            "cert",
            "request",
            "--trust-bundle",
            &ca.join("bundle.crt").display().to_string(),
            "--token",
            token.trim(),
            "--out",
            &out.display().to_string(),
        ],
        dir,
    )?;
    let read = |name: &str| std::fs::read(out.join(name)).map_err(|e| format!("{name}: {e}"));
    let chain = tls::certs_from_pem(&read("tls.crt")?, "tls.crt").map_err(|e| e.to_string())?;
    let key = tls::key_from_pem(&read("tls.key")?, "tls.key").map_err(|e| e.to_string())?;
    let slot = CertSlot::empty();
    slot.set(CertSlot::certified_key(chain, key).map_err(|e| e.to_string())?);
    Ok(slot)
}

fn endpoint(service: &str, address: String, inbound_port: u32) -> pb::Endpoint {
    pb::Endpoint {
        namespace: NAMESPACE.into(),
        service: service.into(),
        version: "1.0.0".into(),
        address,
        inbound_port,
        ports: vec![pb::Port {
            port: 80,
            protocol: "http".into(),
        }],
        locality: Some(pb::Locality {
            node: "node-1".into(),
            zone: "zone-a".into(),
            region: "region-1".into(),
        }),
        identity: String::new(),
        registered_unix_ms: 0,
        ready: Some(true),
    }
}

pub fn run(bins: &Bins, dir: &Path, plan: &Plan) -> Result<Results, String> {
    let ca = dir.join("ca");
    let mut cp = setup::start_control(bins, &ca, "bulkhead-control-bench", "600s", dir)?;
    let mesh = dir.join("control-mesh.yaml");
    std::fs::write(&mesh, MESH).map_err(|e| e.to_string())?;
    setup::ctl(
        bins,
        &ca,
        &cp.url,
        &["apply", "-f", &mesh.display().to_string()],
        dir,
    )?;
    let watcher = workload(bins, &ca, &cp.url, dir, "watcher")?;
    let registrar = workload(bins, &ca, &cp.url, dir, "registrar")?;
    let issue_token = setup::ctl(
        bins,
        &ca,
        &cp.url,
        &[
            "token",
            "create",
            "--identity",
            &format!("{NAMESPACE}/issued"),
            "--ttl",
            "1h",
        ],
        dir,
    )?
    .trim()
    .to_owned();
    let bundle_pem = std::fs::read(ca.join("bundle.crt")).map_err(|e| e.to_string())?;
    let bundle = TrustBundle::from_pem(&bundle_pem, "bundle.crt", TRUST_DOMAIN)
        .map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(300));
    let mut results = Results {
        rss_idle_kb: cp.proc.memory().rss_kb,
        ..Default::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let pid = cp.proc.pid();
    runtime.block_on(async {
        let registrar_ch =
            bulkhead_tls::channel(&cp.url, &bundle, Some(registrar)).map_err(|e| e.to_string())?;
        // Endpoints first, so their RSS figure starts from an idle process.
        eprintln!("bench: control plane: {} endpoints", plan.endpoints);
        results.endpoints = endpoints(
            &cp.url,
            &bundle,
            &watcher,
            &registrar_ch,
            plan.endpoints,
            pid,
        )
        .await;
        eprintln!(
            "bench: control plane: certificate issuance ({:?})",
            plan.issuance
        );
        results.issuance = issuance(&cp.url, &bundle, &issue_token, plan, pid).await;
        let mut marker = 20_000u32;
        for &n in &plan.watchers {
            eprintln!("bench: control plane: endpoint change → {n} watchers");
            match fanout(
                &cp.url,
                &bundle,
                &watcher,
                &registrar_ch,
                n,
                plan.changes,
                &mut marker,
                pid,
            )
            .await
            {
                Ok(f) => {
                    if f.missing > 0 {
                        results
                            .errors
                            .push(format!("{n} watchers: {} deliveries missing", f.missing));
                    }
                    results.fanout.push(f);
                }
                Err(e) => results.errors.push(format!("{n} watchers: {e}")),
            }
        }
        Ok::<(), String>(())
    })?;
    if results.issuance.errors > 0 {
        results.errors.push(format!(
            "{} failed certificate requests",
            results.issuance.errors
        ));
    }
    if results.endpoints.errors > 0 {
        results
            .errors
            .push(format!("{} failed registrations", results.endpoints.errors));
    }
    cp.proc.check_alive()?;
    drop(runtime);
    cp.proc.stop();
    Ok(results)
}

async fn issuance(url: &str, bundle: &TrustBundle, token: &str, plan: &Plan, pid: u32) -> Issuance {
    // CSRs are made beforehand: the client's key generation is not the
    // control plane's cost.
    let csrs: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..64)
            .filter_map(|_| {
                let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).ok()?;
                Some(
                    rcgen::CertificateParams::default()
                        .serialize_request(&key)
                        .ok()?
                        .der()
                        .to_vec(),
                )
            })
            .collect(),
    );
    let channels: Vec<Channel> = (0..4)
        .filter_map(|_| bulkhead_tls::channel(url, bundle, None).ok())
        .collect();
    let call = |ch: Channel, csr: Vec<u8>, token: String| async move {
        IdentityClient::new(ch)
            .certify(pb::CertifyRequest {
                csr_der: csr,
                attestation: Some(pb::certify_request::Attestation::BootstrapToken(token)),
            })
            .await
    };
    // Warm up: connections and first calls.
    for ch in &channels {
        let _ = call(ch.clone(), csrs[0].clone(), token.to_owned()).await;
    }
    let issued = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let cpu0 = crate::procs::cpu_seconds(pid).unwrap_or(0.0);
    let started = Instant::now();
    let end = started + plan.issuance;
    let concurrency = plan.issuance_concurrency.max(1);
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let ch = channels[i % channels.len()].clone();
            let (csrs, issued, errors, first_error) = (
                csrs.clone(),
                issued.clone(),
                errors.clone(),
                first_error.clone(),
            );
            let token = token.to_owned();
            tokio::spawn(async move {
                let mut j = i;
                while Instant::now() < end {
                    let csr = csrs[j % csrs.len()].clone();
                    j += concurrency;
                    match tokio::time::timeout(
                        Duration::from_secs(10),
                        call(ch.clone(), csr, token.clone()),
                    )
                    .await
                    {
                        Ok(Ok(_)) => {
                            issued.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            let mut f = first_error.lock().unwrap_or_else(|e| e.into_inner());
                            if f.is_none() {
                                *f = Some(match other {
                                    Ok(Err(s)) => s.message().to_owned(),
                                    _ => "timed out".into(),
                                });
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = crate::procs::cpu_seconds(pid).unwrap_or(0.0) - cpu0;
    let n = issued.load(Ordering::Relaxed);
    if let Some(e) = first_error.lock().unwrap_or_else(|e| e.into_inner()).take() {
        eprintln!(
            "bench: issuance error (first of {}): {e}",
            errors.load(Ordering::Relaxed)
        );
    }
    Issuance {
        concurrency,
        seconds,
        issued: n,
        errors: errors.load(Ordering::Relaxed),
        per_second: n as f64 / seconds,
        cpu_s: cpu,
    }
}

enum Event {
    Ready,
    Failed(String),
    Seen(u32, Instant),
}

async fn watch(ch: Channel, services: Vec<String>, tx: mpsc::UnboundedSender<Event>) {
    let mut client = DiscoveryClient::new(ch);
    let mut stream = match client
        .watch(pb::WatchRequest {
            services,
            own_service: String::new(),
            directory: false,
            ..Default::default()
        })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => {
            let _ = tx.send(Event::Failed(s.message().to_owned()));
            return;
        }
    };
    let mut first = true;
    loop {
        match stream.message().await {
            Ok(Some(update)) => {
                let now = Instant::now();
                if first {
                    first = false;
                    let _ = tx.send(Event::Ready);
                }
                for change in update.changes {
                    if change.op == pb::change::Op::Upsert as i32
                        && let Some(pb::change::Item::Endpoint(ep)) = change.item
                        && tx.send(Event::Seen(ep.inbound_port, now)).is_err()
                    {
                        return;
                    }
                }
            }
            Ok(None) => return,
            Err(s) => {
                let _ = tx.send(Event::Failed(s.message().to_owned()));
                return;
            }
        }
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

#[allow(clippy::too_many_arguments)]
async fn fanout(
    url: &str,
    bundle: &TrustBundle,
    watcher: &CertSlot,
    registrar: &Channel,
    n: usize,
    changes: usize,
    marker: &mut u32,
    pid: u32,
) -> Result<FanOut, String> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let ch =
            bulkhead_tls::channel(url, bundle, Some(watcher.clone())).map_err(|e| e.to_string())?;
        tasks.push(tokio::spawn(watch(ch, vec!["fanout".into()], tx.clone())));
    }
    drop(tx);
    let abort = |tasks: &[tokio::task::JoinHandle<()>]| tasks.iter().for_each(|t| t.abort());
    let mut ready = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while ready < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Event::Ready)) => ready += 1,
            Ok(Some(Event::Failed(e))) => {
                abort(&tasks);
                return Err(format!("a watcher failed to subscribe: {e}"));
            }
            Ok(Some(Event::Seen(..))) => {}
            Ok(None) | Err(_) => {
                abort(&tasks);
                return Err(format!(
                    "only {ready} of {n} watchers subscribed within 60 s"
                ));
            }
        }
    }
    let subscribe_s = started.elapsed().as_secs_f64();
    let mut client = DiscoveryClient::new(registrar.clone());
    let mut all = Vec::new();
    let mut last = Vec::new();
    let mut missing = 0u64;
    for _ in 0..changes {
        *marker += 1;
        let port = *marker;
        let t0 = Instant::now();
        let reg = client
            .register(pb::RegisterRequest {
                endpoint: Some(endpoint("fanout", "198.18.0.1".into(), port)),
                ..Default::default()
            })
            .await
            .map_err(|s| format!("register: {}", s.message()))?
            .into_inner();
        let mut got = 0;
        let mut slowest = 0.0f64;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while got < n {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Event::Seen(p, at))) if p == port => {
                    got += 1;
                    let ms = at.saturating_duration_since(t0).as_secs_f64() * 1000.0;
                    slowest = slowest.max(ms);
                    all.push(ms);
                }
                Ok(Some(Event::Failed(e))) => {
                    eprintln!("bench: a watcher failed: {e}");
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        missing += (n - got) as u64;
        last.push(slowest);
        let _ = client
            .deregister(pb::KeepAliveRequest {
                namespace: NAMESPACE.into(),
                service: "fanout".into(),
                address: "198.18.0.1".into(),
                lease_id: reg.lease_id,
                inbound_port: port,
                ..Default::default()
            })
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rss_kb = crate::procs::memory(pid).rss_kb;
    abort(&tasks);
    all.sort_by(f64::total_cmp);
    last.sort_by(f64::total_cmp);
    Ok(FanOut {
        watchers: n,
        changes,
        delivered: all.len() as u64,
        missing,
        p50_ms: quantile(&all, 0.5),
        p99_ms: quantile(&all, 0.99),
        max_ms: all.last().copied().unwrap_or(0.0),
        last_p50_ms: quantile(&last, 0.5),
        last_p99_ms: quantile(&last, 0.99),
        subscribe_s,
        rss_kb,
    })
}

async fn endpoints(
    url: &str,
    bundle: &TrustBundle,
    watcher: &CertSlot,
    registrar: &Channel,
    count: usize,
    pid: u32,
) -> Endpoints {
    // Let the process settle first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = crate::procs::memory(pid);
    let registered = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (registered, errors, next) = (registered.clone(), errors.clone(), next.clone());
            let mut client = DiscoveryClient::new(registrar.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= count {
                        return;
                    }
                    // 198.18.0.0/15: addresses nothing is ever sent to.
                    let address = format!("198.18.{}.{}", 1 + i / 250, 1 + i % 250);
                    let r = client
                        .register(pb::RegisterRequest {
                            endpoint: Some(endpoint("many", address, 4143)),
                            ..Default::default()
                        })
                        .await;
                    match r {
                        Ok(_) => registered.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let register_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = crate::procs::memory(pid);
    // One new watcher of that service: time to its snapshot.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut snapshot_ms = 0.0;
    let mut snapshot_endpoints = 0;
    if let Ok(ch) = bulkhead_tls::channel(url, bundle, Some(watcher.clone())) {
        // Connect first, so the figure is the snapshot, not the handshake.
        let _ = DiscoveryClient::new(ch.clone())
            .watch(pb::WatchRequest {
                services: vec!["fanout".into()],
                own_service: String::new(),
                directory: false,
                ..Default::default()
            })
            .await;
        let t0 = Instant::now();
        let task = tokio::spawn(watch(ch, vec!["many".into()], tx));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, rx.recv()).await {
            match ev {
                Event::Seen(_, at) => {
                    snapshot_endpoints += 1;
                    snapshot_ms = at.saturating_duration_since(t0).as_secs_f64() * 1000.0;
                    if snapshot_endpoints >= count {
                        break;
                    }
                }
                Event::Ready => {}
                Event::Failed(_) => break,
            }
        }
        task.abort();
    }
    let n = registered.load(Ordering::Relaxed);
    Endpoints {
        count,
        registered: n,
        errors: errors.load(Ordering::Relaxed),
        register_s,
        per_second: n as f64 / register_s,
        rss_before,
        rss_after,
        snapshot_ms,
        snapshot_endpoints,
    }
}
