//! Network namespaces as "nodes" and "pods", for tests of transparent
//! capture: real `init-iptables`, real sidecars running as UID 2102, and
//! unmodified apps (`curl`, `python3 -m http.server`) inside the pods.
//!
//! Everything lives in namespaces made here; the host's own network is not
//! touched (no interface, address, route or rule is added to it), so
//! parallel tests cannot collide and nothing can route off the machine:
//!
//! ```text
//! fabric ns   bridge `fab` (layer 2 only: the data-centre switch)
//! node N ns   uplink `uplink` 198.18.0.N/24, fd00:bb::N/64 on the fabric;
//!             bridge `pods` 198.18.N.1/24, fd00:bb:0:N::1/64; forwards
//! pod ns      `eth0` 198.18.N.k/24, fd00:bb:0:N::k/64; routes for
//!             198.18.0.0/15 (which holds the VIPs, 198.19.0.0/16) and
//!             fd00:bb::/48 via its node; no default route anywhere
//! ```
//!
//! The control plane runs in a pod of its own ([`PodControlPlane`]),
//! listening on that pod's address, and the tests reach every listener
//! from inside the namespaces (`curl`, `bulkheadctl`). That is the simplest
//! honest shape: `ControlPlane` binds host loopback, which pods cannot
//! reach, and relaying or DNAT-ing host loopback into the pod network would
//! change the host and test the relay rather than the mesh.
//!
//! Namespaces are named `bhnet-<pid>-<n>-<role>` and deleted on drop (also
//! when a test panics), after killing whatever still runs in them; ones
//! left by a killed test process are removed by the next [`Net::new`].
//! Tests that need this call [`require_root`] first: without root they fail
//! loudly, or skip with a loud line when `BULKHEAD_SKIP_ROOT_TESTS=1`.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::control::{TestCa, bin, wait_for};

mod outside;
mod processes;

pub use self::outside::PodDns;
pub use self::processes::{PodApp, PodControlPlane, PodProcess, PodSidecar, PodSidecarSpec};

/// The UID `init-iptables` exempts by default: the sidecar runs as it.
pub const PROXY_UID: u32 = 2102;
/// An unprivileged UID for the apps (captured like any app).
pub const APP_UID: u32 = 1000;
/// Ports inside a pod (each pod has its own, so they are fixed).
pub const CONTROL_GRPC_PORT: u16 = 8443;
pub const CONTROL_ADMIN_PORT: u16 = 9990;
pub const ADMIN_PORT: u16 = 4191;

const PREFIX: &str = "bhnet-";
/// The `PATH` commands in pods get.
pub const POD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Whether a root-only test may run. Not root: panics with the reason, or,
/// with `BULKHEAD_SKIP_ROOT_TESTS=1` outside CI (`CI` unset), prints a loud
/// SKIP line to stderr and returns false (the caller returns at once).
/// Never a silent pass, and never a skip in CI.
pub fn require_root(test: &str) -> bool {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .unwrap_or_default();
    if uid == "0" {
        return true;
    }
    let why = format!(
        "{test} needs root (network namespaces, iptables, setpriv); effective UID is {uid:?}"
    );
    let in_ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
    if std::env::var("BULKHEAD_SKIP_ROOT_TESTS").as_deref() == Ok("1") && !in_ci {
        // Straight to stderr: libtest captures `eprintln!` of passing tests.
        let _ = writeln!(
            std::io::stderr(),
            "\n!!!!! SKIPPED, NOT PASSED: {why} (BULKHEAD_SKIP_ROOT_TESTS=1) !!!!!\n"
        );
        return false;
    }
    panic!(
        "{why}. Run the tests as root (CI does), or set BULKHEAD_SKIP_ROOT_TESTS=1 to skip them loudly."
    );
}

