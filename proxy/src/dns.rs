//! The sidecar's DNS server (`--dns ADDR`): answers mesh names with the
//! loopback address the sidecar listens on for that service, and forwards
//! every other name to the upstream resolvers.
//!
//! Mesh names (the `zone` module has the exact forms): `<svc>.<ns>.svc.<cluster
//! domain>`, `<svc>.<ns>.svc`, `<svc>.mesh`, `<svc>.<ns>.mesh`. The sidecar
//! is authoritative for those zones: a service the mesh does not know gets
//! NXDOMAIN and the name never reaches an upstream resolver.
//!
//! One query's path: a UDP datagram or a TCP frame → `answer` decides
//! (mesh answer, error, or forward) → mesh answers go straight back; forwards
//! take one of [`MAX_FORWARDS_IN_FLIGHT`] slots and go to `forward` (UDP
//! queries each on their own task, TCP ones in turn on their connection).
//!
//! Built on hickory: `hickory-proto` parses and writes messages,
//! `hickory-resolver` reads the system resolver configuration. The
//! listeners are our own rather than `hickory_server::Server`, whose UDP
//! path spawns a task per datagram and whose TCP path accepts connections
//! without limit; here every queue and task set is bounded:
//!
//! - forwards in flight: [`MAX_FORWARDS_IN_FLIGHT`], beyond that SERVFAIL
//!   at once;
//! - TCP connections: [`DnsConfig::max_tcp_connections`] (`--max-dns-connections`,
//!   [`MAX_TCP_CONNECTIONS`] by default), beyond that closed at once;
//!   each must deliver every message (and take every answer) within
//!   [`TCP_IDLE_TIMEOUT`];
//! - malformed packets: FORMERR when the header can be read, silence
//!   otherwise; nothing from the network can panic the server.

mod answer;
mod forward;
mod zone;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;

use self::answer::Action;
pub(crate) use self::answer::Responder;
pub(crate) use self::forward::answers;
use self::forward::{Transport, Upstreams};
pub(crate) use self::zone::MeshZones;
use crate::accept::{self, Listener};
use crate::drain::Drain;

/// How long an upstream resolver has to answer one forwarded query (all
/// servers together).
pub(crate) const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// Forwards waiting on upstream resolvers at once.
pub(crate) const MAX_FORWARDS_IN_FLIGHT: usize = 256;
/// Open TCP connections at once, by default.
pub(crate) const MAX_TCP_CONNECTIONS: usize = 64;
/// How long a TCP client may take to send a whole message, or to read its
/// answer, before the connection is closed.
pub(crate) const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// TTL of mesh answers: short, since the address may change on restart.
const MESH_TTL: u32 = 5;
/// How long caches may keep a "no such mesh name".
const NEGATIVE_TTL: u32 = 5;

/// What the sidecar knows of mesh names: the loopback address it listens on
/// for a service, creating listeners on first use.
pub(crate) trait MeshNames: Send + Sync + 'static {
    /// `None`: no such service in the mesh (the name then gets NXDOMAIN, not
    /// forwarded).
    fn lookup(&self, service: &str, namespace: &str) -> Option<IpAddr>;
}

#[derive(Debug, Clone)]
pub(crate) struct DnsConfig {
    /// UDP and TCP, same address.
    pub listen: SocketAddr,
    /// The namespace `<svc>.mesh` means.
    pub own_namespace: String,
    /// Usually `cluster.local`.
    pub cluster_domain: String,
    pub forward: Forward,
    /// TCP connections held at once.
    pub max_tcp_connections: usize,
}

/// Where names outside the mesh go. The sidecar forwards to the system's
/// resolvers; the other two are for the DNS server's own tests.
#[derive(Debug, Clone)]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) enum Forward {
    /// The nameservers of `/etc/resolv.conf` (read once, at bind).
    System,
    /// These servers, in order.
    To(Vec<SocketAddr>),
    /// Nowhere: such names get REFUSED.
    Disabled,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum DnsError {
    #[error("cannot bind the DNS {transport} listener on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        transport: &'static str,
        source: io::Error,
    },
    #[error("DNS config {field} = {value:?}: expected {expected}")]
    Config {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("cannot read the system resolver configuration (/etc/resolv.conf): {0}")]
    SystemResolver(String),
}

/// Answers DNS on [`DnsConfig::listen`] until `drain` signals, then returns.
#[cfg(test)]
pub(crate) async fn serve(
    config: DnsConfig,
    names: Arc<dyn MeshNames>,
    drain: Drain,
) -> Result<(), DnsError> {
    DnsServer::bind(config, names).await?.run(drain).await;
    Ok(())
}

/// A bound DNS server: [`serve`] in two steps, so a caller can fail start-up
/// on a bind error and learn the port chosen for port 0.
pub(crate) struct DnsServer {
    udp: Arc<UdpSocket>,
    tcp: TcpListener,
    max_tcp_connections: usize,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    responder: Responder,
    upstreams: Upstreams,
}

/// What a query was, for `bulkhead_dns_queries_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Mesh,
    Forwarded,
    Refused,
    Malformed,
}

