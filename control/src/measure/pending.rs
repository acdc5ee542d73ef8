//! What one replica received since its last flush, and the record a flush
//! writes: per (namespace, service, version) the sums of the reports, and
//! per reporting endpoint its covered time and latest in-flight count.
//! Bounded: beyond [`MAX_SERIES`] series or [`MAX_REPORTERS`] reporters a
//! report is dropped (and counted), so that one flush stays under etcd's
//! request limit (1.5 MiB by default) even with the longest names.

use std::collections::BTreeMap;

use bulkhead_proto::stats::LatencyHistogram;
use serde::{Deserialize, Serialize};

/// Most (namespace, service, version) series one flush holds.
pub(crate) const MAX_SERIES: usize = 1024;
/// Most reporting endpoints one flush holds, over all series.
pub(crate) const MAX_REPORTERS: usize = 4096;
/// Most (version, caller) parts one flush holds, over all series; later
/// callers count in their version's totals only.
pub(crate) const MAX_CALLERS: usize = 4096;
/// Largest flush written with its callers' parts: beyond, a flush keeps
/// the totals only, so it stays under etcd's request limit (the test
/// `the_largest_flush_fits_in_one_etcd_request` bounds the rest).
pub(crate) const MAX_FLUSH_BYTES: usize = 1024 * 1024;

/// One caller's part of a version's traffic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct CallerPart {
    pub requests: u64,
    pub failures: u64,
    pub mesh_errors: u64,
    pub latency: LatencyHistogram,
}

impl CallerPart {
    fn add(&mut self, other: &CallerPart) {
        self.requests = self.requests.saturating_add(other.requests);
        self.failures = self.failures.saturating_add(other.failures);
        self.mesh_errors = self.mesh_errors.saturating_add(other.mesh_errors);
        self.latency.merge(&other.latency);
    }
}

/// One accepted report, as the Report handler checked it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Report {
    pub namespace: String,
    pub service: String,
    /// The registered endpoint's version (never the reporter's word).
    pub version: String,
    /// `<address>:<inbound_port>`, as in the endpoint's store key.
    pub reporter: String,
    pub covered_ms: u64,
    pub requests: u64,
    pub failures: u64,
    pub latency: LatencyHistogram,
    pub in_flight: u32,
    /// Of the failures, those the mesh answered itself.
    pub mesh_errors: u64,
    /// By caller SPIFFE ID: who called this version.
    pub callers: Vec<(String, CallerPart)>,
}

/// One version of one service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct SeriesKey {
    pub namespace: String,
    pub service: String,
    pub version: String,
}

impl SeriesKey {
    pub(crate) fn of(report: &Report) -> Self {
        Self {
            namespace: report.namespace.clone(),
            service: report.service.clone(),
            version: report.version.clone(),
        }
    }
}

/// What one `stats/` key holds (JSON).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FlushRecord {
    pub series: Vec<SeriesRecord>,
}

/// One version's sums in a flush.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SeriesRecord {
    pub namespace: String,
    pub service: String,
    pub version: String,
    pub requests: u64,
    pub failures: u64,
    /// As in `ReportRequest.latency_counts` (empty: no latency counted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latency: Vec<u64>,
    pub reporters: Vec<ReporterRecord>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mesh_errors: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub callers: Vec<CallerRecord>,
}

/// One caller's part of a series in a flush.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CallerRecord {
    /// Its SPIFFE ID.
    pub caller: String,
    pub requests: u64,
    pub failures: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mesh_errors: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latency: Vec<u64>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One endpoint's part of a series in a flush.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ReporterRecord {
    /// `<address>:<inbound_port>`.
    pub endpoint: String,
    /// Sum of its reports' covered_ms.
    pub covered_ms: u64,
    /// In flight at its latest report.
    pub in_flight: u32,
}

impl FlushRecord {
    pub(crate) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// Why a report (or part of a failed flush put back) was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dropped {
    TooManySeries,
    TooManyReporters,
}

