//! Attackers, written by hand so that each does exactly one wrong thing:
//! raw HTTP/2 frames ([`H2`]: rapid reset, CONTINUATION, SETTINGS and PING
//! floods, zero windows), HTTP/1 clients too slow to finish ([`slowloris`],
//! [`slow_body`]), TLS handshakes that never finish and connections that
//! sit idle ([`idle_connections`]). Everything is loopback, and every
//! attacker is bounded by a count and a deadline.
//!
//! HPACK is written without Huffman coding or indexing (RFC 7541 §6.2.2:
//! literal fields without indexing), which every decoder must take, so no
//! encoder of the sidecar's own is involved.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::mesh::Mesh;
use crate::proxy::Sidecar;
use crate::security;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
/// SETTINGS_INITIAL_WINDOW_SIZE.
pub const INITIAL_WINDOW_SIZE: u16 = 0x4;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the server sent back on an attacker's connection.
#[derive(Debug, Default)]
pub struct Seen {
    /// The error code of the server's last GOAWAY, if it sent one.
    goaway: AtomicU32,
    goaway_seen: AtomicBool,
    pub resets: AtomicU64,
    pub headers: AtomicU64,
    pub frames: AtomicU64,
    closed: AtomicBool,
}

impl Seen {
    /// The server's GOAWAY error code, once it sent one.
    pub fn goaway(&self) -> Option<u32> {
        self.goaway_seen
            .load(Ordering::SeqCst)
            .then(|| self.goaway.load(Ordering::SeqCst))
    }

    /// Whether the server closed the connection.
    pub fn closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

/// Trait object for a byte stream: plain TCP (h2c) or TLS to a sidecar.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// A raw HTTP/2 client connection: it writes what it is told, and a task
/// reads (and discards) what the server sends, noting GOAWAY and resets.
pub struct H2 {
    writer: WriteHalf<Box<dyn Stream>>,
    pub seen: Arc<Seen>,
    next_stream: u32,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for H2 {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl H2 {
    /// h2c with prior knowledge on `addr` (an app-facing listener).
    pub async fn plain(addr: SocketAddr, settings: &[(u16, u32)]) -> std::io::Result<Self> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        Self::over(Box::new(tcp), settings).await
    }

    /// HTTP/2 over `io`: the connection preface and a SETTINGS frame with
    /// `settings`, then the reader.
    pub async fn over(io: Box<dyn Stream>, settings: &[(u16, u32)]) -> std::io::Result<Self> {
        let (mut read, mut writer) = tokio::io::split(io);
        let mut payload = Vec::new();
        for (id, value) in settings {
            payload.extend_from_slice(&id.to_be_bytes());
            payload.extend_from_slice(&value.to_be_bytes());
        }
        writer.write_all(PREFACE).await?;
        writer.write_all(&frame(SETTINGS, 0, 0, &payload)).await?;
        writer.flush().await?;
        let seen = Arc::new(Seen::default());
        let noted = seen.clone();
        let reader = tokio::spawn(async move {
            let mut head = [0u8; 9];
            loop {
                if read.read_exact(&mut head).await.is_err() {
                    break;
                }
                let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                let mut body = vec![0; len];
                if read.read_exact(&mut body).await.is_err() {
                    break;
                }
                noted.frames.fetch_add(1, Ordering::SeqCst);
                match head[3] {
                    GOAWAY if body.len() >= 8 => {
                        let code = u32::from_be_bytes([body[4], body[5], body[6], body[7]]);
                        noted.goaway.store(code, Ordering::SeqCst);
                        noted.goaway_seen.store(true, Ordering::SeqCst);
                    }
                    RST_STREAM => {
                        noted.resets.fetch_add(1, Ordering::SeqCst);
                    }
                    HEADERS => {
                        noted.headers.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => {}
                }
            }
            noted.closed.store(true, Ordering::SeqCst);
        });
        Ok(Self {
            writer,
            seen,
            next_stream: 1,
            reader,
        })
    }

    /// A new client stream id.
    pub fn next_stream(&mut self) -> u32 {
        let id = self.next_stream;
        self.next_stream += 2;
        id
    }

    /// Writes one frame (buffered: see [`H2::flush`]).
    pub async fn frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
    ) -> std::io::Result<()> {
        self.writer
            .write_all(&frame(kind, flags, stream, payload))
            .await
    }

    /// Writes bytes as they are (frames built with [`frame`]).
    pub async fn raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes).await
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        self.writer.flush().await
    }

