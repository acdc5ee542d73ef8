//! Hosts outside the mesh, for egress tests: a pod with no sidecar that
//! plays "the internet" — extra addresses, an HTTPS app with a test
//! certificate, a TCP server that speaks first, and a tiny DNS server
//! whose answers the test rewrites. All of it is plain `python3` with the
//! standard library, in the pod's own namespace.

use super::*;

/// An HTTPS server (`http.server` behind `ssl`) on `0.0.0.0:port`, logging
/// requests like [`Pod::http_app`].
const TLS_APP: &str = r#"
import functools, http.server, ssl, sys
port, cert, key, root = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=root)
httpd = http.server.ThreadingHTTPServer(("0.0.0.0", port), handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
httpd.serve_forever()
"#;

/// A TCP server on `[::]:port` (IPv4 and IPv6) that writes a banner as
/// soon as a client connects (as PostgreSQL or SMTP servers speak first)
/// and logs each client.
const BANNER: &str = r#"
import socket, sys, threading
port, banner = int(sys.argv[1]), sys.argv[2].encode() + b"\n"
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", port)); s.listen(64)
def serve(c, peer):
    print("client", peer[0], flush=True)
    try:
        c.sendall(banner)
    finally:
        c.close()
while True:
    c, peer = s.accept()
    threading.Thread(target=serve, args=(c, peer), daemon=True).start()
"#;

/// A DNS server on UDP `addr:53` answering A queries from a JSON zone file
/// (`{"name": {"a": ["ip", ...], "ttl": seconds}}`), read on every query
/// so the test can change answers; other names get NXDOMAIN.
const DNS: &str = r#"
import json, socket, struct, sys
addr, zone_file = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((addr, 53))
while True:
    data, peer = s.recvfrom(4096)
    try:
        qid, flags, qd = struct.unpack("!HHH", data[:6])
        i, labels = 12, []
        while data[i]:
            n = data[i]; labels.append(data[i + 1:i + 1 + n].decode().lower()); i += 1 + n
        qtype, _ = struct.unpack("!HH", data[i + 1:i + 5])
        question = data[12:i + 5]
    except Exception:
        continue
    name = ".".join(labels)
    with open(zone_file) as f:
        entry = json.load(f).get(name)
    answers = b""
    count = 0
    if entry and qtype == 1:
        for ip in entry["a"]:
            answers += b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, entry["ttl"], 4) + socket.inet_aton(ip)
            count += 1
    rcode = 0 if entry else 3
    header = struct.pack("!HHHHHH", qid, 0x8180 | (flags & 0x0100) | rcode, 1, count, 0, 0)
    s.sendto(header + question + answers, peer)
    print("query", name, qtype, count, flush=True)
"#;

/// A TCP client: sends `argv[3]` (if any), then prints what it reads
/// first. It waits longer than the sidecar's 5 s for a name, so a
/// connection the sidecar closes reads as closed, not as a timeout.
const TALK: &str = r#"
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=8)
    if sys.argv[3]:
        c.sendall(sys.argv[3].encode())
    print("read:" + c.recv(100).decode().strip())
except Exception as e:
    print("error:" + type(e).__name__)
"#;

/// The test DNS server; its zone is rewritten with [`PodDns::set`].
pub struct PodDns {
    pub process: PodProcess,
    zone: PathBuf,
}

impl PodDns {
    /// Answers `name` with `addresses` (A records, `ttl` seconds) from now on.
    pub fn set(&self, name: &str, addresses: &[Ipv4Addr], ttl: u32) {
        let mut zone: serde_json::Value = std::fs::read_to_string(&self.zone)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_else(|| serde_json::json!({}));
        let a: Vec<String> = addresses.iter().map(ToString::to_string).collect();
        zone[name] = serde_json::json!({"a": a, "ttl": ttl});
        // Written whole, then renamed: a query never reads half a file.
        let tmp = self.zone.with_extension("tmp");
        std::fs::write(&tmp, zone.to_string()).expect("zone file");
        std::fs::rename(&tmp, &self.zone).expect("zone file");
    }
}

impl Pod {
    /// Adds `ip` (in the pod's /24) to `eth0`: one more host outside the mesh.
    pub fn add_address(&self, ip: Ipv4Addr) {
        let out = self.exec("ip", &["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        assert!(
            out.status.success(),
            "ip addr add {ip} in pod {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn script(&self, name: &str, text: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, text).expect("script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        path.display().to_string()
    }

    /// An HTTPS app on `port` (every address) with a self-signed
    /// certificate for `names`, serving `files`.
    pub fn https_app(&self, port: u16, names: &[&str], files: &[(&str, &str)]) -> PodApp {
        let issued = rcgen::generate_simple_self_signed(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .expect("test certificate");
        let cert = self.dir.join(format!("tls-{port}.crt"));
        let key = self.dir.join(format!("tls-{port}.key"));
        std::fs::write(&cert, issued.cert.pem()).expect("cert");
        std::fs::write(&key, issued.signing_key.serialize_pem()).expect("key");
        let root = self.dir.join(format!("www-tls-{port}"));
        std::fs::create_dir(&root).expect("app dir");
        for (name, content) in files {
            std::fs::write(root.join(name), content).expect("app file");
        }
        let script = self.script("tls_app.py", TLS_APP);
        let args = [
            "-u".to_owned(),
            script,
            port.to_string(),
            cert.display().to_string(),
            key.display().to_string(),
            root.display().to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let process = self.spawn(&format!("https-{port}"), "/usr/bin/python3", &args);
        self.wait_listening(port);
        PodApp { process, port }
    }

    /// A TCP server on `port` that greets each client with `banner`.
    pub fn banner_server(&self, port: u16, banner: &str) -> PodProcess {
        let script = self.script("banner.py", BANNER);
        let port_s = port.to_string();
        let process = self.spawn(
            &format!("banner-{port}"),
            "/usr/bin/python3",
            &["-u", &script, &port_s, banner],
        );
        self.wait_listening(port);
        process
    }

    /// A DNS server on UDP `self.ip:53` with an empty zone.
    pub fn dns_server(&self) -> PodDns {
        let zone = self.dir.join("zone.json");
        std::fs::write(&zone, "{}").expect("zone file");
        let script = self.script("dns.py", DNS);
        let (ip, zone_s) = (self.ip.to_string(), zone.display().to_string());
        let process = self.spawn("dns", "/usr/bin/python3", &["-u", &script, &ip, &zone_s]);
        let filter = "sport = :53";
        wait_for("the test DNS server", READY_TIMEOUT, || {
            let out = self.exec("ss", &["-Hlun", filter]);
            (!out.stdout.is_empty()).then_some(())
        });
        PodDns { process, zone }
    }

    /// Connects to `ip:port` as `uid`, sends `send` (nothing when empty)
    /// and reads the first answer: `read:<text>`, `read:` (closed without
    /// a word) or `error:<kind>`.
    pub fn talk_as(&self, uid: u32, ip: IpAddr, port: u16, send: &str) -> String {
        let script = self.script("talk.py", TALK);
        let (ip, port) = (ip.to_string(), port.to_string());
        let out = self.exec_as(uid, "/usr/bin/python3", &[&script, &ip, &port, send]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}
