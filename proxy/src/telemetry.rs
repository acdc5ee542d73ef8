//! Request metrics without per-request work: `bulkhead_requests_total` and
//! `bulkhead_request_duration_seconds` for one (direction, service, version,
//! peer) are registered once, on first use of each (status class,
//! classification, gRPC status), and every later request records through
//! the handles. A request is recorded when its response stream ends
//! ([`Observed`]): a gRPC call's outcome is in its trailers, and a long
//! stream's duration is all of it.
//!
//! `metrics::counter!` with label values looks its series up in the
//! recorder's registry on every call, and its `String` labels are built
//! per call; on the request path that was ~4 % of the sidecar's CPU
//! (bench/README.md). The holders of a [`RequestMetrics`] live as long as
//! the labels stay true: an inbound HTTP/2 connection (one peer), a
//! balancer slot (one endpoint as announced).
//!
//! Inbound requests also feed [`VersionCounters`] ([`report`]): this
//! version's own aggregates, which the control plane gates rollouts on.

mod report;
mod stream;

use std::sync::OnceLock;
use std::time::Duration;

use http::StatusCode;
use metrics::{Counter, Histogram, Label};

pub(crate) use self::report::{Delta, Serving, Tally, VersionCounters};
pub(crate) use self::stream::Observed;

/// The status classes, in `status_class` label order.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// `grpc_status` label values: the codes 0-16, then anything else
/// (missing, or outside the spec) as `unknown`.
const GRPC_CODES: [&str; 18] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    "unknown",
];
/// Series slots: (class × classification) for HTTP, then (gRPC code ×
/// classification) for gRPC.
const HTTP_SLOTS: usize = CLASSES.len() * 2;
const SLOTS: usize = HTTP_SLOTS + GRPC_CODES.len() * 2;

/// How one request ended, as its metrics and the balancer see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Classified {
    class: usize,
    /// The gRPC code's index in [`GRPC_CODES`], for gRPC responses.
    grpc: Option<usize>,
    /// `classification="failure"`: 5xx, a stream that broke or ran past its
    /// deadline, or a gRPC status other than OK (as Linkerd classifies).
    pub(crate) failure: bool,
    /// Whether it says the endpoint is unwell (what feeds outlier
    /// ejection): 5xx, broken streams, and the gRPC codes a server in
    /// trouble sends (UNKNOWN, DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE,
    /// DATA_LOSS); not 4xx, nor gRPC codes about the request
    /// (INVALID_ARGUMENT, NOT_FOUND, ...).
    pub(crate) server_error: bool,
}

/// How a response stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// The stream ended as the protocol says.
    Complete,
    /// The peer (or app) broke it off with an error.
    Broken,
    /// The request's deadline (`grpc-timeout`) passed first.
    Deadline,
    /// The caller went away before the end.
    Cancelled,
}

impl Classified {
    /// `status` and, for a gRPC response, its `grpc-status` (`None`:
    /// absent), after the stream ended as `end` says.
    pub(crate) fn new(status: StatusCode, grpc: Option<Option<u32>>, end: End) -> Self {
        let class = class_index(status);
        let broken = matches!(end, End::Broken | End::Deadline);
        match grpc {
            None => {
                let server_error = class == 4 || broken;
                Self {
                    class,
                    grpc: None,
                    failure: server_error || end == End::Cancelled,
                    server_error,
                }
            }
            Some(code) => {
                let code = match end {
                    End::Deadline => Some(4),
                    End::Cancelled if code.is_none() => Some(1),
                    _ => code,
                };
                let index = code
                    .and_then(|c| usize::try_from(c).ok())
                    .filter(|c| *c <= 16)
                    .unwrap_or(GRPC_CODES.len() - 1);
                Self {
                    class,
                    grpc: Some(index),
                    failure: index != 0 || class == 4 || broken,
                    server_error: class == 4
                        || broken
                        || matches!(index, 2 | 4 | 13 | 14 | 15 | 17),
                }
            }
        }
    }

