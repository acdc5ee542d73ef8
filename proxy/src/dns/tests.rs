//! The DNS server over real UDP and TCP sockets on loopback, with a fake
//! mesh and a fake upstream resolver written here.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::drain::Drain;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::task::JoinHandle;

use super::answer::{Action, Responder};
use super::zone::MeshZones;
use super::*;

const INVENTORY: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9));
const CART: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10));
const PRICING_V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);
/// What the fake upstream answers for `example.com.` (a documentation
/// address: it is only data here, nothing connects to it).
const EXAMPLE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
/// Long enough for a loaded machine, short of the forward timeout.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

struct FakeMesh(HashMap<(&'static str, &'static str), IpAddr>);

impl MeshNames for FakeMesh {
    fn lookup(&self, service: &str, namespace: &str) -> Option<IpAddr> {
        self.0.get(&(service, namespace)).copied()
    }
}

fn mesh() -> Arc<dyn MeshNames> {
    Arc::new(FakeMesh(HashMap::from([
        (("inventory", "shop"), INVENTORY),
        (("cart", "shop"), CART),
        (("pricing", "billing"), PRICING_V6),
    ])))
}

/// A running server; shut down on drop.
struct Dns {
    addr: SocketAddr,
    shutdown: Drain,
    task: Option<JoinHandle<()>>,
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.shutdown.signal();
    }
}

async fn start(forward: Forward) -> Dns {
    let config = DnsConfig {
        listen: (Ipv4Addr::LOCALHOST, 0).into(),
        own_namespace: "shop".into(),
        cluster_domain: "cluster.local".into(),
        forward,
        max_tcp_connections: MAX_TCP_CONNECTIONS,
    };
    let server = DnsServer::bind(config, mesh()).await.unwrap();
    let addr = server.local_addr();
    let shutdown = Drain::new();
    let task = tokio::spawn(server.run(shutdown.clone()));
    Dns {
        addr,
        shutdown,
        task: Some(task),
    }
}

/// A resolver on loopback (UDP and TCP, one port) that knows
/// `example.com.` (A) and says NXDOMAIN for `missing.example.`; it records
/// every name it is asked.
struct Upstream {
    addr: SocketAddr,
    asked: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    async fn start() -> Self {
        // UDP picks a free port; TCP on the same number may be taken by
        // another test's connection, so try again with another.
        let (udp, tcp, addr) = loop {
            let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
            let addr = udp.local_addr().unwrap();
            if let Ok(tcp) = tokio::net::TcpListener::bind(addr).await {
                break (udp, tcp, addr);
            }
        };
        let asked = Arc::new(Mutex::new(Vec::new()));
        let seen = asked.clone();
        tokio::spawn(async move {
            let mut buf = vec![0; 65535];
            while let Ok((n, from)) = udp.recv_from(&mut buf).await {
                let reply = Self::answer(&buf[..n], &seen);
                let _ = udp.send_to(&reply, from).await;
            }
        });
        let seen = asked.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = tcp.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    while let Ok(len) = stream.read_u16().await {
                        let mut packet = vec![0; usize::from(len)];
                        if stream.read_exact(&mut packet).await.is_err() {
                            return;
                        }
                        let reply = Self::answer(&packet, &seen);
                        let mut frame = u16::try_from(reply.len()).unwrap().to_be_bytes().to_vec();
                        frame.extend_from_slice(&reply);
                        if stream.write_all(&frame).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { addr, asked }
    }

    fn answer(packet: &[u8], seen: &Mutex<Vec<String>>) -> Vec<u8> {
        let query = Message::from_vec(packet).unwrap();
        let question = query.queries[0].clone();
        seen.lock()
            .unwrap()
            .push(question.name.to_ascii().to_ascii_lowercase());
        let mut reply = Message::response(query.id, OpCode::Query);
        reply.metadata.recursion_desired = query.recursion_desired;
        reply.metadata.recursion_available = true;
        reply.add_query(question.clone());
        match question.name.to_ascii().to_ascii_lowercase().as_str() {
            "example.com." => {
                reply.add_answer(Record::from_rdata(question.name, 60, RData::A(A(EXAMPLE))));
            }
            "missing.example." => reply.metadata.response_code = ResponseCode::NXDomain,
            _ => reply.metadata.response_code = ResponseCode::Refused,
        }
        reply.to_vec().unwrap()
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

fn query(name: &str, record_type: RecordType) -> Message {
    let mut message = Message::query();
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), record_type));
    message
}

