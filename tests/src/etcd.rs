//! Real etcd for tests: one server or a cluster on free loopback ports, with
//! its data and log in a temporary directory, killed and removed on drop.
//!
//! Needs the `etcd` binary (Debian package `etcd-server`). The calls block
//! (spawning and health polls, bounded at 15 s); they are fine to make from
//! async tests too.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long a member may take to answer `/health` after it is spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Fresh ports to try when another process takes ours between probe and bind.
const PORT_ATTEMPTS: usize = 5;
const LOG_TAIL_LINES: usize = 40;

/// A single-member etcd.
pub struct EtcdServer {
    member: Member,
    _dir: TempDir,
}

impl EtcdServer {
    /// Starts etcd on free loopback ports and waits until it serves requests.
    pub fn start() -> Self {
        let dir = tempdir();
        let mut members = start_members(dir.path(), 1);
        Self {
            member: members.remove(0),
            _dir: dir,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn client_url(&self) -> String {
        self.member.client_url()
    }

    /// SIGKILL: no shutdown, no flush — a crash.
    pub fn kill(&mut self) {
        self.member.kill();
    }

    /// Kills etcd if it runs, starts it again on the same ports with the same
    /// data, and waits until it serves requests.
    pub fn restart(&mut self) {
        self.member.kill();
        self.member.spawn();
        if let Err((_, reason)) = wait_ready(std::slice::from_mut(&mut self.member)) {
            panic!(
                "{}",
                self.member.failure(&format!("restart failed: {reason}"))
            );
        }
    }

    /// Compacts the key-value history up to `revision`, so that watches from
    /// before it fail (through etcd's HTTP gateway: no client needed).
    pub fn compact(&self, revision: i64) {
        let body = format!(r#"{{"revision":"{revision}","physical":true}}"#);
        match http(self.member.client_port, "POST", "/v3/kv/compaction", &body) {
            Ok((200, _)) => {}
            other => panic!("compacting etcd at revision {revision}: {other:?}"),
        }
    }

    /// How many watchers etcd is serving (its `/metrics`): shows whether a
    /// client really cancelled a watch.
    pub fn watcher_count(&self) -> u64 {
        let metric = "etcd_debugging_mvcc_watcher_total";
        let (status, body) = http(self.member.client_port, "GET", "/metrics", "")
            .unwrap_or_else(|e| panic!("reading etcd metrics: {e}"));
        assert_eq!(status, 200, "etcd /metrics: {body}");
        crate::prom::metric_if_any(&body, metric, &[])
            .map(|value| value as u64)
            .unwrap_or_else(|| panic!("no {metric} in etcd metrics"))
    }

    /// The last lines of etcd's log.
    pub fn log_tail(&self) -> String {
        self.member.log_tail()
    }
}

/// A multi-member etcd cluster on loopback.
pub struct EtcdCluster {
    members: Vec<Member>,
    _dir: TempDir,
}

impl EtcdCluster {
    /// Starts `size` members and waits until every one serves requests
    /// (which needs an elected leader).
    pub fn start(size: usize) -> Self {
        assert!(size > 0, "a cluster needs members");
        let dir = tempdir();
        let members = start_members(dir.path(), size);
        Self { members, _dir: dir }
    }

    /// Every member's client URL, in member order.
    pub fn client_urls(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// SIGKILLs member `i`.
    pub fn kill_member(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Starts member `i` again (same ports, same data) and waits until it
    /// serves requests.
    pub fn restart_member(&mut self, i: usize) {
        let member = &mut self.members[i];
        member.kill();
        member.spawn();
        if let Err((_, reason)) = wait_ready(std::slice::from_mut(member)) {
            panic!("{}", member.failure(&format!("restart failed: {reason}")));
        }
    }
}

/// Spawns `size` members under `root` and waits for all of them, moving to
/// fresh ports when another process took one first.
fn start_members(root: &Path, size: usize) -> Vec<Member> {
    let token = format!("bulkhead-test-{}", std::process::id());
    for attempt in 1..=PORT_ATTEMPTS {
        let ports = free_ports(2 * size);
        let peers: Vec<(String, u16)> = (0..size)
            .map(|i| (format!("m{i}"), ports[2 * i + 1]))
            .collect();
        let initial_cluster = peers
            .iter()
            .map(|(name, port)| format!("{name}=http://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: peers[i].0.clone(),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                dir: root.join(format!("attempt{attempt}-m{i}")),
                initial_cluster: initial_cluster.clone(),
                token: token.clone(),
                child: None,
            })
            .collect();
        for member in &mut members {
            member.spawn();
        }
        match wait_ready(&mut members) {
            Ok(()) => return members,
            // Another process took a port between our probe and etcd's bind.
            Err((i, _)) if members[i].log_tail().contains("address already in use") => {
                // Dropping kills them; the next attempt uses other directories.
                drop(members);
            }
            Err((i, reason)) => {
                panic!(
                    "{}",
                    members[i].failure(&format!("etcd did not start: {reason}"))
                )
            }
        }
    }
    panic!("etcd: every port we tried was taken by another process ({PORT_ATTEMPTS} attempts)");
}

/// Polls every member's `/health` (a quorum read inside etcd) until all
/// report healthy; fails early with the index of a member that exits.
fn wait_ready(members: &mut [Member]) -> Result<(), (usize, String)> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut ready = vec![false; members.len()];
    loop {
        for (i, member) in members.iter_mut().enumerate() {
            if let Some(status) = member
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                member.child = None;
                return Err((i, format!("etcd exited with {status}")));
            }
            if !ready[i] {
                ready[i] = matches!(
                    http(member.client_port, "GET", "/health", ""),
                    Ok((200, body)) if body.contains(r#""health":"true""#)
                );
            }
        }
        if ready.iter().all(|r| *r) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let i = ready.iter().position(|r| !r).unwrap_or(0);
            return Err((i, format!("not healthy after {READY_TIMEOUT:?}")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    /// Holds `data/` and `etcd.log`.
    dir: PathBuf,
    initial_cluster: String,
    token: String,
    child: Option<Child>,
}

impl Member {
    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    fn spawn(&mut self) {
        assert!(
            self.child.is_none(),
            "etcd member {} is already running",
            self.name
        );
        std::fs::create_dir_all(&self.dir).expect("create etcd member directory");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open etcd log");
        let client = self.client_url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new(etcd_binary());
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", &self.token])
            // Ignored when the data directory exists (a restart).
            .args(["--initial-cluster-state", "new"])
            .args(["--quota-backend-bytes", &(128u64 << 20).to_string()])
            .args(["--snapshot-count", "10000"])
            // Exercises the store's handling of progress notifications.
            .args(["--experimental-watch-progress-notify-interval", "1s"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        // etcd reads any ETCD_* variable as a flag: keep the caller's out.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(name);
            }
        }
        if let Some(arch) = unsupported_arch() {
            cmd.env("ETCD_UNSUPPORTED_ARCH", arch);
        }
        self.child = Some(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("spawning {}: {e}", etcd_binary().display())),
        );
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }

    fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = File::open(self.log_path()) {
            let _ = file.read_to_string(&mut text);
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    fn failure(&self, what: &str) -> String {
        format!(
            "etcd member {} ({}, {}): {what}\n--- last lines of {} ---\n{}",
            self.name,
            self.client_url(),
            etcd_version(),
            self.log_path().display(),
            self.log_tail()
        )
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let was_running = self.child.is_some();
        self.kill();
        if was_running && std::thread::panicking() {
            eprintln!("{}", self.failure("test failed while this member ran"));
        }
    }
}

fn etcd_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let on_path = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).map(|d| d.join("etcd")).collect::<Vec<_>>())
            .unwrap_or_default();
        on_path
            .into_iter()
            .chain([PathBuf::from("/usr/bin/etcd"), PathBuf::from("/usr/local/bin/etcd")])
            .find(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!("the etcd binary is not installed: run `apt-get install etcd-server` (tests start a real etcd)")
            })
    })
}

/// `etcd --version`'s first line, for failure messages.
fn etcd_version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        Command::new(etcd_binary())
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.lines().next().map(str::to_owned))
            .unwrap_or_else(|| "etcd version unknown".to_owned())
    })
}

/// etcd 3.4 refuses to start on architectures other than amd64 unless told
/// the (Go) name of the one it runs on.
fn unsupported_arch() -> Option<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => None,
        "aarch64" => Some("arm64"),
        "powerpc64" => Some("ppc64le"),
        other => Some(other),
    }
}

/// Ports that were free a moment ago, all different (the listeners are held
/// until every port is picked).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local address").port())
        .collect()
}

fn tempdir() -> TempDir {
    tempfile::Builder::new()
        .prefix("bulkhead-etcd-")
        .tempdir()
        .expect("create a temporary directory")
}

/// An HTTP exchange with etcd's client port: status and body.
fn http(port: u16, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    crate::control::http_request(SocketAddr::from(([127, 0, 0, 1], port)), method, path, body)
}
