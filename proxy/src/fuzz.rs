//! Entry points for the fuzz targets (`proxy/fuzz`): one per parser that
//! bytes from outside the pod, or from another pod, reach before anything
//! is authenticated or checked. Each runs the sidecar's own code on the
//! bytes and asserts what must hold whatever they are; none does I/O. Not
//! part of the sidecar's API (hidden from docs).

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use hickory_proto::op::Message;
use http::Request;
use prost::Message as _;

use crate::dns::{self, MeshNames};
use crate::{admin, egress, http as h, outbound, policy, route, upgrade};

/// A DNS query as a pod's app (or anything on the pod's network) sends it
/// to the sidecar's DNS server: never a panic, and every reply parses.
pub fn dns_query(packet: &[u8]) {
    struct Names;
    impl MeshNames for Names {
        fn lookup(&self, service: &str, _namespace: &str) -> Option<IpAddr> {
            (service == "inventory").then(|| IpAddr::from([127, 0, 0, 53]))
        }
    }
    static RESPONDER: OnceLock<dns::Responder> = OnceLock::new();
    let responder = RESPONDER.get_or_init(|| {
        let zones = dns::MeshZones::new("shop", "cluster.local").expect("a valid zone");
        dns::Responder::new(zones, Arc::new(Names), true)
    });
    if let Some(reply) = responder.reply_packet(packet) {
        assert!(
            reply.len() >= 12,
            "a reply shorter than a DNS header: {reply:?}"
        );
    }
}

/// The first bytes of a captured connection out of the mesh, which the
/// sidecar reads for the TLS SNI or HTTP `Host` an `Egress` host rule
/// needs: never a panic, and a name found is a plain lower-case host name
/// of non-empty labels (what rules are compared with).
pub fn egress_first_bytes(data: &[u8]) {
    if let Some(name) = egress::peek::name_in(data) {
        let name = name.as_str();
        assert!(!name.is_empty() && name.len() <= 254, "{name:?}");
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'),
            "{name:?}"
        );
        assert!(
            name.split('.').all(|l| !l.is_empty() && l.len() <= 63),
            "{name:?}"
        );
    }
}

/// An upstream resolver's answer to a forwarded query: never a panic.
pub fn dns_upstream_answer(packet: &[u8]) {
    let query = Message::query();
    let _ = dns::answers(&query, 0x1234, packet);
}

/// The body of an app's `grpc.health.v1.Health/Check` answer, which the
/// kubelet's probe makes the sidecar read: decoded, then judged.
pub fn grpc_health_reply(body: &[u8]) {
    if let Ok(reply) = tonic_health::pb::HealthCheckResponse::decode(body) {
        let _ = admin::serving(&reply);
    }
}

/// A request head as an app (or a captured connection) sends it to the
/// sidecar's outbound listener, after hyper parsed it: everything the
/// sidecar reads from it before routing (and a gateway before it checks
/// a token).
pub fn http_request_head(req: Request<()>) {
    let req = req.map(|()| http_body_util::Empty::<bytes::Bytes>::new());
    let headers = req.headers();
    // The same head from the internet to a gateway, and its claims header
    // as a target's sidecar reads it from one.
    crate::gateway::read_untrusted(headers, req.uri().path(), req.uri().query());
    let gateway = bulkhead_proto::SpiffeId::new("cluster.local", "shop", "gateway-public")
        .expect("a valid SPIFFE ID");
    let _ = h::gateway_claims(&gateway, headers);
    let _ = h::is_grpc(headers);
    let _ = h::grpc_deadline(headers, tokio::time::Instant::now());
    if let Some(pin) = headers.get(h::VERSION_PIN).and_then(|v| v.to_str().ok()) {
        let _ = route::VersionChoice::pin(pin);
    }
    let _ = outbound::retryable(&req);
    if let Ok(Some(protocol)) = upgrade::requested(req.version(), req.method(), headers) {
        let (mut head, _) = req.into_parts();
        upgrade::to_connect(&mut head, protocol);
        // What one side writes, the other reads back.
        assert!(upgrade::from_connect(&mut head).is_ok());
        h::strip_hop_by_hop(&mut head.headers);
        h::strip_identity_claims(&mut head.headers);
        h::strip_mesh_headers(&mut head.headers);
        return;
    }
    if let Ok(path) = policy::normalize_path(req.uri().path()) {
        policy::assert_normalized(req.uri().path(), &path);
    }
    let (mut head, _) = req.into_parts();
    h::strip_hop_by_hop(&mut head.headers);
    h::strip_identity_claims(&mut head.headers);
    h::strip_mesh_headers(&mut head.headers);
    assert!(
        !head
            .headers
            .keys()
            .any(|k| k.as_str().starts_with("x-bulkhead-")),
        "a mesh header survived"
    );
}
