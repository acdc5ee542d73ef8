//! Bootstrap tokens: a workload's first attestation, minted offline by
//! `bulkheadctl token create` with the issuer key and checked by the control plane
//! with the issuer certificate's public key.
//!
//! Format (at most [`MAX_TOKEN_LEN`] bytes, three dot-separated parts):
//!
//! ```text
//! bh1.<payload>.<signature>
//! ```
//!
//! - `bh1` names the format and its version.
//! - `<payload>`: base64url without padding of the JSON claims
//!   `{"v":1,"sub":"spiffe://<td>/ns/<ns>/sa/<sa>","iat":<unix s>,"exp":<unix s>,"jti":"<32 hex digits>","once":<bool>}`.
//!   `sub` is the one identity the token attests, `jti` a random 128-bit id,
//!   `once` asks the control plane to accept the token a single time.
//! - `<signature>`: base64url without padding of the 64-byte fixed-size (`r || s`)
//!   ECDSA P-256 SHA-256 signature over the ASCII bytes `bh1.<payload>`.
//!
//! Verification refuses, in this order: oversize or malformed tokens (structure,
//! base64, JSON, unknown version), signatures that do not verify with this issuer's
//! key (a foreign issuer or tampering), identities that do not parse or are outside
//! the trust domain, `iat` more than five minutes ahead of the clock, and `exp` at or
//! before now. One-time use is not enforced here: the caller records `jti` in the
//! store when `once` is set.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bulkhead_proto::{IdentityError, SpiffeId};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, UnparsedPublicKey,
};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

use super::issuer::unix_secs;

/// Longest token accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 4096;

const VERSION_TAG: &str = "bh1";
const CLAIMS_VERSION: u32 = 1;
/// How far ahead of our clock a token's `iat` may be (the minting machine's clock
/// may run fast); beyond that the token is refused rather than trusted early.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
const SIGNATURE_LEN: usize = 64;
const JTI_BYTES: usize = 16;

/// What a valid token attests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenClaims {
    pub identity: SpiffeId,
    /// The token's `jti`: record it to enforce one-time use.
    pub id: String,
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
    /// The token may be used once only.
    pub once: bool,
}

/// Why a token could not be minted or was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("malformed bootstrap token: {0}")]
    Malformed(String),
    #[error(
        "bootstrap token signature does not verify with this CA's issuer key (minted by another CA, or altered)"
    )]
    BadSignature,
    #[error("bootstrap token expired at {}", humantime::format_rfc3339_seconds(*.expired_at))]
    Expired { expired_at: SystemTime },
    #[error("bootstrap token was issued at {}, in the future: check the clocks", humantime::format_rfc3339_seconds(*.issued_at))]
    IssuedInFuture { issued_at: SystemTime },
    #[error("bootstrap token is for {identity}, outside trust domain {expected:?}")]
    ForeignTrustDomain { identity: String, expected: String },
    #[error("bootstrap token names an invalid identity: {0}")]
    BadIdentity(IdentityError),
    #[error("cannot mint a token with this key: {0}")]
    BadKey(String),
    #[error("token lifetime must be at least one second")]
    ZeroTtl,
    #[error("could not sign the token")]
    Sign,
}

/// The signed JSON payload.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Claims {
    v: u32,
    sub: String,
    iat: u64,
    exp: u64,
    jti: String,
    once: bool,
}

