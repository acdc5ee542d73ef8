//! Per-version metrics for autoscalers (KEDA, prometheus-adapter), from
//! the reports THIS replica received, rendered at each scrape of the admin
//! port's `/metrics`. Each sidecar reports to one replica at a time, so the
//! mesh-wide figure is the sum over replicas:
//! `sum by (namespace, service, version) (...)`.
//!
//! - `bulkhead_version_requests_per_second` (gauge): requests reported in
//!   the last [`RATE_WINDOW_SECS`] seconds, divided by that. Reports arrive
//!   every report interval, so the figure moves in steps of one report.
//! - `bulkhead_version_requests_in_flight` (gauge): the sum of the latest
//!   in-flight count of each endpoint heard from in the last
//!   [`IN_FLIGHT_INTERVALS`] report intervals.
//! - `bulkhead_version_request_duration_seconds` (histogram): cumulative
//!   since the replica started, over the report buckets in seconds. `_sum`
//!   is approximate: each bucket counts at its midpoint (the last, open
//!   one at its lower bound).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use bulkhead_proto::stats::{LATENCY_BOUNDS_MS, LatencyHistogram};

use super::pending::{Report, SeriesKey};

/// Length of the rate's window.
pub(crate) const RATE_WINDOW_SECS: i64 = 30;
/// An endpoint not heard from for this many report intervals no longer
/// counts in flight.
pub(crate) const IN_FLIGHT_INTERVALS: i64 = 3;
/// Most series exported (they are bounded by the registered versions
/// anyway).
pub(crate) const MAX_SERIES: usize = 1024;
/// Most endpoints whose in-flight count is held, over all series.
pub(crate) const MAX_IN_FLIGHT_ENTRIES: usize = 8192;
/// A series nobody reported on for this long is forgotten.
const FORGET_AFTER_MS: i64 = 15 * 60 * 1000;

#[derive(Debug)]
struct Series {
    /// Requests per second of the rate window, in a ring: (unix second, count).
    per_second: [(i64, u64); RATE_WINDOW_SECS as usize],
    /// Endpoint → (heard at, unix ms; in flight).
    in_flight: BTreeMap<String, (i64, u32)>,
    /// Since the replica started.
    latency: LatencyHistogram,
    last_heard_ms: i64,
}

impl Default for Series {
    fn default() -> Self {
        Self {
            per_second: [(i64::MIN, 0); RATE_WINDOW_SECS as usize],
            in_flight: BTreeMap::new(),
            latency: LatencyHistogram::default(),
            last_heard_ms: 0,
        }
    }
}

/// The figures behind the per-version metrics.
#[derive(Debug, Default)]
pub(crate) struct Local {
    series: BTreeMap<SeriesKey, Series>,
    in_flight_entries: usize,
}

/// Why a report was left out of the local metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Skipped {
    TooManySeries,
    TooManyEndpoints,
}

impl Local {
    /// Counts a report received at `now_ms`; `stale_ms` is how long an
    /// endpoint's in-flight count holds.
    pub(crate) fn record(
        &mut self,
        report: &Report,
        now_ms: i64,
        stale_ms: i64,
    ) -> Result<(), Skipped> {
        let key = SeriesKey::of(report);
        if !self.series.contains_key(&key) {
            self.forget(now_ms, stale_ms);
            if self.series.len() >= MAX_SERIES {
                return Err(Skipped::TooManySeries);
            }
        }
        let tracked = self
            .series
            .get(&key)
            .is_some_and(|s| s.in_flight.contains_key(&report.reporter));
        if !tracked && self.in_flight_entries >= MAX_IN_FLIGHT_ENTRIES {
            self.forget(now_ms, stale_ms);
            if self.in_flight_entries >= MAX_IN_FLIGHT_ENTRIES {
                return Err(Skipped::TooManyEndpoints);
            }
        }
        let series = self.series.entry(key).or_default();
        series.last_heard_ms = now_ms;
        let second = now_ms.div_euclid(1000);
        let slot = &mut series.per_second[second.rem_euclid(RATE_WINDOW_SECS) as usize];
        if slot.0 != second {
            *slot = (second, 0);
        }
        slot.1 = slot.1.saturating_add(report.requests);
        if series
            .in_flight
            .insert(report.reporter.clone(), (now_ms, report.in_flight))
            .is_none()
        {
            self.in_flight_entries += 1;
        }
        series.latency.merge(&report.latency);
        Ok(())
    }

