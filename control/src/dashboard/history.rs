//! The last minutes of each version's golden metrics, for the dashboard's
//! small charts: the control plane keeps only windows, so the dashboard
//! samples `GetStats` every few seconds and keeps a short ring per
//! version, in memory, bounded in both length and number of versions.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use crate::golden::GoldenRow;

/// How often a sample is taken (and the window it covers).
pub(super) const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Samples kept per version: ten minutes.
const KEEP: usize = 120;
/// Versions followed at most (200 services with a few versions each fit).
const MAX_SERIES: usize = 2000;

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Sample {
    pub(super) t_unix_ms: i64,
    pub(super) rps: f64,
    pub(super) success_rate: Option<f64>,
    pub(super) p50_ms: Option<f64>,
    pub(super) p99_ms: Option<f64>,
}

/// (namespace, service, version) → samples, oldest first.
type Key = (String, String, String);

#[derive(Default)]
pub(super) struct History {
    series: Mutex<BTreeMap<Key, VecDeque<Sample>>>,
}

impl History {
    /// Adds one sample per row taken at `t_unix_ms`; versions that reported
    /// nothing for the whole ring are forgotten.
    pub(super) fn record(&self, t_unix_ms: i64, rows: &[GoldenRow]) {
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        for r in rows {
            let key = (r.namespace.clone(), r.service.clone(), r.version.clone());
            if !series.contains_key(&key) && series.len() >= MAX_SERIES {
                continue;
            }
            let ring = series.entry(key).or_default();
            ring.push_back(Sample {
                t_unix_ms,
                rps: r.rps,
                success_rate: r.success_rate,
                p50_ms: r.p50_ms,
                p99_ms: r.p99_ms,
            });
            while ring.len() > KEEP {
                ring.pop_front();
            }
        }
        let horizon = t_unix_ms - (KEEP as i64) * SAMPLE_EVERY.as_millis() as i64;
        series.retain(|_, ring| ring.back().is_some_and(|s| s.t_unix_ms > horizon));
    }

    /// A service's samples by version.
    pub(super) fn of(&self, namespace: &str, service: &str) -> BTreeMap<String, Vec<Sample>> {
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        series
            .iter()
            .filter(|((ns, svc, _), _)| ns == namespace && svc == service)
            .map(|((_, _, version), ring)| (version.clone(), ring.iter().cloned().collect()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(version: &str, rps: f64) -> GoldenRow {
        GoldenRow {
            from: None,
            namespace: "shop".into(),
            service: "inventory".into(),
            version: version.into(),
            rps,
            success_rate: Some(1.0),
            p50_ms: Some(1.0),
            p95_ms: Some(2.0),
            p99_ms: Some(3.0),
            requests: 1,
            failures: 0,
            mesh_errors: 0,
        }
    }

    #[test]
    fn rings_are_bounded_and_old_versions_go() {
        let h = History::default();
        for i in 0..(KEEP as i64 + 10) {
            h.record(i * 5000, &[row("3.0.0", i as f64)]);
        }
        let of = h.of("shop", "inventory");
        assert_eq!(of["3.0.0"].len(), KEEP);
        assert_eq!(of["3.0.0"][0].rps, 10.0, "oldest dropped first");
        assert!(h.of("shop", "cart").is_empty());
        // A version that stops reporting leaves once its ring is all past.
        h.record(10_000_000, &[row("3.1.0", 1.0)]);
        let of = h.of("shop", "inventory");
        assert!(!of.contains_key("3.0.0"));
        assert_eq!(of["3.1.0"].len(), 1);
    }
}
