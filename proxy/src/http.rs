//! HTTP plumbing shared by the inbound and outbound sides: body types,
//! responses the mesh itself generates (always marked so they cannot be
//! mistaken for the app's), hop-by-hop header handling, metrics labels.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

/// Every body the proxy hands to hyper.
pub(crate) type Body = BoxBody<Bytes, hyper::Error>;

/// Set on every response the mesh generates: the reason, a bounded token.
pub(crate) const MESH_ERROR: &str = "x-bulkhead-error";
/// Set on denials: the rule or reason label.
pub(crate) const MESH_DENIED: &str = "x-bulkhead-denied";
/// A request header pinning a version (`3.1.0`, `^3`).
pub(crate) const VERSION_PIN: &str = "x-bulkhead-version";
/// Set by the callee's sidecar for its app: the caller's verified SPIFFE ID.
pub(crate) const PEER_IDENTITY: &str = "x-bulkhead-peer-identity";
/// Set by the callee's sidecar for its app, as Envoy-based meshes set it
/// (`By=<callee>;Hash=<sha256 of the caller's certificate>;URI=<caller>`),
/// so apps written for them work unchanged.
pub(crate) const CLIENT_CERT: &str = "x-forwarded-client-cert";

/// Set by a gateway on requests it sends into the mesh: the end user's
/// verified token claims (base64url of their JSON). The callee's sidecar
/// reads it only from a caller whose mTLS identity is a gateway's
/// (service account `gateway-*`), and removes it before the app.
pub(crate) const CLAIMS: &str = "x-bulkhead-claims";

/// Longest claims header a gateway sends or a sidecar reads.
const MAX_CLAIMS_BYTES: usize = 8 * 1024;

/// A request extension only the gateway sets: the claims header the
/// outbound writes after removing whatever the request carried.
#[derive(Clone, Debug)]
pub(crate) struct VerifiedClaims(pub(crate) HeaderValue);

impl VerifiedClaims {
    /// `None` when the claims are too large to pass on (rules requiring
    /// claims then deny, rather than see a partial set).
    pub(crate) fn encode(claims: &bulkhead_proto::model::Claims) -> Option<Self> {
        use base64::Engine;
        let json = serde_json::to_vec(claims).ok()?;
        let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
        if text.len() > MAX_CLAIMS_BYTES {
            return None;
        }
        HeaderValue::from_str(&text).ok().map(Self)
    }
}

/// The end user's claims a request carries, trusted only from a gateway:
/// `None` from any other caller, or when absent or malformed.
pub(crate) fn gateway_claims(
    peer: &bulkhead_proto::SpiffeId,
    headers: &HeaderMap,
) -> Option<bulkhead_proto::model::Claims> {
    use base64::Engine;
    if !peer.service_account().starts_with("gateway-") {
        return None;
    }
    let value = headers.get(CLAIMS)?.as_bytes();
    if value.len() > MAX_CLAIMS_BYTES {
        return None;
    }
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(value)
        .ok()?;
    serde_json::from_slice(&json).ok()
}

/// Removes what an app could send to pass for someone else: the identity
/// headers the callee's sidecar sets, and end-user claims only a gateway
/// may send. (The caller's sidecar strips them too; the callee's removes
/// them whatever arrives.)
pub(crate) fn strip_identity_claims(headers: &mut HeaderMap) {
    headers.remove(CLIENT_CERT);
    headers.remove(PEER_IDENTITY);
    headers.remove(CLAIMS);
}

/// What the callee's sidecar removes before its app sees a request: the
/// identity headers, and every other `x-bulkhead-*` (only the mesh sets
/// those; the caller's sidecar consumes its own before sending). Scans the
/// names once; collects only when one is there.
pub(crate) fn strip_mesh_headers(headers: &mut HeaderMap) {
    headers.remove(CLIENT_CERT);
    let is_mesh = |name: &http::HeaderName| name.as_str().starts_with("x-bulkhead-");
    if headers.keys().any(is_mesh) {
        let names: Vec<http::HeaderName> = headers.keys().filter(|n| is_mesh(n)).cloned().collect();
        for name in names {
            headers.remove(name);
        }
    }
}
/// The `x-bulkhead-error` of a request shed unseen by the app (a 503): the
/// app never saw it, so it may go to another endpoint.
pub(crate) const OVERLOADED: &str = "overloaded";

/// A response body as it came from a peer, or one the mesh made: one type
/// for both without boxing the peer's.
pub(crate) enum Answer {
    Peer(hyper::body::Incoming),
    Mesh(Body),
}

