//! What every listener bounds, before authentication and after: how many
//! connections it holds and how many TLS handshakes are under way
//! ([`crate::accept`], [`crate::inbound`]), how long a request head may
//! take and how big it may be ([`head`]), how many streams an HTTP/2
//! connection may open, how fast it may reset them and how long it may
//! sit idle ([`streams`]), how many control frames it may send
//! ([`frames`]), and how many requests may wait for the app
//! ([`Pending`]). Past a limit the sidecar refuses at once (a closed
//! connection, a 431, a 503 marked `overloaded`) rather than queue, and
//! counts it: `bulkhead_limit_exceeded_total{listener, limit}`.

mod frames;
mod head;
mod streams;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub(crate) use self::frames::FrameMeter;
pub(crate) use self::head::Head;
pub(crate) use self::streams::{ConnStreams, IdleCheck};

/// HTTP/2 keep-alive: a PING after `--http2-keepalive` without a frame
/// from the peer, and the connection closed if it is not answered in this
/// long.
pub(crate) const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP/2 flow control where one connection carries many parties' streams
/// (the pooled one between sidecars, the one to a gRPC app): each stream
/// may have this much sent and not yet read...
pub(crate) const STREAM_WINDOW: u32 = 256 * 1024;
/// What an HTTP/2 stream may hold ready to send beyond what its peer's
/// window takes (hyper's default is 400 KB a stream): a peer that grants no
/// window leaves this much waiting per stream, no more.
pub(crate) const SEND_BUFFER: usize = 64 * 1024;

/// The limits, as configured (`--max-connections` and the rest).
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    /// Connections each inbound, outbound or capture listener holds.
    pub(crate) max_connections: usize,
    /// Connections the admin port holds: probes and scrapes, each short.
    pub(crate) max_admin_connections: usize,
    /// TCP connections the DNS server holds.
    pub(crate) max_dns_connections: usize,
    /// Inbound connections that have not finished their TLS handshake.
    pub(crate) max_handshakes: usize,
    /// How long an HTTP/1 client may take to send a request head (and an
    /// idle keep-alive connection waits for the next).
    pub(crate) header_read_timeout: Duration,
    /// The largest request or response head, as HTTP/2 counts it.
    pub(crate) max_header_bytes: usize,
    /// Streams one HTTP/2 connection may have open.
    pub(crate) max_concurrent_streams: u32,
    /// Inbound requests waiting for, or in flight to, the app.
    pub(crate) max_pending_requests: usize,
    /// An HTTP/2 connection with no request this long is closed.
    pub(crate) idle_timeout: Duration,
    /// An HTTP/2 connection silent this long is sent a PING.
    pub(crate) http2_keepalive: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_admin_connections: 64,
            max_dns_connections: crate::dns::MAX_TCP_CONNECTIONS,
            max_handshakes: 256,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_concurrent_streams: 1024,
            max_pending_requests: 1024,
            idle_timeout: Duration::from_secs(300),
            http2_keepalive: Duration::from_secs(30),
        }
    }
}

impl Limits {
    /// ...and the connection as much as all the streams it may carry
    /// together: a stream whose reader stalls (a client that grants no
    /// window, an app that reads no body) holds its own window, never the
    /// connection's, which the other streams need.
    /// The HTTP/1.1 and HTTP/2 server for clients that are not sidecars
    /// (an app on its outbound listeners, the outside on a gateway's),
    /// held to these limits: head size and time, streams, windows.
    pub(crate) fn client_facing_server(
        &self,
    ) -> hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor> {
        use hyper_util::rt::{TokioExecutor, TokioTimer};
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            // hyper answers 431 itself (unmarked) to a head that outgrows its
            // read buffer; up to twice the limit, heads reach the outbound's
            // check, which counts them as HTTP/2 will and answers a marked 431.
            .max_buf_size((2 * self.max_header_bytes).max(8192));
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(self.http2_keepalive)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_header_list_size(u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX))
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(self.connection_window())
            .max_send_buf_size(SEND_BUFFER);
        builder
    }

    pub(crate) fn connection_window(&self) -> u32 {
        let all = u64::from(STREAM_WINDOW) * u64::from(self.max_concurrent_streams);
        all.clamp(1 << 20, (1 << 31) - 1) as u32
    }
}

