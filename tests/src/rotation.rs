//! Root rotation scenarios: a second root for the same trust domain, the
//! trust record as the store holds it (written the way another replica
//! would), and what a sidecar says it trusts.

use std::time::Duration;

use bulkhead_control::ca::{Cert, TrustRecord};
use bulkhead_control::store::{EtcdConfig, EtcdStore, Op, Store};
use rustls_pki_types::CertificateDer;

use crate::control::{TestCa, wait_for_async};
use crate::mesh::{Mesh, blocking};
use crate::proxy::Sidecar;

/// The first certificate of a CA folder's PEM file.
pub fn first_cert(ca: &TestCa, file: &str) -> CertificateDer<'static> {
    let pem = std::fs::read(ca.file(file)).expect("read certificate");
    bulkhead_tls::certs_from_pem(&pem, file)
        .expect("PEM")
        .remove(0)
}

/// SHA-256 of a CA folder's first certificate in `file`, as `ca status`
/// and `/config` print it.
pub fn fingerprint_of(ca: &TestCa, file: &str) -> String {
    bulkhead_tls::fingerprint(&first_cert(ca, file))
}

/// The trust record after `prepare`: `old`'s root and issuer, with `new`'s
/// root joining the bundle and its issuer waiting.
pub fn prepared(old: &TestCa, new: &TestCa) -> TrustRecord {
    let start = TrustRecord::new(
        vec![first_cert(old, "root.crt")],
        first_cert(old, "issuer.crt"),
    )
    .expect("record");
    let cert = |ca: &TestCa, file: &str| Cert::parse(first_cert(ca, file), file).expect("cert");
    start
        .prepared(cert(new, "root.crt"), cert(new, "issuer.crt"))
        .expect("prepared record")
}

/// Writes `record` into the mesh's etcd (under the control plane's
/// prefix) as another replica would.
pub async fn write_record(mesh: &mut Mesh, prefix: &str, record: &TrustRecord) {
    let url = mesh.etcd_server().expect("a mesh on etcd").client_url();
    let store = EtcdStore::connect(EtcdConfig {
        endpoints: vec![url],
        prefix: prefix.to_owned(),
        ..EtcdConfig::default()
    })
    .await
    .expect("connect to etcd");
    store
        .txn(vec![Op::Put {
            key: "ca/trust".into(),
            value: record.encode(),
            lease: None,
        }])
        .await
        .expect("write the trust record");
}

/// The roots a sidecar says it trusts (`/config`), as fingerprints.
pub fn trusted_roots(sidecar: &Sidecar) -> Vec<String> {
    let config = blocking(|| sidecar.config());
    config["trustRoots"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str().map(str::to_owned))
        .collect()
}

/// Waits (20 s at most) until the sidecar trusts exactly `roots`.
pub async fn until_trusts(sidecar: &Sidecar, roots: &[String]) {
    let mut want = roots.to_vec();
    want.sort();
    wait_for_async(
        &format!("{} to trust {want:?}", sidecar.spec.service),
        Duration::from_secs(20),
        || {
            let mut seen = trusted_roots(sidecar);
            seen.sort();
            let done = seen == want;
            async move { done.then_some(()) }
        },
    )
    .await;
}

/// `bulkheadctl ca status -o json` as the operator; panics with the
/// output when it fails.
pub fn ca_status(mesh: &Mesh) -> serde_json::Value {
    let out = blocking(|| mesh.cp.ctl(&mesh.ca, &["ca", "status", "-o", "json"]));
    assert!(
        out.status.success(),
        "ca status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ca status -o json is JSON")
}

