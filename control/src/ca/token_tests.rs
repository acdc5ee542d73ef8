//! Tests of bootstrap tokens: the round trip and every refusal.

use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bulkhead_proto::SpiffeId;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;

use super::*;
use crate::ca::test_support::TestCa;

const HOUR: Duration = Duration::from_secs(60 * 60);

fn cart(td: &str) -> SpiffeId {
    SpiffeId::new(td, "shop", "cart").unwrap()
}

/// A token with arbitrary claims JSON, correctly signed with `key_pem`: for
/// checks that come after the signature.
fn signed_token(key_pem: &str, claims_json: &str) -> String {
    let rng = SystemRandom::new();
    let der = PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let key = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        der.secret_pkcs8_der(),
        &rng,
    )
    .unwrap();
    let signed = format!("bh1.{}", URL_SAFE_NO_PAD.encode(claims_json));
    let sig = key.sign(&rng, signed.as_bytes()).unwrap();
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig))
}

#[test]
fn round_trip() {
    let test = TestCa::new("example.org");
    let now = SystemTime::now();
    let token = mint_token(
        &test.issuer_key_pem(),
        &cart("example.org"),
        HOUR,
        true,
        now,
    )
    .unwrap();
    assert!(token.starts_with("bh1."));

    let claims = test.ca.verify_token(&token, now).unwrap();
    assert_eq!(claims.identity, cart("example.org"));
    assert!(claims.once);
    assert_eq!(claims.id.len(), 32);
    assert!(claims.id.bytes().all(|b| b.is_ascii_hexdigit()));
    let secs = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(secs(claims.issued_at), secs(now));
    assert_eq!(secs(claims.expires_at), secs(now) + HOUR.as_secs());

    let reusable = mint_token(
        &test.issuer_key_pem(),
        &cart("example.org"),
        HOUR,
        false,
        now,
    )
    .unwrap();
    let again = test.ca.verify_token(&reusable, now).unwrap();
    assert!(!again.once);
    assert_ne!(again.id, claims.id, "each token has its own jti");
}

#[test]
fn expired() {
    let test = TestCa::new("example.org");
    let now = SystemTime::now();
    let token = mint_token(
        &test.issuer_key_pem(),
        &cart("example.org"),
        HOUR,
        true,
        now,
    )
    .unwrap();
    assert!(
        test.ca
            .verify_token(&token, now + HOUR - Duration::from_secs(1))
            .is_ok()
    );
    for later in [now + HOUR, now + 2 * HOUR] {
        let err = test.ca.verify_token(&token, later).unwrap_err();
        assert!(matches!(err, TokenError::Expired { .. }), "{err}");
    }
}

#[test]
fn issued_in_the_future() {
    let test = TestCa::new("example.org");
    let now = SystemTime::now();
    let token = mint_token(
        &test.issuer_key_pem(),
        &cart("example.org"),
        HOUR,
        true,
        now,
    )
    .unwrap();
    // Within the five-minute skew allowance the token is accepted.
    assert!(
        test.ca
            .verify_token(&token, now - Duration::from_secs(4 * 60))
            .is_ok()
    );
    let err = test
        .ca
        .verify_token(&token, now - Duration::from_secs(10 * 60))
        .unwrap_err();
    assert!(matches!(err, TokenError::IssuedInFuture { .. }), "{err}");
}

#[test]
fn tampered() {
    let test = TestCa::new("example.org");
    let now = SystemTime::now();
    let key = test.issuer_key_pem();
    let token = mint_token(&key, &cart("example.org"), HOUR, true, now).unwrap();
    let admin = SpiffeId::new("example.org", "shop", "admin").unwrap();
    let other = mint_token(&key, &admin, HOUR, false, now).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let other_parts: Vec<&str> = other.split('.').collect();

    // Another token's claims under this token's signature.
    let swapped = format!("bh1.{}.{}", other_parts[1], parts[2]);
    let err = test.ca.verify_token(&swapped, now).unwrap_err();
    assert!(matches!(err, TokenError::BadSignature), "{err}");

    // One signature character changed (the first: the last carries padding bits).
    let mut sig = parts[2].to_owned().into_bytes();
    sig[0] = if sig[0] == b'A' { b'B' } else { b'A' };
    let altered = format!("bh1.{}.{}", parts[1], String::from_utf8(sig).unwrap());
    let err = test.ca.verify_token(&altered, now).unwrap_err();
    assert!(matches!(err, TokenError::BadSignature), "{err}");
}

