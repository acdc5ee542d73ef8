//! When an outbound request may be sent again, and how many retries a
//! service's callers may add: a budget per service, so a failing service
//! cannot multiply its own load, and lock-free, so counting a request is
//! two atomic operations on the request path.

use std::sync::atomic::{AtomicU64, Ordering};

use http::{Method, Request};
use tokio::time::Instant;

/// Attempts for one request, the first included.
pub(crate) const MAX_ATTEMPTS: usize = 3;

/// Whether a request may be sent twice: idempotent by method or by an
/// `Idempotency-Key` header, and bodiless (a body is streamed, not kept).
pub(crate) fn retryable<B: hyper::body::Body>(req: &Request<B>) -> bool {
    let idempotent = matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    ) || req.headers().contains_key("idempotency-key");
    idempotent && req.body().is_end_stream()
}

/// One-second buckets the window is counted in.
const SLOTS: usize = 10;
/// The window: retries are measured against the requests of the last 10 s.
#[cfg(test)]
const WINDOW: std::time::Duration = std::time::Duration::from_secs(SLOTS as u64);

/// Retries may add at most `ratio_percent` % to a service's request rate,
/// plus `floor` per window so that a quiet service can still retry (the
/// defaults: 20 %, and 10 a second).
pub(crate) struct RetryBudget {
    epoch: Instant,
    ratio_percent: u64,
    floor: u64,
    slots: [Slot; SLOTS],
}

#[derive(Default)]
struct Slot {
    /// Which second since `epoch` this slot counts, plus one (0: unused).
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self::new(20, 100)
    }
}

impl RetryBudget {
    pub(crate) fn new(ratio_percent: u64, floor: u64) -> Self {
        Self {
            epoch: Instant::now(),
            ratio_percent,
            floor,
            slots: Default::default(),
        }
    }

    fn tick(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs() + 1
    }

    /// The slot for `now`, cleared first if it last counted an older second.
    /// Racing clears and increments lose a count at most: a budget is an
    /// estimate, and this keeps it free of locks.
    fn slot(&self, tick: u64) -> &Slot {
        let slot = &self.slots[(tick % SLOTS as u64) as usize];
        let seen = slot.second.load(Ordering::Acquire);
        if seen != tick
            && slot
                .second
                .compare_exchange(seen, tick, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            slot.requests.store(0, Ordering::Relaxed);
            slot.retries.store(0, Ordering::Relaxed);
        }
        slot
    }

    /// Counts one request (the first attempt, not retries).
    pub(crate) fn record_request(&self, now: Instant) {
        self.slot(self.tick(now))
            .requests
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget if there is room.
    pub(crate) fn try_retry(&self, now: Instant) -> bool {
        let tick = self.tick(now);
        let (mut requests, mut retries) = (0, 0);
        for slot in &self.slots {
            let second = slot.second.load(Ordering::Acquire);
            if second != 0 && second + (SLOTS as u64) > tick && second <= tick {
                requests += slot.requests.load(Ordering::Relaxed);
                retries += slot.retries.load(Ordering::Relaxed);
            }
        }
        let allowed = requests * self.ratio_percent / 100 + self.floor;
        if retries >= allowed {
            return false;
        }
        self.slot(tick).retries.fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn request(
        method: Method,
        body: &'static str,
        key: bool,
    ) -> Request<http_body_util::Full<bytes::Bytes>> {
        let mut r = Request::builder().method(method);
        if key {
            r = r.header("idempotency-key", "k-1");
        }
        r.body(http_body_util::Full::new(bytes::Bytes::from_static(
            body.as_bytes(),
        )))
        .unwrap()
    }

    #[test]
    fn idempotent_bodiless_requests_are_retryable() {
        assert!(retryable(&request(Method::GET, "", false)));
        assert!(retryable(&request(Method::DELETE, "", false)));
        assert!(!retryable(&request(Method::POST, "", false)));
        assert!(retryable(&request(Method::POST, "", true)));
        // A body is streamed to the first endpoint and not kept.
        assert!(!retryable(&request(Method::PUT, "x", false)));
        assert!(!retryable(&request(Method::POST, "x", true)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_service_gets_the_floor_then_nothing_until_the_window_moves() {
        let budget = RetryBudget::new(20, 10);
        let now = Instant::now();
        let granted = (0..50).filter(|_| budget.try_retry(now)).count();
        assert_eq!(granted, 10);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(
            !budget.try_retry(Instant::now()),
            "the window still holds them"
        );
        tokio::time::advance(WINDOW).await;
        assert!(
            budget.try_retry(Instant::now()),
            "a new window, a new floor"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retries_scale_with_requests_over_the_window() {
        let budget = RetryBudget::new(20, 10);
        // 100 requests a second for 10 s: 1,000 in the window.
        for _ in 0..SLOTS {
            for _ in 0..100 {
                budget.record_request(Instant::now());
            }
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        // The last instant of the tenth second: all ten are in the window.
        let now = Instant::now() - Duration::from_millis(1);
        let granted = (0..1_000).filter(|_| budget.try_retry(now)).count();
        assert_eq!(granted, 1_000 * 20 / 100 + 10);
        // A second later the first second has left the window.
        let later = now + Duration::from_secs(1);
        let more = (0..1_000).filter(|_| budget.try_retry(later)).count();
        assert_eq!(
            more, 0,
            "the retries just taken still count against 900 requests"
        );
        // Old seconds fall out: after a silent window only the floor is left.
        tokio::time::advance(WINDOW * 2).await;
        let granted = (0..1_000)
            .filter(|_| budget.try_retry(Instant::now()))
            .count();
        assert_eq!(granted, 10);
    }
}
