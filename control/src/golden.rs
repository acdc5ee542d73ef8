//! Golden metrics from what sidecars report (`Admin.GetStats`): one row
//! per version, or per caller's edge into a version — requests per
//! second, success rate, p50/p95/p99, the mesh's own errors. What
//! `bulkheadctl stat` prints and the dashboard draws.

use bulkhead_proto::SpiffeId;
use bulkhead_proto::pb;
use bulkhead_proto::stats::LatencyHistogram;
use serde::Serialize;

/// One row: a version, or (with `from`) one caller's edge into it. The
/// field names are what `stat -o json` prints (scripts rely on them).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GoldenRow {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    pub namespace: String,
    pub service: String,
    pub version: String,
    pub rps: f64,
    pub success_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub requests: u64,
    pub failures: u64,
    pub mesh_errors: u64,
}

fn round(x: f64, places: i32) -> f64 {
    (x * 10f64.powi(places)).round() / 10f64.powi(places)
}

impl GoldenRow {
    fn new(
        from: Option<String>,
        v: &pb::VersionStats,
        counts: (u64, u64, u64, &[u64]),
        seconds: f64,
    ) -> Self {
        let (requests, failures, mesh_errors, latency) = counts;
        let latency = LatencyHistogram::from_counts(latency).unwrap_or_default();
        Self {
            from,
            namespace: v.namespace.clone(),
            service: v.service.clone(),
            version: v.version.clone(),
            rps: round(requests as f64 / seconds, 2),
            success_rate: (requests > 0)
                .then(|| round(1.0 - failures.min(requests) as f64 / requests as f64, 4)),
            p50_ms: latency.quantile(0.50).map(|q| round(q, 2)),
            p95_ms: latency.quantile(0.95).map(|q| round(q, 2)),
            p99_ms: latency.quantile(0.99).map(|q| round(q, 2)),
            requests,
            failures,
            mesh_errors,
        }
    }
}

/// The window's length in seconds (never zero).
fn seconds(resp: &pb::StatsResponse) -> f64 {
    ((resp.to_unix_ms - resp.from_unix_ms) as f64 / 1000.0).max(0.001)
}

/// A row per version.
pub fn version_rows(resp: &pb::StatsResponse) -> Vec<GoldenRow> {
    let seconds = seconds(resp);
    resp.versions
        .iter()
        .map(|v| {
            let totals = (
                v.requests,
                v.failures,
                v.mesh_errors,
                v.latency_counts.as_slice(),
            );
            GoldenRow::new(None, v, totals, seconds)
        })
        .collect()
}

/// A row per (caller, version) whose caller (a SPIFFE ID) `keep` accepts;
/// `from` is the caller as [`short_caller`] writes it.
pub fn edge_rows(resp: &pb::StatsResponse, keep: impl Fn(&str) -> bool) -> Vec<GoldenRow> {
    let seconds = seconds(resp);
    let mut rows = Vec::new();
    for v in &resp.versions {
        for c in v.callers.iter().filter(|c| keep(&c.caller)) {
            let counts = (
                c.requests,
                c.failures,
                c.mesh_errors,
                c.latency_counts.as_slice(),
            );
            rows.push(GoldenRow::new(
                Some(short_caller(&c.caller)),
                v,
                counts,
                seconds,
            ));
        }
    }
    rows
}

/// A caller as `ns/sa` when it is a SPIFFE ID of the mesh's shape (by
/// convention, the calling service is its service account).
pub fn short_caller(caller: &str) -> String {
    caller
        .parse::<SpiffeId>()
        .map(|id| format!("{}/{}", id.namespace(), id.service_account()))
        .unwrap_or_else(|_| caller.to_owned())
}

/// The same figures with each service's versions added up into one
/// (version `""`), callers merged by identity: a service's totals and its
/// edges whatever version answered.
pub fn by_service(resp: &pb::StatsResponse) -> pb::StatsResponse {
    let mut merged: Vec<pb::VersionStats> = Vec::new();
    for v in &resp.versions {
        let at = match merged
            .iter()
            .position(|m| m.namespace == v.namespace && m.service == v.service)
        {
            Some(i) => i,
            None => {
                merged.push(pb::VersionStats {
                    namespace: v.namespace.clone(),
                    service: v.service.clone(),
                    ..Default::default()
                });
                merged.len() - 1
            }
        };
        let m = &mut merged[at];
        m.requests += v.requests;
        m.failures += v.failures;
        m.mesh_errors += v.mesh_errors;
        m.in_flight += v.in_flight;
        m.reporters += v.reporters;
        add_counts(&mut m.latency_counts, &v.latency_counts);
        for c in &v.callers {
            let at = match m.callers.iter().position(|mc| mc.caller == c.caller) {
                Some(i) => i,
                None => {
                    m.callers.push(pb::CallerCounts {
                        caller: c.caller.clone(),
                        ..Default::default()
                    });
                    m.callers.len() - 1
                }
            };
            let mc = &mut m.callers[at];
            mc.requests += c.requests;
            mc.failures += c.failures;
            mc.mesh_errors += c.mesh_errors;
            add_counts(&mut mc.latency_counts, &c.latency_counts);
        }
    }
    pb::StatsResponse {
        from_unix_ms: resp.from_unix_ms,
        to_unix_ms: resp.to_unix_ms,
        versions: merged,
    }
}

fn add_counts(into: &mut Vec<u64>, more: &[u64]) {
    if into.len() < more.len() {
        into.resize(more.len(), 0);
    }
    for (a, b) in into.iter_mut().zip(more) {
        *a = a.saturating_add(*b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(v: &str, requests: u64, failures: u64, caller: &str) -> pb::VersionStats {
        pb::VersionStats {
            namespace: "shop".into(),
            service: "inventory".into(),
            version: v.into(),
            requests,
            failures,
            callers: vec![pb::CallerCounts {
                caller: caller.into(),
                requests,
                failures,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn versions_add_up_per_service_and_caller() {
        let web = "spiffe://cluster.local/ns/shop/sa/web";
        let resp = pb::StatsResponse {
            from_unix_ms: 0,
            to_unix_ms: 10_000,
            versions: vec![version("3.0.0", 90, 0, web), version("3.1.0", 10, 5, web)],
        };
        let merged = by_service(&resp);
        let totals = version_rows(&merged);
        assert_eq!(totals.len(), 1);
        assert_eq!((totals[0].requests, totals[0].failures), (100, 5));
        assert_eq!(totals[0].success_rate, Some(0.95));
        let edges = edge_rows(&merged, |_| true);
        assert_eq!(edges.len(), 1);
        assert_eq!(edges[0].from.as_deref(), Some("shop/web"));
        assert_eq!(edges[0].rps, 10.0);
    }
}
