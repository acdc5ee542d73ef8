//! Workload-identity test support: the control plane the Certify and Renew
//! scenarios run against (`tests/tests/identity_{certify,refusals}.rs`),
//! explicit CSRs and attestations, and readers of the leaves issued.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::control::{ControlPlane, StoreSpec, TestCa, key_and_csr};
use crate::etcd::EtcdServer;
use crate::mesh::Mesh;
use bulkhead_proto::pb;
use bulkhead_proto::pb::certify_request::Attestation;
use tonic::{Code, Status};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

pub const TRUST_DOMAIN: &str = "identity.test";
/// How far back the CA dates a leaf's `not_before` (clock skew allowance).
pub const NOT_BEFORE_SKEW: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Scenario helpers
// ---------------------------------------------------------------------------

pub fn etcd_store(etcd: &EtcdServer) -> StoreSpec {
    StoreSpec::Etcd {
        endpoints: vec![etcd.client_url()],
        prefix: "/bulkhead-identity/".into(),
    }
}

/// A control plane on its own etcd, nothing applied.
pub async fn mesh_on_etcd(extra: &[&str]) -> Mesh {
    Mesh::etcd(TRUST_DOMAIN, "/bulkhead-identity/", "", extra).await
}

/// For refusals that do not touch the store.
pub fn control_plane_in_memory(ca: &TestCa) -> ControlPlane {
    ControlPlane::start(ca, &StoreSpec::Memory, &[])
}

/// `ns/sa` → `spiffe://identity.test/ns/<ns>/sa/<sa>`.
pub fn spiffe(ns_sa: &str) -> String {
    let (ns, sa) = ns_sa.split_once('/').expect("ns/sa");
    format!("spiffe://{TRUST_DOMAIN}/ns/{ns}/sa/{sa}")
}

/// Certify with an explicit CSR and attestation (the support's `certify`
/// always sends a good CSR and a token).
pub async fn certify_raw(
    cp: &ControlPlane,
    ca: &TestCa,
    csr_der: Vec<u8>,
    attestation: Option<Attestation>,
) -> Result<pb::CertifyResponse, Status> {
    pb::identity_client::IdentityClient::new(cp.channel(ca, None))
        .certify(pb::CertifyRequest {
            csr_der,
            attestation,
        })
        .await
        .map(tonic::Response::into_inner)
}

pub fn bootstrap_token(t: &str) -> Option<Attestation> {
    Some(Attestation::BootstrapToken(t.to_owned()))
}

/// A fresh P-256 CSR naming nothing.
pub fn good_csr() -> Vec<u8> {
    key_and_csr(&[]).1
}

/// Asserts the call was refused with `code`, and that the message says each of
/// `says` (case-insensitive).
#[track_caller]
pub fn assert_refused<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: Code,
    says: &[&str],
) -> Status {
    let status = match result {
        Ok(v) => panic!("expected {code:?}, but the call succeeded: {v:?}"),
        Err(s) => s,
    };
    assert_eq!(
        status.code(),
        code,
        "wrong code; message: {}",
        status.message()
    );
    let message = status.message().to_lowercase();
    for needle in says {
        assert!(
            message.contains(&needle.to_lowercase()),
            "message should say {needle:?}: {}",
            status.message()
        );
    }
    status
}

pub fn parse_cert(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = X509Certificate::from_der(der).expect("certificate parses");
    assert!(rest.is_empty(), "trailing bytes after certificate");
    cert
}

pub fn uri_sans<'a>(cert: &'a X509Certificate<'_>) -> Vec<&'a str> {
    let san = cert
        .subject_alternative_name()
        .expect("readable SAN")
        .expect("leaf has a SAN");
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect()
}

pub fn pem_to_der(pem: &[u8]) -> Vec<u8> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).expect("PEM");
    pem.contents
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}
