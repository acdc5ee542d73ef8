//! The data-path measurements, interleaved: every round runs every test on
//! every path in turn (direct, bulkhead, bulkhead-tcp, haproxy-http,
//! haproxy-tcp, then the next test), so slow drift on a shared machine hits
//! all paths alike. Each run records its requests, errors, and the CPU
//! seconds each proxy process spent during it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::loadgen::{self, FixedRate, Percentiles};
use crate::setup::{DataPath, PathId, REQUEST_PATH, Traffic};
use crate::tools;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Test {
    Rate1k,
    Rate5k,
    Http1Max,
    Http2Max,
    NewConnections,
    BulkTcp,
}

impl Test {
    pub const ALL: [Test; 6] = [
        Test::Rate1k,
        Test::Rate5k,
        Test::Http1Max,
        Test::Http2Max,
        Test::NewConnections,
        Test::BulkTcp,
    ];

    pub fn traffic(self) -> Traffic {
        match self {
            Test::Http2Max => Traffic::Http2,
            Test::BulkTcp => Traffic::Bulk,
            _ => Traffic::Http1,
        }
    }

    pub fn rate(self) -> Option<f64> {
        match self {
            Test::Rate1k => Some(1000.0),
            Test::Rate5k => Some(5000.0),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Test::Rate1k => "rate-1k",
            Test::Rate5k => "rate-5k",
            Test::Http1Max => "http1-max",
            Test::Http2Max => "http2-max",
            Test::NewConnections => "new-connections",
            Test::BulkTcp => "bulk-tcp",
        }
    }
}

/// Durations and sizes of one mode (`--quick`, full, `--sanity`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Profile {
    pub mode: &'static str,
    pub rounds: usize,
    pub rate_s: u64,
    pub wrk_s: u64,
    pub h2_s: u64,
    pub new_connections_s: u64,
    pub bulk_s: u64,
    /// Keep-alive connections of the open-loop generator.
    pub rate_connections: usize,
    /// wrk -c (max throughput) and h2load -c/-m.
    pub wrk_connections: usize,
    pub new_connection_clients: usize,
    pub h2_clients: usize,
    pub h2_streams: usize,
}

impl Profile {
    pub fn duration(&self, test: Test) -> Duration {
        Duration::from_secs(match test {
            Test::Rate1k | Test::Rate5k => self.rate_s,
            Test::Http1Max => self.wrk_s,
            Test::Http2Max => self.h2_s,
            Test::NewConnections => self.new_connections_s,
            Test::BulkTcp => self.bulk_s,
        })
    }
}

/// One measurement: one test on one path in one round.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Sample {
    pub round: usize,
    pub test: Test,
    pub path: PathId,
    pub seconds: f64,
    pub requests: u64,
    pub errors: u64,
    pub per_second: Option<f64>,
    pub gbps: Option<f64>,
    pub bytes: Option<u64>,
    pub latency_us: Option<Percentiles>,
    /// CPU seconds of each proxy process the path crosses, during the run.
    pub cpu_s: BTreeMap<String, f64>,
    pub cpu_total_s: f64,
    /// Context switches of those processes (all threads) during the run.
    pub context_switches: u64,
    /// Memory of those processes right after the run.
    pub memory_after: BTreeMap<String, crate::procs::Memory>,
    pub error_text: Vec<String>,
}

/// Runs one test on one path.
pub fn measure(
    dp: &DataPath,
    test: Test,
    path: PathId,
    round: usize,
    profile: &Profile,
    scratch: &Path,
) -> Option<(Sample, Option<Histogram<u64>>)> {
    let addr = dp.addr(path, test.traffic())?;
    let procs = dp.proxies(path, test.traffic());
    let cpu0: Vec<f64> = procs.iter().map(|p| p.cpu_seconds()).collect();
    let switches0: u64 = procs.iter().map(|p| p.context_switches()).sum();
    let started = Instant::now();
    let duration = profile.duration(test);
    let mut hist = None;
    let mut sample = Sample {
        round,
        test,
        path,
        seconds: 0.0,
        requests: 0,
        errors: 0,
        per_second: None,
        gbps: None,
        bytes: None,
        latency_us: None,
        cpu_s: BTreeMap::new(),
        cpu_total_s: 0.0,
        context_switches: 0,
        memory_after: BTreeMap::new(),
        error_text: vec![],
    };
    match test {
        Test::Rate1k | Test::Rate5k => {
            let r = loadgen::run(&FixedRate {
                addr,
                path: REQUEST_PATH.into(),
                rate: test.rate().unwrap_or(1000.0),
                duration,
                connections: profile.rate_connections,
                timeout: Duration::from_secs(5),
            });
            sample.requests = r.ok;
            sample.errors = r.errors;
            sample.per_second = Some(r.ok as f64 / r.elapsed.as_secs_f64().max(1e-9));
            sample.latency_us = Some(Percentiles::of(&r.hist));
            sample.error_text = r
                .error_kinds
                .iter()
                .map(|(k, v)| format!("{v} × {k}"))
                .collect();
            hist = Some(r.hist);
        }
        _ => {
            let t = match test {
                Test::Http1Max => tools::wrk(
                    addr,
                    REQUEST_PATH,
                    profile.wrk_connections,
                    duration,
                    false,
                    scratch,
                ),
                Test::NewConnections => tools::wrk(
                    addr,
                    REQUEST_PATH,
                    profile.new_connection_clients,
                    duration,
                    true,
                    scratch,
                ),
                Test::Http2Max => tools::h2load(
                    addr,
                    REQUEST_PATH,
                    profile.h2_clients,
                    profile.h2_streams,
                    duration,
                    scratch,
                ),
                _ => tools::iperf3(addr, duration, scratch),
            };
            sample.requests = t.requests;
            sample.errors = t.errors;
            sample.per_second = (t.per_second > 0.0).then_some(t.per_second);
            sample.gbps = t.gbps;
            sample.bytes = t.bytes;
            sample.error_text = t.error_text;
        }
    }
    sample.seconds = started.elapsed().as_secs_f64();
    let switches1: u64 = procs.iter().map(|p| p.context_switches()).sum();
    sample.context_switches = switches1.saturating_sub(switches0);
    for p in &procs {
        sample.memory_after.insert(p.name.clone(), p.memory());
    }
    for (p, before) in procs.iter().zip(cpu0) {
        let used = (p.cpu_seconds() - before).max(0.0);
        sample.cpu_s.insert(p.name.clone(), used);
        sample.cpu_total_s += used;
    }
    Some((sample, hist))
}
