//! Workload identity end to end, what is refused: every Certify refusal
//! with its gRPC code and its reason, from the real `bulkhead-control`.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::path::Path;
use std::time::{Duration, SystemTime};

use bulkhead_control::ca::mint_token;
use bulkhead_proto::SpiffeId;
use bulkhead_tests::certify::*;
use bulkhead_tests::control::{ControlPlane, TestCa, certify, key_and_csr};
use bulkhead_tests::etcd::EtcdServer;
use tonic::Code;

// ---------------------------------------------------------------------------
// Certify: refusals, each with its code and its reason
// ---------------------------------------------------------------------------

#[tokio::test]
async fn expired_token_is_refused_as_unauthenticated() {
    let ca = TestCa::init(TRUST_DOMAIN);
    let cp = control_plane_in_memory(&ca);
    let issuer_key = std::fs::read_to_string(ca.file("issuer.key")).unwrap();
    let identity = SpiffeId::from_ns_sa(TRUST_DOMAIN, "shop/cart").unwrap();
    let two_hours_ago = SystemTime::now() - Duration::from_secs(2 * 3600);
    let expired = mint_token(
        &issuer_key,
        &identity,
        Duration::from_secs(3600),
        false,
        two_hours_ago,
    )
    .unwrap();

    let result = certify_raw(&cp, &ca, good_csr(), bootstrap_token(&expired)).await;
    let status = assert_refused(
        result,
        Code::Unauthenticated,
        &["bootstrap token", "expired"],
    );
    assert!(
        status.message().contains("token create"),
        "tells how to get a new one: {}",
        status.message()
    );
    assert!(
        !status.message().contains(&expired),
        "the credential is never echoed"
    );
}

#[tokio::test]
async fn malformed_token_is_refused_as_unauthenticated() {
    let ca = TestCa::init(TRUST_DOMAIN);
    let cp = control_plane_in_memory(&ca);

    let result = certify_raw(&cp, &ca, good_csr(), bootstrap_token("this-is-not-a-token")).await;
    assert_refused(
        result,
        Code::Unauthenticated,
        &["malformed bootstrap token"],
    );

    // A real token with its signature cut off.
    let real = ca.token("shop/cart", "10m", false);
    let truncated = &real[..real.rfind('.').unwrap()];
    let result = certify_raw(&cp, &ca, good_csr(), bootstrap_token(truncated)).await;
    assert_refused(
        result,
        Code::Unauthenticated,
        &["malformed bootstrap token"],
    );

    // A real token whose claims were altered: the signature no longer matches.
    let mut parts: Vec<String> = real.split('.').map(str::to_owned).collect();
    parts[1] = parts[1].chars().rev().collect();
    let result = certify_raw(&cp, &ca, good_csr(), bootstrap_token(&parts.join("."))).await;
    assert_refused(result, Code::Unauthenticated, &["bootstrap token"]);
}

#[tokio::test]
async fn token_minted_by_another_ca_of_the_same_trust_domain_is_refused() {
    let ca = TestCa::init(TRUST_DOMAIN);
    let foreign = TestCa::init(TRUST_DOMAIN);
    let cp = control_plane_in_memory(&ca);

    let foreign_token = foreign.token("shop/cart", "10m", false);
    let result = certify_raw(&cp, &ca, good_csr(), bootstrap_token(&foreign_token)).await;
    assert_refused(
        result,
        Code::Unauthenticated,
        &["signature does not verify", "another ca"],
    );
}

#[tokio::test]
async fn token_for_another_trust_domain_is_refused() {
    let ca = TestCa::init(TRUST_DOMAIN);
    let cp = control_plane_in_memory(&ca);

    // Signed with this CA's own issuer key, but naming an identity elsewhere.
    let issuer_key = std::fs::read_to_string(ca.file("issuer.key")).unwrap();
    let elsewhere = SpiffeId::from_ns_sa("other.example", "shop/cart").unwrap();
    let t = mint_token(
        &issuer_key,
        &elsewhere,
        Duration::from_secs(600),
        false,
        SystemTime::now(),
    )
    .unwrap();
    let result = certify_raw(&cp, &ca, good_csr(), bootstrap_token(&t)).await;
    assert_refused(
        result,
        Code::Unauthenticated,
        &[
            "spiffe://other.example/ns/shop/sa/cart",
            "outside trust domain",
        ],
    );

    // Minted by the other trust domain's own CA.
    let other_ca = TestCa::init("other.example");
    let t = other_ca.token("shop/cart", "10m", false);
    let result = certify_raw(&cp, &ca, good_csr(), bootstrap_token(&t)).await;
    assert_refused(
        result,
        Code::Unauthenticated,
        &["signature does not verify"],
    );
}

