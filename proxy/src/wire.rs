//! The sidecar-to-sidecar wire format.
//!
//! A caller's sidecar dials the callee's inbound port (4143) with TLS 1.3,
//! both sides presenting mesh certificates (ALPN `bulkhead/1`). Right after
//! the handshake the caller sends an 8-byte preface, then the payload:
//!
//! ```text
//! offset  size  field
//! 0       4     magic "BHK1"
//! 4       1     protocol: 1 = HTTP/2, 2 = opaque TCP
//! 5       1     reserved, must be 0
//! 6       2     target port, big endian: the Service's declared port the
//!               caller addressed (not the app's local port)
//! 8       ...   HTTP/2 (protocol 1): every HTTP/1.1, HTTP/2 and gRPC request
//!               between two sidecars travels as an HTTP/2 stream on pooled,
//!               multiplexed connections; opaque bytes (protocol 2)
//! ```
//!
//! An HTTP/1.1 `Upgrade` (WebSocket) travels as an HTTP/2 extended CONNECT
//! (RFC 8441; the inbound side sends `SETTINGS_ENABLE_CONNECT_PROTOCOL`) on a
//! protocol-1 connection of its own: `:protocol` is the Upgrade token,
//! `:path` the app's, the app's method in `x-bulkhead-method` when it is not
//! GET; a `200` opens the stream, which then carries the upgraded bytes in
//! DATA frames until either side ends it (`proxy/src/upgrade.rs` has the rest).
//!
//! The preface is fixed-size so the inbound side reads exactly 8 bytes
//! (bounded in time) and decides before anything reaches the app. It is the
//! only parser of peer bytes the proxy owns (HTTP/2 is hyper's); it has a
//! fuzz target in `proxy/fuzz`.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Buffer per direction for opaque TCP streams. One TLS record carries at
/// most 16 KiB of plaintext: with tokio's default 8 KiB every record was
/// half full, doubling reads, records and writes per byte (bench/README.md).
pub const COPY_BUFFER: usize = 16 * 1024;

/// Copies both directions of an opaque TCP stream until both ends close
/// (each shutdown is passed on); returns the bytes copied each way. When no
/// byte has moved either way for `idle`, both ends are dropped and the
/// result is an error of kind [`std::io::ErrorKind::TimedOut`]: a peer that
/// vanished without a FIN must not pin two sockets and buffers forever.
pub async fn splice<A, B>(a: &mut A, b: &mut B, idle: Duration) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let activity = Activity::new();
    let mut a = Tracked {
        inner: a,
        activity: &activity,
    };
    let mut b = Tracked {
        inner: b,
        activity: &activity,
    };
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, COPY_BUFFER, COPY_BUFFER);
    tokio::pin!(copy);
    loop {
        // One timer per idle period, not one per read.
        let quiet = activity.quiet_for();
        if quiet >= idle {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no data either way for {idle:?}"),
            ));
        }
        tokio::select! {
            result = &mut copy => return result,
            () = tokio::time::sleep(idle - quiet) => {}
        }
    }
}

/// When a spliced stream last moved a byte (either way). tokio's clock, so
/// tests can run it paused.
struct Activity {
    start: tokio::time::Instant,
    /// Milliseconds after `start`.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: tokio::time::Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }

    fn quiet_for(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// A stream that reports each successful read or write to an [`Activity`].
struct Tracked<'a, S: ?Sized> {
    inner: &'a mut S,
    activity: &'a Activity,
}

impl<S: AsyncRead + Unpin + ?Sized> AsyncRead for Tracked<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut *this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin + ?Sized> AsyncWrite for Tracked<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut *this.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The `result` label of `bulkhead_tcp_connections_total` for a splice.
pub fn splice_result(result: &std::io::Result<(u64, u64)>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => "idle-timeout",
        Err(_) => "error",
    }
}

/// ALPN protocol id of sidecar-to-sidecar connections.
pub const ALPN: &[u8] = b"bulkhead/1";
pub const PREFACE_LEN: usize = 8;
const MAGIC: &[u8; 4] = b"BHK1";

/// What a connection carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Payload {
    Http2,
    Tcp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Preface {
    pub payload: Payload,
    pub port: u16,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PrefaceError {
    #[error("not a Bulkhead connection (bad magic)")]
    BadMagic,
    #[error("unknown payload protocol {0}")]
    UnknownProtocol(u8),
    #[error("reserved byte is {0}, expected 0")]
    Reserved(u8),
    #[error("target port 0")]
    ZeroPort,
}

impl PrefaceError {
    /// Bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadMagic => "bad-magic",
            Self::UnknownProtocol(_) => "unknown-protocol",
            Self::Reserved(_) => "reserved",
            Self::ZeroPort => "zero-port",
        }
    }
}

