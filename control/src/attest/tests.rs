//! Tokens signed the way a kube-apiserver signs them (RS256 with an RSA key
//! made by openssl, ES256 with a P-256 key), checked against a JWKS file.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair,
};

use super::*;

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

enum Signer {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

struct Cluster {
    dir: tempfile::TempDir,
    signer: Signer,
    kid: String,
}

impl Cluster {
    /// An RSA issuer key from openssl (ring cannot generate RSA keys).
    fn rsa() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("sa.key");
        let der = dir.path().join("sa.der");
        let ok = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&pem)
            .status()
            .expect("openssl is needed for this test (apt-get install openssl)")
            .success()
            && std::process::Command::new("openssl")
                .args(["pkcs8", "-topk8", "-nocrypt", "-outform", "DER", "-in"])
                .arg(&pem)
                .arg("-out")
                .arg(&der)
                .status()
                .unwrap()
                .success();
        assert!(ok, "openssl failed");
        let key = RsaKeyPair::from_pkcs8(&std::fs::read(&der).unwrap()).unwrap();
        let modulus = std::process::Command::new("openssl")
            .args(["rsa", "-noout", "-modulus", "-in"])
            .arg(&pem)
            .output()
            .unwrap();
        let hex = String::from_utf8(modulus.stdout).unwrap();
        let hex = hex.trim().trim_start_matches("Modulus=");
        let n: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let jwk = serde_json::json!({"kty": "RSA", "alg": "RS256", "use": "sig", "kid": "rsa-1", "n": B64.encode(n), "e": "AQAB"});
        let c = Self {
            dir,
            signer: Signer::Rsa(key),
            kid: "rsa-1".into(),
        };
        c.write_jwks(&[jwk]);
        c
    }

    fn ec() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let point = key.public_key().as_ref().to_vec(); // 0x04 || x || y
        let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "kid": "ec-1", "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..])});
        let c = Self {
            dir,
            signer: Signer::Ec(key),
            kid: "ec-1".into(),
        };
        c.write_jwks(&[jwk]);
        c
    }

    fn jwks(&self) -> std::path::PathBuf {
        self.dir.path().join("jwks.json")
    }

    fn write_jwks(&self, keys: &[serde_json::Value]) {
        std::fs::write(self.jwks(), serde_json::json!({"keys": keys}).to_string()).unwrap();
    }

    fn token(&self, claims: serde_json::Value) -> String {
        let alg = match self.signer {
            Signer::Rsa(_) => "RS256",
            Signer::Ec(_) => "ES256",
        };
        self.token_with_header(
            serde_json::json!({"alg": alg, "kid": self.kid, "typ": "JWT"}),
            claims,
        )
    }

    fn token_with_header(&self, header: serde_json::Value, claims: serde_json::Value) -> String {
        let signing_input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let rng = ring::rand::SystemRandom::new();
        let sig = match &self.signer {
            Signer::Rsa(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(&RSA_PKCS1_SHA256, &rng, signing_input.as_bytes(), &mut sig)
                    .unwrap();
                sig
            }
            Signer::Ec(k) => k
                .sign(&rng, signing_input.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec(),
        };
        format!("{signing_input}.{}", B64.encode(sig))
    }

    fn verifier(&self) -> K8sVerifier {
        K8sVerifier::new(&self.jwks(), ISSUER, "bulkhead", "cluster.local").unwrap()
    }
}

/// Claims as a kube-apiserver writes them for a projected token.
fn claims(ns: &str, sa: &str) -> serde_json::Value {
    let now = now();
    serde_json::json!({
        "aud": ["bulkhead"], "exp": now + 3600, "iat": now, "nbf": now, "iss": ISSUER,
        "sub": format!("system:serviceaccount:{ns}:{sa}"),
        "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": sa, "uid": "3c5e0f4c-1f53-4d86-8c5f-6c8f2d1b2a10"},
                          "pod": {"name": "cart-7d9f", "uid": "0d5e7b58-2f7f-4d1d-9a51-1f2b3c4d5e6f"}, "node": {"name": "node-1", "uid": "u"}}
    })
}

#[test]
fn rs256_and_es256_tokens_attest_their_service_account() {
    for cluster in [Cluster::rsa(), Cluster::ec()] {
        let id = cluster
            .verifier()
            .verify(&cluster.token(claims("shop", "cart")))
            .unwrap();
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/cart");
    }
}