#[test]
fn foreign_issuer() {
    let ours = TestCa::new("example.org");
    let theirs = TestCa::new("example.org");
    let now = SystemTime::now();
    let token = mint_token(
        &theirs.issuer_key_pem(),
        &cart("example.org"),
        HOUR,
        true,
        now,
    )
    .unwrap();
    let err = ours.ca.verify_token(&token, now).unwrap_err();
    assert!(matches!(err, TokenError::BadSignature), "{err}");
    assert!(theirs.ca.verify_token(&token, now).is_ok());
}

#[test]
fn foreign_trust_domain() {
    let test = TestCa::new("example.org");
    let now = SystemTime::now();
    let token = mint_token(&test.issuer_key_pem(), &cart("other.org"), HOUR, true, now).unwrap();
    let err = test.ca.verify_token(&token, now).unwrap_err();
    assert!(
        matches!(&err, TokenError::ForeignTrustDomain { identity, expected }
            if identity == "spiffe://other.org/ns/shop/sa/cart" && expected == "example.org"),
        "{err}"
    );
}

#[test]
fn bad_identity() {
    let test = TestCa::new("example.org");
    let now = SystemTime::now();
    let iat = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = format!(
        r#"{{"v":1,"sub":"spiffe://example.org/ns/Shop/sa/cart","iat":{iat},"exp":{},"jti":"{}","once":true}}"#,
        iat + 3600,
        "ab".repeat(16)
    );
    let token = signed_token(&test.issuer_key_pem(), &claims);
    let err = test.ca.verify_token(&token, now).unwrap_err();
    assert!(matches!(err, TokenError::BadIdentity(_)), "{err}");
}

#[test]
fn malformed() {
    let test = TestCa::new("example.org");
    let now = SystemTime::now();
    let key = test.issuer_key_pem();
    let iat = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let jti = "ab".repeat(16);
    let sub = "spiffe://example.org/ns/shop/sa/cart";
    let claims = |v: u32, jti: &str, exp: u64, extra: &str| {
        format!(
            r#"{{"v":{v},"sub":"{sub}","iat":{iat},"exp":{exp},"jti":"{jti}","once":true{extra}}}"#
        )
    };
    assert!(
        test.ca
            .verify_token(&signed_token(&key, &claims(1, &jti, iat + 60, "")), now)
            .is_ok(),
        "the template itself is valid"
    );

    let cases = [
        ("empty", String::new()),
        ("two parts", "bh1.abc".to_owned()),
        ("four parts", "bh1.a.b.c".to_owned()),
        ("other scheme", "eyJhbGciOiJ9.e30.sig".to_owned()),
        ("unknown version", "bh2.e30.AAAA".to_owned()),
        ("signature not base64", "bh1.e30.!!!".to_owned()),
        ("short signature", "bh1.e30.AAAA".to_owned()),
        (
            "oversize",
            format!("bh1.{}.AAAA", "A".repeat(MAX_TOKEN_LEN)),
        ),
        ("not JSON", signed_token(&key, "not json")),
        (
            "claims v2",
            signed_token(&key, &claims(2, &jti, iat + 60, "")),
        ),
        (
            "bad jti",
            signed_token(&key, &claims(1, "xyz", iat + 60, "")),
        ),
        (
            "exp before iat",
            signed_token(&key, &claims(1, &jti, iat - 1, "")),
        ),
        (
            "unknown claim",
            signed_token(&key, &claims(1, &jti, iat + 60, r#","admin":true"#)),
        ),
    ];
    for (name, token) in cases {
        let err = test.ca.verify_token(&token, now).unwrap_err();
        assert!(matches!(err, TokenError::Malformed(_)), "{name}: {err}");
        assert!(
            !err.to_string().contains(&token) || token.is_empty(),
            "{name}: token echoed"
        );
    }
}

#[test]
fn minting_refuses_bad_input() {
    let test = TestCa::new("example.org");
    let now = SystemTime::now();
    let err = mint_token(
        &test.issuer_key_pem(),
        &cart("example.org"),
        Duration::ZERO,
        true,
        now,
    )
    .unwrap_err();
    assert!(matches!(err, TokenError::ZeroTtl), "{err}");

    let cert_pem = std::fs::read_to_string(&test.files.issuer_cert).unwrap();
    let err = mint_token(&cert_pem, &cart("example.org"), HOUR, true, now).unwrap_err();
    assert!(matches!(err, TokenError::BadKey(_)), "{err}");

    let ed25519 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let err = mint_token(
        &ed25519.serialize_pem(),
        &cart("example.org"),
        HOUR,
        true,
        now,
    )
    .unwrap_err();
    assert!(matches!(err, TokenError::BadKey(_)), "{err}");
}
