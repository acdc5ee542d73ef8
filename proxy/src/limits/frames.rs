//! HTTP/2 control-frame floods, seen where hyper cannot show them: between
//! the socket and hyper, [`FrameMeter`] follows the frame boundaries of
//! what a client sends (nothing is copied or changed) and reports a flood
//! when the client sends SETTINGS or PING frames (ACKs aside) faster than
//! any client needs: more than [`MAX_CONTROL_FRAMES`] in a [`WINDOW`]. The
//! connection's loop then sends GOAWAY ([`ConnStreams::flood`]); a client
//! that goes on to twice the limit is cut off there and then. Each of those costs the server an answer, and h2 answers
//! every one; a few per connection is what clients send (a SETTINGS at the
//! start, a keep-alive PING now and then, gRPC's bandwidth probes).
//!
//! On a connection whose protocol is not known yet (the app-facing
//! listener speaks HTTP/1.1 and HTTP/2), the meter looks for the HTTP/2
//! client preface first and steps aside for anything else.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use std::sync::Arc;

use super::{ConnStreams, Limit};

/// Control frames a client may send in one [`WINDOW`].
pub(crate) const MAX_CONTROL_FRAMES: u32 = 1_000;
pub(crate) const WINDOW: Duration = Duration::from_secs(10);

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const ACK: u8 = 0x1;

/// Where the reader is in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// Matching the client preface: this many bytes of it seen.
    Preface(usize),
    /// In a frame header: this many of its 9 bytes seen.
    Header(usize),
    /// In a frame's payload: this many bytes left.
    Payload(usize),
    /// Not HTTP/2: bytes pass unexamined.
    Off,
}

/// An HTTP/2 server connection's transport, metered for control floods.
pub(crate) struct FrameMeter<T> {
    io: T,
    at: Position,
    header: [u8; 9],
    streams: Arc<ConnStreams>,
    window_start: Option<Instant>,
    control: u32,
}

impl<T> FrameMeter<T> {
    /// Meters `io` from its first byte: from the HTTP/2 client preface on,
    /// or not at all if it opens with anything else (HTTP/1.1).
    pub(crate) fn new(io: T, streams: Arc<ConnStreams>) -> Self {
        Self {
            io,
            at: Position::Preface(0),
            header: [0; 9],
            streams,
            window_start: None,
            control: 0,
        }
    }

