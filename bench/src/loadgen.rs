//! An open-loop HTTP/1.1 load generator (what wrk2 does; wrk2 is not in
//! Debian): requests leave on a fixed schedule whatever the answers do, and
//! each latency is measured from the moment the request *should* have left,
//! so a stall shows up in the histogram instead of hiding in a pause of the
//! client ("coordinated omission"). One blocking thread per keep-alive
//! connection; connection `k` of `C` sends requests `k`, `k + C`, `k + 2C`, ...
//! of the global schedule. Full histograms (HdrHistogram, nanoseconds).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

#[derive(Clone, Debug)]
pub struct FixedRate {
    pub addr: SocketAddr,
    pub path: String,
    /// Requests per second over all connections.
    pub rate: f64,
    pub duration: Duration,
    pub connections: usize,
    /// A request without a complete answer after this is an error.
    pub timeout: Duration,
}

pub struct RateResult {
    /// Latency from intended send time to the last byte of the answer, ns.
    pub hist: Histogram<u64>,
    pub ok: u64,
    pub errors: u64,
    pub error_kinds: BTreeMap<String, u64>,
    pub elapsed: Duration,
}

pub fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 100 s, 3 significant digits.
    Histogram::new_with_bounds(1_000, 100_000_000_000, 3).expect("static bounds are valid")
}

/// Runs the schedule to its end and returns the merged histogram.
pub fn run(cfg: &FixedRate) -> RateResult {
    let connections = cfg.connections.max(1);
    // Connections are opened before the clock starts.
    let start = Instant::now() + Duration::from_millis(100);
    let end = start + cfg.duration;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: bench.local\r\nUser-Agent: bulkhead-bench\r\n\r\n",
        cfg.path
    )
    .into_bytes();
    let handles: Vec<_> = (0..connections)
        .map(|k| {
            let cfg = cfg.clone();
            let request = request.clone();
            std::thread::spawn(move || connection(&cfg, &request, k, connections, start, end))
        })
        .collect();
    let mut result = RateResult {
        hist: new_histogram(),
        ok: 0,
        errors: 0,
        error_kinds: BTreeMap::new(),
        elapsed: Duration::ZERO,
    };
    for h in handles {
        let Ok(part) = h.join() else {
            result.errors += 1;
            *result
                .error_kinds
                .entry("thread panicked".into())
                .or_default() += 1;
            continue;
        };
        let _ = result.hist.add(&part.hist);
        result.ok += part.ok;
        result.errors += part.errors;
        for (k, v) in part.error_kinds {
            *result.error_kinds.entry(k).or_default() += v;
        }
    }
    result.elapsed = Instant::now().saturating_duration_since(start);
    result
}

/// Asks the kernel for exact timer wake-ups on this thread (the default
/// 50 µs slack would show up as latency). Needs CAP_SYS_NICE for other
/// threads but not for our own; failures are harmless.
fn tighten_timer_slack() {
    let _ = std::fs::write("/proc/thread-self/timerslack_ns", "1");
}