#[test]
fn refusals_say_why() {
    let c = Cluster::ec();
    let v = c.verifier();
    let mut expired = claims("shop", "cart");
    expired["exp"] = serde_json::json!(now() - 3600);
    assert!(
        matches!(v.verify(&c.token(expired)), Err(AttestError::Invalid(m)) if m.contains("Expired"))
    );
    let mut wrong_aud = claims("shop", "cart");
    wrong_aud["aud"] = serde_json::json!(["https://kubernetes.default.svc"]);
    assert!(
        matches!(v.verify(&c.token(wrong_aud)), Err(AttestError::Invalid(m)) if m.contains("Audience"))
    );
    let mut wrong_iss = claims("shop", "cart");
    wrong_iss["iss"] = serde_json::json!("https://evil.example");
    assert!(
        matches!(v.verify(&c.token(wrong_iss)), Err(AttestError::Invalid(m)) if m.contains("Issuer"))
    );
    let mut future = claims("shop", "cart");
    future["nbf"] = serde_json::json!(now() + 3600);
    assert!(matches!(
        v.verify(&c.token(future)),
        Err(AttestError::Invalid(_))
    ));
    let mut liar = claims("shop", "cart");
    liar["sub"] = serde_json::json!("system:serviceaccount:shop:admin");
    assert!(matches!(
        v.verify(&c.token(liar)),
        Err(AttestError::Inconsistent { .. })
    ));
    let mut anonymous = claims("shop", "cart");
    anonymous.as_object_mut().unwrap().remove("kubernetes.io");
    anonymous["sub"] = serde_json::json!("someone");
    assert!(matches!(
        v.verify(&c.token(anonymous)),
        Err(AttestError::NoIdentity)
    ));
    // A token from another cluster's key, an unknown kid, HMAC and `none`.
    let other = Cluster::ec();
    assert!(matches!(
        v.verify(&other.token(claims("shop", "cart"))),
        Err(AttestError::Invalid(_))
    ));
    let unknown_kid = c.token_with_header(
        serde_json::json!({"alg": "ES256", "kid": "nope"}),
        claims("shop", "cart"),
    );
    assert!(matches!(v.verify(&unknown_kid), Err(AttestError::UnknownKey(Some(k))) if k == "nope"));
    let hmac = format!(
        "{}.{}.{}",
        B64.encode(r#"{"alg":"HS256","kid":"ec-1"}"#),
        B64.encode(claims("shop", "cart").to_string()),
        B64.encode("sig")
    );
    assert!(matches!(v.verify(&hmac), Err(AttestError::Algorithm(_))));
    let none = format!(
        "{}.{}.",
        B64.encode(r#"{"alg":"none"}"#),
        B64.encode(claims("shop", "cart").to_string())
    );
    assert!(v.verify(&none).is_err());
    assert!(matches!(
        v.verify("garbage"),
        Err(AttestError::Malformed(_))
    ));
    assert!(matches!(
        v.verify(&"a".repeat(MAX_JWT_LEN + 1)),
        Err(AttestError::TooLarge)
    ));
    // Tampered payload.
    let good = c.token(claims("shop", "cart"));
    let parts: Vec<&str> = good.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        B64.encode(claims("shop", "admin").to_string()),
        parts[2]
    );
    assert!(matches!(v.verify(&forged), Err(AttestError::Invalid(_))));
}

#[test]
fn key_rotation_is_picked_up_from_the_file() {
    let old = Cluster::ec();
    let v = old.verifier();
    let new = Cluster::ec();
    // The cluster rotates: the file now holds the new key only.
    std::fs::copy(new.jwks(), old.jwks()).unwrap();
    let later = SystemTime::now() + std::time::Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(old.jwks())
        .unwrap()
        .set_modified(later)
        .unwrap();
    v.reload_if_changed();
    assert!(v.verify(&new.token(claims("shop", "cart"))).is_ok());
    assert!(v.verify(&old.token(claims("shop", "cart"))).is_err());
    // A broken file keeps the keys in use.
    std::fs::write(old.jwks(), "{not json").unwrap();
    std::fs::File::options()
        .write(true)
        .open(old.jwks())
        .unwrap()
        .set_modified(later + std::time::Duration::from_secs(5))
        .unwrap();
    v.reload_if_changed();
    assert!(v.verify(&new.token(claims("shop", "cart"))).is_ok());
}

#[test]
fn bad_jwks_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("jwks.json");
    assert!(matches!(
        K8sVerifier::new(&p, ISSUER, "bulkhead", "cluster.local"),
        Err(AttestError::Jwks { .. })
    ));
    std::fs::write(&p, r#"{"keys": []}"#).unwrap();
    let e = K8sVerifier::new(&p, ISSUER, "bulkhead", "cluster.local").unwrap_err();
    assert!(
        e.to_string().contains("jwks.json") && e.to_string().contains("no keys"),
        "{e}"
    );
}
