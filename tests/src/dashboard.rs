//! The dashboard as its tests drive it: `bulkheadctl dashboard` started
//! as an operator would, its event stream read raw as a script would
//! follow it, and events published as a (possibly hostile) sidecar would,
//! for the page to show. The browser is [`crate::browser`].

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Stdio};
use std::time::Duration;

use bulkhead_proto::pb;

use crate::control::{http_exchange, workload};
use crate::mesh::Mesh;

/// `bulkheadctl dashboard --port 0 --no-open`, stopped on drop.
pub struct DashboardProcess {
    child: Child,
    /// Kept open: the process may print more.
    _stdout: BufReader<std::process::ChildStdout>,
    pub url: String,
    pub addr: SocketAddr,
}

impl DashboardProcess {
    pub fn start(mesh: &Mesh) -> Self {
        let mut child = mesh
            .ca
            .ctl_command(&mesh.cp.url(), &["dashboard", "--port", "0", "--no-open"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn bulkheadctl dashboard");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        let mut stdout = BufReader::new(stdout);
        stdout
            .read_line(&mut line)
            .expect("read the dashboard's first line");
        let url = line
            .trim()
            .strip_prefix("Dashboard: ")
            .unwrap_or_else(|| panic!("expected `Dashboard: URL`, got {line:?}"))
            .to_owned();
        let addr = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .expect("a loopback address in the URL");
        Self {
            child,
            _stdout: stdout,
            url,
            addr,
        }
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String) {
        http_exchange(
            self.addr,
            method,
            path,
            headers,
            body,
            Duration::from_secs(10),
        )
        .expect("dashboard answers")
    }
}

impl Drop for DashboardProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `/api/events` on a raw connection, as a script would follow it.
pub struct EventStream {
    tcp: TcpStream,
    read: String,
}

impl EventStream {
    /// The status code, and the stream (headers read).
    pub fn open(addr: SocketAddr, last_id: Option<i64>) -> (u16, Self) {
        let mut tcp = TcpStream::connect(addr).expect("connect to the dashboard");
        tcp.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        let resume = last_id
            .map(|id| format!("last-event-id: {id}\r\n"))
            .unwrap_or_default();
        write!(
            tcp,
            "GET /api/events HTTP/1.1\r\nhost: {addr}\r\naccept: text/event-stream\r\n{resume}\r\n"
        )
        .expect("send the request");
        let mut stream = Self {
            tcp,
            read: String::new(),
        };
        while !stream.read.contains("\r\n\r\n") {
            stream.more();
        }
        let code = stream.read[9..12].parse().expect("a status code");
        (code, stream)
    }

    fn more(&mut self) {
        let mut buf = [0u8; 4096];
        let n = self.tcp.read(&mut buf).expect("read the event stream");
        assert!(n > 0, "the event stream closed: {}", self.read);
        self.read.push_str(&String::from_utf8_lossy(&buf[..n]));
    }

    /// The ids of the next `n` events (the status line has none).
    pub fn ids(&mut self, n: usize) -> Vec<i64> {
        loop {
            let ids: Vec<i64> = self
                .read
                .lines()
                .filter_map(|l| l.strip_prefix("id: ")?.trim().parse().ok())
                .collect();
            if ids.len() >= n {
                return ids[..n].to_vec();
            }
            self.more();
        }
    }
}

/// Publishes one event as the sidecar of `ns_sa` would (a compromised
/// one can put anything in its data).
pub async fn publish_event(
    mesh: &Mesh,
    ns_sa: &str,
    kind: &str,
    subject: &str,
    data: serde_json::Value,
) {
    let sidecar = workload(&mesh.cp, &mesh.ca, ns_sa).await;
    let mut client = pb::discovery_client::DiscoveryClient::new(
        mesh.cp.channel(&mesh.ca, Some(sidecar.slot.clone())),
    );
    let accepted = client
        .publish_events(pb::PublishEventsRequest {
            events: vec![pb::SidecarEvent {
                r#type: kind.to_owned(),
                subject: subject.to_owned(),
                unix_ms: 0,
                data_json: data.to_string(),
            }],
            dropped: 0,
        })
        .await
        .expect("publish an event")
        .into_inner()
        .accepted;
    assert_eq!(accepted, 1, "{kind}");
}

/// `bulkhead-demo --dashboard 0`: the demo's own mesh with its dashboard,
/// as the README's first command runs it. Stopped with Ctrl-C (SIGINT),
/// as a user stops it, so it takes its sidecars down with it.
pub struct DemoDashboard {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// Everything the demo printed so far.
    pub printed: String,
    pub url: String,
}

impl DemoDashboard {
    /// Starts the demo with a traffic phase of `duration` (e.g. `"20s"`)
    /// and waits (bounded) for it to print its dashboard's URL.
    pub fn start(duration: &str) -> Self {
        let mut child = std::process::Command::new(crate::control::bin("bulkhead-demo"))
            .args(["--duration", duration, "--dashboard", "0"])
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn bulkhead-demo");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut demo = Self {
            child,
            lines,
            printed: String::new(),
            url: String::new(),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while demo.url.is_empty() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match demo.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some((_, url)) = line.split_once("Dashboard: ") {
                        demo.url = url.trim().to_owned();
                    }
                    demo.printed.push_str(&line);
                    demo.printed.push('\n');
                }
                Err(_) => panic!(
                    "bulkhead-demo printed no `Dashboard: URL` within 60 s:\n{}",
                    demo.printed
                ),
            }
        }
        demo
    }

    /// Ctrl-C, then everything it printed until it exited (bounded: 30 s).
    pub fn stop(mut self) -> String {
        self.interrupt();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.printed.push_str(&line);
                    self.printed.push('\n');
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    panic!(
                        "bulkhead-demo did not stop within 30 s of Ctrl-C:\n{}",
                        self.printed
                    )
                }
            }
        }
        std::mem::take(&mut self.printed)
    }

    fn interrupt(&self) {
        let _ = std::process::Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
    }
}

impl Drop for DemoDashboard {
    fn drop(&mut self) {
        // Ctrl-C first, so the demo stops its sidecars; killed if it hangs.
        self.interrupt();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