fn connection(
    cfg: &FixedRate,
    request: &[u8],
    k: usize,
    connections: usize,
    start: Instant,
    end: Instant,
) -> RateResult {
    tighten_timer_slack();
    let mut out = RateResult {
        hist: new_histogram(),
        ok: 0,
        errors: 0,
        error_kinds: BTreeMap::new(),
        elapsed: Duration::ZERO,
    };
    let error = |out: &mut RateResult, kind: String| {
        out.errors += 1;
        *out.error_kinds.entry(kind).or_default() += 1;
    };
    let mut conn = Conn::open(cfg.addr, cfg.timeout).ok();
    let mut buf = Vec::with_capacity(8192);
    let interval = 1.0 / cfg.rate;
    let mut i = k as u64;
    loop {
        let intended = start + Duration::from_secs_f64(i as f64 * interval);
        if intended >= end {
            break;
        }
        i += connections as u64;
        let now = Instant::now();
        if intended > now {
            std::thread::sleep(intended - now);
        }
        if conn.is_none() {
            match Conn::open(cfg.addr, cfg.timeout) {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    error(&mut out, format!("connect: {}", e.kind()));
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("opened above");
        match c.exchange(request, &mut buf) {
            Ok(answer) => {
                let latency = Instant::now().saturating_duration_since(intended);
                if (200..300).contains(&answer.status) {
                    out.ok += 1;
                    let _ = out.hist.record(latency.as_nanos() as u64);
                } else {
                    error(&mut out, format!("status {}", answer.status));
                }
                if answer.close {
                    conn = None;
                }
            }
            Err(e) => {
                error(&mut out, format!("io: {}", e.kind()));
                conn = None;
            }
        }
    }
    out
}

/// One plain keep-alive connection.
pub struct Conn {
    stream: TcpStream,
}

pub struct Answer {
    pub status: u16,
    pub close: bool,
    pub body: Vec<u8>,
}

impl Conn {
    pub fn open(addr: SocketAddr, timeout: Duration) -> std::io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Self { stream })
    }

    /// Sends one request and reads its whole answer (Content-Length or
    /// chunked; no pipelining, so nothing follows it).
    pub fn exchange(&mut self, request: &[u8], buf: &mut Vec<u8>) -> std::io::Result<Answer> {
        self.stream.write_all(request)?;
        buf.clear();
        let mut chunk = [0u8; 8192];
        let (head_end, status, length, chunked, close) = loop {
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(pos) = find(buf, b"\r\n\r\n") {
                let head = parse_head(&buf[..pos])?;
                break (pos + 4, head.0, head.1, head.2, head.3);
            }
            if buf.len() > 64 * 1024 {
                return Err(invalid("response head too long"));
            }
        };
        loop {
            let body = &buf[head_end..];
            let complete = match (length, chunked) {
                (Some(n), _) => body.len() >= n,
                (None, true) => {
                    body.starts_with(b"0\r\n\r\n") || find(body, b"\r\n0\r\n\r\n").is_some()
                }
                // No length: the body ends with the connection.
                (None, false) => false,
            };
            if complete {
                break;
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                if length.is_none() && !chunked {
                    break;
                }
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok(Answer {
            status,
            close,
            body: buf[head_end..].to_vec(),
        })
    }
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Status, Content-Length, chunked, connection-close from a response head.
fn parse_head(head: &[u8]) -> std::io::Result<(u16, Option<usize>, bool, bool)> {
    let text = std::str::from_utf8(head).map_err(|_| invalid("response head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("bad status line"))?;
    let (mut length, mut chunked, mut close) = (None, false, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    if status_line.starts_with("HTTP/1.0") {
        close = true;
    }
    Ok((status, length, chunked, close))
}

/// One GET on a fresh connection: status and body (setup probes).
pub fn probe(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut conn = Conn::open(addr, Duration::from_secs(3))?;
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: bench.local\r\nConnection: close\r\n\r\n");
    let mut buf = Vec::new();
    let answer = conn.exchange(request.as_bytes(), &mut buf)?;
    Ok((
        answer.status,
        String::from_utf8_lossy(&answer.body).into_owned(),
    ))
}

/// Latency percentiles of a histogram, in microseconds.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub count: u64,
}

impl Percentiles {
    pub fn of(hist: &Histogram<u64>) -> Self {
        let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
        Self {
            p50: us(0.50),
            p90: us(0.90),
            p99: us(0.99),
            p999: us(0.999),
            max: hist.max() as f64 / 1000.0,
            count: hist.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn server(reply: &'static [u8]) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    let mut pending = Vec::new();
                    loop {
                        let Ok(n) = s.read(&mut buf) else { return };
                        if n == 0 {
                            return;
                        }
                        pending.extend_from_slice(&buf[..n]);
                        while let Some(p) = find(&pending, b"\r\n\r\n") {
                            pending.drain(..p + 4);
                            if s.write_all(reply).is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    #[test]
    fn heads_parse() {
        let (s, l, c, close) =
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close").unwrap();
        assert_eq!((s, l, c, close), (200, Some(3), false, true));
        let (s, l, c, _) =
            parse_head(b"HTTP/1.1 403 Forbidden\r\ntransfer-encoding: chunked").unwrap();
        assert_eq!((s, l, c), (403, None, true));
        assert!(parse_head(b"garbage").is_err());
    }

    #[test]
    fn fixed_rate_counts_answers_and_errors() {
        let ok = server(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n");
        let cfg = FixedRate {
            addr: ok,
            path: "/".into(),
            rate: 500.0,
            duration: Duration::from_millis(400),
            connections: 4,
            timeout: Duration::from_secs(2),
        };
        let r = run(&cfg);
        assert_eq!(r.errors, 0, "{:?}", r.error_kinds);
        assert!((180..=220).contains(&r.ok), "ok = {}", r.ok);
        assert_eq!(r.hist.len(), r.ok);
        let chunked =
            server(b"HTTP/1.1 503 No\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nno\r\n0\r\n\r\n");
        let r = run(&FixedRate {
            addr: chunked,
            ..cfg
        });
        assert_eq!(r.ok, 0);
        assert_eq!(r.error_kinds.get("status 503").copied(), Some(r.errors));
    }
}
