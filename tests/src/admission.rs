//! Admission-webhook test support: AdmissionReview fixtures
//! (`tests/fixtures/admission/`), the real webhook listener on a loopback
//! port with a certificate issued for the test and an HTTPS client that
//! trusts exactly it (or a client of a running control plane's webhook,
//! trusting what the test says), and readers of the patched pod. Used by
//! `tests/tests/webhook.rs`, `tests/tests/webhook_certificate.rs` and
//! `tests/tests/inject_cli.rs`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bulkhead_control::webhook::{self, Injector, InjectorSettings};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, Volume};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const CONTROL_URL: &str = "https://bulkhead-control.mesh-system.svc:8443";
pub const TRUST_BUNDLE_CONFIG_MAP: &str = "mesh-roots";

// ---------------------------------------------------------------------------
// Scenario helpers
// ---------------------------------------------------------------------------

pub fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/admission")
        .join(name);
    let text = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn settings() -> InjectorSettings {
    InjectorSettings {
        control_url: CONTROL_URL.into(),
        trust_bundle_config_map: TRUST_BUNDLE_CONFIG_MAP.into(),
        proxy_image: "registry.test/bulkhead-proxy:9.9.9".into(),
        init_image: "registry.test/bulkhead-proxy:9.9.9".into(),
        ..InjectorSettings::default()
    }
}

/// `webhook::serve` on a loopback port with a certificate for `localhost`,
/// and an HTTPS client that trusts exactly that certificate; or, from
/// [`Webhook::client`], only the client, of a webhook served elsewhere.
pub struct Webhook {
    pub addr: SocketAddr,
    pub client: Arc<rustls::ClientConfig>,
    /// The name the client asks for (SNI) and checks the certificate for.
    pub server_name: String,
    pub stop: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<()>>,
}

/// An HTTP answer: status, headers, body.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{}: not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn content_type(&self) -> &str {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

impl Webhook {
    pub async fn start() -> Self {
        bulkhead_tls::install_default_provider();
        let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("test certificate");
        let cert: CertificateDer<'static> = issued.cert.der().clone();
        let key =
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(issued.signing_key.serialize_der()));
        let mut server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .expect("server TLS config");
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).expect("trust the test certificate");
        let client = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let injector = Arc::new(Injector::new(settings()).expect("settings"));
        // One injector for the listener's life (the control plane's follows
        // its trust bundle).
        let (_, injector) = tokio::sync::watch::channel(injector);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(webhook::serve(
            listener,
            tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            injector,
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            client: Arc::new(client),
            server_name: "localhost".into(),
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A client of the webhook at `addr` that trusts only `roots` (PEM) and
    /// asks for `server_name`, as the API server does for a Service
    /// reference (`<service>.<namespace>.svc`).
    pub fn client(addr: SocketAddr, roots_pem: &[u8], server_name: &str) -> Self {
        bulkhead_tls::install_default_provider();
        let mut roots = rustls::RootCertStore::empty();
        for root in bulkhead_tls::certs_from_pem(roots_pem, "roots").expect("PEM roots") {
            roots.add(root).expect("a usable root");
        }
        let mut client = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        // Every connection sees the certificate served now, not the one of
        // a resumed session.
        client.resumption = rustls::client::Resumption::disabled();
        Self {
            addr,
            client: Arc::new(client),
            server_name: server_name.to_owned(),
            stop: None,
            task: None,
        }
    }

    pub async fn tls(&self, alpn: &[&[u8]]) -> tokio_rustls::client::TlsStream<TcpStream> {
        let mut config = (*self.client).clone();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let tcp = TcpStream::connect(self.addr).await.expect("connect");
        let name = ServerName::try_from(self.server_name.clone()).expect("a server name");
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("TLS handshake with the webhook")
    }

    /// The leaf certificate (DER) the webhook serves to a new connection.
    pub async fn served_certificate(&self) -> Vec<u8> {
        let tls = self.tls(&[b"http/1.1"]).await;
        let (_, session) = tls.get_ref();
        session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .expect("the webhook presents a certificate")
            .to_vec()
    }

    /// One HTTP/1.1 request on a fresh connection.
    pub async fn send<B>(&self, req: Request<B>) -> Answer
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let io = TokioIo::new(self.tls(&[b"http/1.1"]).await);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("HTTP/1.1 handshake");
        tokio::spawn(conn);
        let resp = sender.send_request(req).await.expect("response");
        let (parts, body) = resp.into_parts();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.expect("body").to_bytes(),
        }
    }

    pub async fn request(&self, method: Method, path: &str, body: Vec<u8>) -> Answer {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.server_name.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        self.send(req).await
    }

    pub async fn post(&self, body: Vec<u8>) -> Answer {
        self.request(Method::POST, "/inject", body).await
    }

    /// Posts a review that must be answered (200) and returns the answer.
    pub async fn review(&self, review: &Value) -> Value {
        let answer = self.post(serde_json::to_vec(review).unwrap()).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        assert_eq!(answer.content_type(), "application/json");
        let out = answer.json();
        assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(out["kind"], "AdmissionReview");
        assert_eq!(out["response"]["uid"], review["request"]["uid"]);
        out
    }

    /// Stops the listener and waits for `serve` to return.
    pub async fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .expect("serve returns after shutdown")
                .expect("serve did not panic");
        }
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The patch of an allowed review, decoded: base64 of a JSON Patch.
pub fn patch_of(response: &Value) -> json_patch::Patch {
    assert_eq!(response["response"]["allowed"], true, "{response}");
    assert_eq!(response["response"]["patchType"], "JSONPatch", "{response}");
    let b64 = response["response"]["patch"]
        .as_str()
        .expect("response.patch is a base64 string");
    let text = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("response.patch is base64");
    serde_json::from_slice(&text).expect("response.patch decodes to a JSON Patch")
}