    /// Follows `bytes`, just read; an error when they complete a flood.
    fn follow(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match self.at {
                Position::Off => return Ok(()),
                Position::Preface(seen) => {
                    let want = &PREFACE[seen..];
                    let n = want.len().min(bytes.len());
                    if bytes[..n] != want[..n] {
                        self.at = Position::Off;
                        return Ok(());
                    }
                    bytes = &bytes[n..];
                    self.at = if seen + n == PREFACE.len() {
                        self.streams.preface_seen();
                        Position::Header(0)
                    } else {
                        Position::Preface(seen + n)
                    };
                }
                Position::Header(seen) => {
                    let n = (9 - seen).min(bytes.len());
                    self.header[seen..seen + n].copy_from_slice(&bytes[..n]);
                    bytes = &bytes[n..];
                    if seen + n < 9 {
                        self.at = Position::Header(seen + n);
                        continue;
                    }
                    let [l0, l1, l2, kind, flags, ..] = self.header;
                    let len = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
                    if matches!(kind, SETTINGS | PING) && flags & ACK == 0 {
                        self.control_frame()?;
                    }
                    self.at = if len == 0 {
                        Position::Header(0)
                    } else {
                        Position::Payload(len)
                    };
                }
                Position::Payload(left) => {
                    let n = left.min(bytes.len());
                    bytes = &bytes[n..];
                    self.at = if n == left {
                        Position::Header(0)
                    } else {
                        Position::Payload(left - n)
                    };
                }
            }
        }
        Ok(())
    }

    #[cold]
    fn control_frame(&mut self) -> io::Result<()> {
        let now = Instant::now();
        match self.window_start {
            Some(start) if now.duration_since(start) < WINDOW => {}
            _ => {
                self.window_start = Some(now);
                self.control = 0;
            }
        }
        self.control += 1;
        if self.control == MAX_CONTROL_FRAMES + 1 {
            tracing::warn!("the client floods SETTINGS or PING frames: closing its connection");
            self.streams.flood(Limit::ControlFrames);
        } else if self.control > 2 * MAX_CONTROL_FRAMES {
            self.at = Position::Off;
            return Err(io::Error::other("HTTP/2 control frame flood"));
        }
        Ok(())
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FrameMeter<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        if this.at != Position::Off {
            this.follow(&buf.filled()[before..])?;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FrameMeter<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = len.to_be_bytes()[1..].to_vec();
        out.extend_from_slice(&[kind, flags, 0, 0, 0, 0]);
        out.extend_from_slice(payload);
        out
    }

    fn meter() -> FrameMeter<()> {
        FrameMeter::new((), Arc::new(ConnStreams::new("inbound")))
    }

    fn reported(meter: &FrameMeter<()>) -> bool {
        meter.streams.flood_found() == Some(Limit::ControlFrames)
    }

    /// Feeds `bytes` to a meter in pieces of `chunk`: whether it reported
    /// a flood, and whether it cut the bytes off.
    fn flooded(bytes: &[u8], chunk: usize) -> (bool, bool) {
        let mut meter = meter();
        let cut = bytes.chunks(chunk).any(|c| meter.follow(c).is_err());
        (reported(&meter), cut)
    }

    fn stream(frames: impl IntoIterator<Item = Vec<u8>>) -> Vec<u8> {
        let mut out = PREFACE.to_vec();
        out.extend(frames.into_iter().flatten());
        out
    }

    #[tokio::test(start_paused = true)]
    async fn control_frames_past_the_limit_are_reported_then_cut_however_they_arrive() {
        let pings = |n: u32| stream((0..n).map(|i| frame(PING, 0, &u64::from(i).to_be_bytes())));
        for chunk in [1, 7, 9, 17, 4096] {
            let over = pings(MAX_CONTROL_FRAMES + 1);
            assert_eq!(flooded(&over, chunk), (true, false), "chunks of {chunk}");
            let twice = pings(2 * MAX_CONTROL_FRAMES + 1);
            assert_eq!(flooded(&twice, chunk), (true, true), "chunks of {chunk}");
        }
        let settings = stream((0..=MAX_CONTROL_FRAMES).map(|_| frame(SETTINGS, 0, &[0; 6])));
        assert_eq!(flooded(&settings, 100), (true, false));
    }

    #[tokio::test(start_paused = true)]
    async fn acks_data_and_a_few_pings_are_not_a_flood() {
        let mut frames = vec![frame(SETTINGS, 0, &[0; 12])];
        for i in 0..5_000u64 {
            frames.push(frame(SETTINGS, ACK, &[]));
            frames.push(frame(PING, ACK, &i.to_be_bytes()));
            // A DATA frame whose payload looks like PING headers.
            frames.push(frame(0x0, 0, &frame(PING, 0, &[0; 8])));
        }
        frames.extend((0..MAX_CONTROL_FRAMES - 1).map(|_| frame(PING, 0, &[0; 8])));
        assert_eq!(flooded(&stream(frames), 333), (false, false));
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_moves() {
        let mut meter = meter();
        meter.follow(PREFACE).unwrap();
        assert!(meter.streams.speaks_http2());
        for _ in 0..3 {
            for _ in 0..MAX_CONTROL_FRAMES {
                meter.follow(&frame(PING, 0, &[0; 8])).unwrap();
            }
            tokio::time::advance(WINDOW).await;
        }
        assert!(!reported(&meter));
    }

    #[test]
    fn http1_passes_unexamined() {
        let mut meter = meter();
        let request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        meter.follow(request).unwrap();
        assert_eq!(meter.at, Position::Off);
        assert!(!meter.streams.speaks_http2());
        let pings = stream((0..=MAX_CONTROL_FRAMES).map(|_| frame(PING, 0, &[0; 8])));
        // Even bytes that would be a flood over HTTP/2.
        assert!(meter.follow(&pings).is_ok());
        assert!(!reported(&meter));
    }
}
