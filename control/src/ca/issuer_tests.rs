//! Tests of loading the issuer and of local issuance.

use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};

use bulkhead_proto::identity::uri_sans;
use rcgen::{KeyPair, PKCS_ECDSA_P384_SHA384};
use ring::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
use x509_parser::extensions::GeneralName;

use super::*;
use crate::ca::files::certs_pem;
use crate::ca::test_support::{TestCa, cert_of, certs_in};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

fn load(cert: &Path, key: &Path, bundle: &Path) -> Result<Ca, CaError> {
    Ca::load(cert, key, bundle, "example.org")
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn assert_names(err: &CaError, path: &Path) {
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
}

#[test]
fn loads_what_init_wrote() {
    let test = TestCa::new("example.org");
    assert_eq!(test.ca.trust_domain(), "example.org");
    assert_eq!(
        test.ca.fingerprint(),
        bulkhead_tls::fingerprint(&certs_in(&test.files.issuer_cert)[0])
    );
    assert_eq!(
        test.ca.issuer_chain_der(),
        certs_in(&test.files.issuer_cert)
    );
    assert!(test.ca.issuer_not_after() > SystemTime::now() + 360 * DAY);
}

#[test]
fn ca_is_shareable_across_tasks() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Ca>();
}

#[test]
fn refuses_a_key_of_another_certificate() {
    let test = TestCa::new("example.org");
    let f = &test.files;
    let err = load(&f.issuer_cert, &f.root_key, &f.bundle).unwrap_err();
    assert!(matches!(err, CaError::KeyMismatch { .. }), "{err}");
    assert_names(&err, &f.root_key);
    assert_names(&err, &f.issuer_cert);
}

#[test]
fn refuses_a_non_p256_issuer_key() {
    let test = TestCa::new("example.org");
    let tmp = tempfile::tempdir().unwrap();
    let p384 = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let key = write(tmp.path(), "p384.key", &p384.serialize_pem());
    let err = load(&test.files.issuer_cert, &key, &test.files.bundle).unwrap_err();
    assert!(matches!(err, CaError::UnsupportedKey { .. }), "{err}");
    assert_names(&err, &key);
}

#[test]
fn refuses_a_leaf_as_issuer() {
    let test = TestCa::new("example.org");
    let f = &test.files;
    let err = load(&f.operator_cert, &f.operator_key, &f.bundle).unwrap_err();
    assert!(matches!(err, CaError::NotCa { .. }), "{err}");
    assert_names(&err, &f.operator_cert);
}

#[test]
fn refuses_an_issuer_of_another_root() {
    let ours = TestCa::new("example.org");
    let theirs = TestCa::new("example.org");
    let err = load(
        &theirs.files.issuer_cert,
        &theirs.files.issuer_key,
        &ours.files.bundle,
    )
    .unwrap_err();
    assert!(matches!(err, CaError::Untrusted { .. }), "{err}");
    assert_names(&err, &theirs.files.issuer_cert);
    assert_names(&err, &ours.files.bundle);
}

#[test]
fn accepts_a_bundle_of_several_roots() {
    let ours = TestCa::new("example.org");
    let theirs = TestCa::new("example.org");
    let tmp = tempfile::tempdir().unwrap();
    let roots: Vec<_> = certs_in(&theirs.files.bundle)
        .into_iter()
        .chain(certs_in(&ours.files.bundle))
        .collect();
    let bundle = write(tmp.path(), "bundle.crt", &certs_pem(&roots));
    load(&ours.files.issuer_cert, &ours.files.issuer_key, &bundle).unwrap();
}

