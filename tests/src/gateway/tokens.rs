//! End-user tokens signed here with each algorithm the gateway accepts
//! (and forged ones it must refuse), a JWKS server that can rotate its keys
//! or stop answering, and TLS certificates for the gateway and JWKS server.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use serde_json::{Value, json};

use crate::proxy::App;

/// An RSA key for RS256 (ring cannot make one; generated once with
/// `openssl genpkey -algorithm RSA`, PKCS#1 DER).
const RSA_PKCS1: &[u8] = include_bytes!("../../fixtures/jwt-rsa-2048.der");

/// A token issuer's signing key.
pub struct Signer {
    pub kid: String,
    key: SigningKey,
}

enum SigningKey {
    Es256(EcdsaKeyPair),
    Rs256(RsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

impl Signer {
    /// A fresh P-256 key.
    pub fn es256(kid: &str) -> Self {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("P-256 key");
        let key = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("P-256 key");
        Self {
            kid: kid.into(),
            key: SigningKey::Es256(key),
        }
    }

    /// The fixture RSA key.
    pub fn rs256(kid: &str) -> Self {
        Self {
            kid: kid.into(),
            key: SigningKey::Rs256(RsaKeyPair::from_der(RSA_PKCS1).expect("RSA fixture")),
        }
    }

    /// A fresh Ed25519 key.
    pub fn ed25519(kid: &str) -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("Ed25519 key");
        Self {
            kid: kid.into(),
            key: SigningKey::EdDsa(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key")),
        }
    }

    pub fn alg(&self) -> &'static str {
        match self.key {
            SigningKey::Es256(_) => "ES256",
            SigningKey::Rs256(_) => "RS256",
            SigningKey::EdDsa(_) => "EdDSA",
        }
    }

    /// The public key as a JSON Web Key.
    pub fn jwk(&self) -> Value {
        match &self.key {
            SigningKey::Es256(k) => {
                // Uncompressed point: 0x04 || x || y.
                let point = k.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig",
                       "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65])})
            }
            SigningKey::Rs256(k) => {
                let c = signature::RsaPublicKeyComponents::<Vec<u8>>::from(k.public());
                json!({"kty": "RSA", "kid": self.kid, "alg": "RS256",
                       "n": B64.encode(&c.n), "e": B64.encode(&c.e)})
            }
            SigningKey::EdDsa(k) => {
                json!({"kty": "OKP", "crv": "Ed25519", "kid": self.kid,
                       "x": B64.encode(k.public_key().as_ref())})
            }
        }
    }

    /// A token with these claims, signed by this key.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(
            &json!({"alg": self.alg(), "typ": "JWT", "kid": self.kid}),
            claims,
        )
    }

    /// A token with this header (which may lie about the key or algorithm).
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let message = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let rng = SystemRandom::new();
        let sig = match &self.key {
            SigningKey::Es256(k) => k
                .sign(&rng, message.as_bytes())
                .expect("sign")
                .as_ref()
                .to_vec(),
            SigningKey::Rs256(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    message.as_bytes(),
                    &mut sig,
                )
                .expect("sign");
                sig
            }
            SigningKey::EdDsa(k) => k.sign(message.as_bytes()).as_ref().to_vec(),
        };
        format!("{message}.{}", B64.encode(sig))
    }

    /// The public key's bytes (for RSA, PKCS#1 DER): what a key-confusion
    /// attacker uses as an HMAC secret.
    pub fn public_bytes(&self) -> Vec<u8> {
        match &self.key {
            SigningKey::Es256(k) => k.public_key().as_ref().to_vec(),
            SigningKey::Rs256(k) => k.public().as_ref().to_vec(),
            SigningKey::EdDsa(k) => k.public_key().as_ref().to_vec(),
        }
    }
}

/// A JWKS of these keys.
pub fn jwks(signers: &[&Signer]) -> Value {
    json!({"keys": signers.iter().map(|s| s.jwk()).collect::<Vec<_>>()})
}

/// An HS256 token made with `secret` (the key-confusion attempt).
pub fn hs256(secret: &[u8], kid: &str, claims: &Value) -> String {
    let header = json!({"alg": "HS256", "typ": "JWT", "kid": kid});
    let message = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, message.as_bytes());
    format!("{message}.{}", B64.encode(tag.as_ref()))
}

/// An `alg: none` token (with a dummy signature part, as attackers send).
pub fn unsigned(claims: &Value) -> String {
    let header = json!({"alg": "none", "typ": "JWT"});
    format!(
        "{}.{}.AAAA",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    )
}

/// Seconds since the epoch, `offset` from now.
pub fn at(offset: i64) -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    i64::try_from(now).unwrap_or(i64::MAX) + offset
}

/// Claims valid for ten minutes from `iss` for `aud`, plus `extra`.
pub fn claims(iss: &str, aud: &str, extra: Value) -> Value {
    let mut c = json!({"iss": iss, "aud": aud, "sub": "user-1", "iat": at(0), "exp": at(600)});
    if let (Some(c), Value::Object(extra)) = (c.as_object_mut(), extra) {
        c.extend(extra);
    }
    c
}

