//! `Discovery.Report`: this endpoint's inbound aggregates
//! ([`VersionCounters`]) sent to the control plane, which gates rollouts on
//! them, over the channel the registration uses.
//!
//! While a lease is held, every `report_interval_ms` of the last answer
//! (first [`FIRST_INTERVAL`], clamped to [`MIN_INTERVAL`]..[`MAX_INTERVAL`]),
//! a report carries what was counted since the last *accepted* one, how
//! long that covers, and the requests in flight — zeros too, so the
//! control plane can tell silence from loss. A report that fails leaves the
//! baseline where it was: the next one includes it. Without a lease (lost
//! and being re-registered by `keep_registered`) nothing is sent; NOT_FOUND
//! means the lease just ran out, and the next tick uses the new one. A
//! control plane without `Report` (UNIMPLEMENTED) is asked again every
//! [`MAX_INTERVAL`].
//!
//! Nothing here touches the data path: it reads the counters' atomics.
//! Every attempt is counted in `bulkhead_reports_total{result}`; failures
//! are logged at most once per [`LOG_EVERY`].

use std::sync::Arc;
use std::time::Duration;

use bulkhead_proto::pb::{self, discovery_client::DiscoveryClient};
use tokio::time::Instant;
use tonic::transport::Channel;

use super::{Lease, key};
use crate::telemetry::{Tally, VersionCounters};

/// Until the control plane says otherwise.
pub(super) const FIRST_INTERVAL: Duration = Duration::from_secs(5);
/// Bounds on the interval a control plane asks for (a bad value must
/// neither flood it nor starve the rollout).
pub(super) const MIN_INTERVAL: Duration = Duration::from_millis(500);
pub(super) const MAX_INTERVAL: Duration = Duration::from_secs(60);
/// How long one Report call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// At most one log line about failing reports this often.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Reports until the task is aborted (deregistration, shutdown).
pub(super) async fn report_forever(
    channel: Channel,
    record: pb::Endpoint,
    lease: Lease,
    counters: Arc<VersionCounters>,
) {
    metrics::describe_counter!(
        "bulkhead_reports_total",
        "Reports of this endpoint's inbound aggregates to the control plane, by result (ok, error)"
    );
    let mut client = DiscoveryClient::new(channel);
    let mut reports = Reports::new(&counters);
    loop {
        tokio::time::sleep(reports.interval).await;
        let Some(lease_id) = *lease.lock().unwrap_or_else(|e| e.into_inner()) else {
            continue; // not registered: nothing to report on
        };
        let (request, taken) = reports.next(&counters, key(&record, lease_id), Instant::now());
        let result = match tokio::time::timeout(CALL_TIMEOUT, client.report(request)).await {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) => Err(status),
            Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                "no answer in {CALL_TIMEOUT:?}"
            ))),
        };
        let ok = result.is_ok();
        metrics::counter!("bulkhead_reports_total", "result" => if ok { "ok" } else { "error" })
            .increment(1);
        match result {
            Ok(resp) => reports.accepted(taken, &resp),
            Err(status) => reports.failed(&status, Instant::now()),
        }
    }
}

/// What the control plane has accepted so far, and when to report next.
struct Reports {
    /// The counters as of the last accepted report.
    baseline: Tally,
    /// When that tally was taken (or counting started).
    at: Instant,
    interval: Duration,
    /// Whether the control plane was found without `Report` (said once).
    unimplemented: bool,
    /// Failures since the last log line about them, and when that was.
    failed: u64,
    logged: Option<Instant>,
}

/// A report sent and not yet answered: what it carried, and when.
struct Taken {
    delta: crate::telemetry::Delta,
    at: Instant,
}

impl Reports {
    fn new(counters: &VersionCounters) -> Self {
        Self {
            baseline: Tally::default(),
            at: counters.since(),
            interval: FIRST_INTERVAL,
            unimplemented: false,
            failed: 0,
            logged: None,
        }
    }

    /// The report to send now, for `registration`.
    fn next(
        &self,
        counters: &VersionCounters,
        registration: pb::KeepAliveRequest,
        now: Instant,
    ) -> (pb::ReportRequest, Taken) {
        let in_flight = counters.in_flight();
        let delta = counters.tally().since(&self.baseline);
        let covered = now.saturating_duration_since(self.at);
        let request = pb::ReportRequest {
            registration: Some(registration),
            covered_ms: u32::try_from(covered.as_millis()).unwrap_or(u32::MAX),
            requests: delta.requests,
            failures: delta.failures,
            latency_counts: delta.latency_counts(),
            in_flight: u32::try_from(in_flight).unwrap_or(u32::MAX),
            mesh_errors: delta.mesh_errors,
            callers: delta.caller_counts(),
        };
        (request, Taken { delta, at: now })
    }

    fn accepted(&mut self, taken: Taken, resp: &pb::ReportResponse) {
        self.baseline.advance(&taken.delta);
        self.at = taken.at;
        self.interval = Duration::from_millis(u64::from(resp.report_interval_ms))
            .clamp(MIN_INTERVAL, MAX_INTERVAL);
        if std::mem::take(&mut self.unimplemented) || self.failed > 0 {
            tracing::info!(failed = self.failed, "control plane accepts reports again");
        }
        self.failed = 0;
        self.logged = None;
    }

