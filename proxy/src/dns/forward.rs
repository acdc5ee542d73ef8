//! Forwarding names outside the mesh to upstream resolvers.
//!
//! The client's query goes out byte for byte (its flags, EDNS options and
//! payload size intact) under a fresh random ID from a fresh socket, and the
//! upstream's response comes back byte for byte with the client's ID
//! restored, so its rcode, flags and every section reach the app unchanged.
//! A response counts only if it carries our ID and echoes the question;
//! anything else on the socket is ignored (spoofing, stale answers).
//!
//! Servers are tried in order within one overall deadline shared between
//! them; a SERVFAIL or REFUSED moves on to the next server, as the system
//! resolver would. The transport follows the client's: a UDP answer with
//! the TC bit is relayed as is, and the client retries over TCP.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::answer::HEADER_LEN;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Transport {
    Udp,
    Tcp,
}

/// The upstream resolvers and the bound on forwards in flight.
pub(super) struct Upstreams {
    servers: Vec<SocketAddr>,
    in_flight: Arc<Semaphore>,
    timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum ForwardError {
    #[error("no upstream resolver is configured")]
    NoUpstream,
    #[error("upstream {0} did not answer in time")]
    Timeout(SocketAddr),
    #[error("upstream {server}: {source}")]
    Io {
        server: SocketAddr,
        source: io::Error,
    },
    #[error("upstream {0} sent a response that does not match the query")]
    Mismatch(SocketAddr),
}

/// A relayed upstream response.
pub(super) struct Relayed {
    pub(super) packet: Vec<u8>,
    pub(super) rcode: ResponseCode,
}

impl Upstreams {
    pub(super) fn new(servers: Vec<SocketAddr>, max_in_flight: usize, timeout: Duration) -> Self {
        Self {
            servers,
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            timeout,
        }
    }

    pub(super) fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// A slot for one forward, or `None` when the bound is reached (the
    /// caller answers SERVFAIL at once rather than queueing).
    pub(super) fn try_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.in_flight.clone().try_acquire_owned().ok()
    }

    /// Sends `raw` (the client's packet, parsed as `query`) upstream and
    /// returns the response to relay.
    pub(super) async fn exchange(
        &self,
        query: &Message,
        raw: &[u8],
        transport: Transport,
    ) -> Result<Relayed, ForwardError> {
        let deadline = Instant::now() + self.timeout;
        let mut answer = None;
        let mut error = ForwardError::NoUpstream;
        for (tried, &server) in self.servers.iter().enumerate() {
            let left = u32::try_from(self.servers.len() - tried).unwrap_or(u32::MAX);
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let attempt = exchange_one(server, query, raw, transport);
            let result = match tokio::time::timeout(remaining / left, attempt).await {
                Ok(result) => result,
                Err(_) => Err(ForwardError::Timeout(server)),
            };
            match result {
                Ok(relayed)
                    if matches!(
                        relayed.rcode,
                        ResponseCode::ServFail | ResponseCode::Refused
                    ) =>
                {
                    answer = Some(relayed);
                }
                Ok(relayed) => return Ok(relayed),
                Err(e) => error = e,
            }
        }
        answer.ok_or(error)
    }
}

async fn exchange_one(
    server: SocketAddr,
    query: &Message,
    raw: &[u8],
    transport: Transport,
) -> Result<Relayed, ForwardError> {
    let io = |source| ForwardError::Io { server, source };
    let id: u16 = rand::random();
    let mut outgoing = raw.to_vec();
    outgoing[..2].copy_from_slice(&id.to_be_bytes());
    let mut response = match transport {
        Transport::Udp => {
            let local: SocketAddr = if server.is_ipv4() {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let socket = UdpSocket::bind(local).await.map_err(io)?;
            // Connected: the kernel drops datagrams from any other address.
            socket.connect(server).await.map_err(io)?;
            socket.send(&outgoing).await.map_err(io)?;
            // One byte more than the client accepts, to tell an oversized
            // datagram from one that fits exactly.
            let mut buf = vec![0; usize::from(query.max_payload()) + 1];
            loop {
                let n = socket.recv(&mut buf).await.map_err(io)?;
                if n < buf.len() && answers(query, id, &buf[..n]).is_some() {
                    buf.truncate(n);
                    break buf;
                }
            }
        }
        Transport::Tcp => {
            let mut stream = TcpStream::connect(server).await.map_err(io)?;
            let len = u16::try_from(outgoing.len()).map_err(|_| ForwardError::Mismatch(server))?;
            let mut frame = Vec::with_capacity(outgoing.len() + 2);
            frame.extend_from_slice(&len.to_be_bytes());
            frame.extend_from_slice(&outgoing);
            stream.write_all(&frame).await.map_err(io)?;
            let len = stream.read_u16().await.map_err(io)?;
            let mut buf = vec![0; usize::from(len)];
            stream.read_exact(&mut buf).await.map_err(io)?;
            buf
        }
    };
    let rcode = answers(query, id, &response).ok_or(ForwardError::Mismatch(server))?;
    response[..2].copy_from_slice(&raw[..2]);
    Ok(Relayed {
        packet: response,
        rcode,
    })
}

/// The response's rcode if `packet` answers `query` sent under `id`.
pub(crate) fn answers(query: &Message, id: u16, packet: &[u8]) -> Option<ResponseCode> {
    if packet.len() < HEADER_LEN || packet[..2] != id.to_be_bytes() {
        return None;
    }
    let response = Message::from_vec(packet).ok()?;
    (response.message_type == MessageType::Response && response.queries == query.queries)
        .then_some(response.response_code)
}
