//! What one HTTP connection's requests tell the loop that serves it: how
//! many started, how many the client gave up on before they were answered
//! (a reset stream, for HTTP/2), how many are being answered now. From
//! these the loop closes a connection that resets streams as a flood does
//! (or that [`super::FrameMeter`] found flooding control frames:
//! [`ConnStreams::flooding`]), and one idle too long.
//!
//! Per request this is a few relaxed atomic operations on counters of the
//! connection's own (no lock, nothing shared with other connections); the
//! clock is read only when a request is abandoned.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::Limit;

/// Resets are judged over windows this long.
const WINDOW: Duration = Duration::from_secs(10);
/// Fewer resets than this in a window are never a flood: a client may
/// cancel what it no longer needs (deadlines, navigation).
const MIN_RESETS: u32 = 100;

#[derive(Debug)]
pub(crate) struct ConnStreams {
    /// The listener's name, for the metrics.
    listener: &'static str,
    epoch: Instant,
    /// Requests started, ever.
    started: AtomicU64,
    in_flight: AtomicU32,
    /// The window: when it began (ms since `epoch`), `started` then, and
    /// the resets since.
    window_ms: AtomicU64,
    window_base: AtomicU64,
    resets: AtomicU32,
    /// The flood found, as [`Limit::code`] (0: none).
    flooding: AtomicU8,
    /// Whether the client has sent the HTTP/2 connection preface.
    http2: AtomicBool,
    flood: Notify,
}

impl ConnStreams {
    pub(crate) fn new(listener: &'static str) -> Self {
        Self {
            listener,
            epoch: Instant::now(),
            started: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            window_ms: AtomicU64::new(0),
            window_base: AtomicU64::new(0),
            resets: AtomicU32::new(0),
            flooding: AtomicU8::new(0),
            http2: AtomicBool::new(false),
            flood: Notify::new(),
        }
    }

    /// A request begins; the guard says how it ended.
    pub(crate) fn start(self: &Arc<Self>) -> StreamGuard {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        StreamGuard {
            conn: Arc::clone(self),
            answered: false,
        }
    }

    /// The client sent the HTTP/2 connection preface
    /// ([`super::FrameMeter`] saw it).
    pub(crate) fn preface_seen(&self) {
        self.http2.store(true, Ordering::Relaxed);
    }

    /// Whether the client speaks HTTP/2 (its preface has arrived).
    pub(crate) fn speaks_http2(&self) -> bool {
        self.http2.load(Ordering::Relaxed)
    }

    /// Requests started so far.
    pub(crate) fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Resolves once the client floods, with the limit it broke:
    /// [`Limit::Resets`] when it reset at least [`MIN_RESETS`] streams in a
    /// window and more than half of the requests it started in it, or what
    /// [`ConnStreams::flood`] was told.
    pub(crate) async fn flooding(&self) -> Limit {
        loop {
            let notified = self.flood.notified();
            if let Some(limit) = Limit::from_code(self.flooding.load(Ordering::Relaxed)) {
                return limit;
            }
            notified.await;
        }
    }

    #[cfg(test)]
    pub(crate) fn flood_found(&self) -> Option<Limit> {
        Limit::from_code(self.flooding.load(Ordering::Relaxed))
    }

    /// The client floods: counted, and its serving loop is to close the
    /// connection (the first flood found is the one reported).
    #[cold]
    pub(crate) fn flood(&self, limit: Limit) {
        let first = self
            .flooding
            .compare_exchange(0, limit.code(), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
        if first {
            super::exceeded(self.listener, limit);
            self.flood.notify_waiters();
        }
    }

    #[cold]
    fn abandoned(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        let started = self.started.load(Ordering::Relaxed);
        if now.saturating_sub(self.window_ms.load(Ordering::Relaxed)) > WINDOW.as_millis() as u64 {
            self.window_ms.store(now, Ordering::Relaxed);
            // This request started in the old window: count it in the new.
            self.window_base
                .store(started.saturating_sub(1), Ordering::Relaxed);
            self.resets.store(0, Ordering::Relaxed);
        }
        let resets = self.resets.fetch_add(1, Ordering::Relaxed) + 1;
        let requests = started.saturating_sub(self.window_base.load(Ordering::Relaxed));
        if resets >= MIN_RESETS && u64::from(resets) * 2 > requests {
            self.flood(Limit::Resets);
        }
    }
}

/// One request's presence on its connection: answered, or (dropped before
/// that) abandoned by its client.
pub(crate) struct StreamGuard {
    conn: Arc<ConnStreams>,
    answered: bool,
}

impl StreamGuard {
    /// The request has its answer (the response head): whatever happens
    /// to the body after is not a reset of the request.
    pub(crate) fn answered(mut self) {
        self.answered = true;
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.conn.in_flight.fetch_sub(1, Ordering::Relaxed);
        if !self.answered {
            self.conn.abandoned();
        }
    }
}

/// When a connection that has sat idle for `idle` is to close: its serving
/// loop calls [`IdleCheck::tick`] every half of `idle`, and closes it when
/// no request started in the last half and none is in flight (so an idle
/// connection closes between half and all of `idle` after its last request
/// ended).
pub(crate) struct IdleCheck {
    interval: tokio::time::Interval,
    seen: u64,
}

impl IdleCheck {
    pub(crate) fn new(idle: Duration) -> Self {
        let half = (idle / 2).max(Duration::from_millis(10));
        let mut interval = tokio::time::interval_at(Instant::now() + half, half);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            interval,
            seen: u64::MAX,
        }
    }

    /// Resolves when the connection has been idle long enough.
    pub(crate) async fn idle(&mut self, conn: &ConnStreams) {
        loop {
            self.interval.tick().await;
            let started = conn.started();
            if started == self.seen && conn.in_flight() == 0 {
                return;
            }
            self.seen = started;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_reset_flood_is_noticed_and_ordinary_cancels_are_not() {
        let conn = Arc::new(ConnStreams::new("inbound"));
        // Many answered requests and a few cancels: not a flood.
        for i in 0..1_000 {
            let guard = conn.start();
            if i % 5 != 0 {
                guard.answered();
            }
        }
        assert_eq!(conn.flooding.load(Ordering::Relaxed), 0, "20 % cancelled");
        // In a new window, requests abandoned one after another are.
        tokio::time::advance(WINDOW * 2).await;
        let waiting = tokio::spawn({
            let conn = conn.clone();
            async move { conn.flooding().await }
        });
        for _ in 0..MIN_RESETS {
            drop(conn.start());
        }
        let limit = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("the flood is reported")
            .unwrap();
        assert_eq!(limit, Limit::Resets);
        assert_eq!(conn.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn fewer_resets_than_the_floor_are_never_a_flood() {
        let conn = Arc::new(ConnStreams::new("inbound"));
        for _ in 0..MIN_RESETS - 1 {
            drop(conn.start());
        }
        assert_eq!(conn.flooding.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_means_no_new_request_and_none_in_flight() {
        let conn = Arc::new(ConnStreams::new("inbound"));
        let idle = Duration::from_secs(10);
        let mut check = IdleCheck::new(idle);
        let held = conn.start();
        // A request in flight keeps the connection open however long.
        let started = Instant::now();
        let waited = tokio::time::timeout(Duration::from_secs(60), check.idle(&conn)).await;
        assert!(waited.is_err());
        held.answered();
        check.idle(&conn).await;
        let after = started.elapsed() - Duration::from_secs(60);
        assert!(after <= idle, "closed {after:?} after the last request");
    }
}