/// Mints a token for `identity` valid for `ttl` from `now`, signed with the
/// issuer's PKCS#8 P-256 key given as PEM text.
pub fn mint_token(
    issuer_key_pem: &str,
    identity: &SpiffeId,
    ttl: Duration,
    once: bool,
    now: SystemTime,
) -> Result<String, TokenError> {
    if ttl.as_secs() == 0 {
        return Err(TokenError::ZeroTtl);
    }
    let rng = SystemRandom::new();
    let key_der = PrivatePkcs8KeyDer::from_pem_slice(issuer_key_pem.as_bytes())
        .map_err(|e| TokenError::BadKey(format!("no PKCS#8 PRIVATE KEY in PEM: {e}")))?;
    let key = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        key_der.secret_pkcs8_der(),
        &rng,
    )
    .map_err(|e| TokenError::BadKey(format!("not an ECDSA P-256 key: {e}")))?;

    let mut jti = [0u8; JTI_BYTES];
    rng.fill(&mut jti).map_err(|_| TokenError::Sign)?;
    let iat = unix_secs(now);
    let claims = Claims {
        v: CLAIMS_VERSION,
        sub: identity.to_string(),
        iat,
        exp: iat.saturating_add(ttl.as_secs()),
        jti: jti.iter().map(|b| format!("{b:02x}")).collect(),
        once,
    };
    let json = serde_json::to_vec(&claims).map_err(|_| TokenError::Sign)?;
    let signed_part = format!("{VERSION_TAG}.{}", URL_SAFE_NO_PAD.encode(json));
    let signature = key
        .sign(&rng, signed_part.as_bytes())
        .map_err(|_| TokenError::Sign)?;
    let token = format!("{signed_part}.{}", URL_SAFE_NO_PAD.encode(signature));
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed(format!(
            "token would be {} bytes, more than {MAX_TOKEN_LEN}",
            token.len()
        )));
    }
    Ok(token)
}

/// Checks `token` against the issuer's public key (an uncompressed P-256 point)
/// and trust domain. Error messages never quote the token: it is a credential.
pub fn verify(
    token: &str,
    issuer_key: &[u8],
    trust_domain: &str,
    now: SystemTime,
) -> Result<TokenClaims, TokenError> {
    let malformed = |why: &str| TokenError::Malformed(why.to_owned());
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed(format!(
            "{} bytes, more than {MAX_TOKEN_LEN}",
            token.len()
        )));
    }
    let mut parts = token.split('.');
    let (Some(tag), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("expected bh1.<claims>.<signature>"));
    };
    if tag != VERSION_TAG {
        return Err(malformed(if tag.starts_with("bh") {
            "unknown token version (this control plane reads bh1)"
        } else {
            "not a Bulkhead bootstrap token (expected bh1.<claims>.<signature>)"
        }));
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| malformed("signature is not base64url"))?;
    if signature.len() != SIGNATURE_LEN {
        return Err(malformed("signature is not a 64-byte P-256 signature"));
    }
    let signed_part = &token[..tag.len() + 1 + payload.len()];
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, issuer_key)
        .verify(signed_part.as_bytes(), &signature)
        .map_err(|_| TokenError::BadSignature)?;

    let json = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| malformed("claims are not base64url"))?;
    let claims: Claims = serde_json::from_slice(&json)
        .map_err(|e| TokenError::Malformed(format!("claims are not valid JSON: {e}")))?;
    if claims.v != CLAIMS_VERSION {
        return Err(malformed(
            "unknown claims version (this control plane reads v1)",
        ));
    }
    if claims.jti.len() != 2 * JTI_BYTES || !claims.jti.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(malformed("jti is not 32 hex digits"));
    }
    if claims.exp <= claims.iat {
        return Err(malformed("exp is not after iat"));
    }
    let identity: SpiffeId = claims.sub.parse().map_err(TokenError::BadIdentity)?;
    if identity.trust_domain() != trust_domain {
        return Err(TokenError::ForeignTrustDomain {
            identity: claims.sub,
            expected: trust_domain.to_owned(),
        });
    }
    let at = |secs: u64| {
        UNIX_EPOCH
            .checked_add(Duration::from_secs(secs))
            .ok_or_else(|| malformed("timestamp out of range"))
    };
    let (issued_at, expires_at) = (at(claims.iat)?, at(claims.exp)?);
    if claims.iat > unix_secs(now).saturating_add(MAX_CLOCK_SKEW.as_secs()) {
        return Err(TokenError::IssuedInFuture { issued_at });
    }
    if claims.exp <= unix_secs(now) {
        return Err(TokenError::Expired {
            expired_at: expires_at,
        });
    }
    Ok(TokenClaims {
        identity,
        id: claims.jti,
        issued_at,
        expires_at,
        once: claims.once,
    })
}

#[cfg(test)]
#[path = "token_tests.rs"]
mod tests;