    fn slot(&self) -> usize {
        let failed = usize::from(self.failure);
        match self.grpc {
            None => self.class * 2 + failed,
            Some(code) => HTTP_SLOTS + code * 2 + failed,
        }
    }
}

/// The request metrics of one (direction, service, version, peer).
pub(crate) struct RequestMetrics {
    labels: [Label; 4],
    series: [OnceLock<(Counter, Histogram)>; SLOTS],
}

impl RequestMetrics {
    pub(crate) fn new(
        direction: &'static str,
        service: impl Into<String>,
        version: impl Into<String>,
        peer: impl Into<String>,
    ) -> Self {
        Self {
            labels: [
                Label::from_static_parts("direction", direction),
                Label::new("service", service.into()),
                Label::new("version", version.into()),
                Label::new("peer", peer.into()),
            ],
            series: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    /// Counts one request that ended as `how` after `elapsed` (from the
    /// request to the end of its response stream).
    pub(crate) fn record(&self, how: Classified, elapsed: Duration) {
        let (counter, histogram) = self.series[how.slot()].get_or_init(|| {
            let mut labels = self.labels.to_vec();
            labels.push(Label::from_static_parts("status_class", CLASSES[how.class]));
            labels.push(Label::from_static_parts(
                "classification",
                if how.failure { "failure" } else { "success" },
            ));
            if let Some(code) = how.grpc {
                labels.push(Label::from_static_parts("grpc_status", GRPC_CODES[code]));
            }
            (
                metrics::counter!("bulkhead_requests_total", labels.clone()),
                metrics::histogram!("bulkhead_request_duration_seconds", labels),
            )
        });
        counter.increment(1);
        histogram.record(elapsed.as_secs_f64());
    }
}

/// Index into [`CLASSES`]: anything not 1xx-4xx counts as 5xx.
fn class_index(status: StatusCode) -> usize {
    match status.as_u16() {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes_at_the_boundaries() {
        for (code, class) in [
            (100, "1xx"),
            (199, "1xx"),
            (200, "2xx"),
            (299, "2xx"),
            (300, "3xx"),
            (399, "3xx"),
            (400, "4xx"),
            (499, "4xx"),
            (500, "5xx"),
            (599, "5xx"),
            (999, "5xx"),
        ] {
            let status = StatusCode::from_u16(code).expect("valid status");
            assert_eq!(CLASSES[class_index(status)], class, "{code}");
        }
    }

    #[test]
    fn classification() {
        let ok = StatusCode::OK;
        let http = |status: u16, end| {
            let c = Classified::new(StatusCode::from_u16(status).unwrap(), None, end);
            (c.failure, c.server_error)
        };
        assert_eq!(http(200, End::Complete), (false, false));
        assert_eq!(http(404, End::Complete), (false, false));
        assert_eq!(http(503, End::Complete), (true, true));
        assert_eq!(http(200, End::Broken), (true, true));
        // A caller that left says nothing about the endpoint.
        assert_eq!(http(200, End::Cancelled), (true, false));
        let grpc = |code, end| {
            let c = Classified::new(ok, Some(code), end);
            (GRPC_CODES[c.grpc.unwrap()], c.failure, c.server_error)
        };
        assert_eq!(grpc(Some(0), End::Complete), ("0", false, false));
        // NOT_FOUND: a failure to the caller, no sign of a sick server.
        assert_eq!(grpc(Some(5), End::Complete), ("5", true, false));
        assert_eq!(grpc(Some(14), End::Complete), ("14", true, true));
        assert_eq!(grpc(Some(0), End::Deadline), ("4", true, true));
        assert_eq!(grpc(None, End::Complete), ("unknown", true, true));
        assert_eq!(grpc(Some(99), End::Complete), ("unknown", true, true));
        assert_eq!(grpc(None, End::Cancelled), ("1", true, false));
    }
}
