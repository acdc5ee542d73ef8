//! What the sidecar security scenarios share (`tests/tests/sidecar_inbound_tls.rs`,
//! `tests/tests/sidecar_policy.rs`): the mesh they run in, certificates made
//! wrong on purpose, and a mesh client driven by hand — tokio-rustls and the
//! wire format of `proxy/src/wire.rs` written here, so nothing of the
//! proxy's own client code can paper over a server-side gap.

#![allow(clippy::missing_panics_doc)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::control::*;
use crate::mesh::Mesh;
use crate::prom;
use crate::proxy::*;
use bulkhead_proto::SpiffeId;
use bulkhead_tls::{CertSlot, ExpectedServer, TrustBundle};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const TRUST_DOMAIN: &str = "cluster.local";

/// Every service and allow-list the scenarios use, in namespace `shop`.
pub const MESH: &str = "
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

pub const LEDGER_PORT: u16 = 7000;
pub const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Fixtures.
// ---------------------------------------------------------------------------

/// The mesh of these scenarios: [`MESH`] on the memory store.
pub async fn mesh() -> Mesh {
    Mesh::memory(TRUST_DOMAIN, MESH, &[]).await
}

/// The `ledger` TCP service: a byte-counting echo behind its sidecar.
pub async fn ledger(mesh: &Mesh) -> (App, Sidecar) {
    let echo = App::tcp_echo().await;
    let ledger = mesh.sidecar(
        SidecarSpec::new("shop", "ledger", "1.0.0")
            .protocol("tcp")
            .app(&echo),
    );
    (echo, ledger)
}

/// A client certificate for `shop/web` signed by this mesh's real issuer,
/// after `edit` (the one thing a test makes wrong).
pub fn client_cert(mesh: &Mesh, edit: impl FnOnce(&mut rcgen::CertificateParams)) -> CertSlot {
    signed_by_issuer(&mesh.ca, client_params(edit))
}

/// `cart` (an HTTP app behind its sidecar) and `web` calling it.
pub struct Shop {
    pub _mesh: Mesh,
    pub cart_app: App,
    pub _cart: Sidecar,
    pub web: Sidecar,
}

impl Shop {
    pub async fn start() -> Self {
        let mesh = mesh().await;
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

    pub async fn get(&self, path: &str) -> Reply {
        call(self.web.upstream("cart"), "GET", path, &[])
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }
}

// ---------------------------------------------------------------------------
// Certificates.
// ---------------------------------------------------------------------------

pub fn spiffe(sa: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/shop/sa/{sa}")
}

pub fn identity(sa: &str) -> SpiffeId {
    spiffe(sa).parse().expect("SPIFFE ID")
}

pub fn uri_san(uri: &str) -> rcgen::SanType {
    rcgen::SanType::URI(uri.try_into().expect("ia5 string"))
}

/// A leaf as the control plane issues one (one URI SAN `shop/web`, valid
/// now, client and server auth), then changed by `edit`.
pub fn client_params(edit: impl FnOnce(&mut rcgen::CertificateParams)) -> rcgen::CertificateParams {
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
pub fn signed_by_issuer(ca: &TestCa, params: rcgen::CertificateParams) -> CertSlot {
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
pub const ALPN: &[u8] = b"bulkhead/1";

/// The 8-byte preface: magic, protocol (2 = opaque TCP), reserved, and
/// `ledger`'s declared port, big endian.
pub const TO_LEDGER: [u8; 8] = preface(b"BHK1", 2, 0, LEDGER_PORT);

pub const fn preface(magic: &[u8; 4], protocol: u8, reserved: u8, port: u16) -> [u8; 8] {
    let [hi, lo] = port.to_be_bytes();
    [
        magic[0], magic[1], magic[2], magic[3], protocol, reserved, hi, lo,
    ]
}

/// What a client saw of a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The server sent these bytes back (as many as were sent).
    Answered(Vec<u8>),
    /// Handshake, write or read failed, or EOF, before any byte came back.
    Refused(String),
}

/// Dials `callee`'s inbound port with TLS 1.3 (verifying the callee's
/// identity), presenting `client` if any, writes `preface` and `payload`,
/// and reads the reply (as many bytes as `payload` has).
pub async fn mesh_call(
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

pub async fn dial_and_send(
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

pub use bulkhead_tls::AnyServer;

/// Reads until `want` bytes arrived or the connection ended (bounded).
pub async fn read_reply<S: AsyncRead + Unpin>(stream: &mut S, want: usize) -> Outcome {
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
pub async fn read_until_closed(tcp: &mut TcpStream) -> Vec<u8> {
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
pub async fn assert_refused_before_the_app(outcome: Outcome, callee: &Sidecar, echo: &App) {
    assert!(
        matches!(outcome, Outcome::Refused(_)),
        "expected a refusal, got {outcome:?}"
    );
    wait_for_handshake_errors(callee).await;
    assert_eq!(echo.seen(), 0, "no byte may reach the app ({outcome:?})");
}

pub async fn wait_for_handshake_errors(callee: &Sidecar) {
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
pub async fn tcp_exchange(addr: SocketAddr, payload: &[u8]) -> Result<Vec<u8>, String> {
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
pub async fn denied_tcp_until_counted(
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

pub fn header<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
    r.headers.get(name).and_then(|v| v.to_str().ok())
}
