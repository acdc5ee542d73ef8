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
//! The preface is fixed-size so the inbound side reads exactly 8 bytes
//! (bounded in time) and decides before anything reaches the app. It is the
//! only parser of peer bytes the proxy owns (HTTP/2 is hyper's); it has a
//! fuzz target in `proxy/fuzz`.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Buffer per direction for opaque TCP streams. One TLS record carries at
/// most 16 KiB of plaintext: with tokio's default 8 KiB every record was
/// half full, doubling reads, records and writes per byte (bench/README.md).
pub const COPY_BUFFER: usize = 16 * 1024;

/// Copies both directions of an opaque TCP stream until both ends close
/// (each shutdown is passed on); returns the bytes copied each way.
pub async fn splice<A, B>(a: &mut A, b: &mut B) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    tokio::io::copy_bidirectional_with_sizes(a, b, COPY_BUFFER, COPY_BUFFER).await
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