impl Preface {
    pub fn encode(&self) -> [u8; PREFACE_LEN] {
        let mut out = [0u8; PREFACE_LEN];
        out[..4].copy_from_slice(MAGIC);
        out[4] = match self.payload {
            Payload::Http2 => 1,
            Payload::Tcp => 2,
        };
        out[6..8].copy_from_slice(&self.port.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8; PREFACE_LEN]) -> Result<Self, PrefaceError> {
        if &bytes[..4] != MAGIC {
            return Err(PrefaceError::BadMagic);
        }
        let payload = match bytes[4] {
            1 => Payload::Http2,
            2 => Payload::Tcp,
            other => return Err(PrefaceError::UnknownProtocol(other)),
        };
        if bytes[5] != 0 {
            return Err(PrefaceError::Reserved(bytes[5]));
        }
        let port = u16::from_be_bytes([bytes[6], bytes[7]]);
        if port == 0 {
            return Err(PrefaceError::ZeroPort);
        }
        Ok(Self { payload, port })
    }

    pub async fn write<W: AsyncWrite + Unpin>(&self, w: &mut W) -> std::io::Result<()> {
        w.write_all(&self.encode()).await
    }

    /// Reads and decodes a preface (the caller bounds it in time).
    pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<Self, ReadError> {
        let mut buf = [0u8; PREFACE_LEN];
        r.read_exact(&mut buf).await.map_err(ReadError::Io)?;
        Self::decode(&buf).map_err(ReadError::Invalid)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading the preface: {0}")]
    Io(std::io::Error),
    #[error(transparent)]
    Invalid(PrefaceError),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ends of a splice: what the app and the peer hold.
    fn spliced(
        idle: Duration,
    ) -> (
        tokio::io::DuplexStream,
        tokio::io::DuplexStream,
        tokio::task::JoinHandle<std::io::Result<(u64, u64)>>,
    ) {
        let (app, mut near) = tokio::io::duplex(1024);
        let (mut far, peer) = tokio::io::duplex(1024);
        let splice = tokio::spawn(async move { splice(&mut near, &mut far, idle).await });
        (app, peer, splice)
    }

    #[tokio::test(start_paused = true)]
    async fn a_splice_with_no_traffic_ends_after_the_idle_timeout() {
        let started = tokio::time::Instant::now();
        let (_app, _peer, splice) = spliced(Duration::from_secs(10));
        let error = splice
            .await
            .expect("task")
            .expect_err("idle splice must end");
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(splice_result(&Err(error)), "idle-timeout");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(10) && waited < Duration::from_secs(11),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_in_either_direction_keeps_a_splice_open() {
        let (mut app, mut peer, splice) = spliced(Duration::from_secs(10));
        // 60 s in all, a byte every 6 s, alternating directions.
        for round in 0..10u8 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            let (from, to) = if round % 2 == 0 {
                (&mut app, &mut peer)
            } else {
                (&mut peer, &mut app)
            };
            from.write_all(&[round]).await.expect("write");
            let mut byte = [0u8; 1];
            to.read_exact(&mut byte).await.expect("spliced byte");
            assert_eq!(byte[0], round);
        }
        drop(app);
        drop(peer);
        let copied = splice.await.expect("task").expect("clean end");
        assert_eq!(copied, (5, 5));
    }

    #[test]
    fn round_trip() {
        for payload in [Payload::Http2, Payload::Tcp] {
            for port in [1, 80, 8080, 65535] {
                let p = Preface { payload, port };
                assert_eq!(Preface::decode(&p.encode()), Ok(p));
            }
        }
    }

    #[test]
    fn refusals() {
        let good = Preface {
            payload: Payload::Tcp,
            port: 80,
        }
        .encode();
        let mut bad = good;
        bad[0] = b'X';
        assert_eq!(Preface::decode(&bad), Err(PrefaceError::BadMagic));
        let mut bad = good;
        bad[4] = 9;
        assert_eq!(Preface::decode(&bad), Err(PrefaceError::UnknownProtocol(9)));
        let mut bad = good;
        bad[5] = 1;
        assert_eq!(Preface::decode(&bad), Err(PrefaceError::Reserved(1)));
        let mut bad = good;
        bad[6] = 0;
        bad[7] = 0;
        assert_eq!(Preface::decode(&bad), Err(PrefaceError::ZeroPort));
        // An HTTP/1.1 or TLS client that reached the port by mistake.
        assert_eq!(Preface::decode(b"GET / HT"), Err(PrefaceError::BadMagic));
    }

    #[test]
    fn every_input_decodes_or_errors_without_panic() {
        // Exhaustive over the bytes that carry meaning, arbitrary elsewhere.
        for proto in 0..=255u8 {
            for reserved in [0u8, 1, 255] {
                let bytes = [b'B', b'H', b'K', b'1', proto, reserved, 0x1f, 0x90];
                if let Ok(p) = Preface::decode(&bytes) {
                    assert_eq!(p.encode(), bytes);
                }
            }
        }
    }
}