#[test]
fn keeps_further_intermediates_of_the_issuer_file() {
    let test = TestCa::new("example.org");
    let f = &test.files;
    let tmp = tempfile::tempdir().unwrap();
    let chain: Vec<_> = certs_in(&f.issuer_cert)
        .into_iter()
        .chain(certs_in(&f.root_cert))
        .collect();
    let cert = write(tmp.path(), "issuer.crt", &certs_pem(&chain));
    let ca = load(&cert, &f.issuer_key, &f.bundle).unwrap();
    assert_eq!(ca.issuer_chain_der(), chain);

    // Out of order, the issuer file no longer forms a chain.
    let reversed: Vec<_> = chain.iter().rev().cloned().collect();
    let cert = write(tmp.path(), "reversed.crt", &certs_pem(&reversed));
    let err = load(&cert, &f.issuer_key, &f.bundle).unwrap_err();
    assert!(matches!(err, CaError::Untrusted { .. }), "{err}");
}

#[test]
fn refuses_an_issuer_outside_its_validity() {
    let test = TestCa::new("example.org");
    let f = &test.files;
    let later = test.ca.issuer_not_after() + DAY;
    let err = Ca::load_at(
        &f.issuer_cert,
        &f.issuer_key,
        &f.bundle,
        "example.org",
        later,
    )
    .unwrap_err();
    assert!(matches!(err, CaError::NotValid { .. }), "{err}");
    assert_names(&err, &f.issuer_cert);
}

#[test]
fn names_missing_and_unreadable_files() {
    let test = TestCa::new("example.org");
    let f = &test.files;
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope.crt");
    let err = load(&missing, &f.issuer_key, &f.bundle).unwrap_err();
    assert!(matches!(err, CaError::Io { .. }), "{err}");
    assert_names(&err, &missing);

    let empty = write(tmp.path(), "empty.crt", "");
    let err = load(&f.issuer_cert, &f.issuer_key, &empty).unwrap_err();
    assert!(matches!(err, CaError::BadFile { .. }), "{err}");
    assert_names(&err, &empty);

    // A certificate where the key should be.
    let err = load(&f.issuer_cert, &f.issuer_cert, &f.bundle).unwrap_err();
    assert!(matches!(err, CaError::BadFile { .. }), "{err}");
    assert_names(&err, &f.issuer_cert);

    let err = Ca::load(&f.issuer_cert, &f.issuer_key, &f.bundle, "Bad Domain").unwrap_err();
    assert!(matches!(err, CaError::TrustDomain(_)), "{err}");
}

#[test]
fn issues_a_local_server_certificate() {
    let test = TestCa::new("example.org");
    let id = SpiffeId::new("example.org", "bulkhead", "control").unwrap();
    let dns = vec!["bulkhead-control.bulkhead.svc".to_owned()];
    let ips = [IpAddr::V6(Ipv6Addr::LOCALHOST)];
    let (chain, key) = test.ca.issue_local(&id, &dns, &ips, DAY).unwrap();
    assert_eq!(chain[1..], *test.ca.issuer_chain_der());

    let leaf = cert_of(&chain[0]);
    assert_eq!(uri_sans(&leaf).unwrap(), [id.to_string()]);
    let san = leaf.subject_alternative_name().unwrap().unwrap().value;
    assert!(
        san.general_names
            .iter()
            .any(|n| matches!(n, GeneralName::DNSName(d) if *d == "bulkhead-control.bulkhead.svc"))
    );
    assert!(
        san.general_names.iter().any(
            |n| matches!(n, GeneralName::IPAddress(ip) if *ip == Ipv6Addr::LOCALHOST.octets())
        )
    );
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let issuer = cert_of(&test.ca.issuer_chain_der()[0]);
    assert!(leaf.verify_signature(Some(issuer.public_key())).is_ok());

    // The returned key is the certificate's.
    let signer = KeyPair::try_from(key.secret_der()).unwrap();
    let message = b"bulkhead";
    let signature = rcgen::SigningKey::sign(&signer, message).unwrap();
    UnparsedPublicKey::new(
        &ECDSA_P256_SHA256_ASN1,
        &leaf.public_key().subject_public_key.data,
    )
    .verify(message, &signature)
    .unwrap();

    let stranger = SpiffeId::new("other.org", "bulkhead", "control").unwrap();
    assert!(matches!(
        test.ca.issue_local(&stranger, &[], &[], DAY),
        Err(CaError::ForeignTrustDomain { .. })
    ));
}
