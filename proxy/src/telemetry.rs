//! Request metrics without per-request work: `bulkhead_requests_total` and
//! `bulkhead_request_duration_seconds` for one (direction, service, version,
//! peer) are registered once, on first use of each status class, and every
//! later request records through the handles.
//!
//! `metrics::counter!` with label values looks its series up in the
//! recorder's registry on every call, and its `String` labels are built
//! per call; on the request path that was ~4 % of the sidecar's CPU
//! (bench/README.md). The holders of a [`RequestMetrics`] live as long as
//! the labels stay true: an inbound HTTP/2 connection (one peer), a
//! balancer slot (one endpoint as announced).

use std::sync::OnceLock;
use std::time::Duration;

use http::StatusCode;
use metrics::{Counter, Histogram, Label};

/// The status classes, in `status_class` label order.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The request metrics of one (direction, service, version, peer).
pub(crate) struct RequestMetrics {
    labels: [Label; 4],
    by_class: [OnceLock<(Counter, Histogram)>; CLASSES.len()],
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
            by_class: Default::default(),
        }
    }

    /// Counts one request answered with `status` after `elapsed`.
    pub(crate) fn record(&self, status: StatusCode, elapsed: Duration) {
        let class = class_index(status);
        let (counter, histogram) = self.by_class[class].get_or_init(|| {
            let mut labels = self.labels.to_vec();
            labels.push(Label::from_static_parts("status_class", CLASSES[class]));
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
}