    /// Drops endpoints not heard from within `stale_ms` and series not
    /// heard from for [`FORGET_AFTER_MS`].
    fn forget(&mut self, now_ms: i64, stale_ms: i64) {
        self.series.retain(|_, series| {
            series
                .in_flight
                .retain(|_, (heard, _)| now_ms - *heard <= stale_ms);
            now_ms - series.last_heard_ms <= FORGET_AFTER_MS
        });
        self.in_flight_entries = self.series.values().map(|s| s.in_flight.len()).sum();
    }

    /// The Prometheus text of the three per-version metrics at `now_ms`.
    pub(crate) fn render(&mut self, now_ms: i64, stale_ms: i64) -> String {
        self.forget(now_ms, stale_ms);
        let now_second = now_ms.div_euclid(1000);
        let mut rates = String::new();
        let mut in_flight = String::new();
        let mut durations = String::new();
        for (key, series) in &self.series {
            let labels = labels(key);
            let requests: u64 = series
                .per_second
                .iter()
                .filter(|(second, _)| {
                    *second > now_second - RATE_WINDOW_SECS && *second <= now_second
                })
                .map(|(_, n)| *n)
                .sum();
            let _ = writeln!(
                rates,
                "bulkhead_version_requests_per_second{{{labels}}} {}",
                requests as f64 / RATE_WINDOW_SECS as f64
            );
            let busy: u64 = series.in_flight.values().map(|(_, n)| u64::from(*n)).sum();
            let _ = writeln!(
                in_flight,
                "bulkhead_version_requests_in_flight{{{labels}}} {busy}"
            );
            histogram(&mut durations, &labels, &series.latency);
        }
        let mut out = String::new();
        out.push_str("# HELP bulkhead_version_requests_per_second Requests per second a version served over the last 30 s, as its sidecars reported to this replica (sum over replicas)\n");
        out.push_str("# TYPE bulkhead_version_requests_per_second gauge\n");
        out.push_str(&rates);
        out.push_str("# HELP bulkhead_version_requests_in_flight Requests a version's endpoints had in flight at their latest report to this replica (sum over replicas)\n");
        out.push_str("# TYPE bulkhead_version_requests_in_flight gauge\n");
        out.push_str(&in_flight);
        out.push_str("# HELP bulkhead_version_request_duration_seconds Latency of a version's inbound requests as its sidecars reported to this replica since it started (sum over replicas; _sum approximate)\n");
        out.push_str("# TYPE bulkhead_version_request_duration_seconds histogram\n");
        out.push_str(&durations);
        out
    }
}

fn histogram(out: &mut String, labels: &str, latency: &LatencyHistogram) {
    let counts = latency.counts();
    let count_at = |i: usize| counts.get(i).copied().unwrap_or(0);
    let mut cumulative = 0u64;
    let mut sum_ms = 0.0;
    for (i, bound) in LATENCY_BOUNDS_MS.iter().enumerate() {
        let n = count_at(i);
        cumulative = cumulative.saturating_add(n);
        let lower = if i == 0 {
            0.0
        } else {
            LATENCY_BOUNDS_MS[i - 1]
        };
        sum_ms += n as f64 * (lower + bound) / 2.0;
        let _ = writeln!(
            out,
            "bulkhead_version_request_duration_seconds_bucket{{{labels},le=\"{}\"}} {cumulative}",
            bound / 1000.0
        );
    }
    let above = count_at(LATENCY_BOUNDS_MS.len());
    cumulative = cumulative.saturating_add(above);
    sum_ms += above as f64 * LATENCY_BOUNDS_MS[LATENCY_BOUNDS_MS.len() - 1];
    let _ = writeln!(
        out,
        "bulkhead_version_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {cumulative}"
    );
    let _ = writeln!(
        out,
        "bulkhead_version_request_duration_seconds_sum{{{labels}}} {}",
        sum_ms / 1000.0
    );
    let _ = writeln!(
        out,
        "bulkhead_version_request_duration_seconds_count{{{labels}}} {cumulative}"
    );
}

fn labels(key: &SeriesKey) -> String {
    format!(
        "namespace=\"{}\",service=\"{}\",version=\"{}\"",
        escape(&key.namespace),
        escape(&key.service),
        escape(&key.version)
    )
}

/// A label value as the Prometheus text format wants it.
pub(crate) fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}