/// Which limit acted, for the `limit` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Limit {
    /// `--max-connections` (`--max-admin-connections`,
    /// `--max-dns-connections`): a new connection closed at once.
    Connections,
    /// `--max-handshakes`: a new inbound connection closed at once.
    Handshakes,
    /// `--header-read-timeout`: no request head in time.
    HeaderReadTimeout,
    /// `--max-header-bytes`: a head answered 431 (or, from the app, 502).
    HeaderSize,
    /// `--idle-timeout`: an idle HTTP/2 connection closed.
    IdleTimeout,
    /// `--max-pending-requests`: a request answered 503 `overloaded`.
    PendingRequests,
    /// A client resetting streams as a flood does: its connection closed.
    Resets,
    /// A client flooding SETTINGS or PING frames: its connection closed.
    ControlFrames,
}

impl Limit {
    const ALL: [Self; 8] = [
        Self::Connections,
        Self::Handshakes,
        Self::HeaderReadTimeout,
        Self::HeaderSize,
        Self::IdleTimeout,
        Self::PendingRequests,
        Self::Resets,
        Self::ControlFrames,
    ];

    /// A number for the limit, never 0.
    fn code(self) -> u8 {
        Self::ALL
            .iter()
            .position(|l| *l == self)
            .map_or(0, |i| i as u8 + 1)
    }

    fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code).checked_sub(1)?).copied()
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Connections => "connections",
            Self::Handshakes => "handshakes",
            Self::HeaderReadTimeout => "header-read-timeout",
            Self::HeaderSize => "header-size",
            Self::IdleTimeout => "idle-timeout",
            Self::PendingRequests => "pending-requests",
            Self::Resets => "resets",
            Self::ControlFrames => "control-frames",
        }
    }
}

/// Counts one time `limit` acted on `listener` (`inbound`, `outbound`,
/// `capture`, `admin`, `dns`).
#[cold]
pub(crate) fn exceeded(listener: &'static str, limit: Limit) {
    metrics::counter!("bulkhead_limit_exceeded_total", "listener" => listener, "limit" => limit.as_str())
        .increment(1);
    // A connection refused before it was served is also counted by itself
    // (what an operator alerts on first).
    if matches!(limit, Limit::Connections | Limit::Handshakes) {
        metrics::counter!("bulkhead_connections_refused_total", "listener" => listener, "reason" => limit.as_str())
            .increment(1);
    }
}

/// Requests waiting for, or in flight to, the app, at most `max`: one
/// atomic counter (no lock), a slot per request.
#[derive(Debug)]
pub(crate) struct Pending {
    max: usize,
    now: AtomicUsize,
}

impl Pending {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            now: AtomicUsize::new(0),
        })
    }

    /// A slot, or `None` when all `max` are taken.
    pub(crate) fn try_slot(self: &Arc<Self>) -> Option<PendingSlot> {
        let taken = self.now.fetch_add(1, Ordering::Relaxed);
        if taken >= self.max {
            self.now.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(PendingSlot(Arc::clone(self)))
    }

    #[cfg(test)]
    pub(crate) fn taken(&self) -> usize {
        self.now.load(Ordering::Relaxed)
    }
}

/// One request's place among the pending; given back on drop.
#[derive(Debug)]
pub(crate) struct PendingSlot(Arc<Pending>);

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_have_codes_and_names_of_their_own() {
        for (i, limit) in Limit::ALL.iter().enumerate() {
            assert_eq!(Limit::from_code(limit.code()), Some(*limit));
            assert!(Limit::ALL[..i].iter().all(|l| l.as_str() != limit.as_str()));
        }
        assert_eq!(Limit::from_code(0), None);
    }

    #[test]
    fn pending_slots_are_bounded_and_given_back() {
        let pending = Pending::new(2);
        let a = pending.try_slot().expect("first");
        let b = pending.try_slot().expect("second");
        assert!(pending.try_slot().is_none(), "a third is over the limit");
        assert_eq!(pending.taken(), 2);
        drop(a);
        let c = pending.try_slot().expect("room again");
        drop((b, c));
        assert_eq!(pending.taken(), 0);
    }
}
