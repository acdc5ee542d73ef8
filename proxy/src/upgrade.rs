//! HTTP `Upgrade` (WebSocket and the like) through the mesh: what the two
//! sidecars of an upgraded stream share — recognizing an app's upgrade
//! request, translating heads between HTTP/1.1 and HTTP/2 extended CONNECT,
//! refusals, and the splice that carries the bytes after the switch.
//!
//! The path of one upgrade:
//!
//! 1. The app sends its sidecar an HTTP/1.1 request with `Connection:
//!    upgrade` and `Upgrade: <token>` ([`requested`]). It is routed like any
//!    request (split, version pins, balancing, mTLS to the endpoint's
//!    sidecar) and sent as an HTTP/2 extended CONNECT (RFC 8441):
//!    `:protocol` is the token, the path is the app's, the app's own
//!    headers (`Sec-WebSocket-Key`, `-Version`, `-Protocol`, ...) ride along,
//!    and the app's method travels in `x-bulkhead-method` when it is not GET
//!    ([`to_connect`]). Each upgraded stream takes an HTTP/2 connection of
//!    its own ([`crate::pool::Lane`]), as an opaque TCP stream does: one
//!    that lives for hours must not hold one of the stream slots of the
//!    pooled connection requests share (a TLS handshake per stream is the
//!    price).
//! 2. The callee's sidecar authorizes it as the request its app will see
//!    (identity, port, the original method, the normalized path;
//!    [`from_connect`]), exactly as any request: a denial is a 403 before
//!    any byte reaches the app. It sends the app that HTTP/1.1 upgrade
//!    request again ([`to_app`]).
//! 3. The app's `101 Switching Protocols` becomes the stream's `200`
//!    ([`opened`]), and the caller's sidecar answers its app `101`
//!    ([`switched`]). Any other answer goes back as it came, except a 2xx,
//!    which would open a stream the app never agreed to
//!    ([`UpgradeError::Declined`]).
//! 4. From then on the stream is opaque bytes on all three legs ([`splice`]):
//!    the buffers are opaque TCP's, a stream with no data either way for
//!    `--tcp-idle-timeout` is closed, and the drain waits for it like for any
//!    connection.
//!
//! The handshake is bounded by `--request-timeout`, like any response head.
//! Any token is carried the same way (WebSocket, or `SPDY/3.1` for `kubectl
//! exec`) but `h2c`: HTTP/2 is what the mesh speaks between sidecars
//! already, so that request goes on as an ordinary HTTP/1.1 one (HTTP lets a
//! server ignore `Upgrade`). Only `http` ports carry upgrades; an upgrade
//! request with a body is refused (an extended CONNECT has none before the
//! switch). An app that speaks HTTP/2 to its sidecar does not get RFC 8441
//! itself: it upgrades over HTTP/1.1.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use hyper::ext::Protocol;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use crate::http::{self as h, Body};
use crate::wire;

/// The app's method when it is not GET. An extended CONNECT stands for a
/// GET (RFC 8441), but some upgrades are POSTs (`kubectl exec`, `docker
/// attach`): the callee authorizes, and its app sees, the method the caller
/// used.
pub(crate) const METHOD: HeaderName = HeaderName::from_static("x-bulkhead-method");

/// Why an upgrade is not carried. Each is answered by the mesh (marked
/// `x-bulkhead-error`) with the status [`UpgradeError::status`] gives.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum UpgradeError {
    #[error("Upgrade names no valid protocol token")]
    BadToken,
    #[error("an Upgrade request with a body cannot be carried")]
    WithBody,
    #[error("the extended CONNECT names no valid method in x-bulkhead-method")]
    BadMethod,
    #[error("port {0} is not an http port: Upgrade is carried on http ports only")]
    NotHttp(u16),
    /// The app answered 2xx without switching: a tunnel the app never
    /// agreed to must not open.
    #[error("the app answered the Upgrade request {0} without switching protocols")]
    Declined(StatusCode),
    /// The callee's sidecar accepted the stream in a way this side cannot
    /// take over (a 2xx other than 200, or no stream to take).
    #[error("the peer sidecar answered the upgrade {0} without opening a stream")]
    NotOpened(StatusCode),
}