impl DnsServer {
    /// Binds UDP and TCP on `config.listen` (port 0: one free port for both)
    /// and reads the upstream resolvers.
    pub(crate) async fn bind(
        config: DnsConfig,
        names: Arc<dyn MeshNames>,
    ) -> Result<Self, DnsError> {
        let zones = MeshZones::new(&config.own_namespace, &config.cluster_domain)?;
        let (udp, tcp) = bind_both(config.listen).await?;
        let local_addr = udp.local_addr().map_err(|source| DnsError::Bind {
            addr: config.listen,
            transport: "UDP",
            source,
        })?;
        let servers = match &config.forward {
            Forward::System => {
                let (resolver, _) = hickory_resolver::system_conf::read_system_conf()
                    .map_err(|e| DnsError::SystemResolver(e.to_string()))?;
                nameservers(&resolver)
            }
            Forward::To(servers) => servers.clone(),
            Forward::Disabled => Vec::new(),
        };
        let servers = without_self(servers, local_addr);
        let forwarding = !matches!(config.forward, Forward::Disabled);
        if forwarding && servers.is_empty() {
            tracing::warn!(listen = %local_addr, "DNS: no upstream resolver other than this server; names outside the mesh get SERVFAIL");
        }
        metrics::describe_counter!(
            "bulkhead_dns_queries_total",
            "DNS queries answered by the sidecar, by kind (mesh, forwarded, refused, malformed) and response code"
        );
        tracing::info!(listen = %local_addr, upstreams = ?servers, "DNS server bound");
        Ok(Self {
            udp: Arc::new(udp),
            tcp,
            max_tcp_connections: config.max_tcp_connections,
            local_addr,
            shared: Arc::new(Shared {
                responder: Responder::new(zones, names, forwarding),
                upstreams: Upstreams::new(servers, MAX_FORWARDS_IN_FLIGHT, FORWARD_TIMEOUT),
            }),
        })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown`; then stops reading, lets forwards in flight
    /// finish within [`FORWARD_TIMEOUT`], and returns.
    pub(crate) async fn run(self, drain: Drain) {
        tokio::join!(
            serve_udp(self.udp, self.shared.clone(), drain.clone()),
            serve_tcp(self.tcp, self.max_tcp_connections, self.shared, drain),
        );
        tracing::debug!(listen = %self.local_addr, "DNS server stopped");
    }
}

async fn bind_both(listen: SocketAddr) -> Result<(UdpSocket, TcpListener), DnsError> {
    let bind_error = |transport, source| DnsError::Bind {
        addr: listen,
        transport,
        source,
    };
    // With port 0 the UDP port is chosen first; TCP may find it taken.
    let attempts = if listen.port() == 0 { 8 } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let udp = UdpSocket::bind(listen)
            .await
            .map_err(|e| bind_error("UDP", e))?;
        let port = udp.local_addr().map_err(|e| bind_error("UDP", e))?.port();
        match TcpListener::bind(SocketAddr::new(listen.ip(), port)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = Some(e),
        }
    }
    let source = last.unwrap_or_else(|| io::Error::other("no attempt made"));
    Err(bind_error("TCP", source))
}

fn nameservers(config: &hickory_resolver::config::ResolverConfig) -> Vec<SocketAddr> {
    config
        .name_servers()
        .iter()
        .map(|ns| {
            let port = ns.connections.first().map_or(53, |c| c.port);
            SocketAddr::new(ns.ip, port)
        })
        .collect()
}

/// Drops upstreams that are this server itself: a resolv.conf that names
/// the sidecar (as a pod's may) would otherwise send every query round in
/// a loop.
fn without_self(servers: Vec<SocketAddr>, local: SocketAddr) -> Vec<SocketAddr> {
    let mut seen = HashSet::new();
    servers
        .into_iter()
        .filter(|server| {
            let is_self = server.port() == local.port()
                && (server.ip() == local.ip()
                    || (local.ip().is_unspecified()
                        && (server.ip().is_loopback() || server.ip().is_unspecified())));
            if is_self {
                tracing::warn!(%server, "DNS: ignoring an upstream resolver that is this server");
            }
            !is_self && seen.insert(*server)
        })
        .collect()
}

async fn serve_udp(socket: Arc<UdpSocket>, shared: Arc<Shared>, shutdown: Drain) {
    // The largest datagram; one buffer, reused.
    let mut buf = vec![0; 65535];
    let mut forwards = JoinSet::new();
    loop {
        let (n, client) = tokio::select! {
            _ = shutdown.signaled() => break,
            received = socket.recv_from(&mut buf) => match received {
                Ok(received) => received,
                Err(error) => {
                    // ICMP errors from earlier replies surface here; the
                    // socket itself stays usable.
                    tracing::debug!(%error, "DNS: UDP receive error");
                    continue;
                }
            },
        };
        while forwards.try_join_next().is_some() {}
        if client.port() == 0 {
            continue;
        }
        let packet = &buf[..n];
        let reply = match shared.responder.handle(packet) {
            Action::Forward(query) => match shared.upstreams.try_slot() {
                Some(slot) => {
                    let (socket, shared, packet) =
                        (socket.clone(), shared.clone(), packet.to_vec());
                    forwards.spawn(async move {
                        let reply = shared.forward(&query, &packet, Transport::Udp).await;
                        drop(slot);
                        send_udp(&socket, &reply, client).await;
                    });
                    continue;
                }
                None => shared.saturated(&query),
            },
            action => match settle(action) {
                Some(reply) => reply,
                None => continue,
            },
        };
        send_udp(&socket, &reply, client).await;
    }
    drain(forwards).await;
}

async fn send_udp(socket: &UdpSocket, reply: &[u8], client: SocketAddr) {
    if let Err(error) = socket.send_to(reply, client).await {
        tracing::debug!(%error, %client, "DNS: cannot send UDP reply");
    }
}

/// TCP queries, through the accept loop every listener shares (its
/// connection limit, span, drain and backoff).
async fn serve_tcp(listener: TcpListener, max: usize, shared: Arc<Shared>, drain: Drain) {
    let listener = Listener::new("dns", listener, max);
    accept::serve(listener, Some(drain.clone()), move |stream, _| {
        let (shared, drain) = (shared.clone(), drain.clone());
        async move { serve_tcp_connection(stream, &shared, &drain).await }
    })
    .await;
}

/// Queries on one TCP connection, answered in turn.
async fn serve_tcp_connection(mut stream: TcpStream, shared: &Shared, shutdown: &Drain) {
    loop {
        let packet = tokio::select! {
            _ = shutdown.signaled() => return,
            read = tokio::time::timeout(TCP_IDLE_TIMEOUT, read_frame(&mut stream)) => match read {
                Ok(Ok(packet)) => packet,
                _ => return,
            },
        };
        let reply = match shared.responder.handle(&packet) {
            Action::Forward(query) => match shared.upstreams.try_slot() {
                Some(_slot) => shared.forward(&query, &packet, Transport::Tcp).await,
                None => shared.saturated(&query),
            },
            action => match settle(action) {
                Some(reply) => reply,
                None => return,
            },
        };
        let mut frame = Vec::with_capacity(reply.len() + 2);
        let Ok(len) = u16::try_from(reply.len()) else {
            return;
        };
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&reply);
        match tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.write_all(&frame)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

/// One length-prefixed DNS message (RFC 1035 §4.2.2).
async fn read_frame(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let len = stream.read_u16().await?;
    let mut packet = vec![0; usize::from(len)];
    stream.read_exact(&mut packet).await?;
    Ok(packet)
}

/// The packet to send for an action answered without an upstream, counted.
fn settle(action: Action) -> Option<Vec<u8>> {
    match action {
        Action::Reply(reply) => {
            count(reply.kind, Some(reply.rcode));
            Some(reply.packet)
        }
        Action::Drop => {
            count(Kind::Malformed, None);
            None
        }
        Action::Forward(_) => None,
    }
}

impl Shared {
    async fn forward(&self, query: &Message, raw: &[u8], transport: Transport) -> Vec<u8> {
        match self.upstreams.exchange(query, raw, transport).await {
            Ok(relayed) => {
                count(Kind::Forwarded, Some(relayed.rcode));
                relayed.packet
            }
            Err(error) => {
                tracing::debug!(%error, upstreams = ?self.upstreams.servers(), "DNS: forward failed");
                let reply = self.responder.server_failure(query);
                count(reply.kind, Some(reply.rcode));
                reply.packet
            }
        }
    }

    /// Every forward slot is taken: fail fast rather than queue.
    fn saturated(&self, query: &Message) -> Vec<u8> {
        tracing::debug!("DNS: too many forwards in flight; SERVFAIL");
        let reply = self.responder.server_failure(query);
        count(reply.kind, Some(reply.rcode));
        reply.packet
    }
}

/// Lets tasks in flight finish (a forward ends within its timeout), then
/// aborts what is left.
async fn drain(mut tasks: JoinSet<()>) {
    let finished = async { while tasks.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(FORWARD_TIMEOUT + Duration::from_millis(100), finished).await;
}

fn count(kind: Kind, rcode: Option<ResponseCode>) {
    let kind = match kind {
        Kind::Mesh => "mesh",
        Kind::Forwarded => "forwarded",
        Kind::Refused => "refused",
        Kind::Malformed => "malformed",
    };
    // Upstreams may send any of 4096 codes: keep the label set bounded.
    let rcode = match rcode {
        None => "none",
        Some(ResponseCode::NoError) => "NOERROR",
        Some(ResponseCode::FormErr) => "FORMERR",
        Some(ResponseCode::ServFail) => "SERVFAIL",
        Some(ResponseCode::NXDomain) => "NXDOMAIN",
        Some(ResponseCode::NotImp) => "NOTIMP",
        Some(ResponseCode::Refused) => "REFUSED",
        Some(_) => "other",
    };
    metrics::counter!("bulkhead_dns_queries_total", "kind" => kind, "rcode" => rcode).increment(1);
}