#[tokio::test]
async fn one_time_token_used_twice_is_permission_denied() {
    let mesh = mesh_on_etcd(&[]).await;
    let once = mesh.ca.token("shop/cart", "10m", true);

    let first = certify(&mesh.cp, &mesh.ca, &once)
        .await
        .expect("first use succeeds");
    assert_eq!(first.spiffe_id, spiffe("shop/cart"));
    let second = certify(&mesh.cp, &mesh.ca, &once)
        .await
        .map(|w| w.spiffe_id);
    assert_refused(
        second,
        Code::PermissionDenied,
        &["one-time", "already been used"],
    );

    // A token without --once may be used again.
    let reusable = mesh.ca.token("shop/cart", "10m", false);
    certify(&mesh.cp, &mesh.ca, &reusable)
        .await
        .expect("first use");
    certify(&mesh.cp, &mesh.ca, &reusable)
        .await
        .expect("a reusable token works twice");
}

#[tokio::test]
async fn one_time_token_is_one_time_across_replicas_on_one_etcd() {
    let ca = TestCa::init(TRUST_DOMAIN);
    let etcd = EtcdServer::start();
    let replica_a = ControlPlane::start(&ca, &etcd_store(&etcd), &[]);
    let replica_b = ControlPlane::start(&ca, &etcd_store(&etcd), &[]);

    // Used at A, then presented at B.
    let once = ca.token("shop/cart", "10m", true);
    certify(&replica_a, &ca, &once)
        .await
        .expect("first use at replica A");
    let at_b = certify(&replica_b, &ca, &once).await.map(|w| w.spiffe_id);
    assert_refused(at_b, Code::PermissionDenied, &["already been used"]);

    // Presented at both at the same moment: exactly one wins.
    let raced = ca.token("shop/web", "10m", true);
    let (a, b) = tokio::join!(
        certify(&replica_a, &ca, &raced),
        certify(&replica_b, &ca, &raced)
    );
    let outcomes = [a.map(|w| w.spiffe_id), b.map(|w| w.spiffe_id)];
    let winners = outcomes.iter().filter(|r| r.is_ok()).count();
    assert_eq!(
        winners, 1,
        "exactly one replica may accept a one-time token: {outcomes:?}"
    );
    for loser in outcomes.into_iter().filter(Result::is_err) {
        assert_refused(loser, Code::PermissionDenied, &["already been used"]);
    }
}

#[tokio::test]
async fn one_time_token_stays_used_after_a_control_plane_restart() {
    let mut mesh = mesh_on_etcd(&[]).await;
    let once = mesh.ca.token("shop/cart", "10m", true);
    certify(&mesh.cp, &mesh.ca, &once).await.expect("first use");

    // Fault: the control plane crashes (SIGKILL) and comes back on the same etcd.
    mesh.cp.restart();

    let after = certify(&mesh.cp, &mesh.ca, &once)
        .await
        .map(|w| w.spiffe_id);
    assert_refused(after, Code::PermissionDenied, &["already been used"]);
    // The restarted control plane still certifies fresh tokens.
    certify(&mesh.cp, &mesh.ca, &mesh.ca.token("shop/cart", "10m", true))
        .await
        .expect("fresh token after restart");
}

#[tokio::test]
async fn csr_whose_signature_does_not_match_its_key_is_refused() {
    let ca = TestCa::init(TRUST_DOMAIN);
    let cp = control_plane_in_memory(&ca);
    let mut csr = good_csr();
    // The DER ends with the signature (the ECDSA `s` integer): alter its last byte.
    *csr.last_mut().unwrap() ^= 0x01;

    let t = ca.token("shop/cart", "10m", false);
    let result = certify_raw(&cp, &ca, csr, bootstrap_token(&t)).await;
    assert_refused(
        result,
        Code::InvalidArgument,
        &["csr signature does not verify"],
    );
}

