//! Deciding what one query gets: an answer from the mesh, a refusal, an
//! error for a malformed packet, or a trip to the upstream resolvers.
//!
//! Pure except for [`MeshNames::lookup`]: no I/O, so the listeners share it
//! and the rules read in one place.

use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};

use super::zone::{MeshZones, Place, Zone};
use super::{Kind, MESH_TTL, MeshNames};

/// Size of a DNS header; anything shorter is not DNS.
pub(super) const HEADER_LEN: usize = 12;
/// The EDNS payload size we advertise (the DNS flag day 2020 value).
const EDNS_PAYLOAD: u16 = 1232;

pub(crate) struct Responder {
    zones: MeshZones,
    names: Arc<dyn MeshNames>,
    forwarding: bool,
}

/// What to do with one packet.
pub(super) enum Action {
    /// Send this back.
    Reply(Reply),
    /// Ask an upstream resolver; the parsed query is kept to build the
    /// SERVFAIL if that fails.
    Forward(Message),
    /// Say nothing: not a query (too short to answer, or itself a
    /// response — answering those would let two servers loop).
    Drop,
}

pub(super) struct Reply {
    pub(super) packet: Vec<u8>,
    pub(super) kind: Kind,
    pub(super) rcode: ResponseCode,
}

impl Responder {
    pub(crate) fn new(zones: MeshZones, names: Arc<dyn MeshNames>, forwarding: bool) -> Self {
        Self {
            zones,
            names,
            forwarding,
        }
    }

    /// The packet sent back for `packet` without asking upstream (`None`:
    /// forwarded, or dropped).
    pub(crate) fn reply_packet(&self, packet: &[u8]) -> Option<Vec<u8>> {
        match self.handle(packet) {
            Action::Reply(reply) => Some(reply.packet),
            Action::Forward(_) | Action::Drop => None,
        }
    }

    pub(super) fn handle(&self, packet: &[u8]) -> Action {
        if packet.len() < HEADER_LEN || packet[2] & 0x80 != 0 {
            return Action::Drop;
        }
        let Ok(query) = Message::from_vec(packet) else {
            return Action::Reply(Reply {
                packet: header_only(packet, ResponseCode::FormErr),
                kind: Kind::Malformed,
                rcode: ResponseCode::FormErr,
            });
        };
        if query.op_code != OpCode::Query {
            return Action::Reply(self.error(&query, Kind::Refused, ResponseCode::NotImp));
        }
        let [question] = query.queries.as_slice() else {
            return Action::Reply(self.error(&query, Kind::Malformed, ResponseCode::FormErr));
        };
        match self.zones.place(&question.name) {
            Place::Outside if self.forwarding => Action::Forward(query),
            Place::Outside => {
                Action::Reply(self.error(&query, Kind::Refused, ResponseCode::Refused))
            }
            Place::Missing { zone } | Place::Empty { zone }
                if !zone.authoritative() && self.forwarding =>
            {
                Action::Forward(query)
            }
            Place::Missing { zone } => {
                Action::Reply(self.negative(&query, zone, ResponseCode::NXDomain))
            }
            Place::Empty { zone } => {
                Action::Reply(self.negative(&query, zone, ResponseCode::NoError))
            }
            Place::Service {
                service,
                namespace,
                zone,
            } => {
                let Some(ip) = self.names.lookup(&service, &namespace) else {
                    if !zone.authoritative() && self.forwarding {
                        return Action::Forward(query);
                    }
                    return Action::Reply(self.negative(&query, zone, ResponseCode::NXDomain));
                };
                let rdata = match (question.query_class, question.query_type, ip) {
                    (DNSClass::IN, RecordType::A, IpAddr::V4(ip)) => RData::A(A(ip)),
                    (DNSClass::IN, RecordType::AAAA, IpAddr::V6(ip)) => RData::AAAA(AAAA(ip)),
                    _ => return Action::Reply(self.negative(&query, zone, ResponseCode::NoError)),
                };
                let mut message = self.response(&query, ResponseCode::NoError);
                message.metadata.authoritative = true;
                // The question's own spelling, as resolvers expect it echoed.
                message.add_answer(Record::from_rdata(question.name.clone(), MESH_TTL, rdata));
                Action::Reply(self.encode(&message, Kind::Mesh))
            }
        }
    }

    /// The answer when the upstream resolvers could not be asked or did
    /// not answer.
    pub(super) fn server_failure(&self, query: &Message) -> Reply {
        self.error(query, Kind::Forwarded, ResponseCode::ServFail)
    }

    /// NXDOMAIN or NODATA for a name in one of our zones, with the zone's SOA
    /// so caches know how long to keep the "no".
    fn negative(&self, query: &Message, zone: &Zone, rcode: ResponseCode) -> Reply {
        let mut message = self.response(query, rcode);
        message.metadata.authoritative = true;
        message.add_authority(zone.soa().clone());
        self.encode(&message, Kind::Mesh)
    }

    fn error(&self, query: &Message, kind: Kind, rcode: ResponseCode) -> Reply {
        self.encode(&self.response(query, rcode), kind)
    }

    fn response(&self, query: &Message, rcode: ResponseCode) -> Message {
        let mut message = Message::new(query.id, MessageType::Response, query.op_code);
        message.metadata = Metadata::response_from_request(&query.metadata);
        message.metadata.recursion_available = self.forwarding;
        message.metadata.response_code = rcode;
        message.add_queries(query.queries.iter().cloned());
        // RFC 6891: a query with OPT gets a response with OPT.
        if query.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(EDNS_PAYLOAD);
            message.set_edns(edns);
        }
        message
    }

    fn encode(&self, message: &Message, kind: Kind) -> Reply {
        match message.to_vec() {
            Ok(packet) => Reply {
                packet,
                kind,
                rcode: message.response_code,
            },
            Err(error) => {
                tracing::warn!(%error, "cannot encode DNS response");
                let mut header = [0; HEADER_LEN];
                header[..2].copy_from_slice(&message.id.to_be_bytes());
                header[2] = u8::from(message.op_code) << 3;
                Reply {
                    packet: header_only(&header, ResponseCode::ServFail),
                    kind,
                    rcode: ResponseCode::ServFail,
                }
            }
        }
    }
}

/// A bare response header for a packet we could not parse beyond its
/// header: same ID, opcode and RD bit, no sections.
pub(super) fn header_only(packet: &[u8], rcode: ResponseCode) -> Vec<u8> {
    let mut out = vec![0; HEADER_LEN];
    out[..2].copy_from_slice(&packet[..2]);
    out[2] = 0x80 | (packet[2] & 0x79);
    out[3] = rcode.low();
    out
}