pub fn assert_no_patch(response: &Value) {
    assert_eq!(response["response"]["allowed"], true, "{response}");
    assert!(response["response"].get("patch").is_none(), "{response}");
    assert!(
        response["response"].get("patchType").is_none(),
        "{response}"
    );
}

pub fn warnings(response: &Value) -> Vec<String> {
    response["response"]["warnings"]
        .as_array()
        .map(|w| w.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// Applies the response's patch to the request's pod; returns the patched
/// JSON and it parsed as a `Pod`.
pub fn patched(review: &Value, response: &Value) -> (Value, Pod) {
    let mut pod = review["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch_of(response).0).expect("the patch applies to the pod");
    let parsed: Pod = serde_json::from_value(pod.clone()).expect("the result is a Pod");
    (pod, parsed)
}

pub fn with_uid(review: &Value, uid: &str) -> Value {
    let mut r = review.clone();
    r["request"]["uid"] = json!(uid);
    r
}

pub fn env<'a>(c: &'a Container, name: &str) -> &'a EnvVar {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("{} has no env {name}", c.name))
}

pub fn field_ref(c: &Container, name: &str) -> String {
    env(c, name)
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.clone())
        .unwrap_or_else(|| panic!("{name} is not from the downward API"))
}

pub fn value(c: &Container, name: &str) -> String {
    env(c, name).value.clone().unwrap_or_default()
}

pub fn flag<'a>(c: &'a Container, flag: &str) -> Option<&'a str> {
    let args = c.args.as_deref().unwrap_or_default();
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// Every value of a repeated flag (`--app A --app B`), in order.
pub fn flags<'a>(c: &'a Container, flag: &str) -> Vec<&'a str> {
    let args = c.args.as_deref().unwrap_or_default();
    args.windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| w[1].as_str())
        .collect()
}

pub fn volume<'a>(pod: &'a Pod, name: &str) -> &'a Volume {
    pod.spec
        .as_ref()
        .unwrap()
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no volume {name}"))
}

/// Every container and volume injected re-serializes to exactly the JSON
/// the patch added: no field the Pod type does not know (a typo'd name
/// would be silently dropped by the parse).
pub fn assert_known_fields(json: &Value, pod: &Pod) {
    let spec = pod.spec.as_ref().unwrap();
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        if c.name.starts_with("bulkhead-") {
            assert_eq!(
                serde_json::to_value(c).unwrap(),
                json["spec"]["initContainers"][i]
            );
        }
    }
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        if v.name.starts_with("bulkhead-") {
            assert_eq!(serde_json::to_value(v).unwrap(), json["spec"]["volumes"][i]);
        }
    }
}