/// Runs `ip ARGS` (or, with `ns`, `ip -n NS -batch -` over one command a
/// line); panics with ip's error when it fails.
fn ip(ns: Option<&str>, commands: &str) {
    let mut cmd = Command::new("ip");
    match ns {
        Some(ns) => cmd.args(["-n", ns, "-batch", "-"]).stdin(Stdio::piped()),
        None => cmd.args(commands.split_whitespace()).stdin(Stdio::null()),
    };
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run `ip` (iproute2)");
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(commands.as_bytes()).expect("ip -batch");
    }
    let out = child.wait_with_output().expect("ip");
    assert!(
        out.status.success(),
        "ip {}:\n{commands}\n{}",
        ns.map(|ns| format!("-n {ns}")).unwrap_or_default(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Kills what still runs in `ns` (processes a test started there), then
/// deletes it.
fn remove_namespace(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
    let _ = Command::new("ip").args(["netns", "del", ns]).status();
}

/// Panics naming the package of any tool the pods need that is missing.
fn check_tools() {
    let missing: Vec<String> = [
        ("ip", "iproute2"),
        ("ss", "iproute2"),
        ("iptables-restore", "iptables"),
        ("ip6tables-restore", "iptables"),
        ("iptables-save", "iptables"),
        ("setpriv", "util-linux"),
        ("curl", "curl"),
        ("python3", "python3"),
    ]
    .iter()
    .filter(|(tool, _)| {
        !POD_PATH
            .split(':')
            .any(|d| Path::new(d).join(tool).exists())
    })
    .map(|(tool, package)| format!("{tool} (Debian package {package})"))
    .collect();
    assert!(
        missing.is_empty(),
        "netns tests need: {}",
        missing.join(", ")
    );
}

/// Namespaces of test processes that no longer exist (killed before their
/// drop ran).
fn remove_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|r| r.split('-').next()) else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            remove_namespace(&name);
        }
    }
}

/// A test network: a fabric, nodes and pods, all deleted on drop.
pub struct Net {
    id: String,
    dir: tempfile::TempDir,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// In creation order; dropped in reverse.
    namespaces: Vec<String>,
    nodes: Vec<(Node, u8)>,
}

/// A node: a namespace routing between its pods and the other nodes.
#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub ns: String,
    pub index: u8,
}

/// A pod: its own network namespace on a node.
#[derive(Clone, Debug)]
pub struct Pod {
    pub name: String,
    pub node: String,
    pub ns: String,
    pub ip: Ipv4Addr,
    pub ip6: Ipv6Addr,
    dir: PathBuf,
}

impl Net {
    /// A fabric and one node, `node-1`. Panics (loudly) if namespaces
    /// cannot be made: call [`require_root`] first.
    pub fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            check_tools();
            remove_stale_namespaces();
        });
        let id = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::Builder::new()
            .prefix("bulkhead-netns-")
            .tempdir()
            .expect("tempdir");
        // The sidecar runs as another UID: it must reach its files here.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let net = Self {
            id,
            dir,
            inner: Mutex::default(),
        };
        let fabric = net.add_namespace("fabric");
        ip(
            Some(&fabric),
            "link set lo up\nlink add fab type bridge\nlink set fab up\n",
        );
        net.node("node-1");
        net
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add_namespace(&self, role: &str) -> String {
        let ns = format!("{}-{role}", self.id);
        // Recorded first, so a half-made namespace is still removed.
        self.lock().namespaces.push(ns.clone());
        ip(None, &format!("netns add {ns}"));
        ns
    }

    /// Adds a node; its pods reach every other node's pods.
    pub fn node(&self, name: &str) -> Node {
        let index = u8::try_from(self.lock().nodes.len() + 1)
            .ok()
            .filter(|i| *i < 255)
            .expect("at most 254 nodes");
        let ns = self.add_namespace(&format!("node{index}"));
        let fabric = format!("{}-fabric", self.id);
        let sysctl = Command::new("ip")
            .args(["netns", "exec", &ns, "sysctl", "-qw"])
            .args(["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"])
            .status()
            .expect("sysctl");
        assert!(sysctl.success(), "sysctl in node {name}: {sysctl}");
        ip(
            Some(&fabric),
            &format!(
                "link add n{index} type veth peer name uplink netns {ns}\n\
                 link set n{index} master fab up\n"
            ),
        );
        ip(
            Some(&ns),
            &format!(
                "link set lo up\n\
                 link add pods type bridge\n\
                 addr add 198.18.{index}.1/24 dev pods\n\
                 addr add fd00:bb:0:{index:x}::1/64 dev pods nodad\n\
                 link set pods up\n\
                 addr add 198.18.0.{index}/24 dev uplink\n\
                 addr add fd00:bb::{index:x}/64 dev uplink nodad\n\
                 link set uplink up\n"
            ),
        );
        let node = Node {
            name: name.to_owned(),
            ns,
            index,
        };
        let mut inner = self.lock();
        for (other, _) in &inner.nodes {
            for (from, to) in [(&node.ns, other.index), (&other.ns, node.index)] {
                let routes = format!(
                    "route add 198.18.{to}.0/24 via 198.18.0.{to}\n\
                     route add fd00:bb:0:{to:x}::/64 via fd00:bb::{to:x}\n"
                );
                ip(Some(from), &routes);
            }
        }
        inner.nodes.push((node.clone(), 2));
        node
    }

    /// A pod on the first node.
    pub fn pod(&self, name: &str) -> Pod {
        let first = self.lock().nodes[0].0.clone();
        self.pod_on(&first, name)
    }

    /// A pod on `node`: a veth into the node's bridge, an IPv4 and an IPv6
    /// (ULA) address, routes to the test ranges only.
    pub fn pod_on(&self, node: &Node, name: &str) -> Pod {
        assert!(
            !name.is_empty()
                && name.len() <= 32
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "pod name {name:?}: expected up to 32 of a-z 0-9 -"
        );
        let host = {
            let mut inner = self.lock();
            let entry = inner
                .nodes
                .iter_mut()
                .find(|(n, _)| n.ns == node.ns)
                .expect("a node of this net");
            let host = entry.1;
            assert!(host < 255, "at most 253 pods per node");
            entry.1 += 1;
            host
        };
        let ns = self.add_namespace(&format!("pod-{name}"));
        let n = node.index;
        let ip4 = Ipv4Addr::new(198, 18, n, host);
        let ip6 = Ipv6Addr::new(0xfd00, 0xbb, 0, u16::from(n), 0, 0, 0, u16::from(host));
        ip(
            Some(&node.ns),
            &format!(
                "link add p{host} type veth peer name eth0 netns {ns}\n\
                 link set p{host} master pods up\n"
            ),
        );
        ip(
            Some(&ns),
            &format!(
                "link set lo up\n\
                 addr add {ip4}/24 dev eth0\n\
                 addr add {ip6}/64 dev eth0 nodad\n\
                 link set eth0 up\n\
                 route add 198.18.0.0/15 via 198.18.{n}.1\n\
                 route add fd00:bb::/48 via fd00:bb:0:{n:x}::1\n"
            ),
        );
        let dir = self.dir.path().join(format!("pod-{name}"));
        std::fs::create_dir(&dir).expect("pod dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Pod {
            name: name.to_owned(),
            node: node.name.clone(),
            ns,
            ip: ip4,
            ip6,
            dir,
        }
    }
}

