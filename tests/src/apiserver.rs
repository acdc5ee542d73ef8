//! A stand-in Kubernetes API server: HTTPS with a self-signed certificate
//! (for 127.0.0.1 and `kubernetes.default.svc`), answering `GET` on the
//! paths it was given with their JSON to bearers of one token, 404 on any
//! other path, 401 without the token. `PATCH` with a JSON Patch
//! (`application/json-patch+json`) changes an object as the real one does:
//! applied whole or not at all (a failed `test` is HTTP 422), and a new
//! `metadata.resourceVersion` on every change. Counts what it served and
//! patched, per path; a test may replace an object (as `helm upgrade`
//! does). It also writes the files the control plane reads
//! (`--k8s-api-ca`, `--k8s-api-token`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

pub struct ApiServer {
    pub addr: SocketAddr,
    /// The server's certificate (PEM): what `--k8s-api-ca` names.
    pub ca_pem: String,
    /// `ca.crt` and `token` as the control plane reads them.
    pub ca_file: PathBuf,
    pub token_file: PathBuf,
    state: Arc<Mutex<State>>,
    _dir: tempfile::TempDir,
}

/// The objects (path → JSON) and what was done with them.
#[derive(Default)]
struct State {
    objects: HashMap<String, Value>,
    served: HashMap<String, u64>,
    patched: HashMap<String, u64>,
    /// The last resourceVersion handed out.
    version: u64,
}

impl State {
    /// Stores `object` at `path` under a new resourceVersion.
    fn store(&mut self, path: &str, mut object: Value) {
        self.version += 1;
        if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            metadata.insert("resourceVersion".into(), self.version.to_string().into());
        }
        self.objects.insert(path.to_owned(), object);
    }

    /// One request: (status, body).
    fn answer(
        &mut self,
        method: &http::Method,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> (u16, String) {
        let status = |code: u16, message: String| {
            (
                code,
                json!({"kind": "Status", "code": code, "message": message}).to_string(),
            )
        };
        let Some(object) = self.objects.get(path) else {
            return status(404, format!("{path} not found"));
        };
        match method.as_str() {
            "GET" => {
                let body = object.to_string();
                *self.served.entry(path.to_owned()).or_insert(0) += 1;
                (200, body)
            }
            "PATCH" if content_type != "application/json-patch+json" => status(
                415,
                format!("the stand-in takes JSON Patch only, not {content_type:?}"),
            ),
            "PATCH" => {
                let patch: json_patch::Patch = match serde_json::from_slice(body) {
                    Ok(p) => p,
                    Err(e) => return status(400, format!("not a JSON Patch: {e}")),
                };
                let mut changed = object.clone();
                if let Err(e) = json_patch::patch(&mut changed, &patch.0) {
                    return status(422, e.to_string());
                }
                self.store(path, changed);
                *self.patched.entry(path.to_owned()).or_insert(0) += 1;
                (200, self.objects[path].to_string())
            }
            other => status(405, format!("{other} is not served here")),
        }
    }
}

impl ApiServer {
    /// Serves `objects` (path → JSON body) to bearers of `token`, on a
    /// task of the current runtime.
    pub async fn start(token: &'static str, objects: &[(&str, String)]) -> Self {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["kubernetes.default.svc".to_owned()])
            .expect("params");
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        let cert = params.self_signed(&key).expect("self-signed");
        let config = rustls::ServerConfig::builder_with_provider(bulkhead_tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut state = State::default();
        for (path, body) in objects {
            let object = serde_json::from_str(body).expect("objects are JSON");
            state.store(path, object);
        }
        let state = Arc::new(Mutex::new(state));
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, state) = (acceptor.clone(), shared.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let state = state.clone();
                            async move {
                                let authorized = req
                                    .headers()
                                    .get("authorization")
                                    .and_then(|v| v.to_str().ok())
                                    == Some(&format!("Bearer {token}"));
                                let content_type = req
                                    .headers()
                                    .get("content-type")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or_default()
                                    .to_owned();
                                let (method, path) =
                                    (req.method().clone(), req.uri().path().to_owned());
                                let body = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let (status, body) = if authorized {
                                    lock(&state).answer(&method, &path, &content_type, &body)
                                } else {
                                    (401, String::new())
                                };
                                let resp = http::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .body(Full::new(bytes::Bytes::from(body)))
                                    .expect("response");
                                Ok::<_, std::convert::Infallible>(resp)
                            }
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca_file, token_file) = (dir.path().join("ca.crt"), dir.path().join("token"));
        std::fs::write(&ca_file, cert.pem()).expect("ca file");
        std::fs::write(&token_file, format!("{token}\n")).expect("token file");
        Self {
            addr,
            ca_pem: cert.pem(),
            ca_file,
            token_file,
            state,
            _dir: dir,
        }
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// How often `path` was served (200s to GET only).
    pub fn served(&self, path: &str) -> u64 {
        lock(&self.state).served.get(path).copied().unwrap_or(0)
    }

    /// How often `path` was changed by a PATCH.
    pub fn patched(&self, path: &str) -> u64 {
        lock(&self.state).patched.get(path).copied().unwrap_or(0)
    }

    /// The object at `path` now.
    pub fn object(&self, path: &str) -> Option<Value> {
        lock(&self.state).objects.get(path).cloned()
    }

    /// Replaces the object at `path`, as `kubectl apply` or `helm upgrade`
    /// would (a new resourceVersion).
    pub fn replace(&self, path: &str, object: Value) {
        lock(&self.state).store(path, object);
    }

    /// `--k8s-api-ca FILE --k8s-api-token FILE`, for the control plane.
    pub fn credentials_args(&self) -> [String; 4] {
        [
            "--k8s-api-ca".to_owned(),
            self.ca_file.display().to_string(),
            "--k8s-api-token".to_owned(),
            self.token_file.display().to_string(),
        ]
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where the API server keeps the MutatingWebhookConfiguration `name`.
pub fn mutating_webhook_configuration_path(name: &str) -> String {
    format!("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}")
}

/// A MutatingWebhookConfiguration as the chart renders it (no caBundle:
/// the control plane sets it), with one webhook per name.
pub fn mutating_webhook_configuration(name: &str, webhooks: &[&str]) -> Value {
    let webhooks: Vec<Value> = webhooks
        .iter()
        .map(|hook| {
            json!({
                "name": hook,
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "clientConfig": {"service": {
                    "name": "bulkhead-control", "namespace": "bulkhead", "path": "/inject", "port": 443,
                }},
                "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            })
        })
        .collect();
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name, "uid": "5e0c2a4c-0000-4000-8000-000000000001"},
        "webhooks": webhooks,
    })
}

/// A Node object as the API server returns it, with `labels`.
pub fn node(name: &str, labels: &[(&str, &str)]) -> String {
    let labels: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).into()))
        .collect();
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "status": {},
    })
    .to_string()
}
