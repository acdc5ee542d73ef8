//! Flush records added up over a time window, per service and version:
//! what rollout gates, `GetStats` and `bulkheadctl stat` read.

use std::collections::BTreeMap;

use bulkhead_proto::stats::LatencyHistogram;

use super::pending::FlushRecord;

/// One service over a window: its versions.
#[derive(Clone, Debug, Default)]
pub(crate) struct ServiceWindow {
    pub versions: BTreeMap<String, VersionWindow>,
}

/// One version of a service over a window.
#[derive(Clone, Debug, Default)]
pub(crate) struct VersionWindow {
    pub requests: u64,
    pub failures: u64,
    pub latency: LatencyHistogram,
    /// Sum over reporters of their latest in_flight in the window.
    pub in_flight: u32,
    /// Each endpoint that reported in the window (`<address>:<inbound_port>`,
    /// the suffix of its store key `endpoints/<ns>/<svc>/<ip>:<port>`) → the
    /// milliseconds of covered time its reports in the window add up to
    /// (clamped to the window's length).
    pub reporters: BTreeMap<String, u64>,
    /// Of the failures, those the mesh answered itself.
    pub mesh_errors: u64,
    /// By caller SPIFFE ID: the edges into this version.
    pub callers: BTreeMap<String, super::pending::CallerPart>,
}

/// Which services a window is read for.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Filter<'a> {
    pub namespace: Option<&'a str>,
    pub service: Option<&'a str>,
}

impl Filter<'_> {
    fn admits(&self, namespace: &str, service: &str) -> bool {
        self.namespace.is_none_or(|ns| ns == namespace)
            && self.service.is_none_or(|svc| svc == service)
    }
}

/// Adds up flush records given in flush-time order (so that an endpoint's
/// latest in-flight count is the last one seen) over a window `length_ms`
/// long.
pub(crate) fn add_up(
    records: impl IntoIterator<Item = FlushRecord>,
    filter: Filter<'_>,
    length_ms: u64,
) -> BTreeMap<(String, String), ServiceWindow> {
    let mut services: BTreeMap<(String, String), ServiceWindow> = BTreeMap::new();
    // (namespace, service, version, endpoint) → latest in flight.
    let mut in_flight: BTreeMap<(String, String, String, String), u32> = BTreeMap::new();
    for record in records {
        for s in record.series {
            if !filter.admits(&s.namespace, &s.service) {
                continue;
            }
            let window = services
                .entry((s.namespace.clone(), s.service.clone()))
                .or_default()
                .versions
                .entry(s.version.clone())
                .or_default();
            window.requests = window.requests.saturating_add(s.requests);
            window.failures = window.failures.saturating_add(s.failures);
            window.mesh_errors = window.mesh_errors.saturating_add(s.mesh_errors);
            for c in s.callers {
                let part = window.callers.entry(c.caller).or_default();
                part.requests = part.requests.saturating_add(c.requests);
                part.failures = part.failures.saturating_add(c.failures);
                part.mesh_errors = part.mesh_errors.saturating_add(c.mesh_errors);
                if let Ok(latency) = LatencyHistogram::from_counts(&c.latency) {
                    part.latency.merge(&latency);
                }
            }
            // Written by a replica after the same check the handler makes;
            // a record of another bucket layout adds no latency.
            if let Ok(latency) = LatencyHistogram::from_counts(&s.latency) {
                window.latency.merge(&latency);
            }
            for r in s.reporters {
                let covered = window.reporters.entry(r.endpoint.clone()).or_default();
                *covered = covered.saturating_add(r.covered_ms).min(length_ms);
                in_flight.insert(
                    (
                        s.namespace.clone(),
                        s.service.clone(),
                        s.version.clone(),
                        r.endpoint,
                    ),
                    r.in_flight,
                );
            }
        }
    }
    for ((namespace, service, version, _), n) in in_flight {
        if let Some(window) = services
            .get_mut(&(namespace, service))
            .and_then(|s| s.versions.get_mut(&version))
        {
            window.in_flight = window.in_flight.saturating_add(n);
        }
    }
    services
}