async fn ask_udp(server: SocketAddr, query: &Message) -> Message {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    socket
        .send_to(&query.to_vec().unwrap(), server)
        .await
        .unwrap();
    let reply = recv_udp(&socket).await;
    let reply = Message::from_vec(&reply).unwrap();
    assert_eq!(reply.id, query.id);
    reply
}

async fn recv_udp(socket: &UdpSocket) -> Vec<u8> {
    let mut buf = vec![0; 65535];
    let n = tokio::time::timeout(ANSWER_WITHIN, socket.recv(&mut buf))
        .await
        .expect("no answer in time")
        .unwrap();
    buf.truncate(n);
    buf
}

async fn ask_tcp(server: SocketAddr, query: &Message) -> Message {
    let mut stream = TcpStream::connect(server).await.unwrap();
    let reply =
        Message::from_vec(&exchange_tcp(&mut stream, &query.to_vec().unwrap()).await).unwrap();
    assert_eq!(reply.id, query.id);
    reply
}

async fn exchange_tcp(stream: &mut TcpStream, packet: &[u8]) -> Vec<u8> {
    let mut frame = u16::try_from(packet.len()).unwrap().to_be_bytes().to_vec();
    frame.extend_from_slice(packet);
    stream.write_all(&frame).await.unwrap();
    tokio::time::timeout(ANSWER_WITHIN, async {
        let len = stream.read_u16().await.unwrap();
        let mut reply = vec![0; usize::from(len)];
        stream.read_exact(&mut reply).await.unwrap();
        reply
    })
    .await
    .expect("no answer in time")
}

