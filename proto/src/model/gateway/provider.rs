//! A `Gateway`'s end-user token providers (`spec.jwt`): issuer, audiences,
//! keys from a JWKS URL or inline (public signature keys only), claims
//! copied into headers. Read and written here; checked by the gateway.

use serde::{Deserialize, Serialize};

use super::super::check;
use super::super::error::FieldErrors;
use super::{ClaimToHeader, JwksSource, JwtProvider, MAX_TEXT};

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawJwtProvider {
    name: String,
    issuer: String,
    audiences: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jwks_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jwks: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jwks_ca: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    claim_to_headers: Option<Vec<RawClaimToHeader>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    forward_token: Option<bool>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClaimToHeader {
    claim: String,
    header: String,
}

/// Largest inline JWKS or `jwksCa` accepted.
const MAX_KEYS_BYTES: usize = 64 * 1024;
fn text(errs: &mut FieldErrors, path: &str, what: &str, value: String) -> Option<String> {
    if value.is_empty() || value.len() > MAX_TEXT || value.chars().any(char::is_control) {
        errs.push(
            path,
            format!(
                "expected {what} (1-{MAX_TEXT} characters, no control characters), got {}",
                check::got(&value)
            ),
        );
        return None;
    }
    Some(value)
}

pub(super) fn provider(
    errs: &mut FieldErrors,
    path: &str,
    raw: RawJwtProvider,
) -> Option<JwtProvider> {
    let name = check::dns_label(errs, &format!("{path}.name"), raw.name);
    let issuer = text(errs, &format!("{path}.issuer"), "an issuer", raw.issuer);
    let audiences = check::required_list(
        errs,
        &format!("{path}.audiences"),
        "audience",
        raw.audiences,
        |errs, path, a| text(errs, path, "an audience", a),
    );
    let keys = match (raw.jwks_uri, raw.jwks) {
        (Some(uri), None) => jwks_uri(errs, &format!("{path}.jwksUri"), uri).map(JwksSource::Uri),
        (None, Some(jwks)) => {
            inline_jwks(errs, &format!("{path}.jwks"), jwks).map(JwksSource::Inline)
        }
        (Some(_), Some(_)) => {
            errs.push(path, "expected jwksUri or jwks, not both");
            None
        }
        (None, None) => {
            errs.push(
                path,
                "expected jwksUri (a JWKS URL) or jwks (the JWKS document inline)",
            );
            None
        }
    };
    let jwks_ca = match raw.jwks_ca {
        None => Some(None),
        Some(pem) => {
            let https = matches!(&keys, Some(JwksSource::Uri(u)) if u.starts_with("https://"));
            if !https {
                errs.push(
                    format!("{path}.jwksCa"),
                    "only verifies an https:// jwksUri; leave it out",
                );
                None
            } else if pem.len() > MAX_KEYS_BYTES || !pem.contains("-----BEGIN CERTIFICATE-----") {
                errs.push(
                    format!("{path}.jwksCa"),
                    format!("expected PEM certificates (at most {MAX_KEYS_BYTES} bytes)"),
                );
                None
            } else {
                Some(Some(pem))
            }
        }
    };
    let claim_to_headers = check::optional_list(
        errs,
        &format!("{path}.claimToHeaders"),
        "claim",
        raw.claim_to_headers,
        claim_to_header,
    );
    Some(JwtProvider {
        name: name?,
        issuer: issuer?,
        audiences: audiences?,
        keys: keys?,
        jwks_ca: jwks_ca?,
        claim_to_headers: claim_to_headers?,
        forward_token: raw.forward_token.unwrap_or(false),
    })
}

fn jwks_uri(errs: &mut FieldErrors, path: &str, uri: String) -> Option<String> {
    let rest = uri
        .strip_prefix("https://")
        .or_else(|| uri.strip_prefix("http://"));
    let host_ok = rest.is_some_and(|r| {
        let authority = r.split('/').next().unwrap_or("");
        !authority.is_empty() && !authority.contains('@')
    });
    let clean = uri.len() <= MAX_TEXT
        && uri
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'<' | b'>' | b'\\' | b'#'));
    if host_ok && clean {
        Some(uri)
    } else {
        errs.push(
            path,
            format!(
                "expected an http:// or https:// URL with a host (no user info, no fragment), got {}",
                check::got(&uri)
            ),
        );
        None
    }
}