impl UpgradeError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::BadToken | Self::BadMethod => StatusCode::BAD_REQUEST,
            Self::WithBody | Self::NotHttp(_) => StatusCode::NOT_IMPLEMENTED,
            Self::Declined(_) | Self::NotOpened(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// The `x-bulkhead-error` value and `bulkhead_mesh_errors_total` reason.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Self::BadToken | Self::BadMethod => "bad-upgrade",
            Self::WithBody | Self::NotHttp(_) => "upgrade-unsupported",
            Self::Declined(_) => "upgrade-declined",
            Self::NotOpened(_) => "upgrade-failed",
        }
    }

    /// The mesh's answer, counted on `direction`'s side.
    pub(crate) fn response(&self, direction: &'static str) -> Response<Body> {
        let reason = self.reason();
        metrics::counter!("bulkhead_mesh_errors_total", "direction" => direction, "reason" => reason).increment(1);
        tracing::info!(error = %self, "upgrade refused");
        h::mesh_response(false, self.status(), reason, &format!("bulkhead: {self}"))
    }
}

/// Whether an app's request is an upgrade the mesh carries: `Some` with the
/// protocol to switch to; `None` for an ordinary request (no `Upgrade`, no
/// `upgrade` in `Connection`, not HTTP/1.1, a CONNECT, or `h2c`). When the
/// client lists several protocols, the first (its preference) is carried.
pub(crate) fn requested(
    version: Version,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Option<Protocol>, UpgradeError> {
    if version != Version::HTTP_11 || method == Method::CONNECT {
        return Ok(None);
    }
    let Some(upgrade) = headers.get(header::UPGRADE) else {
        return Ok(None);
    };
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !connection_upgrade {
        return Ok(None);
    }
    let token = upgrade
        .to_str()
        .ok()
        .and_then(|v| v.split(',').next())
        .map(str::trim)
        .filter(|t| is_protocol(t))
        .ok_or(UpgradeError::BadToken)?;
    if token.eq_ignore_ascii_case("h2c") {
        return Ok(None);
    }
    let with_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if with_body {
        return Err(UpgradeError::WithBody);
    }
    Ok(Some(Protocol::from(token)))
}

/// `protocol-name ["/" protocol-version]`, both tokens (RFC 9110 §7.8).
fn is_protocol(s: &str) -> bool {
    let is_token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    match s.split_once('/') {
        Some((name, version)) => is_token(name) && is_token(version),
        None => is_token(s),
    }
}

/// Turns the app's upgrade request head into the extended CONNECT that
/// crosses to the callee's sidecar (the caller's routing strips the
/// hop-by-hop headers, `Upgrade` among them, after this).
pub(crate) fn to_connect(head: &mut http::request::Parts, protocol: Protocol) {
    // Never the app's own x-bulkhead-method: only this side says it.
    match head.method {
        Method::GET => {
            head.headers.remove(METHOD);
        }
        _ => {
            if let Ok(method) = HeaderValue::from_str(head.method.as_str()) {
                head.headers.insert(METHOD, method);
            }
        }
    }
    head.method = Method::CONNECT;
    head.extensions.insert(protocol);
}

/// What an extended CONNECT from a caller's sidecar stands for: the app's
/// method (taken out of the headers) and the protocol to switch to.
pub(crate) fn from_connect(
    head: &mut http::request::Parts,
) -> Result<(Method, Protocol), UpgradeError> {
    let protocol = head
        .extensions
        .remove::<Protocol>()
        .filter(|p| std::str::from_utf8(p.as_ref()).is_ok_and(is_protocol))
        .ok_or(UpgradeError::BadToken)?;
    let method = match head.headers.remove(METHOD) {
        None => Method::GET,
        Some(v) => Method::from_bytes(v.as_bytes())
            .ok()
            .filter(|m| *m != Method::CONNECT)
            .ok_or(UpgradeError::BadMethod)?,
    };
    Ok((method, protocol))
}

/// Makes a request head (hop-by-hop headers already stripped) the HTTP/1.1
/// upgrade request to `protocol` an app expects.
pub(crate) fn to_app(head: &mut http::request::Parts, method: Method, protocol: &Protocol) {
    head.method = method;
    head.version = Version::HTTP_11;
    head.headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(token) = HeaderValue::from_bytes(protocol.as_ref()) {
        head.headers.insert(header::UPGRADE, token);
    }
}

/// The `200` that opens the stream towards the caller's sidecar, made from
/// the app's `101`: what is end to end (`Sec-WebSocket-Accept`,
/// `-Protocol`, `-Extensions`) goes on, what belonged to the app's
/// connection does not.
pub(crate) fn opened(headers: HeaderMap) -> Response<Body> {
    let mut resp = Response::new(h::empty());
    *resp.headers_mut() = end_to_end(headers);
    resp
}

/// The `101` that switches the app's connection to `protocol`, made from
/// the `200` that opened the stream.
pub(crate) fn switched(headers: HeaderMap, protocol: &Protocol) -> Response<Body> {
    // A protocol [`requested`] returned is a token, so always a header
    // value; were it not, no half-made switch.
    let Ok(token) = HeaderValue::from_bytes(protocol.as_ref()) else {
        return UpgradeError::BadToken.response("outbound");
    };
    let mut headers = end_to_end(headers);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, token);
    let mut resp = Response::new(h::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *resp.headers_mut() = headers;
    resp
}

/// An opening answer's headers less what belonged to one connection.
fn end_to_end(mut headers: HeaderMap) -> HeaderMap {
    h::strip_hop_by_hop(&mut headers);
    // The stream is not a body: no length may frame it.
    headers.remove(header::CONTENT_LENGTH);
    headers
}

/// Whose an upgraded stream is, for its metrics.
pub(crate) struct Stream {
    pub(crate) direction: &'static str,
    pub(crate) service: String,
    /// The identity on the other side of the mesh hop.
    pub(crate) peer: String,
}

/// How long each side may take to hand its connection over once the
/// opening answer is on its way: hyper does it as soon as that is written,
/// so this only bounds a side that died in between.
const HANDOVER: Duration = Duration::from_secs(10);

/// Waits for both sides' connections, then copies bytes both ways until
/// both close (each close is passed on) or no byte moves for `idle`; counts
/// the stream in `bulkhead_upgraded_streams_total{result}` and its life in
/// `bulkhead_upgraded_stream_duration_seconds`. The result: `ok`,
/// `idle-timeout`, `error`, or `not-opened` (a side never handed over).
pub(crate) async fn splice(
    app: OnUpgrade,
    peer: OnUpgrade,
    idle: Duration,
    stream: Stream,
) -> &'static str {
    let started = Instant::now();
    let sides = tokio::time::timeout(HANDOVER, futures::future::try_join(app, peer)).await;
    let result = match sides {
        Ok(Ok((app, peer))) => {
            let (mut app, mut peer) = (TokioIo::new(app), TokioIo::new(peer));
            let copied = wire::splice(&mut app, &mut peer, idle).await;
            if let Err(error) = &copied {
                tracing::debug!(%error, "upgraded stream ended");
            }
            wire::splice_result(&copied)
        }
        Ok(Err(error)) => {
            tracing::debug!(%error, "upgraded stream not handed over");
            "not-opened"
        }
        Err(_) => "not-opened",
    };
    let Stream {
        direction,
        service,
        peer,
    } = stream;
    metrics::counter!("bulkhead_upgraded_streams_total", "direction" => direction, "service" => service.clone(), "peer" => peer, "result" => result).increment(1);
    metrics::histogram!("bulkhead_upgraded_stream_duration_seconds", "direction" => direction, "service" => service).record(started.elapsed().as_secs_f64());
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    fn carried(version: Version, method: Method, pairs: &[(&str, &str)]) -> Option<String> {
        requested(version, &method, &headers(pairs))
            .expect("not refused")
            .map(|p| String::from_utf8_lossy(p.as_ref()).into_owned())
    }

    const WEBSOCKET: &[(&str, &str)] = &[
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
    ];

    #[test]
    fn a_websocket_handshake_is_an_upgrade() {
        assert_eq!(
            carried(Version::HTTP_11, Method::GET, WEBSOCKET).as_deref(),
            Some("websocket")
        );
        // Connection may list other tokens, in any case, on several lines.
        let h = [
            ("connection", "keep-alive"),
            ("connection", "x-trace, UPGRADE"),
            ("upgrade", "SPDY/3.1, websocket"),
        ];
        assert_eq!(
            carried(Version::HTTP_11, Method::POST, &h).as_deref(),
            Some("SPDY/3.1")
        );
    }

    #[test]
    fn what_is_not_an_upgrade_is_an_ordinary_request() {
        // No Upgrade; Upgrade without Connection: upgrade; HTTP/2 and
        // HTTP/1.0; a CONNECT; h2c (the mesh speaks HTTP/2 itself).
        for (version, method, h) in [
            (
                Version::HTTP_11,
                Method::GET,
                &[("connection", "upgrade")][..],
            ),
            (
                Version::HTTP_11,
                Method::GET,
                &[("upgrade", "websocket")][..],
            ),
            (Version::HTTP_2, Method::GET, WEBSOCKET),
            (Version::HTTP_10, Method::GET, WEBSOCKET),
            (Version::HTTP_11, Method::CONNECT, WEBSOCKET),
            (
                Version::HTTP_11,
                Method::GET,
                &[
                    ("connection", "Upgrade, HTTP2-Settings"),
                    ("upgrade", "h2c"),
                ][..],
            ),
        ] {
            assert_eq!(carried(version, method.clone(), h), None, "{method} {h:?}");
        }
    }

    #[test]
    fn upgrades_the_mesh_cannot_carry_are_refused() {
        let refused = |pairs: &[(&str, &str)]| {
            requested(Version::HTTP_11, &Method::GET, &headers(pairs)).expect_err("refused")
        };
        for bad in ["", "web socket", "websocket/", "/1", "a/b/c", "wéb", "a\"b"] {
            let mut h = headers(&[("connection", "upgrade")]);
            h.insert(
                header::UPGRADE,
                HeaderValue::from_bytes(bad.as_bytes()).unwrap(),
            );
            assert_eq!(
                requested(Version::HTTP_11, &Method::GET, &h),
                Err(UpgradeError::BadToken),
                "{bad:?}"
            );
        }
        let mut with_body = WEBSOCKET.to_vec();
        with_body.push(("content-length", "5"));
        assert_eq!(refused(&with_body), UpgradeError::WithBody);
        let mut chunked = WEBSOCKET.to_vec();
        chunked.push(("transfer-encoding", "chunked"));
        assert_eq!(refused(&chunked), UpgradeError::WithBody);
        let mut empty_body = WEBSOCKET.to_vec();
        empty_body.push(("content-length", "0"));
        assert!(
            requested(Version::HTTP_11, &Method::GET, &headers(&empty_body))
                .is_ok_and(|p| p.is_some())
        );
    }

    #[test]
    fn refusals_map_to_a_status_and_a_reason() {
        for (error, status, reason) in [
            (UpgradeError::BadToken, 400, "bad-upgrade"),
            (UpgradeError::BadMethod, 400, "bad-upgrade"),
            (UpgradeError::WithBody, 501, "upgrade-unsupported"),
            (UpgradeError::NotHttp(9090), 501, "upgrade-unsupported"),
            (
                UpgradeError::Declined(StatusCode::OK),
                502,
                "upgrade-declined",
            ),
            (
                UpgradeError::NotOpened(StatusCode::ACCEPTED),
                502,
                "upgrade-failed",
            ),
        ] {
            let resp = error.response("outbound");
            assert_eq!(resp.status().as_u16(), status, "{error}");
            assert_eq!(resp.headers()[h::MESH_ERROR], reason, "{error}");
        }
    }

    /// The app's request, as the caller's sidecar gets it.
    fn app_request(method: Method, pairs: &[(&str, &str)]) -> http::request::Parts {
        let mut req = http::Request::builder()
            .method(method)
            .uri("/chat/room?x=1")
            .body(())
            .unwrap();
        *req.headers_mut() = headers(pairs);
        req.into_parts().0
    }

    #[test]
    fn the_request_crosses_as_extended_connect_and_comes_back_as_it_was() {
        for method in [Method::GET, Method::POST] {
            // An app cannot choose the method the callee sees.
            let mut pairs = WEBSOCKET.to_vec();
            pairs.push(("x-bulkhead-method", "DELETE"));
            let mut head = app_request(method.clone(), &pairs);
            to_connect(&mut head, Protocol::from("websocket"));
            assert_eq!(head.method, Method::CONNECT);
            assert_eq!(
                head.headers.get(METHOD).map(|v| v.as_bytes()),
                (method != Method::GET).then_some(method.as_str().as_bytes())
            );
            // What the caller's routing does before sending.
            h::strip_hop_by_hop(&mut head.headers);
            assert!(!head.headers.contains_key(header::UPGRADE));

            let (original, protocol) = from_connect(&mut head).expect("valid");
            assert_eq!(original, method);
            assert_eq!(protocol.as_ref(), b"websocket");
            assert!(!head.headers.contains_key(METHOD));
            to_app(&mut head, original, &protocol);
            assert_eq!(head.method, method);
            assert_eq!(head.version, Version::HTTP_11);
            assert_eq!(head.headers[header::CONNECTION], "upgrade");
            assert_eq!(head.headers[header::UPGRADE], "websocket");
            assert_eq!(
                head.headers["sec-websocket-key"],
                "dGhlIHNhbXBsZSBub25jZQ=="
            );
            assert_eq!(head.uri, "/chat/room?x=1");
        }
    }

    #[test]
    fn a_connect_that_says_nothing_sensible_is_refused() {
        let connect = |protocol: Option<&str>, method: Option<&str>| {
            let mut head = app_request(Method::CONNECT, &[]);
            if let Some(p) = protocol {
                head.extensions.insert(Protocol::from(p));
            }
            if let Some(m) = method {
                head.headers
                    .insert(METHOD, HeaderValue::from_str(m).unwrap());
            }
            from_connect(&mut head).map(|(m, _)| m)
        };
        assert_eq!(connect(Some("websocket"), None), Ok(Method::GET));
        assert_eq!(connect(None, None), Err(UpgradeError::BadToken));
        assert_eq!(connect(Some("a b"), None), Err(UpgradeError::BadToken));
        assert_eq!(
            connect(Some("websocket"), Some("CONNECT")),
            Err(UpgradeError::BadMethod)
        );
        assert_eq!(
            connect(Some("websocket"), Some("G(T")),
            Err(UpgradeError::BadMethod)
        );
    }

    #[test]
    fn the_opening_answer_keeps_end_to_end_headers_only() {
        let from_app = headers(&[
            ("connection", "Upgrade, x-hop"),
            ("upgrade", "websocket"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("content-length", "0"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            ("sec-websocket-protocol", "chat"),
        ]);
        // Towards the caller's sidecar: a 200 that opens the stream.
        let to_sidecar = opened(from_app);
        assert_eq!(to_sidecar.status(), StatusCode::OK);
        let names: Vec<&str> = to_sidecar.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["sec-websocket-accept", "sec-websocket-protocol"]);
        // Towards the app: a 101 naming the protocol.
        let to_app = switched(to_sidecar.headers().clone(), &Protocol::from("websocket"));
        assert_eq!(to_app.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(to_app.headers()[header::UPGRADE], "websocket");
        assert_eq!(to_app.headers()[header::CONNECTION], "upgrade");
        assert_eq!(
            to_app.headers()["sec-websocket-accept"],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
