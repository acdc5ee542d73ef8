//! End-user authentication on a route: the bearer token checked against
//! its provider (signature with a key bound to one of ES256, RS256 and
//! EdDSA; `iss`; `aud`; `exp` and `nbf` with [`CLOCK_SKEW`]), then the
//! claims the provider names copied into headers and the token removed
//! unless the provider forwards it.
//!
//! Outcomes ([`Rejection`]): no token where one is required, or any
//! malformed `Authorization`, or a bad token → 401 with `WWW-Authenticate:
//! Bearer`; the provider has no keys yet → 503. Nothing is let through
//! that was not verified, and `require: if-present` only excuses a request
//! that carries no `Authorization` at all.

use bulkhead_proto::model::Require;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use jsonwebtoken::{Algorithm, Validation};

use super::routes::Auth;

/// Leeway on `exp` and `nbf` (issue 14).
pub(super) const CLOCK_SKEW_SECS: u64 = 60;
#[cfg(test)]
const CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(CLOCK_SKEW_SECS);
/// Longest token accepted.
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Longest claim value copied into a header.
const MAX_CLAIM_HEADER_BYTES: usize = 4096;

/// The verified claims of a request's token.
pub(super) type Claims = serde_json::Map<String, serde_json::Value>;

/// Why a request is refused.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Rejection {
    /// No token on a route that requires one.
    Missing,
    /// `Authorization` is not one `Bearer <JWT>`.
    Malformed(&'static str),
    /// The token fails a check; the detail goes to the log, not the client.
    Invalid(String),
    /// The provider has no keys yet (never fetched): 503, never allow.
    NoKeys,
}

impl Rejection {
    pub(super) fn status(&self) -> StatusCode {
        match self {
            Rejection::NoKeys => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// The bounded `reason` label and `x-bulkhead-error` value.
    pub(super) fn reason(&self) -> &'static str {
        match self {
            Rejection::Missing => "token-missing",
            Rejection::Malformed(_) => "token-malformed",
            Rejection::Invalid(_) => "token-invalid",
            Rejection::NoKeys => "no-keys",
        }
    }

    /// RFC 6750 §3: the challenge, with an error code when a token was sent.
    pub(super) fn challenge(&self) -> Option<HeaderValue> {
        match self {
            Rejection::Missing => Some(HeaderValue::from_static("Bearer")),
            Rejection::Malformed(_) => {
                Some(HeaderValue::from_static("Bearer error=\"invalid_request\""))
            }
            Rejection::Invalid(_) => {
                Some(HeaderValue::from_static("Bearer error=\"invalid_token\""))
            }
            Rejection::NoKeys => None,
        }
    }

    /// What the client is told (never which check failed in detail).
    pub(super) fn message(&self) -> &'static str {
        match self {
            Rejection::Missing => "bulkhead: this route requires a bearer token",
            Rejection::Malformed(what) => what,
            Rejection::Invalid(_) => "bulkhead: the bearer token is not valid",
            Rejection::NoKeys => {
                "bulkhead: the token issuer's keys are not available yet; try again later"
            }
        }
    }
}

/// Checks the request's token for `auth`; on success the claims headers
/// are set (client copies were removed before), and the token removed
/// unless forwarded. `Ok(None)`: no token, and the route does not need one.
pub(super) async fn authenticate(
    auth: &Auth,
    headers: &mut HeaderMap,
) -> Result<Option<Claims>, Rejection> {
    let token = match bearer(headers)? {
        None if auth.require == Require::Always => return Err(Rejection::Missing),
        None => return Ok(None),
        Some(token) => token,
    };
    let claims = verify(auth, &token).await?;
    if !auth.provider.forward_token {
        headers.remove(header::AUTHORIZATION);
    }
    for mapping in auth.provider.claim_to_headers.iter().flatten() {
        if let Some(value) = claims.get(&mapping.claim).and_then(claim_header_value)
            && let Ok(name) = http::HeaderName::try_from(mapping.header.as_str())
        {
            headers.insert(name, value);
        }
    }
    Ok(Some(claims))
}

/// The one `Authorization: Bearer <token>`; `None` when absent.
pub(super) fn bearer(headers: &HeaderMap) -> Result<Option<String>, Rejection> {
    let mut all = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(Rejection::Malformed(
            "bulkhead: more than one Authorization header",
        ));
    }
    let malformed = Rejection::Malformed(
        "bulkhead: expected `Authorization: Bearer <JWT>` (three base64url parts)",
    );
    let text = value
        .to_str()
        .map_err(|_| Rejection::Malformed("bulkhead: Authorization is not ASCII"))?;
    let (scheme, token) = text.split_once(' ').ok_or(malformed)?;
    let token = token.trim_start_matches(' ');
    let well_formed = scheme.eq_ignore_ascii_case("bearer")
        && !token.is_empty()
        && token.len() <= MAX_TOKEN_BYTES
        && token.split('.').count() == 3
        && token.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !well_formed {
        return Err(Rejection::Malformed(
            "bulkhead: expected `Authorization: Bearer <JWT>` (three base64url parts)",
        ));
    }
    Ok(Some(token.to_owned()))
}