/// An HTTP server of a JWKS: its document can be replaced (a rotation),
/// and it can stop answering (an outage). Counts its fetches.
pub struct JwksServer {
    pub app: App,
    document: Arc<Mutex<Value>>,
    scheme: &'static str,
}

/// What a JWKS server answers: the document in force, with a max-age
/// below the gateway's 30 s floor (it must clamp).
fn jwks_answer(
    document: Arc<Mutex<Value>>,
) -> impl Fn(Request<Incoming>) -> std::future::Ready<Response<Full<Bytes>>>
+ Clone
+ Send
+ Sync
+ 'static {
    move |_req| {
        let body = document.lock().unwrap().to_string();
        std::future::ready(
            Response::builder()
                .header("content-type", "application/json")
                .header("cache-control", "public, max-age=1")
                .body(Full::new(Bytes::from(body)))
                .unwrap(),
        )
    }
}

impl JwksServer {
    pub async fn start(document: Value) -> Self {
        let doc = Arc::new(Mutex::new(document));
        let app = App::http_with(jwks_answer(doc.clone())).await;
        Self {
            app,
            document: doc,
            scheme: "http",
        }
    }

    /// The same over TLS, with a self-signed certificate for `localhost`
    /// (written in `dir`); also returns that certificate's PEM, what a
    /// provider's `jwksCa` names.
    pub async fn start_tls(document: Value, dir: &std::path::Path) -> (Self, String) {
        write_server_cert(dir, "jwks");
        let pem = std::fs::read(dir.join("cert.pem")).expect("cert.pem");
        let chain = bulkhead_tls::certs_from_pem(&pem, "cert.pem").expect("chain");
        let key_pem = std::fs::read(dir.join("key.pem")).expect("key.pem");
        let key = bulkhead_tls::key_from_pem(&key_pem, "key.pem").expect("key");
        let config = rustls::ServerConfig::builder_with_provider(bulkhead_tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let doc = Arc::new(Mutex::new(document));
        let answer = jwks_answer(doc.clone());
        let app = App::serve(move |tcp, count| {
            let (acceptor, answer) = (acceptor.clone(), answer.clone());
            async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let reply = answer(req);
                    async move { Ok::<_, std::convert::Infallible>(reply.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            }
        })
        .await;
        let server = Self {
            app,
            document: doc,
            scheme: "https",
        };
        (server, String::from_utf8(pem).expect("PEM"))
    }

    /// `localhost` for TLS (the certificate's name), the address otherwise.
    pub fn uri(&self) -> String {
        match self.scheme {
            "https" => format!(
                "https://localhost:{}/.well-known/jwks.json",
                self.app.addr.port()
            ),
            _ => format!("http://{}/.well-known/jwks.json", self.app.addr),
        }
    }

    pub fn rotate(&self, document: Value) {
        *self.document.lock().unwrap() = document;
    }

    /// How many times the JWKS was fetched.
    pub fn fetches(&self) -> u64 {
        self.app.seen()
    }
}

/// A self-signed server certificate for `localhost` and 127.0.0.1, written
/// as `cert.pem` and `key.pem` in `dir` (replacing what is there, as a
/// certificate renewal does); its DER.
pub fn write_server_cert(dir: &std::path::Path, name: &str) -> Vec<u8> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).expect("self-signed");
    // Key first: a reader that sees the new certificate sees its key.
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).expect("key.pem");
    std::fs::write(dir.join("cert.pem"), cert.pem()).expect("cert.pem");
    cert.der().to_vec()
}

/// What an HTTPS GET to the gateway saw.
pub struct TlsReply {
    pub status: u16,
    pub version: http::Version,
    /// The server's leaf certificate (DER).
    pub server_cert: Vec<u8>,
}

/// GET `path` over TLS to `addr`, trusting only `root`, offering `alpn`.
pub async fn https_get(
    addr: std::net::SocketAddr,
    root: &[u8],
    alpn: &[&[u8]],
    path: &str,
) -> Result<TlsReply, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from(root.to_vec()))
        .map_err(|e| e.to_string())?;
    let mut config = rustls::ClientConfig::builder_with_provider(bulkhead_tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (_, session) = tls.get_ref();
    let server_cert = session
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let h2 = session.alpn_protocol() == Some(b"h2");
    let io = hyper_util::rt::TokioIo::new(tls);
    let empty = http_body_util::Empty::<Bytes>::new;
    let response = if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let request = Request::get(format!("https://localhost{path}"))
            .body(empty())
            .map_err(|e| e.to_string())?;
        sender.send_request(request).await
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let request = Request::get(path)
            .header("host", "localhost")
            .body(empty())
            .map_err(|e| e.to_string())?;
        sender.send_request(request).await
    }
    .map_err(|e| e.to_string())?;
    Ok(TlsReply {
        status: response.status().as_u16(),
        version: response.version(),
        server_cert,
    })
}
