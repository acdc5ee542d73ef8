//! `Discovery.Report`: a sidecar's measurements of its own endpoint's
//! inbound traffic, checked and handed to [`crate::measure`].
//!
//! The endpoint reported on must be the caller's registration; the version
//! counted is the registered one, whatever else the report says. The
//! check reads this replica's view, not the store: a report every few
//! seconds from every sidecar costs no store read (the store is read only
//! for an endpoint the view does not hold as the caller's: unready, just
//! registered, or not the caller's).

use bulkhead_proto::SpiffeId;
use bulkhead_proto::pb;
use bulkhead_proto::stats::{LATENCY_BUCKETS, LatencyHistogram};
use tonic::Status;

use super::DiscoveryService;
use crate::keys;
use crate::measure::Report;

/// Longest time one report may cover (a sidecar that could not report for
/// longer drops what is older).
const MAX_COVERED_MS: u32 = 3_600_000;
/// Most requests per second of covered time (at least one second) a
/// report may claim: far above what one endpoint serves, low enough that
/// sums cannot overflow.
const MAX_REQUESTS_PER_SECOND: u64 = 1_000_000;
/// Most requests one endpoint may have in flight.
const MAX_IN_FLIGHT: u32 = 1_000_000;

impl DiscoveryService {
    pub(super) async fn accept_report(
        &self,
        identity: &SpiffeId,
        req: pb::ReportRequest,
    ) -> Result<pb::ReportResponse, Status> {
        let Some(registration) = &req.registration else {
            return Err(Status::invalid_argument(
                "ReportRequest.registration is missing: send the KeepAliveRequest of the endpoint reported on",
            ));
        };
        let latency = check(&req)?;
        let version = self.reporting_version(identity, registration).await?;
        let measurements = &self.plane.measurements;
        measurements.record(&Report {
            namespace: registration.namespace.clone(),
            service: registration.service.clone(),
            version,
            reporter: format!("{}:{}", registration.address, registration.inbound_port),
            covered_ms: u64::from(req.covered_ms),
            requests: req.requests,
            failures: req.failures,
            latency,
            in_flight: req.in_flight,
        });
        metrics::counter!("bulkhead_reports_total").increment(1);
        Ok(pb::ReportResponse {
            report_interval_ms: u32::try_from(measurements.report_interval().as_millis())
                .unwrap_or(u32::MAX),
        })
    }

    /// The registered version of the endpoint `registration` names, if it
    /// is `identity`'s.
    async fn reporting_version(
        &self,
        identity: &SpiffeId,
        registration: &pb::KeepAliveRequest,
    ) -> Result<String, Status> {
        let key = keys::endpoint(
            &registration.namespace,
            &registration.service,
            &registration.address,
            registration.inbound_port,
        );
        let seen = self
            .plane
            .hub
            .read()
            .endpoints
            .get(&key)
            .filter(|ep| ep.identity.as_ref() == Some(identity))
            .map(|ep| ep.version.clone());
        if let Some(version) = seen {
            return Ok(version);
        }
        // The store decides: NOT_FOUND (register again) or PERMISSION_DENIED.
        let (_, record) = self.owned_registration(identity, registration).await?;
        Ok(record.version)
    }
}

/// The report's counts, checked: each INVALID_ARGUMENT says which field
/// and what was expected.
fn check(req: &pb::ReportRequest) -> Result<LatencyHistogram, Status> {
    let latency = LatencyHistogram::from_counts(&req.latency_counts).map_err(|e| {
        Status::invalid_argument(format!(
            "ReportRequest.latency_counts: {e} (one per bound of bulkhead_proto::stats::LATENCY_BOUNDS_MS, then one above; {LATENCY_BUCKETS} in all)"
        ))
    })?;
    if req.covered_ms > MAX_COVERED_MS {
        return Err(Status::invalid_argument(format!(
            "ReportRequest.covered_ms {} is over one hour ({MAX_COVERED_MS}): report at most the last hour",
            req.covered_ms
        )));
    }
    let most = u64::from(req.covered_ms.max(1000)) * (MAX_REQUESTS_PER_SECOND / 1000);
    if req.requests > most {
        return Err(Status::invalid_argument(format!(
            "ReportRequest.requests {} in {} ms is more than {MAX_REQUESTS_PER_SECOND} per second",
            req.requests, req.covered_ms
        )));
    }
    if req.failures > req.requests {
        return Err(Status::invalid_argument(format!(
            "ReportRequest.failures {} is more than its requests {}",
            req.failures, req.requests
        )));
    }
    if latency.total() > req.requests {
        return Err(Status::invalid_argument(format!(
            "ReportRequest.latency_counts add up to {}, more than its requests {}",
            latency.total(),
            req.requests
        )));
    }
    if req.in_flight > MAX_IN_FLIGHT {
        return Err(Status::invalid_argument(format!(
            "ReportRequest.in_flight {} is more than {MAX_IN_FLIGHT}",
            req.in_flight
        )));
    }
    Ok(latency)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(requests: u64, failures: u64, latency: Vec<u64>) -> pb::ReportRequest {
        pb::ReportRequest {
            registration: None,
            covered_ms: 5000,
            requests,
            failures,
            latency_counts: latency,
            in_flight: 3,
        }
    }

    #[test]
    fn counts_are_checked_field_by_field() {
        let mut counts = vec![0; LATENCY_BUCKETS];
        counts[3] = 7;
        assert_eq!(check(&report(10, 2, counts.clone())).unwrap().total(), 7);
        assert_eq!(check(&report(0, 0, vec![])).unwrap().total(), 0);
        let refused = |req: pb::ReportRequest, field: &str| {
            let status = check(&req).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().contains(field), "{}", status.message());
        };
        refused(report(10, 0, vec![1, 2]), "latency_counts");
        refused(report(10, 11, vec![]), "failures");
        refused(report(6, 0, counts.clone()), "latency_counts add up");
        let mut long = report(1, 0, vec![]);
        long.covered_ms = MAX_COVERED_MS + 1;
        refused(long, "covered_ms");
        refused(report(u64::MAX / 2, 0, vec![]), "requests");
        let mut busy = report(1, 0, vec![]);
        busy.in_flight = MAX_IN_FLIGHT + 1;
        refused(busy, "in_flight");
    }
}
