//! The independent clients: wrk (HTTP/1.1 keep-alive and new-connection
//! rates), h2load (HTTP/2), iperf3 (bulk TCP). Each run is bounded in time;
//! their text (or JSON) output is parsed here.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::procs::{self, run_bounded};

/// What one throughput run measured.
#[derive(Clone, Debug, Default)]
pub struct Throughput {
    pub requests: u64,
    pub errors: u64,
    pub per_second: f64,
    /// Bulk runs: gigabits per second and bytes moved.
    pub gbps: Option<f64>,
    pub bytes: Option<u64>,
    pub error_text: Vec<String>,
}

/// Extra time a tool gets beyond its nominal duration before it is killed.
const GRACE: Duration = Duration::from_secs(20);

pub fn version(tool: &str) -> String {
    let arg = match tool {
        "wrk" => "-v",
        "nginx" | "haproxy" => "-v",
        _ => "--version",
    };
    let Ok(out) = Command::new(tool).arg(arg).output() else {
        return "missing".into();
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_owned()
}

/// `wrk -t1 -cC -dD`; `close` sends `Connection: close` so every request
/// opens a connection (the new-connection rate).
pub fn wrk(
    addr: SocketAddr,
    path: &str,
    connections: usize,
    duration: Duration,
    close: bool,
    scratch: &Path,
) -> Throughput {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", &format!("-c{connections}")])
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .args(["--timeout", "5s"]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(format!("http://{addr}{path}"));
    match run_bounded(cmd, duration + GRACE, scratch) {
        Ok(out) if out.ok() => parse_wrk(&out.stdout),
        Ok(out) => failed(format!("wrk: {}", out.describe())),
        Err(e) => failed(e),
    }
}

fn failed(why: String) -> Throughput {
    Throughput {
        errors: 1,
        error_text: vec![why],
        ..Default::default()
    }
}

fn number_after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let at = text.find(key)? + key.len();
    text[at..].split_whitespace().next()
}

pub fn parse_wrk(text: &str) -> Throughput {
    let mut t = Throughput {
        per_second: number_after(text, "Requests/sec:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0),
        ..Default::default()
    };
    t.requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if let Some(line) = text.lines().find(|l| l.contains("Socket errors:")) {
        let n: u64 = line
            .split(',')
            .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
            .sum();
        if n > 0 {
            t.errors += n;
            t.error_text.push(line.trim().to_owned());
        }
    }
    if let Some(n) =
        number_after(text, "Non-2xx or 3xx responses:").and_then(|v| v.parse::<u64>().ok())
    {
        t.errors += n;
        t.error_text.push(format!("{n} non-2xx/3xx responses"));
    }
    if t.requests == 0 {
        t.errors += 1;
        t.error_text.push("wrk completed no request".into());
    }
    t
}

/// `h2load` over cleartext HTTP/2 (prior knowledge): one thread, `clients`
/// connections, `streams` concurrent streams each, for `duration`.
pub fn h2load(
    addr: SocketAddr,
    path: &str,
    clients: usize,
    streams: usize,
    duration: Duration,
    scratch: &Path,
) -> Throughput {
    let mut cmd = Command::new("h2load");
    cmd.args(["-t1", &format!("-c{clients}"), &format!("-m{streams}")])
        .arg(format!("-D{}", duration.as_secs().max(1)))
        .arg("--warm-up-time=1")
        .arg(format!("http://{addr}{path}"));
    match run_bounded(cmd, duration + GRACE, scratch) {
        Ok(out) if out.ok() => parse_h2load(&out.stdout),
        Ok(out) => failed(format!("h2load: {}", out.describe())),
        Err(e) => failed(e),
    }
}

pub fn parse_h2load(text: &str) -> Throughput {
    let mut t = Throughput::default();
    if let Some(line) = text.lines().find(|l| l.starts_with("finished in")) {
        t.per_second = line
            .split(',')
            .nth(1)
            .and_then(|p| p.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
    }
    let count = |line: &str, what: &str| -> u64 {
        line.split(',')
            .find(|p| p.trim_end().ends_with(what))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    if let Some(line) = text.lines().find(|l| l.starts_with("requests:")) {
        let line = line.trim_start_matches("requests:");
        t.requests = count(line, "succeeded");
        let bad = count(line, "failed") + count(line, "errored") + count(line, "timeout");
        if bad > 0 {
            t.errors += bad;
            t.error_text.push(format!("h2load requests:{line}"));
        }
    }
    if let Some(line) = text.lines().find(|l| l.starts_with("status codes:")) {
        let line = line.trim_start_matches("status codes:");
        let bad = count(line, "4xx") + count(line, "5xx");
        if bad > 0 {
            t.errors += bad;
            t.error_text.push(format!("h2load status codes:{line}"));
        }
    }
    if t.requests == 0 {
        t.errors += 1;
        t.error_text.push("h2load completed no request".into());
    }
    t
}

/// `iperf3 -c` through `addr` for `duration`: one TCP stream, client to server.
pub fn iperf3(addr: SocketAddr, duration: Duration, scratch: &Path) -> Throughput {
    let mut cmd = Command::new("iperf3");
    cmd.args(["-c", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-t", &duration.as_secs().max(1).to_string()])
        .args(["--connect-timeout", "3000", "-J"]);
    match run_bounded(cmd, duration + GRACE, scratch) {
        Ok(out) => parse_iperf3(&out.stdout, &out),
        Err(e) => failed(e),
    }
}

fn parse_iperf3(text: &str, out: &procs::Output) -> Throughput {
    let Ok(json) = serde_json::from_str::<serde_json::Value>(text) else {
        return failed(format!("iperf3: no JSON ({})", out.describe()));
    };
    if let Some(e) = json.get("error").and_then(|e| e.as_str()) {
        return failed(format!("iperf3: {e}"));
    }
    let received = &json["end"]["sum_received"];
    let bps = received["bits_per_second"].as_f64().unwrap_or(0.0);
    let bytes = received["bytes"].as_u64().unwrap_or(0);
    if bps <= 0.0 || !out.ok() {
        return failed(format!("iperf3: nothing received ({})", out.describe()));
    }
    Throughput {
        requests: 0,
        errors: 0,
        per_second: 0.0,
        gbps: Some(bps / 1e9),
        bytes: Some(bytes),
        error_text: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_parses() {
        let text = "Running 10s test @ http://127.0.0.1:8080/\n  1 threads and 32 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   390.12us  100.00us   2.00ms   90.00%\n    Req/Sec    80.00k     2.00k   85.00k    70.00%\n  800123 requests in 10.00s, 120.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 12\nRequests/sec:  80012.30\nTransfer/sec:     12.00MB\n";
        let t = parse_wrk(text);
        assert_eq!(t.requests, 800_123);
        assert!((t.per_second - 80012.3).abs() < 1e-6);
        assert_eq!(t.errors, 15);
        let clean = "  500 requests in 1.00s, 1.00MB read\nRequests/sec:    500.00\n";
        assert_eq!(parse_wrk(clean).errors, 0);
    }

    #[test]
    fn h2load_output_parses() {
        let text = "finished in 10.00s, 51234.50 req/s, 3.00MB/s\nrequests: 512345 total, 512345 started, 512345 done, 512340 succeeded, 5 failed, 5 errored, 0 timeout\nstatus codes: 512340 2xx, 0 3xx, 0 4xx, 0 5xx\n";
        let t = parse_h2load(text);
        assert_eq!(t.requests, 512_340);
        assert!((t.per_second - 51234.5).abs() < 1e-6);
        assert_eq!(t.errors, 10);
    }
}
