//! What keeps the dashboard a local tool: requests only from loopback,
//! only for our own `Host` (a page on another site that rebinds its DNS
//! name to 127.0.0.1 still sends its own name), and state changes only
//! with the page's token and from its own origin (CSRF). Every response
//! carries headers that keep the page out of frames and scripts to our
//! own files.

use std::net::SocketAddr;

use http::HeaderMap;
use http::header::{HOST, ORIGIN};

/// Header the page sends its token in on every POST.
pub(super) const TOKEN_HEADER: &str = "x-bulkhead-token";

/// Headers on every response.
pub(super) const SECURITY_HEADERS: &[(&str, &str)] = &[
    (
        "content-security-policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
         frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cache-control", "no-store"),
];

/// Why a request was turned away (HTTP 403, the text says why).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum Refusal {
    #[error("only local clients may use the dashboard")]
    NotLoopback,
    #[error("foreign Host header: the dashboard answers only to its own address")]
    ForeignHost,
    #[error("foreign Origin: state changes come only from the dashboard's own page")]
    ForeignOrigin,
    #[error("missing or wrong dashboard token")]
    BadToken,
}

/// The names this server answers to: `127.0.0.1:PORT`, `localhost:PORT`,
/// `[::1]:PORT`.
fn own_host(value: &str, port: u16) -> bool {
    let Some((host, p)) = value.rsplit_once(':') else {
        return false;
    };
    p.parse::<u16>().is_ok_and(|p| p == port)
        && (host == "127.0.0.1" || host == "[::1]" || host.eq_ignore_ascii_case("localhost"))
}

/// Checks every request: a loopback peer naming us in `Host`.
pub(super) fn check_request(
    peer: SocketAddr,
    headers: &HeaderMap,
    port: u16,
) -> Result<(), Refusal> {
    if !peer.ip().is_loopback() {
        return Err(Refusal::NotLoopback);
    }
    let host = headers.get(HOST).and_then(|h| h.to_str().ok());
    match host {
        Some(h) if own_host(h, port) => Ok(()),
        _ => Err(Refusal::ForeignHost),
    }
}

/// Checks a state change: our own origin (when the browser says) and the
/// page's token.
pub(super) fn check_change(headers: &HeaderMap, port: u16, token: &str) -> Result<(), Refusal> {
    if let Some(origin) = headers.get(ORIGIN) {
        let own = origin
            .to_str()
            .ok()
            .and_then(|o| o.strip_prefix("http://"))
            .is_some_and(|o| own_host(o, port));
        if !own {
            return Err(Refusal::ForeignOrigin);
        }
    }
    let given = headers
        .get(TOKEN_HEADER)
        .map(|t| t.as_bytes())
        .unwrap_or_default();
    if same(given, token.as_bytes()) {
        Ok(())
    } else {
        Err(Refusal::BadToken)
    }
}

/// Equality in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A fresh token for this process: 32 random bytes, hex.
pub(super) fn new_token() -> String {
    rand::random::<[u8; 32]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("header value"));
        }
        h
    }

    const LOCAL: &str = "127.0.0.1:40000";

    #[test]
    fn only_loopback_peers_naming_us() {
        let peer: SocketAddr = LOCAL.parse().expect("addr");
        let port = 50750;
        for ok in [
            "127.0.0.1:50750",
            "localhost:50750",
            "LOCALHOST:50750",
            "[::1]:50750",
        ] {
            assert_eq!(
                check_request(peer, &headers(&[("host", ok)]), port),
                Ok(()),
                "{ok}"
            );
        }
        for bad in [
            "evil.example:50750",
            "127.0.0.1:50751",
            "127.0.0.1",
            "localhost.evil.example:50750",
            "",
        ] {
            assert_eq!(
                check_request(peer, &headers(&[("host", bad)]), port),
                Err(Refusal::ForeignHost),
                "{bad}"
            );
        }
        assert_eq!(
            check_request(peer, &HeaderMap::new(), port),
            Err(Refusal::ForeignHost)
        );
        let remote: SocketAddr = "192.0.2.1:40000".parse().expect("addr");
        assert_eq!(
            check_request(remote, &headers(&[("host", "127.0.0.1:50750")]), port),
            Err(Refusal::NotLoopback)
        );
    }

    #[test]
    fn changes_need_the_token_and_our_origin() {
        let token = new_token();
        assert_eq!(token.len(), 64);
        assert_ne!(token, new_token());
        let port = 50750;
        let ok = headers(&[(TOKEN_HEADER, &token)]);
        assert_eq!(check_change(&ok, port, &token), Ok(()));
        let with_origin = headers(&[(TOKEN_HEADER, &token), ("origin", "http://127.0.0.1:50750")]);
        assert_eq!(check_change(&with_origin, port, &token), Ok(()));
        let foreign = headers(&[(TOKEN_HEADER, &token), ("origin", "http://evil.example")]);
        assert_eq!(
            check_change(&foreign, port, &token),
            Err(Refusal::ForeignOrigin)
        );
        let null = headers(&[(TOKEN_HEADER, &token), ("origin", "null")]);
        assert_eq!(
            check_change(&null, port, &token),
            Err(Refusal::ForeignOrigin)
        );
        assert_eq!(
            check_change(&HeaderMap::new(), port, &token),
            Err(Refusal::BadToken)
        );
        let wrong = headers(&[(TOKEN_HEADER, &token[1..])]);
        assert_eq!(check_change(&wrong, port, &token), Err(Refusal::BadToken));
    }
}