    /// A GET on a new stream, ended (no body); its stream id.
    pub async fn get(&mut self, authority: &str, path: &str) -> std::io::Result<u32> {
        let id = self.next_stream();
        let block = request_block("GET", authority, path, &[]);
        self.frame(HEADERS, END_HEADERS | END_STREAM, id, &block)
            .await?;
        Ok(id)
    }

    /// RST_STREAM(CANCEL) on `stream`.
    pub async fn reset(&mut self, stream: u32) -> std::io::Result<()> {
        self.frame(RST_STREAM, 0, stream, &0x8u32.to_be_bytes())
            .await
    }
}

/// HTTP/2 to `callee`'s inbound port as `shop/web`, an allowed peer with
/// a certificate from `mesh`'s issuer: TLS, the preface for declared port
/// `port`, then [`H2::over`].
pub async fn mesh_peer(mesh: &Mesh, callee: &Sidecar, port: u16) -> std::io::Result<H2> {
    let config = bulkhead_tls::client_config(
        mesh.ca.bundle(),
        bulkhead_tls::ExpectedServer::Identity(security::identity(&callee.spec.service)),
        Some(security::client_cert(mesh, |_| {})),
        &[security::ALPN],
    )
    .map_err(std::io::Error::other)?;
    let tcp = TcpStream::connect(callee.inbound).await?;
    tcp.set_nodelay(true)?;
    let name = rustls_pki_types::ServerName::IpAddress(callee.inbound.ip().into());
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    tls.write_all(&security::preface(b"BHK1", 1, 0, port))
        .await?;
    H2::over(Box::new(tls), &[]).await
}

/// One frame: 9-byte header, then `payload`.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame length");
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with an `n`-bit prefix whose other bits are `first`.
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

fn hpack_str(out: &mut Vec<u8>, s: &[u8]) {
    hpack_int(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// A literal field without indexing, the name given literally.
pub fn hpack_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.push(0);
    hpack_str(out, name.as_bytes());
    hpack_str(out, value);
}

/// A request's header block: pseudo-headers (`:scheme http`), then `extra`.
pub fn request_block(
    method: &str,
    authority: &str,
    path: &str,
    extra: &[(&str, &[u8])],
) -> Vec<u8> {
    let mut out = Vec::new();
    hpack_field(&mut out, ":method", method.as_bytes());
    hpack_field(&mut out, ":scheme", b"http");
    hpack_field(&mut out, ":authority", authority.as_bytes());
    hpack_field(&mut out, ":path", path.as_bytes());
    for (name, value) in extra {
        hpack_field(&mut out, name, value);
    }
    out
}

/// What an attack did, for the report.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Connections opened.
    pub connections: u64,
    /// Streams opened (HTTP/2) or requests begun (HTTP/1).
    pub streams: u64,
    /// Connections the server ended with GOAWAY.
    pub goaways: u64,
    /// Connections the server closed (or reset) otherwise, or refused.
    pub closed: u64,
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} streams on {} connections, {} ended with GOAWAY",
            self.streams, self.connections, self.goaways
        )
    }
}

