//! What this sidecar says about its own version: the inbound requests its
//! (namespace, service, version) served — ended, failed, a latency
//! histogram over `bulkhead_proto::stats::LATENCY_BOUNDS_MS` — and those in
//! flight. The control
//! plane computes rollout gates from these (`Discovery.Report`, sent by
//! [`crate::control_client`]), so they count what the version did, not
//! what its callers did:
//!
//! - counted: every request served here, whether the app answered or the
//!   sidecar did because the app could not (unreachable, no answer in
//!   time); a failure is what [`Classified::failure`] says (5xx, a broken
//!   stream or one past its deadline, a gRPC status other than OK);
//! - left out: a request the mesh turned away for the caller's own doing
//!   (an AllowList denial, an ambiguous path: its [`Serving`] is dropped
//!   unrecorded), and one the caller cancelled, unless its response head
//!   had already said 5xx (a caller that left says nothing of the version).
//!
//! Counting is a few relaxed atomic adds per request, no lock and no
//! allocation: one for the latency bucket, one more for a failure, and the
//! in-flight gauge up and down ([`Serving`] is the guard, so every path —
//! a body dropped unfinished, a request dropped before its response —
//! brings it down once). Requests ended are the histogram's sum, so the
//! two always agree. The counters only grow; a report is the difference
//! between two [`Tally`]s, so one that is not accepted is folded into the
//! next and nothing is lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bulkhead_proto::stats::{LATENCY_BUCKETS, LatencyHistogram};
use tokio::time::Instant;

use super::{Classified, End};

/// The inbound aggregates of this sidecar's version, shared by every
/// inbound connection.
pub(crate) struct VersionCounters {
    latency: [AtomicU64; LATENCY_BUCKETS],
    failures: AtomicU64,
    in_flight: AtomicU64,
    /// When counting started: what the first report covers.
    since: Instant,
}

/// One inbound request being served: counted in flight until dropped;
/// [`Serving::end`] also counts how it ended.
pub(crate) struct Serving {
    counters: Arc<VersionCounters>,
}

/// The counters at one moment (cumulative since counting started).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    latency: [u64; LATENCY_BUCKETS],
    failures: u64,
}

/// What happened between two tallies: one report's figures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Delta {
    pub(crate) requests: u64,
    pub(crate) failures: u64,
    /// Counts per bucket of `LATENCY_BOUNDS_MS`, then one above the last.
    pub(crate) latency: [u64; LATENCY_BUCKETS],
}

impl VersionCounters {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
            failures: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            since: Instant::now(),
        })
    }

    /// Counts a request in flight from now until the guard is dropped.
    pub(crate) fn start(self: &Arc<Self>) -> Serving {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Serving {
            counters: Arc::clone(self),
        }
    }

    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn since(&self) -> Instant {
        self.since
    }

    pub(crate) fn tally(&self) -> Tally {
        // Failures first, with Acquire: every failure seen has its latency
        // count seen too (see `Serving::end`), so a tally never holds more
        // failures than requests.
        let failures = self.failures.load(Ordering::Acquire);
        Tally {
            latency: std::array::from_fn(|i| self.latency[i].load(Ordering::Relaxed)),
            failures,
        }
    }
}