#[tokio::test]
async fn csr_asking_for_another_identity_is_refused() {
    let ca = TestCa::init(TRUST_DOMAIN);
    let cp = control_plane_in_memory(&ca);
    let admin = spiffe("shop/admin");
    let (_, csr) = key_and_csr(&[&admin]);

    let t = ca.token("shop/cart", "10m", false);
    let result = certify_raw(&cp, &ca, csr, bootstrap_token(&t)).await;
    assert_refused(
        result,
        Code::InvalidArgument,
        &["asks for identity", &admin, &spiffe("shop/cart")],
    );

    // Naming exactly the attested identity is fine.
    let (_, csr) = key_and_csr(&[&spiffe("shop/cart")]);
    let ok = certify_raw(&cp, &ca, csr, bootstrap_token(&t))
        .await
        .expect("a CSR naming its own identity");
    assert_eq!(ok.spiffe_id, spiffe("shop/cart"));
}

#[tokio::test]
async fn csr_with_a_weak_rsa_1024_key_is_refused() {
    let ca = TestCa::init(TRUST_DOMAIN);
    let cp = control_plane_in_memory(&ca);
    let pem = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../control/src/ca/testdata/rsa1024.csr"),
    )
    .expect("read rsa1024.csr");
    let csr = pem_to_der(&pem);

    let t = ca.token("shop/cart", "10m", false);
    let result = certify_raw(&cp, &ca, csr, bootstrap_token(&t)).await;
    assert_refused(
        result,
        Code::InvalidArgument,
        &["RSA-1024", "at least 2048"],
    );
}

#[tokio::test]
async fn certify_without_attestation_is_refused() {
    let ca = TestCa::init(TRUST_DOMAIN);
    let cp = control_plane_in_memory(&ca);

    let result = certify_raw(&cp, &ca, good_csr(), None).await;
    assert_refused(
        result,
        Code::InvalidArgument,
        &["no attestation", "bootstrap token"],
    );
}

#[tokio::test]
async fn one_time_token_is_not_burned_by_a_refused_csr() {
    let mesh = mesh_on_etcd(&[]).await;
    let once = mesh.ca.token("shop/cart", "10m", true);

    let mut bad_csr = good_csr();
    *bad_csr.last_mut().unwrap() ^= 0x01;
    let refused = certify_raw(&mesh.cp, &mesh.ca, bad_csr, bootstrap_token(&once)).await;
    assert_refused(refused, Code::InvalidArgument, &["signature"]);

    let (_, csr) = key_and_csr(&[&spiffe("shop/admin")]);
    let refused = certify_raw(&mesh.cp, &mesh.ca, csr, bootstrap_token(&once)).await;
    assert_refused(refused, Code::InvalidArgument, &["asks for identity"]);

    let issued = certify(&mesh.cp, &mesh.ca, &once)
        .await
        .expect("the token survived the bad CSRs");
    assert_eq!(issued.spiffe_id, spiffe("shop/cart"));
    // ...and is spent now.
    let again = certify(&mesh.cp, &mesh.ca, &once)
        .await
        .map(|w| w.spiffe_id);
    assert_refused(again, Code::PermissionDenied, &["already been used"]);
}

// ---------------------------------------------------------------------------
// The sidecar: a certificate for another identity than its flags say
// ---------------------------------------------------------------------------

/// `--service-account` is the identity the sidecar must hold: a token for
/// another one is a misconfiguration it stops on (exit 2), naming both.
#[tokio::test]
async fn a_sidecar_refuses_a_certificate_for_another_service_account() {
    use bulkhead_tests::proxy::{Sidecar, SidecarSpec};
    let ca = TestCa::init("cluster.local");
    let cp = ControlPlane::start(&ca, &bulkhead_tests::control::StoreSpec::Memory, &[]);
    // The token (and so the certificate) names shop/web.
    let spec = SidecarSpec::new("shop", "web", "1.0.0")
        .arg("--service-account")
        .arg("payments");
    let mut sidecar = Sidecar::launch(&ca, &cp, spec);
    let status = sidecar.wait_exit();
    assert_eq!(status.code(), Some(2), "{}", sidecar.log_text());
    let log = sidecar.log_text();
    assert!(
        log.contains("spiffe://cluster.local/ns/shop/sa/web")
            && log.contains("--service-account \"payments\""),
        "{log}"
    );
}