/// A JWKS given inline: a mapping, or the same as a JSON string. Only
/// public keys of the kinds the gateway verifies (RSA, EC P-256, OKP
/// Ed25519); a shared secret (`oct`) could sign as well as verify.
fn inline_jwks(
    errs: &mut FieldErrors,
    path: &str,
    raw: serde_json::Value,
) -> Option<serde_json::Value> {
    let value = match raw {
        serde_json::Value::String(text) if text.len() <= MAX_KEYS_BYTES => {
            match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(v) => v,
                Err(e) => {
                    errs.push(path, format!("expected a JWKS JSON document: {e}"));
                    return None;
                }
            }
        }
        serde_json::Value::String(_) => {
            errs.push(
                path,
                format!("expected at most {MAX_KEYS_BYTES} bytes of JWKS"),
            );
            return None;
        }
        other => other,
    };
    let Some(keys) = value.get("keys").and_then(|k| k.as_array()) else {
        errs.push(
            path,
            "expected a JWKS: a mapping with `keys`, a list of JSON Web Keys",
        );
        return None;
    };
    if keys.is_empty() {
        errs.push(format!("{path}.keys"), "expected at least one key");
        return None;
    }
    let mut ok = true;
    for (i, key) in keys.iter().enumerate() {
        let kty = key.get("kty").and_then(|k| k.as_str()).unwrap_or("");
        let needs: &[&str] = match kty {
            "RSA" => &["n", "e"],
            "EC" => &["crv", "x", "y"],
            "OKP" => &["crv", "x"],
            _ => {
                errs.push(
                    format!("{path}.keys[{i}].kty"),
                    format!(
                        "expected RSA, EC or OKP (public keys for RS256, ES256, EdDSA), got {}",
                        check::got(kty)
                    ),
                );
                ok = false;
                continue;
            }
        };
        for field in needs {
            if key.get(field).and_then(|v| v.as_str()).is_none() {
                errs.push(
                    format!("{path}.keys[{i}].{field}"),
                    format!("missing; a {kty} key needs {}", needs.join(", ")),
                );
                ok = false;
            }
        }
        if key.get("d").is_some() {
            errs.push(
                format!("{path}.keys[{i}].d"),
                "a private key: give only the public key",
            );
            ok = false;
        }
    }
    ok.then_some(value)
}

fn claim_to_header(
    errs: &mut FieldErrors,
    path: &str,
    raw: RawClaimToHeader,
) -> Option<ClaimToHeader> {
    let claim = text(errs, &format!("{path}.claim"), "a claim name", raw.claim);
    let header = header_name(errs, &format!("{path}.header"), raw.header);
    Some(ClaimToHeader {
        claim: claim?,
        header: header?,
    })
}

/// Headers the gateway itself owns or HTTP gives meaning to: a claim may
/// not be written into them.
const RESERVED_HEADERS: [&str; 9] = [
    "authorization",
    "host",
    "connection",
    "content-length",
    "transfer-encoding",
    "te",
    "upgrade",
    "cookie",
    "x-forwarded-client-cert",
];

fn header_name(errs: &mut FieldErrors, path: &str, raw: String) -> Option<String> {
    let lower = raw.to_ascii_lowercase();
    let token = !lower.is_empty()
        && lower.len() <= 128
        && lower
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token {
        errs.push(
            path,
            format!("expected an HTTP header name, got {}", check::got(&raw)),
        );
        None
    } else if lower.starts_with("x-bulkhead-") || RESERVED_HEADERS.contains(&lower.as_str()) {
        errs.push(
            path,
            format!("{} is reserved; choose another header", check::got(&raw)),
        );
        None
    } else {
        Some(lower)
    }
}

pub(super) fn provider_to_raw(p: &JwtProvider) -> RawJwtProvider {
    let (jwks_uri, jwks) = match &p.keys {
        JwksSource::Uri(uri) => (Some(uri.clone()), None),
        JwksSource::Inline(v) => (None, Some(v.clone())),
    };
    RawJwtProvider {
        name: p.name.clone(),
        issuer: p.issuer.clone(),
        audiences: p.audiences.clone(),
        jwks_uri,
        jwks,
        jwks_ca: p.jwks_ca.clone(),
        claim_to_headers: p.claim_to_headers.as_ref().map(|list| {
            list.iter()
                .map(|c| RawClaimToHeader {
                    claim: c.claim.clone(),
                    header: c.header.clone(),
                })
                .collect()
        }),
        forward_token: p.forward_token.then_some(true),
    }
}