/// Rapid reset: on connections made by `connect`, opens streams (a GET to
/// `authority` `path`) and resets each at once, `batch` at a time, until
/// `total` streams or `within` has passed; a connection the server ends
/// is replaced.
pub async fn rapid_reset<F, Fut>(
    connect: F,
    authority: &str,
    path: &str,
    batch: usize,
    total: u64,
    within: Duration,
) -> Tally
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<H2>>,
{
    let deadline = Instant::now() + within;
    let mut tally = Tally::default();
    while tally.streams < total && Instant::now() < deadline {
        let Ok(Ok(mut conn)) = tokio::time::timeout_at(deadline, connect()).await else {
            tally.closed += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        tally.connections += 1;
        let run = async {
            while tally.streams < total && !conn.seen.closed() && conn.seen.goaway().is_none() {
                for _ in 0..batch {
                    let id = conn.get(authority, path).await?;
                    conn.reset(id).await?;
                    tally.streams += 1;
                }
                conn.flush().await?;
                tokio::task::yield_now().await;
            }
            Ok::<_, std::io::Error>(())
        };
        let _ = tokio::time::timeout_at(deadline, run).await;
        if Instant::now() >= deadline {
            break;
        }
        // The server ended it, or the last streams are written: let the
        // reader see what the server makes of them.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while !conn.seen.closed() && conn.seen.goaway().is_none() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        if conn.seen.goaway().is_some() {
            tally.goaways += 1;
        } else if conn.seen.closed() {
            tally.closed += 1;
        }
    }
    tally
}

/// `count` connections to `addr` left idle (or, with `trickle`, sent one
/// byte of it now and then) until `within` has passed or the server has
/// ended them all; how many it ended: closed, or refused so fast that the
/// connect itself saw the reset.
pub async fn idle_connections(
    addr: SocketAddr,
    count: usize,
    trickle: Option<&'static [u8]>,
    within: Duration,
) -> (usize, usize) {
    let mut opened = Vec::new();
    let mut refused = 0;
    for _ in 0..count {
        match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => opened.push(tcp),
            Ok(Err(_)) => refused += 1,
            Err(_) => {}
        }
    }
    let watched = opened.into_iter().map(|mut tcp| async move {
        let mut buf = [0u8; 512];
        let mut sent = 0;
        loop {
            if let Some(bytes) = trickle
                && sent < bytes.len()
            {
                if tcp.write_all(&bytes[sent..=sent]).await.is_err() {
                    return true;
                }
                sent += 1;
            }
            let read = tokio::time::timeout(Duration::from_millis(300), tcp.read(&mut buf)).await;
            if let Ok(Ok(0) | Err(_)) = read {
                return true;
            }
        }
    });
    let watched = futures::future::join_all(watched.map(|w| tokio::time::timeout(within, w)));
    let closed = watched
        .await
        .into_iter()
        .filter(|c| matches!(c, Ok(true)))
        .count();
    (count, refused + closed)
}

/// Slowloris: `count` HTTP/1.1 requests to `addr` whose headers come a
/// byte every `pace`, never finished; how many the server closed.
pub async fn slowloris(addr: SocketAddr, count: usize, within: Duration) -> (usize, usize) {
    const HEAD: &[u8] = b"GET /cart/slow HTTP/1.1\r\nHost: cart\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    idle_connections(addr, count, Some(HEAD), within).await
}

/// A slow body: `count` POSTs announcing a 10 MB body that comes a few
/// bytes at a time; how many connections the sidecar ended (with an
/// answer or a close) within `within`.
pub async fn slow_body(addr: SocketAddr, count: usize, within: Duration) -> (usize, usize) {
    let one = || async move {
        let Ok(mut tcp) = TcpStream::connect(addr).await else {
            return false;
        };
        let head = "POST /cart/upload HTTP/1.1\r\nHost: cart\r\nContent-Length: 10000000\r\n\r\n";
        if tcp.write_all(head.as_bytes()).await.is_err() {
            return true;
        }
        let mut buf = [0u8; 512];
        loop {
            if tcp.write_all(b"xx").await.is_err() {
                return true;
            }
            match tokio::time::timeout(Duration::from_millis(500), tcp.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return true,
                // An answer (a 504, say) ends it too.
                Ok(Ok(_)) => return true,
                Err(_) => {}
            }
        }
    };
    let all = futures::future::join_all((0..count).map(|_| tokio::time::timeout(within, one())));
    let ended = all
        .await
        .into_iter()
        .filter(|r| matches!(r, Ok(true)))
        .count();
    (count, ended)
}

/// The sidecar process's resident memory (kB) and open descriptors.
pub fn footprint(sidecar: &Sidecar) -> (u64, usize) {
    let pid = sidecar.pid().expect("running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (rss, fds)
}