impl hyper::body::Body for Answer {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Answer::Peer(b) => std::pin::Pin::new(b).poll_frame(cx),
            Answer::Mesh(b) => std::pin::Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Answer::Peer(b) => b.is_end_stream(),
            Answer::Mesh(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Answer::Peer(b) => b.size_hint(),
            Answer::Mesh(b) => b.size_hint(),
        }
    }
}

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub(crate) fn empty() -> Body {
    full(Bytes::new())
}

pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// A gRPC request's `grpc-timeout` (1-8 digits and a unit: `H`, `M`, `S`,
/// `m`, `u`, `n`), the call's deadline from now. `None` when absent or
/// malformed (the spec leaves a bad value to be ignored).
pub(crate) fn grpc_timeout(headers: &HeaderMap) -> Option<std::time::Duration> {
    use std::time::Duration;
    let value = headers.get("grpc-timeout")?.as_bytes();
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// When a gRPC request that arrived at `from` runs out of time, by its
/// `grpc-timeout`; `None` for other requests and for calls without one.
pub(crate) fn grpc_deadline(
    headers: &HeaderMap,
    from: tokio::time::Instant,
) -> Option<tokio::time::Instant> {
    is_grpc(headers)
        .then(|| grpc_timeout(headers))
        .flatten()
        .map(|t| from + t)
}

/// gRPC status codes the mesh uses.
#[derive(Clone, Copy, Debug)]
pub(crate) enum GrpcCode {
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Unavailable = 14,
    Internal = 13,
}

/// A response generated by the mesh: HTTP status with a text body, or for
/// gRPC callers a trailers-only response with the matching grpc-status.
pub(crate) fn mesh_response(
    grpc: bool,
    status: StatusCode,
    reason: &str,
    message: &str,
) -> Response<Body> {
    let mut resp = if grpc {
        let code = match status {
            StatusCode::FORBIDDEN => GrpcCode::PermissionDenied,
            StatusCode::BAD_REQUEST => GrpcCode::InvalidArgument,
            StatusCode::GATEWAY_TIMEOUT => GrpcCode::DeadlineExceeded,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => GrpcCode::ResourceExhausted,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY => GrpcCode::Unavailable,
            _ => GrpcCode::Internal,
        };
        let mut r = Response::new(empty());
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        r.headers_mut()
            .insert("grpc-status", HeaderValue::from(code as u16));
        if let Ok(v) = HeaderValue::from_str(&percent_encode_message(message)) {
            r.headers_mut().insert("grpc-message", v);
        }
        r
    } else {
        let mut r = Response::new(full(format!("{message}\n")));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    if let Ok(v) = HeaderValue::from_str(reason) {
        resp.headers_mut().insert(MESH_ERROR, v);
    }
    resp
}

/// What grpc-message leaves unescaped: printable ASCII but `%` (gRPC over
/// HTTP/2: "Percent-Encoded"); every byte above 0x7E is escaped too.
const GRPC_MESSAGE: &AsciiSet = &CONTROLS.add(b'%');

fn percent_encode_message(message: &str) -> String {
    utf8_percent_encode(message, GRPC_MESSAGE).to_string()
}

/// Removes connection-specific headers, which must not cross a proxy (and
/// which HTTP/2 forbids).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in Connection are hop-by-hop too.
    let named: Vec<header::HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| header::HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::HeaderName::from_static("keep-alive"),
        header::HeaderName::from_static("proxy-connection"),
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(name);
    }
    // TE is allowed only as "trailers" (gRPC needs it).
    if let Some(te) = headers.get(header::TE)
        && te.as_bytes() != b"trailers"
    {
        headers.remove(header::TE);
    }
}

/// Why a request's Host must be refused with 400 (RFC 9112 §3.2): more
/// than one Host field, none in an HTTP/1.1 request, or one that is not a
/// `host[:port]` (userinfo, a path, spaces...). `None` when it is fine.
/// A look at the field's bytes: nothing is parsed or copied.
pub(crate) fn host_problem(version: http::Version, headers: &HeaderMap) -> Option<&'static str> {
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Some("more than one Host header"),
        (None, _) if version == http::Version::HTTP_11 => Some("no Host header"),
        (Some(host), None) if !host.as_bytes().iter().all(|b| is_authority_byte(*b)) => {
            Some("Host is not host[:port]")
        }
        _ => None,
    }
}

