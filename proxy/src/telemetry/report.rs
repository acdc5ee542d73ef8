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

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulkhead_proto::stats::{LATENCY_BUCKETS, LatencyHistogram};
use tokio::time::Instant;

use super::{Classified, End};

/// Most callers counted apart; later ones count in the version's totals
/// only (a bounded map, whatever identities connect).
pub(crate) const MAX_CALLERS: usize = 256;

/// Requests ended (per latency bucket), failures and mesh errors: the
/// version's totals, and each caller's part.
pub(crate) struct Counts {
    latency: [AtomicU64; LATENCY_BUCKETS],
    failures: AtomicU64,
    mesh_errors: AtomicU64,
}

/// The inbound aggregates of this sidecar's version, shared by every
/// inbound connection.
pub(crate) struct VersionCounters {
    total: Counts,
    in_flight: AtomicU64,
    /// By caller identity: looked up once per connection, never per
    /// request.
    callers: Mutex<HashMap<Arc<str>, Arc<Counts>>>,
    /// When counting started: what the first report covers.
    since: Instant,
}

/// One inbound request being served: counted in flight until dropped;
/// [`Serving::end`] also counts how it ended.
pub(crate) struct Serving {
    counters: Arc<VersionCounters>,
    caller: Option<Arc<Counts>>,
    /// The mesh answered it itself (`x-bulkhead-error`), not the app.
    mesh_error: bool,
}

/// One [`Counts`] at one moment (cumulative since counting started).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct CountsTally {
    latency: [u64; LATENCY_BUCKETS],
    failures: u64,
    mesh_errors: u64,
}

/// The counters at one moment: the version's totals and each caller's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    total: CountsTally,
    callers: BTreeMap<Arc<str>, CountsTally>,
}

/// What happened between two tallies: one report's figures (and, for the
/// version's totals, each caller's part that changed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Delta {
    pub(crate) requests: u64,
    pub(crate) failures: u64,
    pub(crate) mesh_errors: u64,
    /// Counts per bucket of `LATENCY_BOUNDS_MS`, then one above the last.
    pub(crate) latency: [u64; LATENCY_BUCKETS],
    pub(crate) callers: Vec<(Arc<str>, Delta)>,
}

impl Counts {
    fn new() -> Self {
        Self {
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
            failures: AtomicU64::new(0),
            mesh_errors: AtomicU64::new(0),
        }
    }

    fn add(&self, bucket: usize, failure: bool, mesh_error: bool) {
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        if mesh_error {
            self.mesh_errors.fetch_add(1, Ordering::Release);
        }
        if failure {
            self.failures.fetch_add(1, Ordering::Release);
        }
    }

    fn tally(&self) -> CountsTally {
        // Failures first, with Acquire: every failure seen has its latency
        // count seen too (see `Counts::add`), so a tally never holds more
        // failures than requests.
        let failures = self.failures.load(Ordering::Acquire);
        let mesh_errors = self.mesh_errors.load(Ordering::Acquire);
        CountsTally {
            latency: std::array::from_fn(|i| self.latency[i].load(Ordering::Relaxed)),
            failures,
            mesh_errors,
        }
    }
}

impl VersionCounters {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            total: Counts::new(),
            in_flight: AtomicU64::new(0),
            callers: Mutex::new(HashMap::new()),
            since: Instant::now(),
        })
    }

    /// The counts of one caller (its SPIFFE ID), for a connection to hold;
    /// `None` once [`MAX_CALLERS`] others are counted.
    pub(crate) fn caller(&self, id: &str) -> Option<Arc<Counts>> {
        let mut callers = self.callers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(counts) = callers.get(id) {
            return Some(counts.clone());
        }
        if callers.len() >= MAX_CALLERS {
            return None;
        }
        let counts = Arc::new(Counts::new());
        callers.insert(Arc::from(id), counts.clone());
        Some(counts)
    }

    /// Counts a request in flight from now until the guard is dropped;
    /// `caller`: the connection's [`VersionCounters::caller`].
    pub(crate) fn start(self: &Arc<Self>, caller: Option<Arc<Counts>>) -> Serving {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Serving {
            counters: Arc::clone(self),
            caller,
            mesh_error: false,
        }
    }

    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn since(&self) -> Instant {
        self.since
    }

    pub(crate) fn tally(&self) -> Tally {
        let callers: Vec<(Arc<str>, Arc<Counts>)> = self
            .callers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, counts)| (id.clone(), counts.clone()))
            .collect();
        Tally {
            total: self.total.tally(),
            callers: callers
                .into_iter()
                .map(|(id, counts)| (id, counts.tally()))
                .collect(),
        }
    }
}

impl Serving {
    /// Marks the request as answered by the mesh itself, not the app.
    pub(crate) fn mesh_error(mut self, answered_by_mesh: bool) -> Self {
        self.mesh_error = answered_by_mesh;
        self
    }

