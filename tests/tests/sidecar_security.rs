//! The sidecar under hostile or unusual input, end to end: real control
//! plane, real `bulkhead-proxy` processes, real TLS and sockets.
//!
//! - Inbound TLS refusals: plaintext, no client certificate, a foreign CA, an
//!   expired certificate, two URI SANs, a SPIFFE ID only in the CN, TLS 1.2,
//!   and a mesh client with a garbage preface. Each is refused before a single
//!   byte reaches the app. The client is tokio-rustls driven by hand (the
//!   wire format of `proxy/src/wire.rs`), so nothing of the proxy's own
//!   client code can paper over a server-side gap.
//! - Opaque TCP services: allowed callers are echoed; callers not named, or
//!   named only by HTTP rules, are closed on and counted.
//! - HTTP/2 (h2c from the app) and gRPC-style calls, allowed and denied.
//! - `audit` mode, path normalization through both sidecars, and the
//!   structured denial log line.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bulkhead_proto::SpiffeId;
use bulkhead_tests::control::*;
use bulkhead_tests::prom;
use bulkhead_tests::proxy::*;
use bulkhead_tls::{CertSlot, ExpectedServer, TrustBundle};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TRUST_DOMAIN: &str = "cluster.local";

/// Every service and allow-list the scenarios use, in namespace `shop`.
const MESH: &str = "
apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ports: [{port: 8080, protocol: http}]
---
apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: inventory, namespace: shop}
spec:
  ports: [{port: 8080, protocol: http}]
---
apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  ports: [{port: 8080, protocol: http}]
---
apiVersion: bulkhead.dev/v1
kind: AllowList
metadata: {name: cart-from-web, namespace: shop}
spec:
  target: cart
  rules:
    - from: [web]
      ports: [8080]
      http: {methods: [GET, POST], paths: ['/cart/**']}
---
apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: pricing, namespace: shop}
spec:
  ports: [{port: 9090, protocol: grpc}]
---
apiVersion: bulkhead.dev/v1
kind: AllowList
metadata: {name: pricing-from-web, namespace: shop}
spec:
  target: pricing
  rules:
    - from: [web]
      http: {methods: [POST], paths: ['/shop.Pricing/*']}
---
apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: ledger, namespace: shop}
spec:
  ports: [{port: 7000, protocol: tcp}]
---
apiVersion: bulkhead.dev/v1
kind: AllowList
metadata: {name: ledger-from-web, namespace: shop}
spec:
  target: ledger
  rules:
    - from: [web]
      ports: [7000]
---
apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: journal, namespace: shop}
spec:
  ports: [{port: 7001, protocol: tcp}]
---
apiVersion: bulkhead.dev/v1
kind: AllowList
metadata: {name: journal-http-only, namespace: shop}
spec:
  target: journal
  rules:
    - from: [web]
      http: {paths: ['/**']}
---
apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: search, namespace: shop}
spec:
  ports: [{port: 8080, protocol: http}]
---
apiVersion: bulkhead.dev/v1
kind: AllowList
metadata: {name: search-audit, namespace: shop}
spec:
  target: search
  mode: audit
  rules:
    - from: [inventory]
      http: {methods: [GET], paths: ['/search/**']}
";

