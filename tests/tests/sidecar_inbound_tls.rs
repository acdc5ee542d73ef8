//! Inbound TLS refusals, end to end (real control plane, real
//! `bulkhead-proxy`, real TLS and sockets): plaintext, no client
//! certificate, a foreign CA, an expired certificate, two URI SANs, a SPIFFE
//! ID only in the CN, TLS 1.2, and a mesh client with a garbage preface.
//! Each is refused before a single byte reaches the app. The client is
//! driven by hand (`bulkhead_tests::security`).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bulkhead_tests::control::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use bulkhead_tests::security::*;

// ---------------------------------------------------------------------------
// Inbound TLS refusals, with a hand-driven mesh client.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_well_formed_mesh_client_reaches_the_app() {
    // The control for every refusal below: the same hand-driven client, with
    // a certificate made the same way but correct, gets its bytes echoed.
    let m = mesh().await;
    let (echo, ledger) = ledger(&m).await;
    let cert = client_cert(&m, |_| {});
    let outcome = mesh_call(&ledger, &m.ca.bundle(), Some(cert), &TO_LEDGER, b"ping").await;
    assert_eq!(outcome, Outcome::Answered(b"ping".to_vec()));
    assert_eq!(echo.seen(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_http_to_the_inbound_port_is_refused() {
    let m = mesh().await;
    let (echo, ledger) = ledger(&m).await;
    let mut tcp = TcpStream::connect(ledger.inbound).await.expect("connect");
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: ledger\r\n\r\n")
        .await
        .expect("write");
    let reply = read_until_closed(&mut tcp).await;
    assert!(
        !reply.starts_with(b"HTTP/"),
        "plaintext HTTP got an HTTP answer: {:?}",
        String::from_utf8_lossy(&reply)
    );
    wait_for_handshake_errors(&ledger).await;
    assert_eq!(echo.seen(), 0, "no byte may reach the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_without_a_client_certificate_is_refused() {
    let m = mesh().await;
    let (echo, ledger) = ledger(&m).await;
    let outcome = mesh_call(&ledger, &m.ca.bundle(), None, &TO_LEDGER, b"ping").await;
    assert_refused_before_the_app(outcome, &ledger, &echo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_a_foreign_ca_is_refused() {
    let m = mesh().await;
    let (echo, ledger) = ledger(&m).await;
    // Same trust domain, same SPIFFE ID: only the CA differs.
    let foreign = TestCa::init(TRUST_DOMAIN);
    let cert = signed_by_issuer(&foreign, client_params(|_| {}));
    let outcome = mesh_call(&ledger, &m.ca.bundle(), Some(cert), &TO_LEDGER, b"ping").await;
    assert_refused_before_the_app(outcome, &ledger, &echo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_client_certificate_is_refused() {
    let m = mesh().await;
    let (echo, ledger) = ledger(&m).await;
    let cert = client_cert(&m, |p| {
        p.not_before = (SystemTime::now() - Duration::from_secs(2 * 86_400)).into();
        p.not_after = (SystemTime::now() - Duration::from_secs(86_400)).into();
    });
    let outcome = mesh_call(&ledger, &m.ca.bundle(), Some(cert), &TO_LEDGER, b"ping").await;
    assert_refused_before_the_app(outcome, &ledger, &echo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_with_two_uri_sans_is_refused() {
    let m = mesh().await;
    let (echo, ledger) = ledger(&m).await;
    // Both SANs are valid mesh identities, and one of them is allowed.
    let cert = client_cert(&m, |p| {
        p.subject_alt_names.push(uri_san(&spiffe("inventory")))
    });
    let outcome = mesh_call(&ledger, &m.ca.bundle(), Some(cert), &TO_LEDGER, b"ping").await;
    assert_refused_before_the_app(outcome, &ledger, &echo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spiffe_id_in_the_cn_without_a_uri_san_is_refused() {
    let m = mesh().await;
    let (echo, ledger) = ledger(&m).await;
    let cert = client_cert(&m, |p| {
        p.subject_alt_names.clear();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, spiffe("web"));
    });
    let outcome = mesh_call(&ledger, &m.ca.bundle(), Some(cert), &TO_LEDGER, b"ping").await;
    assert_refused_before_the_app(outcome, &ledger, &echo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls12_client_is_refused() {
    let m = mesh().await;
    let (echo, ledger) = ledger(&m).await;
    // A valid mesh certificate, but only TLS 1.2 offered. The server's
    // certificate is accepted blindly so that only the server can say no.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("TLS 1.2 config")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_cert_resolver(Arc::new(client_cert(&m, |_| {})));
    config.alpn_protocols = vec![ALPN.to_vec()];
    let outcome = dial_and_send(&ledger, config, &TO_LEDGER, b"ping").await;
    assert_refused_before_the_app(outcome, &ledger, &echo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_client_with_a_garbage_preface_is_closed() {
    let m = mesh().await;
    let (echo, ledger) = ledger(&m).await;
    let bundle = m.ca.bundle();
    for (what, garbage) in [
        ("an HTTP/1.1 request", *b"GET / HT"),
        ("bad magic", preface(b"XXXX", 2, 0, LEDGER_PORT)),
        ("unknown protocol", preface(b"BHK1", 9, 0, LEDGER_PORT)),
        ("reserved byte set", preface(b"BHK1", 2, 7, LEDGER_PORT)),
        ("port 0", preface(b"BHK1", 2, 0, 0)),
    ] {
        let cert = client_cert(&m, |_| {});
        let outcome = mesh_call(&ledger, &bundle, Some(cert), &garbage, b"ping").await;
        assert!(
            matches!(outcome, Outcome::Refused(_)),
            "{what}: expected the connection to be closed, got {outcome:?}"
        );
    }
    assert_eq!(echo.seen(), 0, "no byte may reach the app");
    // The same client and certificate with a valid preface is served, so it
    // was the preface that was refused.
    let cert = client_cert(&m, |_| {});
    let outcome = mesh_call(&ledger, &bundle, Some(cert), &TO_LEDGER, b"ping").await;
    assert_eq!(outcome, Outcome::Answered(b"ping".to_vec()));
}