    /// Counts the request as ended `how` (its stream ending as `end`)
    /// `elapsed` after it arrived, unless the caller cancelled it.
    pub(crate) fn end(self, how: Classified, end: End, elapsed: Duration) {
        if end == End::Cancelled && how.class != 4 {
            return;
        }
        let bucket = LatencyHistogram::bucket_of(elapsed.as_secs_f64() * 1000.0);
        let mesh_error = self.mesh_error && how.failure;
        self.counters.total.add(bucket, how.failure, mesh_error);
        if let Some(caller) = &self.caller {
            caller.add(bucket, how.failure, mesh_error);
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl CountsTally {
    /// What was counted after `baseline`. Failures (and mesh errors) are
    /// capped at the requests: one counted between the two reads of a
    /// tally is left for the next report rather than reported without its
    /// request.
    fn since(&self, baseline: &CountsTally) -> Delta {
        let latency: [u64; LATENCY_BUCKETS] =
            std::array::from_fn(|i| self.latency[i].wrapping_sub(baseline.latency[i]));
        let requests = latency.iter().fold(0u64, |a, n| a.wrapping_add(*n));
        let failures = self.failures.wrapping_sub(baseline.failures).min(requests);
        Delta {
            requests,
            failures,
            mesh_errors: self
                .mesh_errors
                .wrapping_sub(baseline.mesh_errors)
                .min(failures),
            latency,
            callers: Vec::new(),
        }
    }

    fn advance(&mut self, delta: &Delta) {
        for (count, n) in self.latency.iter_mut().zip(delta.latency) {
            *count = count.wrapping_add(n);
        }
        self.failures = self.failures.wrapping_add(delta.failures);
        self.mesh_errors = self.mesh_errors.wrapping_add(delta.mesh_errors);
    }
}

impl Tally {
    /// What was counted after `baseline` (an earlier tally): the totals,
    /// and the callers whose counts changed.
    pub(crate) fn since(&self, baseline: &Tally) -> Delta {
        let mut delta = self.total.since(&baseline.total);
        let none = CountsTally::default();
        for (caller, counts) in &self.callers {
            let part = counts.since(baseline.callers.get(caller).unwrap_or(&none));
            if part.requests > 0 {
                delta.callers.push((caller.clone(), part));
            }
        }
        delta
    }

    /// The baseline after `delta` was accepted (what was left out of it
    /// stays to be reported).
    pub(crate) fn advance(&mut self, delta: &Delta) {
        self.total.advance(delta);
        for (caller, part) in &delta.callers {
            self.callers
                .entry(caller.clone())
                .or_default()
                .advance(part);
        }
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

    /// The callers' parts as `ReportRequest.callers` carries them.
    pub(crate) fn caller_counts(&self) -> Vec<bulkhead_proto::pb::CallerCounts> {
        self.callers
            .iter()
            .map(|(caller, part)| bulkhead_proto::pb::CallerCounts {
                caller: caller.to_string(),
                requests: part.requests,
                failures: part.failures,
                mesh_errors: part.mesh_errors,
                latency_counts: part.latency_counts(),
            })
            .collect()
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
        counters
            .start(None)
            .end(how, end, Duration::from_millis(ms));
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
                .start(None)
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
        let ended = counters.start(None);
        let dropped = counters.start(None);
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
            let serving = Some(counters.start(None));
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
        tally.total.latency[0] = 1;
        tally.total.failures = 2;
        let mut baseline = Tally::default();
        let delta = tally.since(&baseline);
        assert_eq!((delta.requests, delta.failures), (1, 1));
        baseline.advance(&delta);
        // The failure left out comes with the next report.
        tally.total.latency[0] = 2;
        let next = tally.since(&baseline);
        assert_eq!((next.requests, next.failures), (1, 1));
    }

    #[test]
    fn callers_are_counted_apart_and_bounded() {
        let counters = VersionCounters::new();
        let web = counters.caller("spiffe://cluster.local/ns/shop/sa/web");
        let cart = counters.caller("spiffe://cluster.local/ns/shop/sa/cart");
        for _ in 0..3 {
            counters.start(web.clone()).end(
                http(200, End::Complete),
                End::Complete,
                Duration::from_millis(2),
            );
        }
        counters.start(cart.clone()).mesh_error(true).end(
            http(503, End::Complete),
            End::Complete,
            Duration::from_millis(2),
        );
        // A 200 the mesh passed on is no mesh error.
        counters.start(cart.clone()).mesh_error(true).end(
            http(200, End::Complete),
            End::Complete,
            Duration::from_millis(2),
        );
        let mut baseline = Tally::default();
        let delta = counters.tally().since(&baseline);
        assert_eq!(
            (delta.requests, delta.failures, delta.mesh_errors),
            (5, 1, 1)
        );
        let parts: Vec<(String, u64, u64)> = delta
            .caller_counts()
            .into_iter()
            .map(|c| (c.caller, c.requests, c.mesh_errors))
            .collect();
        assert_eq!(
            parts,
            [
                ("spiffe://cluster.local/ns/shop/sa/cart".to_owned(), 2, 1),
                ("spiffe://cluster.local/ns/shop/sa/web".to_owned(), 3, 0)
            ]
        );
        baseline.advance(&delta);
        // Only callers with something new are reported.
        counters.start(web.clone()).end(
            http(200, End::Complete),
            End::Complete,
            Duration::from_millis(2),
        );
        let next = counters.tally().since(&baseline);
        assert_eq!(next.callers.len(), 1);
        for i in 0..MAX_CALLERS {
            let _ = counters.caller(&format!("spiffe://cluster.local/ns/x/sa/s{i}"));
        }
        assert!(
            counters
                .caller("spiffe://cluster.local/ns/x/sa/late")
                .is_none()
        );
    }
}