impl Serving {
    /// Counts the request as ended `how` (its stream ending as `end`)
    /// `elapsed` after it arrived, unless the caller cancelled it.
    pub(crate) fn end(self, how: Classified, end: End, elapsed: Duration) {
        if end == End::Cancelled && how.class != 4 {
            return;
        }
        let counters = &self.counters;
        let bucket = LatencyHistogram::bucket_of(elapsed.as_secs_f64() * 1000.0);
        counters.latency[bucket].fetch_add(1, Ordering::Relaxed);
        if how.failure {
            counters.failures.fetch_add(1, Ordering::Release);
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Tally {
    /// What was counted after `baseline` (an earlier tally). Failures are
    /// capped at the requests: one counted between the two reads of a
    /// tally is left for the next report rather than reported without its
    /// request.
    pub(crate) fn since(&self, baseline: &Tally) -> Delta {
        let latency: [u64; LATENCY_BUCKETS] =
            std::array::from_fn(|i| self.latency[i].wrapping_sub(baseline.latency[i]));
        let requests = latency.iter().fold(0u64, |a, n| a.wrapping_add(*n));
        Delta {
            requests,
            failures: self.failures.wrapping_sub(baseline.failures).min(requests),
            latency,
        }
    }

    /// The baseline after `delta` was accepted (what was left out of it
    /// stays to be reported).
    pub(crate) fn advance(&mut self, delta: &Delta) {
        for (count, n) in self.latency.iter_mut().zip(delta.latency) {
            *count = count.wrapping_add(n);
        }
        self.failures = self.failures.wrapping_add(delta.failures);
    }
}

impl Delta {
    /// The histogram as `ReportRequest.latency_counts` carries it: empty
    /// when nothing ended.
    pub(crate) fn latency_counts(&self) -> Vec<u64> {
        if self.requests == 0 {
            Vec::new()
        } else {
            self.latency.to_vec()
        }
    }
}

#[cfg(test)]
mod tests {
    use bulkhead_proto::stats::LATENCY_BOUNDS_MS;
    use http::StatusCode;

    use super::*;

    fn http(status: u16, end: End) -> Classified {
        Classified::new(StatusCode::from_u16(status).unwrap(), None, end)
    }

    fn grpc(code: Option<u32>, end: End) -> Classified {
        Classified::new(StatusCode::OK, Some(code), end)
    }

    fn serve(counters: &Arc<VersionCounters>, how: Classified, end: End, ms: u64) {
        counters.start().end(how, end, Duration::from_millis(ms));
    }

    #[test]
    fn counts_requests_failures_and_latency() {
        let counters = VersionCounters::new();
        serve(&counters, http(200, End::Complete), End::Complete, 8);
        serve(&counters, http(404, End::Complete), End::Complete, 8);
        serve(&counters, http(503, End::Complete), End::Complete, 220);
        serve(&counters, http(200, End::Broken), End::Broken, 1);
        serve(&counters, grpc(Some(0), End::Complete), End::Complete, 1);
        serve(&counters, grpc(Some(5), End::Complete), End::Complete, 1);
        serve(
            &counters,
            grpc(Some(0), End::Deadline),
            End::Deadline,
            20_000,
        );
        let delta = counters.tally().since(&Tally::default());
        assert_eq!(delta.requests, 7);
        // 503, broken, NOT_FOUND, DEADLINE_EXCEEDED; a 404 is the caller's.
        assert_eq!(delta.failures, 4);
        let histogram = LatencyHistogram::from_counts(&delta.latency_counts()).unwrap();
        assert_eq!(histogram.total(), 7);
        assert_eq!(histogram.counts()[LatencyHistogram::bucket_of(8.0)], 2);
        assert_eq!(histogram.counts()[LatencyHistogram::bucket_of(1.0)], 3);
        assert_eq!(histogram.counts()[LATENCY_BUCKETS - 1], 1, "above 10 s");
        assert_eq!(counters.in_flight(), 0);
    }

    #[test]
    fn latency_buckets_are_inclusive_upper_bounds() {
        let counters = VersionCounters::new();
        for bound in LATENCY_BOUNDS_MS {
            let at = Duration::from_secs_f64(bound / 1000.0);
            counters
                .start()
                .end(http(200, End::Complete), End::Complete, at);
        }
        let delta = counters.tally().since(&Tally::default());
        let (last, below) = delta.latency.split_last().unwrap();
        assert!(below.iter().all(|n| *n == 1), "{:?}", delta.latency);
        assert_eq!(*last, 0);
    }

    #[test]
    fn a_cancelled_request_is_not_the_versions_doing() {
        let counters = VersionCounters::new();
        serve(&counters, http(200, End::Cancelled), End::Cancelled, 5);
        serve(&counters, grpc(None, End::Cancelled), End::Cancelled, 5);
        assert_eq!(counters.tally(), Tally::default());
        // A 5xx head had said it before the caller left.
        serve(&counters, http(502, End::Cancelled), End::Cancelled, 5);
        let delta = counters.tally().since(&Tally::default());
        assert_eq!((delta.requests, delta.failures), (1, 1));
    }

    #[test]
    fn in_flight_until_the_guard_goes_either_way() {
        let counters = VersionCounters::new();
        let ended = counters.start();
        let dropped = counters.start();
        assert_eq!(counters.in_flight(), 2);
        ended.end(http(200, End::Complete), End::Complete, Duration::ZERO);
        assert_eq!(counters.in_flight(), 1);
        drop(dropped);
        assert_eq!(counters.in_flight(), 0);
        let counted = counters.tally().since(&Tally::default()).requests;
        assert_eq!(counted, 1, "a dropped guard is not counted");
    }

    #[tokio::test]
    async fn a_response_stream_counts_when_it_ends_and_leaves_flight_however_it_goes() {
        use http_body_util::BodyExt;

        use crate::telemetry::{Observed, RequestMetrics};

        let counters = VersionCounters::new();
        let metrics = Arc::new(RequestMetrics::new("inbound", "cart", "v1", "web"));
        let respond = |status: u16, body: &'static str| {
            let mut resp = http::Response::new(crate::http::full(body));
            *resp.status_mut() = StatusCode::from_u16(status).unwrap();
            let serving = Some(counters.start());
            Observed::wrap(resp, Instant::now(), metrics.clone(), None, None, serving)
        };
        let read = respond(503, "app down");
        let unread = respond(200, "the caller left first");
        assert_eq!(counters.in_flight(), 2);
        read.into_body().collect().await.unwrap();
        drop(unread);
        assert_eq!(counters.in_flight(), 0);
        let delta = counters.tally().since(&Tally::default());
        assert_eq!((delta.requests, delta.failures), (1, 1));
        // An empty body hyper drops unpolled is a complete response.
        drop(respond(204, ""));
        let delta = counters.tally().since(&Tally::default());
        assert_eq!((delta.requests, delta.failures), (2, 1));
    }

    #[test]
    fn deltas_keep_what_was_not_accepted() {
        let counters = VersionCounters::new();
        let mut baseline = Tally::default();
        serve(&counters, http(500, End::Complete), End::Complete, 3);
        // Report 1 fails: the baseline stays.
        let first = counters.tally().since(&baseline);
        assert_eq!((first.requests, first.failures), (1, 1));
        serve(&counters, http(200, End::Complete), End::Complete, 3);
        // Report 2 holds both, and is accepted.
        let second = counters.tally().since(&baseline);
        assert_eq!((second.requests, second.failures), (2, 1));
        baseline.advance(&second);
        assert_eq!(baseline, counters.tally());
        // Nothing since: a report of zeros, with no histogram.
        let idle = counters.tally().since(&baseline);
        assert_eq!((idle.requests, idle.failures), (0, 0));
        assert!(idle.latency_counts().is_empty());
    }

    #[test]
    fn failures_never_outrun_requests_in_a_delta() {
        // A failure counted after the latency buckets were read.
        let mut tally = Tally::default();
        tally.latency[0] = 1;
        tally.failures = 2;
        let mut baseline = Tally::default();
        let delta = tally.since(&baseline);
        assert_eq!((delta.requests, delta.failures), (1, 1));
        baseline.advance(&delta);
        // The failure left out comes with the next report.
        tally.latency[0] = 2;
        let next = tally.since(&baseline);
        assert_eq!((next.requests, next.failures), (1, 1));
    }
}
