//! TLS toward the outside world: a certificate and key from files (a
//! Kubernetes Secret, cert-manager's output), offered with ALPN `h2` and
//! `http/1.1`, and re-read when either file changes, so a renewed
//! certificate is served without a restart. A pair that does not load is
//! logged and the one in force kept.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bulkhead_tls::CertSlot;
use tokio_rustls::TlsAcceptor;

/// How often the files are looked at.
const RELOAD_INTERVAL: Duration = Duration::from_secs(2);
/// Largest certificate or key file read.
const MAX_PEM_BYTES: u64 = 1 << 20;

pub(super) struct EdgeTls {
    cert: PathBuf,
    key: PathBuf,
    slot: CertSlot,
    /// Modification times of the pair in force.
    loaded: (Option<SystemTime>, Option<SystemTime>),
}

impl EdgeTls {
    /// Loads the pair; an error names the file and what is wrong with it.
    pub(super) fn load(cert: &Path, key: &Path) -> Result<Self, String> {
        let slot = CertSlot::empty();
        slot.set(read_pair(cert, key)?);
        Ok(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            slot,
            loaded: (modified(cert), modified(key)),
        })
    }

    /// A TLS 1.2/1.3 acceptor presenting whatever pair is in force.
    pub(super) fn acceptor(&self) -> TlsAcceptor {
        let mut config = rustls::ServerConfig::builder_with_provider(bulkhead_tls::provider())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default TLS versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(self.slot.clone()));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        TlsAcceptor::from(Arc::new(config))
    }

    /// Re-reads the pair whenever a file's modification time changes.
    pub(super) async fn reload_forever(mut self) {
        let mut tick = tokio::time::interval(RELOAD_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = (modified(&self.cert), modified(&self.key));
            if now == self.loaded {
                continue;
            }
            match read_pair(&self.cert, &self.key) {
                Ok(pair) => {
                    self.slot.set(pair);
                    self.loaded = now;
                    metrics::counter!("bulkhead_gateway_tls_reloads_total", "result" => "ok")
                        .increment(1);
                    tracing::info!(cert = %self.cert.display(), "gateway certificate reloaded");
                }
                Err(error) => {
                    // Half-written files (cert renewed, key not yet) settle on
                    // a later tick; meanwhile the old pair keeps serving.
                    metrics::counter!("bulkhead_gateway_tls_reloads_total", "result" => "error")
                        .increment(1);
                    tracing::warn!(%error, "gateway certificate not reloaded; keeping the one in force");
                }
            }
        }
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn read_pem(path: &Path, flag: &str) -> Result<Vec<u8>, String> {
    let len = std::fs::metadata(path)
        .map_err(|e| format!("{flag} {}: {e}", path.display()))?
        .len();
    if len > MAX_PEM_BYTES {
        return Err(format!(
            "{flag} {}: {len} bytes; expected a PEM file of at most {MAX_PEM_BYTES}",
            path.display()
        ));
    }
    std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))
}

fn read_pair(cert: &Path, key: &Path) -> Result<Arc<rustls::sign::CertifiedKey>, String> {
    let chain = bulkhead_tls::certs_from_pem(&read_pem(cert, "--tls-cert")?, "--tls-cert")
        .map_err(|e| e.to_string())?;
    let private = bulkhead_tls::key_from_pem(&read_pem(key, "--tls-key")?, "--tls-key")
        .map_err(|e| e.to_string())?;
    let pair = CertSlot::certified_key(chain, private).map_err(|e| e.to_string())?;
    // A key that does not belong to the certificate would fail every
    // handshake; refuse it here instead.
    pair.keys_match().map_err(|e| {
        format!(
            "--tls-key {} does not match --tls-cert {}: {e}",
            key.display(),
            cert.display()
        )
    })?;
    Ok(pair)
}