const LEDGER_PORT: u16 = 7000;
const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Inbound TLS refusals, with a hand-driven mesh client.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_well_formed_mesh_client_reaches_the_app() {
    // The control for every refusal below: the same hand-driven client, with
    // a certificate made the same way but correct, gets its bytes echoed.
    let m = Mesh::start().await;
    let (echo, ledger) = m.ledger().await;
    let cert = m.client_cert(|_| {});
    let outcome = mesh_call(&ledger, &m.ca.bundle(), Some(cert), &TO_LEDGER, b"ping").await;
    assert_eq!(outcome, Outcome::Answered(b"ping".to_vec()));
    assert_eq!(echo.seen(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_http_to_the_inbound_port_is_refused() {
    let m = Mesh::start().await;
    let (echo, ledger) = m.ledger().await;
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
    let m = Mesh::start().await;
    let (echo, ledger) = m.ledger().await;
    let outcome = mesh_call(&ledger, &m.ca.bundle(), None, &TO_LEDGER, b"ping").await;
    assert_refused_before_the_app(outcome, &ledger, &echo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_a_foreign_ca_is_refused() {
    let m = Mesh::start().await;
    let (echo, ledger) = m.ledger().await;
    // Same trust domain, same SPIFFE ID: only the CA differs.
    let foreign = TestCa::init(TRUST_DOMAIN);
    let cert = signed_by_issuer(&foreign, client_params(|_| {}));
    let outcome = mesh_call(&ledger, &m.ca.bundle(), Some(cert), &TO_LEDGER, b"ping").await;
    assert_refused_before_the_app(outcome, &ledger, &echo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_client_certificate_is_refused() {
    let m = Mesh::start().await;
    let (echo, ledger) = m.ledger().await;
    let cert = m.client_cert(|p| {
        p.not_before = (SystemTime::now() - Duration::from_secs(2 * 86_400)).into();
        p.not_after = (SystemTime::now() - Duration::from_secs(86_400)).into();
    });
    let outcome = mesh_call(&ledger, &m.ca.bundle(), Some(cert), &TO_LEDGER, b"ping").await;
    assert_refused_before_the_app(outcome, &ledger, &echo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_with_two_uri_sans_is_refused() {
    let m = Mesh::start().await;
    let (echo, ledger) = m.ledger().await;
    // Both SANs are valid mesh identities, and one of them is allowed.
    let cert = m.client_cert(|p| p.subject_alt_names.push(uri_san(&spiffe("inventory"))));
    let outcome = mesh_call(&ledger, &m.ca.bundle(), Some(cert), &TO_LEDGER, b"ping").await;
    assert_refused_before_the_app(outcome, &ledger, &echo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spiffe_id_in_the_cn_without_a_uri_san_is_refused() {
    let m = Mesh::start().await;
    let (echo, ledger) = m.ledger().await;
    let cert = m.client_cert(|p| {
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
    let m = Mesh::start().await;
    let (echo, ledger) = m.ledger().await;
    // A valid mesh certificate, but only TLS 1.2 offered. The server's
    // certificate is accepted blindly so that only the server can say no.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("TLS 1.2 config")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_cert_resolver(Arc::new(m.client_cert(|_| {})));
    config.alpn_protocols = vec![ALPN.to_vec()];
    let outcome = dial_and_send(&ledger, config, &TO_LEDGER, b"ping").await;
    assert_refused_before_the_app(outcome, &ledger, &echo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_client_with_a_garbage_preface_is_closed() {
    let m = Mesh::start().await;
    let (echo, ledger) = m.ledger().await;
    let bundle = m.ca.bundle();
    for (what, garbage) in [
        ("an HTTP/1.1 request", *b"GET / HT"),
        ("bad magic", preface(b"XXXX", 2, 0, LEDGER_PORT)),
        ("unknown protocol", preface(b"BHK1", 9, 0, LEDGER_PORT)),
        ("reserved byte set", preface(b"BHK1", 2, 7, LEDGER_PORT)),
        ("port 0", preface(b"BHK1", 2, 0, 0)),
    ] {
        let cert = m.client_cert(|_| {});
        let outcome = mesh_call(&ledger, &bundle, Some(cert), &garbage, b"ping").await;
        assert!(
            matches!(outcome, Outcome::Refused(_)),
            "{what}: expected the connection to be closed, got {outcome:?}"
        );
    }
    assert_eq!(echo.seen(), 0, "no byte may reach the app");
    // The same client and certificate with a valid preface is served, so it
    // was the preface that was refused.
    let cert = m.client_cert(|_| {});
    let outcome = mesh_call(&ledger, &bundle, Some(cert), &TO_LEDGER, b"ping").await;
    assert_eq!(outcome, Outcome::Answered(b"ping".to_vec()));
}

// ---------------------------------------------------------------------------
// Opaque TCP services through both sidecars.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_tcp_caller_is_echoed() {
    let m = Mesh::start().await;
    let (echo, _ledger) = m.ledger().await;
    let web = m.sidecar(SidecarSpec::new("shop", "web", "1.0.0").upstream("ledger"));
    let reply = wait_for_async("ledger to echo through web's sidecar", WAIT, || async {
        tcp_exchange(web.upstream("ledger"), b"hello ledger")
            .await
            .ok()
    })
    .await;
    assert_eq!(reply, b"hello ledger");
    // A second connection, a larger payload: all of it comes back.
    let payload: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let reply = tcp_exchange(web.upstream("ledger"), &payload)
        .await
        .expect("echo");
    assert!(reply == payload, "echoed bytes differ");
    assert!(echo.seen() >= (payload.len() + 12) as u64);
}

/// An opaque stream with no data either way for `--tcp-idle-timeout` is
/// closed (and counted); one with traffic stays open well past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tcp_stream_is_closed_and_a_busy_one_is_not() {
    let m = Mesh::start().await;
    let (_echo, _ledger) = m.ledger().await;
    let web = m.sidecar(
        SidecarSpec::new("shop", "web", "1.0.0")
            .upstream("ledger")
            .arg("--tcp-idle-timeout")
            .arg("1s"),
    );
    wait_for_async("ledger to echo through web's sidecar", WAIT, || async {
        tcp_exchange(web.upstream("ledger"), b"hello").await.ok()
    })
    .await;

    // Busy: one byte every 300 ms for 3 s, each echoed.
    let mut busy = TcpStream::connect(web.upstream("ledger"))
        .await
        .expect("connect");
    for i in 0..10u8 {
        busy.write_all(&[i]).await.expect("write");
        let mut byte = [0u8; 1];
        tokio::time::timeout(WAIT, busy.read_exact(&mut byte))
            .await
            .expect("echo in time")
            .expect("echo on a busy stream");
        assert_eq!(byte[0], i);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Idle: one exchange, then nothing; the sidecar closes it.
    let mut idle = TcpStream::connect(web.upstream("ledger"))
        .await
        .expect("connect");
    idle.write_all(b"x").await.expect("write");
    let mut byte = [0u8; 1];
    idle.read_exact(&mut byte).await.expect("echo");
    let quiet_since = std::time::Instant::now();
    let after = read_until_closed(&mut idle).await;
    assert!(after.is_empty(), "{after:?}");
    let waited = quiet_since.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}"
    );
    wait_for_async("the idle close to be counted", WAIT, || async {
        prom::find(
            &web.metrics(),
            "bulkhead_tcp_connections_total",
            &[("direction", "outbound"), ("result", "idle-timeout")],
        )
        .map(|_| ())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_caller_the_allow_list_does_not_name_is_closed_before_the_app() {
    let m = Mesh::start().await;
    let (echo, ledger) = m.ledger().await;
    let inventory = m.sidecar(SidecarSpec::new("shop", "inventory", "1.0.0").upstream("ledger"));
    denied_tcp_until_counted(&inventory, "ledger", &ledger, "inventory").await;
    assert_eq!(echo.seen(), 0, "no byte may reach the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_only_rules_never_open_a_tcp_service() {
    let m = Mesh::start().await;
    let echo = App::tcp_echo().await;
    let journal = m.sidecar(
        SidecarSpec::new("shop", "journal", "1.0.0")
            .protocol("tcp")
            .app(&echo),
    );
    let web = m.sidecar(SidecarSpec::new("shop", "web", "1.0.0").upstream("journal"));
    denied_tcp_until_counted(&web, "journal", &journal, "web").await;
    assert_eq!(echo.seen(), 0, "no byte may reach the app");
}

// ---------------------------------------------------------------------------
// HTTP/2 and gRPC-style calls.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_calls_are_allowed_and_denied_like_http1() {
    let s = Shop::start().await;
    let h2 = h2_client();
    let r = wait_for_async("cart to answer h2c through web", WAIT, || async {
        call_with(&h2, s.web.upstream("cart"), "GET", "/cart/items?id=7", &[])
            .await
            .ok()
            .filter(|r| r.status == 200)
    })
    .await;
    assert!(
        r.body.contains("service=cart") && r.body.contains("path=/cart/items?id=7"),
        "{}",
        r.body
    );
    let seen = s.cart_app.seen();
    for (method, path) in [("GET", "/admin"), ("DELETE", "/cart/1")] {
        let r = call_with(&h2, s.web.upstream("cart"), method, path, &[])
            .await
            .expect("call");
        assert_eq!(r.status, 403, "{method} {path}: {r:?}");
        assert_eq!(header(&r, "x-bulkhead-error"), Some("denied"), "{r:?}");
    }
    assert_eq!(s.cart_app.seen(), seen, "nothing denied reached the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_are_allowed_or_answered_permission_denied() {
    let m = Mesh::start().await;
    let app = App::http("pricing", "1.0.0").await;
    let _pricing = m.sidecar(
        SidecarSpec::new("shop", "pricing", "1.0.0")
            .app(&app)
            .protocol("grpc"),
    );
    let web = m.sidecar(SidecarSpec::new("shop", "web", "1.0.0").upstream("pricing"));
    let h2 = h2_client();
    let grpc = [("content-type", "application/grpc"), ("te", "trailers")];
    let r = wait_for_async("pricing to answer gRPC through web", WAIT, || async {
        call_with(
            &h2,
            web.upstream("pricing"),
            "POST",
            "/shop.Pricing/Quote",
            &grpc,
        )
        .await
        .ok()
        .filter(|r| r.status == 200 && r.body.contains("service=pricing"))
    })
    .await;
    assert!(r.body.contains("path=/shop.Pricing/Quote"), "{}", r.body);
    assert_eq!(
        header(&r, "grpc-status"),
        None,
        "the app answered, not the mesh: {r:?}"
    );

    let seen = app.seen();
    let r = call_with(
        &h2,
        web.upstream("pricing"),
        "POST",
        "/shop.Admin/Reset",
        &grpc,
    )
    .await
    .expect("call");
    // gRPC clients read the status from grpc-status, not the HTTP status.
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        header(&r, "grpc-status"),
        Some("7"),
        "PERMISSION_DENIED: {r:?}"
    );
    assert_eq!(header(&r, "x-bulkhead-error"), Some("denied"), "{r:?}");
    assert_eq!(app.seen(), seen, "nothing denied reached the app");
}

// ---------------------------------------------------------------------------
// Audit mode.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_mode_lets_an_unmatched_call_through_and_counts_it() {
    let m = Mesh::start().await;
    let app = App::http("search", "1.0.0").await;
    let search = m.sidecar(SidecarSpec::new("shop", "search", "1.0.0").app(&app));
    // search-audit names only inventory: web's call matches no rule.
    let web = m.sidecar(SidecarSpec::new("shop", "web", "1.0.0").upstream("search"));
    let r = wait_for_async("search to answer through web", WAIT, || async {
        call(web.upstream("search"), "GET", "/search/q", &[])
            .await
            .ok()
            .filter(|r| r.status == 200)
    })
    .await;
    assert!(r.body.contains("path=/search/q"), "{}", r.body);
    assert!(app.seen() >= 1);
    let metrics = search.metrics();
    let line = prom::find(
        &metrics,
        "bulkhead_authz_audit_total",
        &[("target", "search"), ("peer", &spiffe("web"))],
    );
    assert!(
        line.is_some(),
        "no audit count for web → search:\n{metrics}"
    );
}

// ---------------------------------------------------------------------------
// Path normalization through both sidecars (more in sidecar_http.rs).
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percent_encoded_unreserved_characters_are_decoded_before_the_app() {
    let s = Shop::start().await;
    let r = s.get("/cart/%61bc").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body.contains("path=/cart/abc"),
        "the app sees the decoded path: {}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_dot_dot_cannot_leave_an_allowed_prefix() {
    let s = Shop::start().await;
    let seen = s.cart_app.seen();
    for path in [
        "/cart/%2e%2e/admin",
        "/cart/%2E%2E/admin",
        "/cart/x/%2e%2e/%2e%2e/admin",
    ] {
        let r = s.get(path).await;
        assert_eq!(r.status, 403, "{path}: {r:?}");
        assert_eq!(
            header(&r, "x-bulkhead-error"),
            Some("denied"),
            "{path}: {r:?}"
        );
    }
    assert_eq!(s.cart_app.seen(), seen, "nothing denied reached the app");
    // Staying inside the prefix is fine, and the app sees the resolved path.
    let r = s.get("/cart/a/%2e%2e/b").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("path=/cart/b"), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_slashes_are_merged_before_matching() {
    let s = Shop::start().await;
    let r = s.get("//cart///x").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("path=/cart/x"), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_dot_above_the_root_is_refused_with_400() {
    let s = Shop::start().await;
    let seen = s.cart_app.seen();
    for path in ["/../cart/x", "/cart/../../cart/x", "/%2e%2e/cart/x"] {
        let r = s.get(path).await;
        assert_eq!(r.status, 400, "{path}: {r:?}");
        assert_eq!(
            header(&r, "x-bulkhead-error"),
            Some("bad-path"),
            "{path}: {r:?}"
        );
    }
    assert_eq!(s.cart_app.seen(), seen, "nothing refused reached the app");
}

// ---------------------------------------------------------------------------
// The denial log line.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denial_is_logged_with_peer_target_and_rule() {
    let m = Mesh::start().await;
    let app = App::http("cart", "1.0.0").await;
    let cart = m.sidecar(
        SidecarSpec::new("shop", "cart", "1.0.0")
            .app(&app)
            .arg("--log-format")
            .arg("json"),
    );
    let web = m.sidecar(SidecarSpec::new("shop", "web", "1.0.0").upstream("cart"));
    until_routable(&web, "cart", "/cart/probe").await;
    let r = call(web.upstream("cart"), "DELETE", "/cart/1", &[])
        .await
        .expect("call");
    assert_eq!(r.status, 403, "{r:?}");
    // One JSON object per line; the denial's fields name who, what and why.
    let web_id = spiffe("web");
    let line = wait_for_async("the denial log line", WAIT, || async {
        cart.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| {
                l["fields"]["peer"] == web_id.as_str() && l["fields"]["rule"] == "no-matching-rule"
            })
    })
    .await;
    let fields = &line["fields"];
    assert_eq!(fields["target"], "cart", "{line}");
    assert_eq!(fields["port"], 8080, "{line}");
    // Visible at the default level, not only when debugging.
    assert!(line["level"] == "INFO" || line["level"] == "WARN", "{line}");
    // And the same three in the counter.
    let metrics = cart.metrics();
    let counted = prom::find(
        &metrics,
        "bulkhead_authz_denied_total",
        &[
            ("target", "cart"),
            ("peer", &web_id),
            ("rule", "no-matching-rule"),
        ],
    );
    assert!(counted.is_some(), "{metrics}");
}

// ---------------------------------------------------------------------------
// Fixtures.
// ---------------------------------------------------------------------------

/// A control plane on the memory store with [`MESH`] applied.
struct Mesh {
    ca: TestCa,
    cp: ControlPlane,
}

impl Mesh {
    async fn start() -> Self {
        let ca = TestCa::init(TRUST_DOMAIN);
        let cp = ControlPlane::start(&ca, &StoreSpec::Memory, &[]);
        apply(&cp, &ca, MESH).await;
        Self { ca, cp }
    }

    fn sidecar(&self, spec: SidecarSpec) -> Sidecar {
        Sidecar::start(&self.ca, &self.cp, spec)
    }

    /// The `ledger` TCP service: a byte-counting echo behind its sidecar.
    async fn ledger(&self) -> (App, Sidecar) {
        let echo = App::tcp_echo().await;
        let ledger = self.sidecar(
            SidecarSpec::new("shop", "ledger", "1.0.0")
                .protocol("tcp")
                .app(&echo),
        );
        (echo, ledger)
    }

    /// A client certificate for `shop/web` signed by this mesh's real
    /// issuer, after `edit` (the one thing a test makes wrong).
    fn client_cert(&self, edit: impl FnOnce(&mut rcgen::CertificateParams)) -> CertSlot {
        signed_by_issuer(&self.ca, client_params(edit))
    }
}

/// `cart` (an HTTP app behind its sidecar) and `web` calling it.
struct Shop {
    _mesh: Mesh,
    cart_app: App,
    _cart: Sidecar,
    web: Sidecar,
}

impl Shop {
    async fn start() -> Self {
        let mesh = Mesh::start().await;
        let cart_app = App::http("cart", "1.0.0").await;
        let cart = mesh.sidecar(SidecarSpec::new("shop", "cart", "1.0.0").app(&cart_app));
        let web = mesh.sidecar(SidecarSpec::new("shop", "web", "1.0.0").upstream("cart"));
        until_routable(&web, "cart", "/cart/probe").await;
        Self {
            _mesh: mesh,
            cart_app,
            _cart: cart,
            web,
        }
    }

    async fn get(&self, path: &str) -> Reply {
        call(self.web.upstream("cart"), "GET", path, &[])
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }
}

// ---------------------------------------------------------------------------
// Certificates.
// ---------------------------------------------------------------------------

fn spiffe(sa: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/shop/sa/{sa}")
}

fn identity(sa: &str) -> SpiffeId {
    spiffe(sa).parse().expect("SPIFFE ID")
}

fn uri_san(uri: &str) -> rcgen::SanType {
    rcgen::SanType::URI(uri.try_into().expect("ia5 string"))
}

/// A leaf as the control plane issues one (one URI SAN `shop/web`, valid
/// now, client and server auth), then changed by `edit`.
fn client_params(edit: impl FnOnce(&mut rcgen::CertificateParams)) -> rcgen::CertificateParams {
    let mut p = rcgen::CertificateParams::default();
    let now = SystemTime::now();
    p.not_before = (now - Duration::from_secs(3600)).into();
    p.not_after = (now + Duration::from_secs(3600)).into();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, "web");
    p.subject_alt_names = vec![uri_san(&spiffe("web"))];
    p.is_ca = rcgen::IsCa::ExplicitNoCa;
    p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.use_authority_key_identifier_extension = true;
    edit(&mut p);
    p
}

/// Signs `params` with the issuer key of `ca` (its `issuer.crt`/`issuer.key`)
/// and returns the leaf + issuer chain with a fresh key.
fn signed_by_issuer(ca: &TestCa, params: rcgen::CertificateParams) -> CertSlot {
    let issuer_pem = std::fs::read_to_string(ca.file("issuer.crt")).expect("issuer.crt");
    let issuer_key_pem = std::fs::read_to_string(ca.file("issuer.key")).expect("issuer.key");
    let issuer_key = rcgen::KeyPair::from_pem(&issuer_key_pem).expect("issuer key");
    let issuer = rcgen::Issuer::from_ca_cert_pem(&issuer_pem, issuer_key).expect("issuer");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("keygen");
    let leaf = params.signed_by(&key, &issuer).expect("sign leaf");
    let mut chain: Vec<CertificateDer<'static>> = vec![leaf.der().clone()];
    chain.extend(bulkhead_tls::certs_from_pem(issuer_pem.as_bytes(), "issuer.crt").expect("chain"));
    let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let slot = CertSlot::empty();
    slot.set(CertSlot::certified_key(chain, key).expect("certified key"));
    slot
}

// ---------------------------------------------------------------------------
// The hand-driven mesh client.
// ---------------------------------------------------------------------------

/// ALPN of sidecar-to-sidecar connections (`proxy/src/wire.rs`).
const ALPN: &[u8] = b"bulkhead/1";

/// The 8-byte preface: magic, protocol (2 = opaque TCP), reserved, and
/// `ledger`'s declared port, big endian.
const TO_LEDGER: [u8; 8] = preface(b"BHK1", 2, 0, LEDGER_PORT);

const fn preface(magic: &[u8; 4], protocol: u8, reserved: u8, port: u16) -> [u8; 8] {
    let [hi, lo] = port.to_be_bytes();
    [
        magic[0], magic[1], magic[2], magic[3], protocol, reserved, hi, lo,
    ]
}

/// What a client saw of a connection.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The server sent these bytes back (as many as were sent).
    Answered(Vec<u8>),
    /// Handshake, write or read failed, or EOF, before any byte came back.
    Refused(String),
}

/// Dials `callee`'s inbound port with TLS 1.3 (verifying the callee's
/// identity), presenting `client` if any, writes `preface` and `payload`,
/// and reads the reply (as many bytes as `payload` has).
async fn mesh_call(
    callee: &Sidecar,
    bundle: &TrustBundle,
    client: Option<CertSlot>,
    preface: &[u8],
    payload: &[u8],
) -> Outcome {
    let config = bulkhead_tls::client_config(
        bundle,
        ExpectedServer::Identity(identity(&callee.spec.service)),
        client,
        &[ALPN],
    )
    .expect("client config");
    dial_and_send(callee, config, preface, payload).await
}

async fn dial_and_send(
    callee: &Sidecar,
    config: rustls::ClientConfig,
    preface: &[u8],
    payload: &[u8],
) -> Outcome {
    let tcp = TcpStream::connect(callee.inbound)
        .await
        .expect("connect inbound");
    let name = ServerName::IpAddress(callee.inbound.ip().into());
    let connect = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp);
    let mut tls = match tokio::time::timeout(WAIT, connect).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return Outcome::Refused(format!("handshake: {e}")),
        Err(_) => panic!("the TLS handshake neither completed nor failed within {WAIT:?}"),
    };
    if let Err(e) = tls.write_all(&[preface, payload].concat()).await {
        return Outcome::Refused(format!("write: {e}"));
    }
    if let Err(e) = tls.flush().await {
        return Outcome::Refused(format!("flush: {e}"));
    }
    read_reply(&mut tls, payload.len()).await
}

/// Trusts any server certificate: for clients that test what the server
/// refuses, not who the server is.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Reads until `want` bytes arrived or the connection ended (bounded).
async fn read_reply<S: AsyncRead + Unpin>(stream: &mut S, want: usize) -> Outcome {
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return Outcome::Refused("closed (EOF)".into()),
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.len() >= want {
                        return Outcome::Answered(std::mem::take(&mut got));
                    }
                }
                Err(e) => return Outcome::Refused(format!("read: {e}")),
            }
        }
    };
    let outcome = tokio::time::timeout(WAIT, read)
        .await
        .unwrap_or_else(|_| panic!("the server neither answered nor closed within {WAIT:?}"));
    match outcome {
        Outcome::Refused(why) if !got.is_empty() => {
            Outcome::Refused(format!("{why} after {} bytes: {got:?}", got.len()))
        }
        other => other,
    }
}

/// Reads everything until the peer closes (or resets) the connection.
async fn read_until_closed(tcp: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .unwrap_or_else(|_| panic!("the server did not close within {WAIT:?}"));
    got
}

/// The refusal is the client's to see, the server's to count, and the app
/// never sees a byte.
async fn assert_refused_before_the_app(outcome: Outcome, callee: &Sidecar, echo: &App) {
    assert!(
        matches!(outcome, Outcome::Refused(_)),
        "expected a refusal, got {outcome:?}"
    );
    wait_for_handshake_errors(callee).await;
    assert_eq!(echo.seen(), 0, "no byte may reach the app ({outcome:?})");
}

async fn wait_for_handshake_errors(callee: &Sidecar) {
    wait_for_async(
        "an inbound TLS handshake error to be counted",
        WAIT,
        || async {
            let metrics = callee.metrics();
            prom::find(
                &metrics,
                "bulkhead_tls_handshakes_total",
                &[("direction", "inbound"), ("result", "error")],
            )
            .map(|_| ())
        },
    )
    .await;
}

// ---------------------------------------------------------------------------
// Calls through a caller's sidecar.
// ---------------------------------------------------------------------------

/// Writes `payload` to an upstream address as an app would and reads as
/// many bytes back; Err when the connection ends short.
async fn tcp_exchange(addr: SocketAddr, payload: &[u8]) -> Result<Vec<u8>, String> {
    let mut tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut r, mut w) = tcp.split();
    let write = async {
        // The peer may close before everything is written: that is a
        // refusal, seen on the read side.
        let _ = w.write_all(payload).await;
    };
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 16 * 1024];
        while got.len() < payload.len() {
            match r.read(&mut buf).await {
                Ok(0) => return Err(format!("closed after {} bytes", got.len())),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return Err(format!("read after {} bytes: {e}", got.len())),
            }
        }
        Ok(())
    };
    let ((), result) = tokio::time::timeout(WAIT, async { tokio::join!(write, read) })
        .await
        .map_err(|_| "timed out".to_owned())?;
    result.map(|()| got)
}

/// Connects through `caller`'s upstream for `target` until the callee counts
/// a denial of `caller_sa`; every attempt must end without an echo.
async fn denied_tcp_until_counted(
    caller: &Sidecar,
    target: &str,
    callee: &Sidecar,
    caller_sa: &str,
) {
    let peer = spiffe(caller_sa);
    let line = wait_for_async("the callee to count a TCP denial", WAIT, || async {
        let result = tcp_exchange(caller.upstream(target), b"secret bytes").await;
        assert!(result.is_err(), "a denied caller was echoed: {result:?}");
        let metrics = callee.metrics();
        prom::find(
            &metrics,
            "bulkhead_authz_denied_total",
            &[
                ("target", target),
                ("peer", &peer),
                ("rule", "no-matching-rule"),
            ],
        )
    })
    .await;
    assert_eq!(line.label("direction"), Some("inbound"), "{line:?}");
}

fn header<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
    r.headers.get(name).and_then(|v| v.to_str().ok())
}