/// The algorithms a gateway ever verifies. Never `none`, never HMAC: a
/// provider's keys are public, and a public key used as an HMAC secret
/// would let anyone sign.
const ACCEPTED: [Algorithm; 3] = [Algorithm::ES256, Algorithm::RS256, Algorithm::EdDSA];

async fn verify(auth: &Auth, token: &str) -> Result<Claims, Rejection> {
    // The header names the algorithm and key; nothing in it is trusted
    // beyond choosing among the provider's own keys for that algorithm.
    let header = jsonwebtoken::decode_header(token)
        .map_err(|e| Rejection::Invalid(format!("header: {e}")))?;
    if !ACCEPTED.contains(&header.alg) {
        return Err(Rejection::Invalid(format!(
            "algorithm {:?} is not accepted (ES256, RS256, EdDSA only)",
            header.alg
        )));
    }
    let mut set = auth.keys.current().ok_or(Rejection::NoKeys)?;
    if let Some(kid) = header.kid.as_deref()
        && !set.has_kid(kid)
    {
        // Perhaps the issuer rotated: one refetch, rate-limited per provider.
        set = auth.keys.refetch_for_kid().await.ok_or(Rejection::NoKeys)?;
    }
    let mut validation = Validation::new(header.alg);
    validation.algorithms = vec![header.alg];
    validation.leeway = CLOCK_SKEW_SECS;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.set_issuer(&[auth.provider.issuer.as_str()]);
    validation.set_audience(&auth.provider.audiences);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    let mut last = None;
    for key in set.candidates(header.kid.as_deref(), header.alg) {
        match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
            Ok(data) => return Ok(data.claims),
            Err(e) => last = Some(e.to_string()),
        }
    }
    Err(Rejection::Invalid(last.unwrap_or_else(|| {
        format!(
            "no key for kid {:?} and algorithm {:?}",
            header.kid, header.alg
        )
    })))
}

/// A claim as a header value: a string as is, anything else as JSON;
/// `None` when it cannot be a header value (control characters) or is
/// too long.
fn claim_header_value(claim: &serde_json::Value) -> Option<HeaderValue> {
    let text = match claim {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => return None,
        other => other.to_string(),
    };
    if text.len() > MAX_CLAIM_HEADER_BYTES {
        return None;
    }
    HeaderValue::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth_header(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn malformed_authorization_is_refused() {
        for bad in [
            "Basic dXNlcjpwYXNz",
            "Bearer",
            "Bearer ",
            "Bearer a.b",
            "Bearer a.b.c.d",
            "Bearer a..c",
            "Bearer a.b.c=",
            "Bearer a.b.c extra",
            "a.b.c",
        ] {
            assert!(
                matches!(bearer(&auth_header(bad)), Err(Rejection::Malformed(_))),
                "{bad}"
            );
        }
        let mut two = auth_header("Bearer a.b.c");
        two.append(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer d.e.f"),
        );
        assert!(matches!(bearer(&two), Err(Rejection::Malformed(_))));
        assert_eq!(
            bearer(&auth_header("bearer a.b.c")).unwrap().as_deref(),
            Some("a.b.c")
        );
        assert_eq!(bearer(&HeaderMap::new()).unwrap(), None);
    }

    #[test]
    fn rejections_map_to_statuses() {
        assert_eq!(Rejection::Missing.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(Rejection::Malformed("x").status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            Rejection::Invalid("x".into()).status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(Rejection::NoKeys.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(Rejection::Missing.challenge().is_some());
        assert_eq!(CLOCK_SKEW.as_secs(), 60);
    }

    #[test]
    fn claims_become_header_values() {
        assert_eq!(
            claim_header_value(&serde_json::json!("u-1")).unwrap(),
            "u-1"
        );
        assert_eq!(claim_header_value(&serde_json::json!(7)).unwrap(), "7");
        assert_eq!(
            claim_header_value(&serde_json::json!(["a", "b"])).unwrap(),
            "[\"a\",\"b\"]"
        );
        assert!(claim_header_value(&serde_json::json!("a\nb")).is_none());
        assert!(claim_header_value(&serde_json::Value::Null).is_none());
    }
}
