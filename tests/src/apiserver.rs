//! A stand-in Kubernetes API server: HTTPS with a self-signed certificate
//! (for 127.0.0.1 and `kubernetes.default.svc`), answering `GET` on the
//! paths it was given with their JSON to bearers of one token, 404 on any
//! other path, 401 without the token. Counts what it served, per path.
//! It also writes the files the control plane reads (`--k8s-api-ca`,
//! `--k8s-api-token`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};

pub struct ApiServer {
    pub addr: SocketAddr,
    /// The server's certificate (PEM): what `--k8s-api-ca` names.
    pub ca_pem: String,
    /// `ca.crt` and `token` as the control plane reads them.
    pub ca_file: PathBuf,
    pub token_file: PathBuf,
    served: Arc<Mutex<HashMap<String, u64>>>,
    _dir: tempfile::TempDir,
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
        let objects: Arc<HashMap<String, String>> = Arc::new(
            objects
                .iter()
                .map(|(p, body)| ((*p).to_owned(), body.clone()))
                .collect(),
        );
        let served = Arc::new(Mutex::new(HashMap::new()));
        let counter = served.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, objects, counter) =
                    (acceptor.clone(), objects.clone(), counter.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let authorized = req
                                .headers()
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                == Some(&format!("Bearer {token}"));
                            let path = req.uri().path().to_owned();
                            let (status, body) = match objects.get(&path) {
                                _ if !authorized => (401, String::new()),
                                Some(body) => {
                                    *counter
                                        .lock()
                                        .unwrap_or_else(|e| e.into_inner())
                                        .entry(path)
                                        .or_insert(0) += 1;
                                    (200, body.clone())
                                }
                                None => (404, r#"{"kind":"Status","code":404}"#.to_owned()),
                            };
                            let resp = http::Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Full::new(bytes::Bytes::from(body)))
                                .expect("response");
                            async move { Ok::<_, std::convert::Infallible>(resp) }
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
            served,
            _dir: dir,
        }
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// How often `path` was served (200s only).
    pub fn served(&self, path: &str) -> u64 {
        self.served
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
            .copied()
            .unwrap_or(0)
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