fn addresses(reply: &Message) -> Vec<IpAddr> {
    reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn mesh_name_gets_its_loopback_address_over_udp_and_tcp() {
    let dns = start(Forward::Disabled).await;
    let q = query("inventory.shop.svc.cluster.local.", RecordType::A);
    for reply in [ask_udp(dns.addr, &q).await, ask_tcp(dns.addr, &q).await] {
        assert_eq!(reply.response_code, ResponseCode::NoError);
        assert_eq!(reply.message_type, MessageType::Response);
        assert!(reply.authoritative);
        assert_eq!(addresses(&reply), [INVENTORY]);
        assert_eq!(reply.answers[0].ttl, MESH_TTL);
        assert_eq!(reply.queries, q.queries);
    }
}

#[tokio::test]
async fn every_mesh_name_form_any_case_with_or_without_trailing_dot() {
    let dns = start(Forward::Disabled).await;
    let names = [
        ("inventory.shop.svc.cluster.local", INVENTORY),
        ("INVENTORY.Shop.Svc.Cluster.Local.", INVENTORY),
        ("inventory.shop.svc", INVENTORY),
        ("inventory.shop.svc.", INVENTORY),
        ("cart.mesh", CART),
        ("Cart.MESH.", CART),
        ("cart.shop.mesh", CART),
        ("pricing.billing.mesh.", PRICING_V6),
    ];
    for (name, ip) in names {
        let record_type = if ip.is_ipv4() {
            RecordType::A
        } else {
            RecordType::AAAA
        };
        let reply = ask_udp(dns.addr, &query(name, record_type)).await;
        assert_eq!(reply.response_code, ResponseCode::NoError, "{name}");
        assert_eq!(addresses(&reply), [ip], "{name}");
        // Echoed in the client's own spelling.
        assert_eq!(
            reply.answers[0].name.to_ascii().trim_end_matches('.'),
            name.trim_end_matches('.')
        );
    }
}

#[tokio::test]
async fn unknown_mesh_service_is_nxdomain_and_never_reaches_the_upstream() {
    let upstream = Upstream::start().await;
    let dns = start(Forward::To(vec![upstream.addr])).await;
    // `.mesh` is ours alone: a name there that is not a mesh service does not exist.
    for name in [
        "ghost.mesh.",
        "ghost.shop.mesh.",
        "a.b.c.mesh.",
        "in_valid.mesh.",
    ] {
        let reply = ask_udp(dns.addr, &query(name, RecordType::A)).await;
        assert_eq!(reply.response_code, ResponseCode::NXDomain, "{name}");
        assert!(reply.authoritative, "{name}");
        assert!(reply.answers.is_empty(), "{name}");
        assert_eq!(
            reply.authorities[0].record_type(),
            RecordType::SOA,
            "{name}"
        );
    }
    assert_eq!(upstream.asked(), Vec::<String>::new());
}

#[tokio::test]
async fn cluster_names_outside_the_mesh_go_to_the_cluster_dns() {
    // The cluster's zone is shared: `kubernetes.default.svc.cluster.local`
    // and services outside the mesh must still resolve through it.
    let upstream = Upstream::start().await;
    let dns = start(Forward::To(vec![upstream.addr])).await;
    let names = [
        "ghost.shop.svc.cluster.local.",
        "kubernetes.default.svc.cluster.local.",
        "example.com.shop.svc.cluster.local.",
        "inventory.other.svc.",
    ];
    for name in names {
        let reply = ask_udp(dns.addr, &query(name, RecordType::A)).await;
        // The fake upstream refuses what it does not know: relayed as is.
        assert_eq!(reply.response_code, ResponseCode::Refused, "{name}");
    }
    assert_eq!(upstream.asked(), names.to_vec());
    // Without forwarding they are simply not found.
    let dns = start(Forward::Disabled).await;
    let reply = ask_udp(
        dns.addr,
        &query("ghost.shop.svc.cluster.local.", RecordType::A),
    )
    .await;
    assert_eq!(reply.response_code, ResponseCode::NXDomain);
}

#[tokio::test]
async fn other_address_family_and_other_types_are_nodata() {
    let dns = start(Forward::Disabled).await;
    for (name, record_type) in [
        ("inventory.shop.svc.cluster.local.", RecordType::AAAA),
        ("pricing.billing.mesh.", RecordType::A),
        ("cart.mesh.", RecordType::MX),
        ("cart.mesh.", RecordType::TXT),
        ("shop.svc.cluster.local.", RecordType::A),
    ] {
        let reply = ask_udp(dns.addr, &query(name, record_type)).await;
        assert_eq!(
            reply.response_code,
            ResponseCode::NoError,
            "{name} {record_type}"
        );
        assert!(reply.answers.is_empty(), "{name} {record_type}");
        assert!(reply.authoritative, "{name} {record_type}");
    }
}

#[tokio::test]
async fn other_names_are_forwarded_and_the_upstream_answer_relayed() {
    let upstream = Upstream::start().await;
    let dns = start(Forward::To(vec![upstream.addr])).await;
    let found = query("example.com.", RecordType::A);
    let missing = query("missing.example.", RecordType::A);
    for reply in [
        ask_udp(dns.addr, &found).await,
        ask_tcp(dns.addr, &found).await,
    ] {
        assert_eq!(reply.response_code, ResponseCode::NoError);
        assert!(!reply.authoritative);
        assert_eq!(addresses(&reply), [IpAddr::V4(EXAMPLE)]);
        assert_eq!(reply.answers[0].ttl, 60);
    }
    for reply in [
        ask_udp(dns.addr, &missing).await,
        ask_tcp(dns.addr, &missing).await,
    ] {
        assert_eq!(reply.response_code, ResponseCode::NXDomain);
    }
    assert_eq!(upstream.asked().len(), 4);
}

#[tokio::test]
async fn a_failing_upstream_moves_on_to_the_next() {
    let upstream = Upstream::start().await;
    // Nothing listens here: the connected socket reports the refusal.
    let closed = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let dns = start(Forward::To(vec![closed_addr, upstream.addr])).await;
    let reply = ask_udp(dns.addr, &query("example.com.", RecordType::A)).await;
    assert_eq!(addresses(&reply), [IpAddr::V4(EXAMPLE)]);
}

#[tokio::test]
async fn upstream_that_never_answers_gets_servfail_after_the_timeout() {
    let silent = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let dns = start(Forward::To(vec![silent.local_addr().unwrap()])).await;
    let started = tokio::time::Instant::now();
    let reply = ask_udp(dns.addr, &query("example.com.", RecordType::A)).await;
    assert_eq!(reply.response_code, ResponseCode::ServFail);
    assert!(started.elapsed() >= FORWARD_TIMEOUT);
}

#[tokio::test]
async fn forwards_beyond_the_bound_fail_at_once() {
    let silent = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let dns = start(Forward::To(vec![silent.local_addr().unwrap()])).await;
    let client = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let extra = 8;
    for _ in 0..MAX_FORWARDS_IN_FLIGHT + extra {
        let packet = query("example.com.", RecordType::A).to_vec().unwrap();
        client.send_to(&packet, dns.addr).await.unwrap();
        // Let the server read as we go, so no datagram overflows its buffer.
        tokio::task::yield_now().await;
    }
    // The ones past the bound come back before any forward times out.
    for _ in 0..extra {
        let mut buf = vec![0; 512];
        let n = tokio::time::timeout(FORWARD_TIMEOUT / 2, client.recv(&mut buf))
            .await
            .expect("the overflow is answered at once")
            .unwrap();
        let reply = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(reply.response_code, ResponseCode::ServFail);
    }
}

#[tokio::test]
async fn forwarding_disabled_is_refused() {
    let dns = start(Forward::Disabled).await;
    let reply = ask_udp(dns.addr, &query("example.com.", RecordType::A)).await;
    assert_eq!(reply.response_code, ResponseCode::Refused);
    assert!(!reply.recursion_available);
}

#[tokio::test]
async fn garbage_gets_formerr_or_silence_and_the_server_keeps_answering() {
    let dns = start(Forward::Disabled).await;
    let client = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let valid = query("cart.mesh.", RecordType::A);

    // Silence: too short to be DNS, or a response (QR set).
    let mut response = valid.clone();
    response.metadata.message_type = MessageType::Response;
    for packet in [vec![], vec![0xab; 3], response.to_vec().unwrap()] {
        client.send_to(&packet, dns.addr).await.unwrap();
    }
    // FORMERR: a header with junk after it; a pointer that loops.
    let mut junk = vec![0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    junk.extend_from_slice(&[0xff; 40]);
    let mut looping = vec![0x43, 0x21, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    looping.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    for (packet, id) in [(&junk, 0x1234), (&looping, 0x4321)] {
        client.send_to(packet, dns.addr).await.unwrap();
        let reply = recv_udp(&client).await;
        // The first answer is this one's: nothing came back for the silent ones.
        assert_eq!(reply[..2], u16::to_be_bytes(id));
        let reply = Message::from_vec(&reply).unwrap();
        assert_eq!(reply.response_code, ResponseCode::FormErr);
    }
    // Two questions: FORMERR. An UPDATE: NOTIMP.
    let mut two = query("cart.mesh.", RecordType::A);
    two.add_query(Query::query(
        Name::from_ascii("inventory.mesh.").unwrap(),
        RecordType::A,
    ));
    assert_eq!(
        ask_udp(dns.addr, &two).await.response_code,
        ResponseCode::FormErr
    );
    let mut update = query("cart.mesh.", RecordType::A);
    update.metadata.op_code = OpCode::Update;
    assert_eq!(
        ask_udp(dns.addr, &update).await.response_code,
        ResponseCode::NotImp
    );

    // TCP: junk gets FORMERR and the connection stays usable.
    let mut stream = TcpStream::connect(dns.addr).await.unwrap();
    let reply = Message::from_vec(&exchange_tcp(&mut stream, &junk).await).unwrap();
    assert_eq!(reply.response_code, ResponseCode::FormErr);
    let reply =
        Message::from_vec(&exchange_tcp(&mut stream, &valid.to_vec().unwrap()).await).unwrap();
    assert_eq!(addresses(&reply), [CART]);

    // And after all that, UDP still answers.
    assert_eq!(addresses(&ask_udp(dns.addr, &valid).await), [CART]);
}

#[test]
fn mangled_queries_never_panic() {
    let responder = Responder::new(
        MeshZones::new("shop", "cluster.local").unwrap(),
        mesh(),
        true,
    );
    let valid = query("inventory.shop.svc.cluster.local.", RecordType::A)
        .to_vec()
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for round in 0..20_000 {
        let mut packet = valid.clone();
        match round % 3 {
            0 => {
                let flips = rng.random_range(1..8);
                for _ in 0..flips {
                    let at = rng.random_range(0..packet.len());
                    packet[at] ^= 1 << rng.random_range(0..8);
                }
            }
            1 => packet.truncate(rng.random_range(0..packet.len())),
            _ => {
                packet = (0..rng.random_range(0..600))
                    .map(|_| rng.random())
                    .collect();
            }
        }
        match responder.handle(&packet) {
            Action::Reply(reply) => assert!(reply.packet.len() >= 12),
            Action::Forward(_) | Action::Drop => {}
        }
    }
}

#[tokio::test]
async fn tcp_connections_are_bounded() {
    let dns = start(Forward::Disabled).await;
    let valid = query("cart.mesh.", RecordType::A).to_vec().unwrap();
    let mut held = Vec::new();
    for _ in 0..MAX_TCP_CONNECTIONS {
        let mut stream = TcpStream::connect(dns.addr).await.unwrap();
        // An answer proves the connection holds a slot.
        exchange_tcp(&mut stream, &valid).await;
        held.push(stream);
    }
    // Over the bound, a connection is closed at once, unanswered...
    let mut extra = TcpStream::connect(dns.addr).await.unwrap();
    let mut frame = u16::try_from(valid.len()).unwrap().to_be_bytes().to_vec();
    frame.extend_from_slice(&valid);
    let _ = extra.write_all(&frame).await;
    let refused = tokio::time::timeout(ANSWER_WITHIN, extra.read_u16())
        .await
        .expect("refused at once, not left waiting");
    assert!(refused.is_err(), "a connection over the bound was served");

    // ...and once a slot is freed, a new one is served.
    drop(held.pop());
    let len = tokio::time::timeout(ANSWER_WITHIN, async {
        loop {
            let mut next = TcpStream::connect(dns.addr).await.unwrap();
            if next.write_all(&frame).await.is_ok()
                && let Ok(len) = next.read_u16().await
            {
                return len;
            }
        }
    })
    .await
    .expect("served once a slot is free");
    assert!(len >= 12, "a DNS reply");
}

#[tokio::test]
async fn serve_returns_after_shutdown() {
    let mut dns = start(Forward::Disabled).await;
    dns.shutdown.signal();
    let task = dns.task.take().unwrap();
    tokio::time::timeout(ANSWER_WITHIN, task)
        .await
        .unwrap()
        .unwrap();

    let config = DnsConfig {
        listen: (Ipv4Addr::LOCALHOST, 0).into(),
        own_namespace: "shop".into(),
        cluster_domain: "cluster.local".into(),
        forward: Forward::Disabled,
        max_tcp_connections: MAX_TCP_CONNECTIONS,
    };
    let shutdown = Drain::new();
    shutdown.signal();
    tokio::time::timeout(ANSWER_WITHIN, serve(config, mesh(), shutdown))
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn bind_errors_name_the_address() {
    let taken = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = taken.local_addr().unwrap();
    let config = DnsConfig {
        listen: addr,
        own_namespace: "shop".into(),
        cluster_domain: "cluster.local".into(),
        forward: Forward::Disabled,
        max_tcp_connections: MAX_TCP_CONNECTIONS,
    };
    let error = DnsServer::bind(config, mesh()).await.err().unwrap();
    let message = error.to_string();
    assert!(
        message.contains(&addr.to_string()) && message.contains("UDP"),
        "{message}"
    );
}

#[test]
fn this_server_is_never_its_own_upstream() {
    let local: SocketAddr = "127.0.0.1:53".parse().unwrap();
    let other: SocketAddr = "127.0.0.53:53".parse().unwrap();
    let servers = vec![local, other, other];
    assert_eq!(without_self(servers, local), [other]);
    let any: SocketAddr = "0.0.0.0:53".parse().unwrap();
    assert_eq!(
        without_self(vec![local, other], any),
        Vec::<SocketAddr>::new()
    );
    let upstream: SocketAddr = "192.0.2.1:53".parse().unwrap();
    assert_eq!(without_self(vec![local, upstream], any), [upstream]);
}

#[cfg(target_os = "linux")]
#[test]
fn system_upstreams_come_from_resolv_conf() {
    let text = "search shop.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\nnameserver fd00::a\noptions ndots:5\n";
    let (config, _) = hickory_resolver::system_conf::parse_resolv_conf(text).unwrap();
    let want: [SocketAddr; 2] = [
        "10.96.0.10:53".parse().unwrap(),
        "[fd00::a]:53".parse().unwrap(),
    ];
    assert_eq!(nameservers(&config), want);
}