    /// After a report that was not accepted: the baseline stays, so the
    /// next report carries this one's counts too.
    fn failed(&mut self, status: &tonic::Status, now: Instant) {
        self.failed += 1;
        match status.code() {
            tonic::Code::Unimplemented => {
                if !std::mem::replace(&mut self.unimplemented, true) {
                    tracing::info!(
                        "the control plane does not take reports (an older version): \
                         rollouts cannot be gated on this endpoint's traffic; asking again \
                         every minute"
                    );
                }
                self.interval = MAX_INTERVAL;
                return;
            }
            // The lease ran out; keep_registered registers again.
            tonic::Code::NotFound => {
                tracing::debug!(
                    "report refused: registration expired; reporting again once re-registered"
                );
                return;
            }
            _ => {}
        }
        if self
            .logged
            .is_none_or(|at| now.saturating_duration_since(at) >= LOG_EVERY)
        {
            tracing::warn!(
                code = ?status.code(),
                message = status.message(),
                failed = self.failed,
                "cannot report to the control plane; the counts are kept for the next report"
            );
            self.logged = Some(now);
        } else {
            tracing::debug!(code = ?status.code(), message = status.message(), "report failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::StatusCode;

    use super::*;
    use crate::telemetry::{Classified, End};

    fn registration(lease_id: i64) -> pb::KeepAliveRequest {
        pb::KeepAliveRequest {
            namespace: "shop".into(),
            service: "cart".into(),
            lease_id,
            ..Default::default()
        }
    }

    fn serve(counters: &Arc<VersionCounters>, status: u16) {
        let how = Classified::new(StatusCode::from_u16(status).unwrap(), None, End::Complete);
        counters
            .start(None)
            .end(how, End::Complete, Duration::from_millis(3));
    }

    fn answer(ms: u32) -> pb::ReportResponse {
        pb::ReportResponse {
            report_interval_ms: ms,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_report_not_accepted_is_folded_into_the_next() {
        let counters = VersionCounters::new();
        let mut reports = Reports::new(&counters);
        serve(&counters, 500);
        let _busy = counters.start(None);
        tokio::time::advance(Duration::from_secs(5)).await;
        let (first, _) = reports.next(&counters, registration(1), Instant::now());
        assert_eq!((first.requests, first.failures, first.in_flight), (1, 1, 1));
        assert_eq!(first.covered_ms, 5000, "since counting started");
        assert_eq!(first.registration, Some(registration(1)));
        reports.failed(&tonic::Status::unavailable("down"), Instant::now());
        assert_eq!(reports.interval, FIRST_INTERVAL);

        serve(&counters, 200);
        tokio::time::advance(Duration::from_secs(5)).await;
        // A new lease after re-registration: the report says so.
        let (second, taken) = reports.next(&counters, registration(2), Instant::now());
        assert_eq!((second.requests, second.failures), (2, 1));
        assert_eq!(second.covered_ms, 10_000);
        assert_eq!(second.latency_counts.iter().sum::<u64>(), 2);
        assert_eq!(second.registration.map(|r| r.lease_id), Some(2));
        reports.accepted(taken, &answer(2000));
        assert_eq!(reports.interval, Duration::from_secs(2));

        // Nothing served since: zeros, still sent.
        tokio::time::advance(Duration::from_secs(2)).await;
        let (idle, _) = reports.next(&counters, registration(2), Instant::now());
        assert_eq!((idle.requests, idle.failures, idle.in_flight), (0, 0, 1));
        assert!(idle.latency_counts.is_empty());
        assert_eq!(idle.covered_ms, 2000);
    }

    #[tokio::test(start_paused = true)]
    async fn intervals_are_clamped_and_an_old_control_plane_is_asked_rarely() {
        let counters = VersionCounters::new();
        let mut reports = Reports::new(&counters);
        let accept = |reports: &mut Reports, ms| {
            let (_, taken) = reports.next(&counters, registration(1), Instant::now());
            reports.accepted(taken, &answer(ms));
            reports.interval
        };
        assert_eq!(accept(&mut reports, 0), MIN_INTERVAL);
        assert_eq!(accept(&mut reports, 10_000), Duration::from_secs(10));
        assert_eq!(accept(&mut reports, u32::MAX), MAX_INTERVAL);
        reports.failed(&tonic::Status::unimplemented("no"), Instant::now());
        assert_eq!(reports.interval, MAX_INTERVAL);
        assert!(reports.unimplemented);
        // An expired lease changes nothing but the failure count.
        let mut reports = Reports::new(&counters);
        reports.failed(&tonic::Status::not_found("lease"), Instant::now());
        assert_eq!((reports.interval, reports.failed), (FIRST_INTERVAL, 1));
        assert_eq!(accept(&mut reports, 1000), Duration::from_secs(1));
        assert_eq!(reports.failed, 0);
    }
}