/// Waits (20 s at most) until `ca status` satisfies `done`; returns it.
pub async fn until_status(
    mesh: &Mesh,
    what: &str,
    mut done: impl FnMut(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_for_async(what, Duration::from_secs(20), || {
        let status = ca_status(mesh);
        let found = done(&status).then_some(status);
        async move { found }
    })
    .await
}

/// When the certificate in `file` of a CA folder expires (unix seconds).
pub fn not_after_of(ca: &TestCa, file: &str) -> u64 {
    let der = first_cert(ca, file);
    bulkhead_tls::not_after(&der)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .expect("notAfter")
}

/// `bulkheadctl ca rotate ARGS...` as the operator (exit status and
/// output are the caller's to judge).
pub fn rotate(mesh: &Mesh, args: &[&str]) -> std::process::Output {
    let mut all = vec!["ca", "rotate"];
    all.extend_from_slice(args);
    blocking(|| mesh.cp.ctl(&mesh.ca, &all))
}

/// [`rotate`], which must succeed; its stdout.
pub fn rotate_ok(mesh: &Mesh, args: &[&str]) -> String {
    let out = rotate(mesh, args);
    assert!(
        out.status.success(),
        "ca rotate {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether every replica `ca status` lists holds the next issuer's key.
pub fn replicas_hold_next_issuer(status: &serde_json::Value) -> bool {
    let Some(next) = status["nextIssuer"]["fingerprint"].as_str() else {
        return false;
    };
    status["replicas"].as_array().is_some_and(|replicas| {
        !replicas.is_empty()
            && replicas.iter().all(|r| {
                r["issuers"]
                    .as_array()
                    .is_some_and(|fps| fps.iter().any(|f| f == next))
            })
    })
}

/// `prepare --generate`, then waits until every replica holds the next
/// issuer's key (the control plane reads this same folder); the status.
pub async fn prepare_and_wait(mesh: &Mesh) -> serde_json::Value {
    rotate_ok(mesh, &["prepare", "--generate"]);
    until_status(mesh, "every replica to hold the next issuer's key", |s| {
        replicas_hold_next_issuer(s)
    })
    .await
}

/// The issuer a sidecar's certificate comes from (`/config`).
pub fn issuer_of(sidecar: &Sidecar) -> Option<String> {
    blocking(|| sidecar.config())["certificateIssuer"]
        .as_str()
        .map(str::to_owned)
}

/// The SHA-256 of the next root, as `ca status` names it.
fn next_root(status: &serde_json::Value) -> String {
    status["nextIssuer"]["root"]
        .as_str()
        .expect("a prepared rotation names the next issuer's root")
        .to_owned()
}

/// A whole root rotation through the real CLI — prepare, activate (with
/// `renew_within`), retire — waiting between stages for what the next one
/// needs: every replica holding the next issuer's key, every sidecar
/// trusting both roots, every endpoint on the new root. Returns when every
/// sidecar trusts the new root alone, with the moment `retire` returned.
pub async fn rotate_root(
    mesh: &Mesh,
    sidecars: &[&Sidecar],
    renew_within: &str,
) -> std::time::SystemTime {
    let old: Vec<String> = ca_status(mesh)["roots"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["fingerprint"].as_str().map(str::to_owned))
        .collect();
    let new_root = next_root(&prepare_and_wait(mesh).await);
    let both: Vec<String> = old.iter().cloned().chain([new_root.clone()]).collect();
    for sidecar in sidecars {
        until_trusts(sidecar, &both).await;
    }
    rotate_ok(mesh, &["activate", "--renew-within", renew_within]);
    let count = sidecars.len() as u64;
    until_status(mesh, "every endpoint on the new root", |s| {
        s["workloads"][&new_root] == count
    })
    .await;
    rotate_ok(mesh, &["retire"]);
    let retired = std::time::SystemTime::now();
    for sidecar in sidecars {
        until_trusts(sidecar, std::slice::from_ref(&new_root)).await;
    }
    retired
}

/// One mesh connection between two sidecars as the caller's kernel saw it.
#[derive(Clone, Debug)]
pub struct Connection {
    /// The caller's (ephemeral) port.
    pub port: u16,
    pub first_seen: std::time::SystemTime,
    pub last_seen: std::time::SystemTime,
    /// The earlier notAfter of the two sidecars' certificates when it was
    /// first seen (unix seconds): it must be over by then.
    pub deadline: u64,
}

/// Samples every mesh connection from one sidecar to another's inbound
/// port (every 100 ms, from `/proc/net/tcp`) and both sidecars'
/// certificates (every 500 ms, from `/config`), until finished.
pub struct ConnectionLog {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<u16, Connection>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Caller ports of established TCP connections to `port` on loopback.
fn established_to(port: u16) -> Vec<u16> {
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(remote), Some(state)) =
                (fields.get(1), fields.get(2), fields.get(3))
            else {
                continue;
            };
            let port_of = |addr: &str| {
                addr.rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
            };
            if *state == "01" && port_of(remote) == Some(port) {
                ports.extend(port_of(local));
            }
        }
    }
    ports
}

fn not_after(admin: std::net::SocketAddr) -> Option<u64> {
    let (_, body) = crate::control::http_get(admin, "/config").ok()?;
    let config: serde_json::Value = serde_json::from_str(&body).ok()?;
    config["certificateNotAfterUnix"].as_u64()
}

impl ConnectionLog {
    pub fn start(caller: &Sidecar, callee: &Sidecar) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
        let (admins, port) = ([caller.admin, callee.admin], callee.inbound.port());
        let thread = {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || {
                let mut deadline = u64::MAX;
                let mut tick = 0u32;
                while !stop.load(Ordering::SeqCst) {
                    if tick.is_multiple_of(5) {
                        // A renewal only moves the deadline later: the
                        // smallest seen so far would be too strict, the
                        // current one is what a new connection gets.
                        if let [Some(a), Some(b)] = admins.map(not_after) {
                            deadline = a.min(b);
                        }
                    }
                    tick += 1;
                    let now = std::time::SystemTime::now();
                    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                    for p in established_to(port) {
                        seen.entry(p)
                            .and_modify(|c: &mut Connection| c.last_seen = now)
                            .or_insert(Connection {
                                port: p,
                                first_seen: now,
                                last_seen: now,
                                deadline,
                            });
                    }
                    drop(seen);
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        Self {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// The connections seen so far.
    pub fn connections(&self) -> Vec<Connection> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Stops sampling; every connection seen.
    pub fn finish(mut self) -> Vec<Connection> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.connections()
    }
}

impl Drop for ConnectionLog {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