impl Dropped {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Self::TooManySeries => "too_many_series",
            Self::TooManyReporters => "too_many_reporters",
        }
    }
}

#[derive(Debug, Default)]
struct SeriesSums {
    requests: u64,
    failures: u64,
    mesh_errors: u64,
    callers: BTreeMap<String, CallerPart>,
    latency: LatencyHistogram,
    /// Endpoint → (covered ms, latest in flight).
    reporters: BTreeMap<String, (u64, u32)>,
}

/// Reports received since the last flush.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    series: BTreeMap<SeriesKey, SeriesSums>,
    reporters: usize,
    callers: usize,
}

impl Pending {
    pub(crate) fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Adds one report: its counts to its series, its covered time to its
    /// endpoint's, its in-flight count as the endpoint's latest.
    pub(crate) fn add(&mut self, report: &Report) -> Result<(), Dropped> {
        let key = SeriesKey::of(report);
        let existing = self.series.get(&key);
        if existing.is_none() && self.series.len() >= MAX_SERIES {
            return Err(Dropped::TooManySeries);
        }
        let new_reporter = existing.is_none_or(|s| !s.reporters.contains_key(&report.reporter));
        if new_reporter && self.reporters >= MAX_REPORTERS {
            return Err(Dropped::TooManyReporters);
        }
        self.reporters += usize::from(new_reporter);
        let sums = self.series.entry(key).or_default();
        sums.requests = sums.requests.saturating_add(report.requests);
        sums.failures = sums.failures.saturating_add(report.failures);
        sums.mesh_errors = sums.mesh_errors.saturating_add(report.mesh_errors);
        sums.latency.merge(&report.latency);
        let mut dropped = 0u64;
        for (caller, part) in &report.callers {
            match sums.callers.get_mut(caller) {
                Some(sum) => sum.add(part),
                None if self.callers < MAX_CALLERS => {
                    self.callers += 1;
                    sums.callers.insert(caller.clone(), part.clone());
                }
                None => dropped += 1,
            }
        }
        if dropped > 0 {
            metrics::counter!("bulkhead_reports_dropped_total", "reason" => "too_many_callers")
                .increment(dropped);
        }
        let entry = sums.reporters.entry(report.reporter.clone()).or_default();
        entry.0 = entry.0.saturating_add(report.covered_ms);
        // Added in the order received: the last one is the latest.
        entry.1 = report.in_flight;
        Ok(())
    }

    /// Everything pending, as a flush writes it; leaves nothing pending.
    pub(crate) fn take(&mut self) -> FlushRecord {
        let series = std::mem::take(&mut self.series);
        self.reporters = 0;
        self.callers = 0;
        let mut record = FlushRecord {
            series: series
                .into_iter()
                .map(|(key, sums)| SeriesRecord {
                    namespace: key.namespace,
                    service: key.service,
                    version: key.version,
                    requests: sums.requests,
                    failures: sums.failures,
                    latency: sums.latency.counts().to_vec(),
                    reporters: sums
                        .reporters
                        .into_iter()
                        .map(|(endpoint, (covered_ms, in_flight))| ReporterRecord {
                            endpoint,
                            covered_ms,
                            in_flight,
                        })
                        .collect(),
                    mesh_errors: sums.mesh_errors,
                    callers: sums
                        .callers
                        .into_iter()
                        .map(|(caller, part)| CallerRecord {
                            caller,
                            requests: part.requests,
                            failures: part.failures,
                            mesh_errors: part.mesh_errors,
                            latency: part.latency.counts().to_vec(),
                        })
                        .collect(),
                })
                .collect(),
        };
        if record.encode().len() > MAX_FLUSH_BYTES {
            // Who called whom is the part that can go: the totals gate
            // rollouts and must not.
            let parts: usize = record.series.iter().map(|s| s.callers.len()).sum();
            metrics::counter!("bulkhead_reports_dropped_total", "reason" => "flush_too_large")
                .increment(parts as u64);
            for s in &mut record.series {
                s.callers.clear();
            }
        }
        record
    }
}
