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
use crate::measure::{CallerPart, Report};

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
        let callers = callers(&req)?;
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
            mesh_errors: req.mesh_errors,
            callers,
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

/// Most callers one report may name (the sidecar counts at most 256 apart).
const MAX_CALLERS: usize = 256;

/// The report's callers, checked: SPIFFE IDs, each part within the totals.
fn callers(req: &pb::ReportRequest) -> Result<Vec<(String, CallerPart)>, Status> {
    if req.callers.len() > MAX_CALLERS {
        return Err(Status::invalid_argument(format!(
            "ReportRequest.callers: {} callers, at most {MAX_CALLERS}",
            req.callers.len()
        )));
    }
    let mut sum = 0u64;
    let mut parts = Vec::with_capacity(req.callers.len());
    for (i, c) in req.callers.iter().enumerate() {
        let field = format!("ReportRequest.callers[{i}]");
        c.caller.parse::<SpiffeId>().map_err(|e| {
            Status::invalid_argument(format!("{field}.caller: expected a SPIFFE ID: {e}"))
        })?;
        let latency = LatencyHistogram::from_counts(&c.latency_counts)
            .map_err(|e| Status::invalid_argument(format!("{field}.latency_counts: {e}")))?;
        if c.failures > c.requests || c.mesh_errors > c.failures || latency.total() > c.requests {
            return Err(Status::invalid_argument(format!(
                "{field}: failures, mesh errors and latency counts must each be within its requests"
            )));
        }
        sum = sum.saturating_add(c.requests);
        parts.push((
            c.caller.clone(),
            CallerPart {
                requests: c.requests,
                failures: c.failures,
                mesh_errors: c.mesh_errors,
                latency,
            },
        ));
    }
    if sum > req.requests {
        return Err(Status::invalid_argument(format!(
            "ReportRequest.callers add up to {sum} requests, more than the report's {}",
            req.requests
        )));
    }
    Ok(parts)
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
    if req.mesh_errors > req.failures {
        return Err(Status::invalid_argument(format!(
            "ReportRequest.mesh_errors {} is more than its failures {}",
            req.mesh_errors, req.failures
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
            ..Default::default()
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

    #[test]
    fn callers_are_checked() {
        let caller = |id: &str, requests: u64, failures: u64| pb::CallerCounts {
            caller: id.into(),
            requests,
            failures,
            ..Default::default()
        };
        let web = "spiffe://cluster.local/ns/shop/sa/web";
        let mut req = report(10, 1, vec![]);
        req.callers = vec![
            caller(web, 6, 1),
            caller("spiffe://cluster.local/ns/shop/sa/cart", 4, 0),
        ];
        let parts = callers(&req).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].1.requests, 6);
        req.callers = vec![caller(web, 11, 0)];
        assert!(
            callers(&req)
                .unwrap_err()
                .message()
                .contains("more than the report's 10")
        );
        req.callers = vec![caller("web", 1, 0)];
        assert!(
            callers(&req)
                .unwrap_err()
                .message()
                .contains("callers[0].caller")
        );
        req.callers = vec![caller(web, 1, 2)];
        assert!(callers(&req).is_err());
        req.callers = (0..=MAX_CALLERS).map(|_| caller(web, 0, 0)).collect();
        assert!(callers(&req).is_err());
        let mut req = report(10, 1, vec![]);
        req.mesh_errors = 2;
        assert!(check(&req).unwrap_err().message().contains("mesh_errors"));
    }
}
