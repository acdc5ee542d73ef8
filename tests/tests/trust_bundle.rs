//! The trust bundle lives in the store and reaches everyone live (issue
//! 10): a root added to the store's trust record — as another control-plane
//! replica would write it — is trusted by a running sidecar and by the
//! control plane itself at their next handshake, with no restart.

use bulkhead_proto::pb;
use bulkhead_tests::control::TestCa;
use bulkhead_tests::mesh::Mesh;
use bulkhead_tests::rotation::*;
use bulkhead_tests::security::*;

const PREFIX: &str = "/bulkhead/";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_added_to_the_store_is_trusted_without_a_restart() {
    let mut m = Mesh::etcd(TRUST_DOMAIN, PREFIX, MESH, &[]).await;
    let (_echo, ledger) = ledger(&m).await;
    let pid = ledger.pid();
    let old_root = fingerprint_of(&m.ca, "root.crt");
    until_trusts(&ledger, std::slice::from_ref(&old_root)).await;

    // A peer whose certificate chains to a root the mesh does not trust yet.
    let other = TestCa::init(TRUST_DOMAIN);
    let new_root = fingerprint_of(&other, "root.crt");
    let peer = signed_by_issuer(&other, client_params(|_| {}));
    let both = m.ca.bundle_with(&other);
    let outcome = mesh_call(&ledger, &both, Some(peer.clone()), &TO_LEDGER, b"ping").await;
    assert!(
        matches!(outcome, Outcome::Refused(_)),
        "an unknown root is refused: {outcome:?}"
    );

    let record = prepared(&m.ca, &other);
    write_record(&mut m, PREFIX, &record).await;
    until_trusts(&ledger, &[old_root, new_root]).await;
    let outcome = mesh_call(&ledger, &both, Some(peer), &TO_LEDGER, b"ping").await;
    assert_eq!(
        outcome,
        Outcome::Answered(b"ping".to_vec()),
        "the added root, at the next handshake"
    );
    assert_eq!(ledger.pid(), pid, "no restart");

    // The control plane's own verifiers follow the same record: the other
    // CA's operator certificate is an operator now.
    let operator = bulkhead_tests::control::slot_from_files(
        &other.file("operator.crt"),
        &other.file("operator.key"),
    );
    let channel = bulkhead_tls::channel(&m.cp.url(), &both, Some(operator)).expect("channel");
    pb::admin_client::AdminClient::new(channel)
        .list_endpoints(pb::ListEndpointsRequest::default())
        .await
        .expect("an operator certificate of the added root is accepted");
}
