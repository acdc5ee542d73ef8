//! Tests of CSR certification: what a leaf holds, and every refusal.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime};

use bulkhead_proto::SpiffeId;
use bulkhead_proto::identity::uri_sans;
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    PKCS_ECDSA_P384_SHA384, PKCS_ED25519, SanType,
};
use rustls_pki_types::CertificateSigningRequestDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::prelude::X509Certificate;

use super::*;
use crate::ca::issuer::unix_secs;
use crate::ca::test_support::{TestCa, cert_of};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

// ring (rcgen's backend here) cannot generate RSA or P-224 keys, so these CSRs
// were made once with OpenSSL 3.0:
//   openssl genrsa -out rsa1024.key 1024
//   openssl req -new -key rsa1024.key -subj "/CN=weak" -sha256 -out rsa1024.csr
//   openssl genrsa -out rsa2048.key 2048
//   openssl req -new -key rsa2048.key -subj "/CN=cart" -sha256 -out rsa2048.csr
//   openssl ecparam -name secp224r1 -genkey -noout -out p224.key
//   openssl req -new -key p224.key -subj "/CN=weak" -sha256 -out p224.csr
const RSA_1024_CSR: &[u8] = include_bytes!("testdata/rsa1024.csr");
const RSA_2048_CSR: &[u8] = include_bytes!("testdata/rsa2048.csr");
const P224_CSR: &[u8] = include_bytes!("testdata/p224.csr");

fn cart() -> SpiffeId {
    SpiffeId::new("example.org", "shop", "cart").unwrap()
}

fn csr_with(key: &KeyPair, edit: impl FnOnce(&mut CertificateParams)) -> Vec<u8> {
    let mut params = CertificateParams::default();
    edit(&mut params);
    params.serialize_request(key).unwrap().der().to_vec()
}

fn csr(sans: Vec<SanType>) -> Vec<u8> {
    csr_with(&KeyPair::generate().unwrap(), |p| {
        p.subject_alt_names = sans
    })
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

fn pem_csr(pem: &[u8]) -> Vec<u8> {
    CertificateSigningRequestDer::from_pem_slice(pem)
        .unwrap()
        .to_vec()
}

fn issuer_cert(ca: &TestCa) -> X509Certificate<'_> {
    cert_of(&ca.ca.issuer_chain_der()[0])
}

#[test]
fn leaf_carries_only_the_attested_identity() {
    let test = TestCa::new("example.org");
    let key = KeyPair::generate().unwrap();
    let before = unix_secs(SystemTime::now()) as i64;
    let issued = test
        .ca
        .certify(&csr_with(&key, |_| {}), &cart(), DAY)
        .unwrap();

    assert_eq!(issued.chain_der.len(), 2);
    assert_eq!(issued.chain_der[1..], *test.ca.issuer_chain_der());
    let leaf = cert_of(&issued.chain_der[0]);

    let san = leaf.subject_alternative_name().unwrap().unwrap().value;
    assert_eq!(san.general_names.len(), 1, "no name besides the URI SAN");
    assert_eq!(uri_sans(&leaf).unwrap(), [cart().to_string()]);
    assert_eq!(
        SpiffeId::from_cert_der(&issued.chain_der[0], "example.org").unwrap(),
        cart()
    );
    let cn: Vec<_> = leaf.subject().iter_common_name().collect();
    assert_eq!(cn.len(), 1);
    assert_eq!(cn[0].as_str().unwrap(), "cart");

    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let bc = leaf.basic_constraints().unwrap().unwrap().value;
    assert!(!bc.ca);
    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_encipherment() && !ku.key_cert_sign());

    let validity = leaf.validity();
    let lifetime = validity.not_after.timestamp() - before;
    assert!(
        (lifetime - DAY.as_secs() as i64).abs() <= 5,
        "lifetime {lifetime}s"
    );
    assert!((validity.not_before.timestamp() - (before - 60)).abs() <= 5);
    assert_eq!(
        unix_secs(issued.not_after) as i64,
        validity.not_after.timestamp()
    );

    assert_eq!(
        leaf.public_key().subject_public_key.data,
        key.public_key_raw()
    );
    assert!(
        leaf.verify_signature(Some(issuer_cert(&test).public_key()))
            .is_ok()
    );
    assert_eq!(issued.serial, leaf.serial.to_str_radix(16));
    assert!(leaf.serial.bits() > 64, "random 128-bit serial");
}

#[test]
fn csr_may_name_exactly_the_attested_identity() {
    let test = TestCa::new("example.org");
    let csr = csr(vec![uri(&cart().to_string())]);
    assert!(test.ca.certify(&csr, &cart(), DAY).is_ok());
}

#[test]
fn csr_requests_for_ca_or_other_usages_are_ignored() {
    let test = TestCa::new("example.org");
    let csr = csr_with(&KeyPair::generate().unwrap(), |p| {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
    });
    let issued = test.ca.certify(&csr, &cart(), DAY).unwrap();
    let leaf = cert_of(&issued.chain_der[0]);
    assert!(!leaf.is_ca());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(!eku.code_signing && eku.server_auth && eku.client_auth);
}

#[test]
fn lifetime_stops_at_the_issuer_expiry() {
    let test = TestCa::new("example.org");
    let issued = test
        .ca
        .certify(&csr(vec![]), &cart(), 5 * 365 * DAY)
        .unwrap();
    assert_eq!(issued.not_after, test.ca.issuer_not_after());
    let leaf = cert_of(&issued.chain_der[0]);
    assert_eq!(
        leaf.validity().not_after,
        issuer_cert(&test).validity().not_after
    );
}