/// A byte of `host [ ":" port ]` (RFC 3986 reg-name, IP literal or IPv4,
/// and the port): unreserved, sub-delims, `%` escapes, `:`, `[` and `]`.
/// Not `@` (userinfo), `/`, `?`, `#`, spaces or controls.
fn is_authority_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%:[]".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h);
        assert!(h.contains_key(header::TE));
    }

    #[test]
    fn host_must_be_one_host_and_port() {
        let with = |hosts: &[&str]| {
            let mut h = HeaderMap::new();
            for host in hosts {
                h.append(header::HOST, HeaderValue::from_str(host).unwrap());
            }
            h
        };
        let v11 = http::Version::HTTP_11;
        for fine in ["cart", "cart.shop:8080", "127.0.0.1:9001", "[::1]:80", ""] {
            assert_eq!(host_problem(v11, &with(&[fine])), None, "{fine:?}");
        }
        for bad in ["user@cart", "user:pw@cart:80", "cart/x", "cart x", "cart?q"] {
            assert!(host_problem(v11, &with(&[bad])).is_some(), "{bad:?}");
        }
        assert!(host_problem(v11, &with(&["a", "a"])).is_some());
        assert!(host_problem(v11, &with(&[])).is_some());
        // HTTP/1.0 and HTTP/2 may leave it out (HTTP/2 has :authority).
        assert_eq!(host_problem(http::Version::HTTP_10, &with(&[])), None);
        assert_eq!(host_problem(http::Version::HTTP_2, &with(&[])), None);
    }

    #[test]
    fn grpc_denials_are_trailers_only_permission_denied() {
        let r = mesh_response(true, StatusCode::FORBIDDEN, "denied", "not allowed: rule x");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "7");
        assert_eq!(r.headers()[MESH_ERROR], "denied");
        let r = mesh_response(false, StatusCode::FORBIDDEN, "denied", "no");
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn callers_cannot_pass_mesh_headers_to_the_app() {
        let mut h = HeaderMap::new();
        for (name, value) in [
            (
                "x-forwarded-client-cert",
                "By=spiffe://x;URI=spiffe://cluster.local/ns/shop/sa/admin",
            ),
            (
                "x-bulkhead-peer-identity",
                "spiffe://cluster.local/ns/shop/sa/admin",
            ),
            ("x-bulkhead-anything", "1"),
            ("x-bulkhead-version", "2"),
            ("x-request-id", "kept"),
        ] {
            h.append(name, HeaderValue::from_static(value));
        }
        h.append(
            "x-bulkhead-peer-identity",
            HeaderValue::from_static("second"),
        );
        let mut outbound = h.clone();
        strip_identity_claims(&mut outbound);
        let names = |h: &HeaderMap| {
            let mut n: Vec<String> = h.keys().map(|k| k.to_string()).collect();
            n.sort();
            n
        };
        assert_eq!(
            names(&outbound),
            ["x-bulkhead-anything", "x-bulkhead-version", "x-request-id"]
        );
        strip_mesh_headers(&mut h);
        assert_eq!(names(&h), ["x-request-id"]);
    }

    #[test]
    fn claims_are_read_from_gateways_only() {
        let claims = serde_json::json!({"scope": "orders:write", "sub": "u-1"})
            .as_object()
            .cloned()
            .unwrap();
        let header = VerifiedClaims::encode(&claims).unwrap();
        let mut h = HeaderMap::new();
        h.insert(CLAIMS, header.0);
        let id = |sa: &str| bulkhead_proto::SpiffeId::new("cluster.local", "shop", sa).unwrap();
        assert_eq!(gateway_claims(&id("gateway-public"), &h), Some(claims));
        assert_eq!(gateway_claims(&id("web"), &h), None, "not a gateway");
        assert_eq!(gateway_claims(&id("my-gateway"), &h), None);
        h.insert(CLAIMS, HeaderValue::from_static("not base64 json!"));
        assert_eq!(gateway_claims(&id("gateway-public"), &h), None);
        assert_eq!(
            gateway_claims(&id("gateway-public"), &HeaderMap::new()),
            None
        );
        // Apps behind a sidecar cannot send them on.
        h.insert(CLAIMS, HeaderValue::from_static("e30"));
        strip_identity_claims(&mut h);
        assert!(h.get(CLAIMS).is_none());
    }

    #[test]
    fn grpc_timeouts_as_the_spec_writes_them() {
        use std::time::Duration;
        let parse = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-timeout", HeaderValue::from_str(v).unwrap());
            grpc_timeout(&h)
        };
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse("30S"), Some(Duration::from_secs(30)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(parse("5n"), Some(Duration::from_nanos(5)));
        for bad in [
            "",
            "m",
            "100",
            "123456789m",
            "1.5S",
            "-1S",
            "10s",
            " 1S",
            "1 S",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }

    #[test]
    fn grpc_messages_are_percent_encoded_as_the_spec_says() {
        assert_eq!(percent_encode_message("plain text: ok"), "plain text: ok");
        assert_eq!(
            percent_encode_message("100% déjà\n"),
            "100%25 d%C3%A9j%C3%A0%0A"
        );
        assert_eq!(percent_encode_message("a\u{7f}b\tc"), "a%7Fb%09c");
    }
}