impl Default for Net {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let namespaces = std::mem::take(&mut self.lock().namespaces);
        for ns in namespaces.iter().rev() {
            remove_namespace(ns);
        }
    }
}

/// What `curl` made of a call.
#[derive(Debug)]
pub struct Curl {
    /// curl's exit code: 0 answered, 7 refused, 52 empty reply, 56 reset, ...
    pub exit: i32,
    /// The HTTP status, when an HTTP response came back.
    pub status: Option<u16>,
    pub headers: String,
    pub body: String,
    pub stderr: String,
}

impl Pod {
    /// `ip netns exec <pod> [setpriv as uid] program args`, with a clean
    /// environment.
    pub fn command(&self, uid: Option<u32>, program: impl AsRef<OsStr>, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns]);
        if let Some(uid) = uid {
            cmd.arg("setpriv")
                .arg(format!("--reuid={uid}"))
                .arg(format!("--regid={uid}"))
                .arg("--clear-groups")
                .arg("--");
        }
        cmd.arg(program)
            .args(args)
            .env_clear()
            .env("PATH", POD_PATH)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs a command in the pod as root.
    pub fn exec(&self, program: impl AsRef<OsStr>, args: &[&str]) -> Output {
        self.output(self.command(None, program, args))
    }

    /// Runs a command in the pod as `uid`.
    pub fn exec_as(&self, uid: u32, program: impl AsRef<OsStr>, args: &[&str]) -> Output {
        self.output(self.command(Some(uid), program, args))
    }

    fn output(&self, mut cmd: Command) -> Output {
        cmd.output()
            .unwrap_or_else(|e| panic!("run {cmd:?} in pod {}: {e}", self.name))
    }

    /// Starts a long-running process as root (killed on drop); its stdout
    /// and stderr go to `<what>.log` in the pod's folder.
    pub fn spawn(&self, what: &str, program: impl AsRef<OsStr>, args: &[&str]) -> PodProcess {
        self.spawn_command(what, self.command(None, program, args))
    }

    /// [`Pod::spawn`] as `uid` (setpriv: real and effective UID and GID,
    /// no supplementary groups, no capabilities).
    pub fn spawn_as(
        &self,
        uid: u32,
        what: &str,
        program: impl AsRef<OsStr>,
        args: &[&str],
    ) -> PodProcess {
        self.spawn_command(what, self.command(Some(uid), program, args))
    }

    pub fn spawn_command(&self, what: &str, mut cmd: Command) -> PodProcess {
        let log = self.dir.join(format!("{what}.log"));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let child = cmd
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what} in pod {}: {e}", self.name));
        PodProcess {
            child: Some(child),
            what: format!("{what} (pod {})", self.name),
            log,
        }
    }

    /// A folder for this pod's files (readable by every UID).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `curl` as `uid`: an unmodified app making one call (5 s at most).
    pub fn curl_as(&self, uid: u32, url: &str, extra: &[&str]) -> Curl {
        let mut args = vec!["-q", "-sS", "-g", "-i", "--max-time", "5"];
        args.extend(extra);
        args.push(url);
        let out = self.exec_as(uid, "curl", &args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (headers, body) = stdout
            .split_once("\r\n\r\n")
            .map(|(h, b)| (h.to_owned(), b.to_owned()))
            .unwrap_or((stdout.clone(), String::new()));
        let status = headers
            .lines()
            .next()
            .filter(|l| l.starts_with("HTTP/"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok());
        Curl {
            exit: out.status.code().unwrap_or(-1),
            status,
            headers,
            body,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `curl` as root, for the pod's own loopback (admin ports).
    pub fn curl(&self, url: &str) -> Curl {
        self.curl_as(0, url, &[])
    }

    /// Waits until something in the pod listens on TCP `port`.
    pub fn wait_listening(&self, port: u16) {
        let filter = format!("sport = :{port}");
        wait_for(
            &format!("a listener on port {port} in pod {}", self.name),
            READY_TIMEOUT,
            || {
                let out = self.exec("ss", &["-Hltn", &filter]);
                (!out.stdout.is_empty()).then_some(())
            },
        );
    }

    /// `bulkhead-proxy init-iptables ARGS` as the init container runs it
    /// (root, with CAP_NET_ADMIN, in the pod's namespace).
    pub fn init_iptables(&self, args: &[&str]) -> Output {
        let mut all = vec!["init-iptables"];
        all.extend(args);
        self.exec(bin("bulkhead-proxy"), &all)
    }

    /// The init container's step with default flags: capture installed,
    /// or the test stops with the tool's output.
    pub fn init_capture(&self) {
        let out = self.init_iptables(&[]);
        assert!(
            out.status.success(),
            "init-iptables in pod {} failed ({}): {}{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The pod's nat table as `iptables-save` / `ip6tables-save` print it,
    /// without comments and counters: (IPv4, IPv6).
    pub fn nat_rules(&self) -> (String, String) {
        let save = |cmd: &str| {
            let out = self.exec(cmd, &["-t", "nat"]);
            assert!(
                out.status.success(),
                "{cmd} in pod {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
            normalize_save(&String::from_utf8_lossy(&out.stdout))
        };
        (save("iptables-save"), save("ip6tables-save"))
    }

    /// A tiny HTTP app: `python3 -m http.server` on `[::]:port` (IPv4 and
    /// IPv6), serving `files` (name, content); it logs every request.
    pub fn http_app(&self, port: u16, files: &[(&str, &str)]) -> PodApp {
        let root = self.dir.join(format!("www-{port}"));
        std::fs::create_dir(&root).expect("app dir");
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        for (name, content) in files {
            std::fs::write(root.join(name), content).expect("app file");
        }
        let (root, port_s) = (root.display().to_string(), port.to_string());
        let args = [
            "-u",
            "-m",
            "http.server",
            &port_s,
            "--bind",
            "::",
            "--directory",
            &root,
        ];
        let process = self.spawn_as(APP_UID, &format!("app-{port}"), "/usr/bin/python3", &args);
        self.wait_listening(port);
        PodApp { process, port }
    }
}

/// The pod tests' mesh: `orders` (HTTP on port 80) at `vip`, called by
/// `web`, which its AllowList admits.
pub fn orders_behind_vip(vip: &str) -> String {
    format!(
        "
apiVersion: bulkhead.dev/v1
kind: Service
metadata: {{name: orders, namespace: shop}}
spec:
  ports: [{{port: 80, protocol: http}}]
  vip: {vip}
---
apiVersion: bulkhead.dev/v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec:
  ports: [{{port: 80, protocol: http}}]
---
apiVersion: bulkhead.dev/v1
kind: AllowList
metadata: {{name: orders-from-web, namespace: shop}}
spec:
  target: orders
  rules: [{{from: [web]}}]
"
    )
}

/// Drops `#` comments and `[packets:bytes]` counters from iptables-save.
pub fn normalize_save(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.rfind(" [") {
            Some(i) if l.starts_with(':') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}