#[test]
fn serials_differ() {
    let test = TestCa::new("example.org");
    let a = test.ca.certify(&csr(vec![]), &cart(), DAY).unwrap();
    let b = test.ca.certify(&csr(vec![]), &cart(), DAY).unwrap();
    assert_ne!(a.serial, b.serial);
}

#[test]
fn accepts_p384_ed25519_and_rsa_2048() {
    let test = TestCa::new("example.org");
    for alg in [&PKCS_ECDSA_P384_SHA384, &PKCS_ED25519] {
        let key = KeyPair::generate_for(alg).unwrap();
        let issued = test.ca.certify(&csr_with(&key, |_| {}), &cart(), DAY);
        assert!(issued.is_ok(), "{alg:?}: {:?}", issued.err());
    }

    let issued = test
        .ca
        .certify(&pem_csr(RSA_2048_CSR), &cart(), DAY)
        .unwrap();
    let leaf = cert_of(&issued.chain_der[0]);
    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment());
}

#[test]
fn refuses_a_csr_for_another_identity() {
    let test = TestCa::new("example.org");
    for other in [
        "spiffe://example.org/ns/shop/sa/admin",
        "spiffe://other.org/ns/shop/sa/cart",
        "https://example.org/",
    ] {
        let err = test
            .ca
            .certify(&csr(vec![uri(other)]), &cart(), DAY)
            .unwrap_err();
        assert!(
            matches!(&err, CsrError::ForeignIdentity { requested, .. } if requested == other),
            "{other}: {err}"
        );
    }
    // The attested identity alongside another is still a request for another.
    let both = csr(vec![
        uri(&cart().to_string()),
        uri("spiffe://example.org/ns/shop/sa/admin"),
    ]);
    let err = test.ca.certify(&both, &cart(), DAY).unwrap_err();
    assert!(matches!(err, CsrError::ForeignIdentity { .. }), "{err}");
}

#[test]
fn refuses_dns_and_ip_names() {
    let test = TestCa::new("example.org");
    let dns = csr(vec![SanType::DnsName("cart.shop.svc".try_into().unwrap())]);
    let err = test.ca.certify(&dns, &cart(), DAY).unwrap_err();
    assert!(
        matches!(err, CsrError::UnexpectedName(ref n) if n.contains("cart.shop.svc")),
        "{err}"
    );

    let ip = csr(vec![
        uri(&cart().to_string()),
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    ]);
    let err = test.ca.certify(&ip, &cart(), DAY).unwrap_err();
    assert!(matches!(err, CsrError::UnexpectedName(_)), "{err}");
}

#[test]
fn refuses_a_signature_that_does_not_match_the_key() {
    let test = TestCa::new("example.org");
    let mut der = csr(vec![]);
    // The DER ends with the signature's last byte.
    *der.last_mut().unwrap() ^= 0x01;
    let err = test.ca.certify(&der, &cart(), DAY).unwrap_err();
    assert!(matches!(err, CsrError::BadSignature(_)), "{err}");
}

#[test]
fn refuses_weak_keys() {
    let test = TestCa::new("example.org");
    for (name, pem, expect) in [
        ("RSA-1024", RSA_1024_CSR, "RSA-1024"),
        ("P-224", P224_CSR, "1.3.132.0.33"),
    ] {
        let err = test.ca.certify(&pem_csr(pem), &cart(), DAY).unwrap_err();
        assert!(
            matches!(&err, CsrError::WeakKey(why) if why.contains(expect)),
            "{name}: {err}"
        );
    }
}

#[test]
fn refuses_garbage_and_oversize() {
    let test = TestCa::new("example.org");
    for junk in [&b""[..], b"not a csr", &[0x30, 0x03, 0x02, 0x01, 0x00]] {
        let err = test.ca.certify(junk, &cart(), DAY).unwrap_err();
        assert!(matches!(err, CsrError::Malformed(_)), "{junk:?}: {err}");
    }

    let mut trailing = csr(vec![]);
    trailing.push(0);
    let err = test.ca.certify(&trailing, &cart(), DAY).unwrap_err();
    assert!(matches!(err, CsrError::Malformed(_)), "{err}");

    let huge = vec![0u8; MAX_CSR_LEN + 1];
    let err = test.ca.certify(&huge, &cart(), DAY).unwrap_err();
    assert!(
        matches!(err, CsrError::TooLarge { size, .. } if size == MAX_CSR_LEN + 1),
        "{err}"
    );
}

#[test]
fn refuses_identities_outside_the_trust_domain() {
    let test = TestCa::new("example.org");
    let stranger = SpiffeId::new("other.org", "shop", "cart").unwrap();
    let err = test.ca.certify(&csr(vec![]), &stranger, DAY).unwrap_err();
    assert!(
        matches!(err, CsrError::Issue(CaError::ForeignTrustDomain { .. })),
        "{err}"
    );
}

#[test]
fn refuses_once_the_issuer_has_expired() {
    let test = TestCa::new("example.org");
    let later = test.ca.issuer_not_after() + Duration::from_secs(1);
    let err = test
        .ca
        .certify_at(&csr(vec![]), &cart(), DAY, later)
        .unwrap_err();
    assert!(
        matches!(err, CsrError::Issue(CaError::IssuerExpired(_))),
        "{err}"
    );
}
