//! The trust one replica acts on: the store's trust record (every replica
//! serves the same one), the bundle its TLS verifies with, and the issuer it
//! signs with — that record's active issuer, if this replica holds its key.
//!
//! Until the store has been read, the record comes from the files the
//! replica was started with (`--trust-bundle`, `--issuer-cert`); once it
//! has, the store's record wins, and a store with none is seeded with the
//! files' (the first replica to write wins; the others follow it). Every
//! change of the record — a root added, an issuer activated, a root retired
//! — is applied live: new handshakes use the new roots, signing moves to
//! the new issuer, and nothing restarts.
//!
//! Beside it: which root each endpoint's certificate chains to
//! ([`leaves`]), which replicas hold which issuer keys ([`signers`]), and
//! the expiry of roots and issuer ([`expiry`]: metrics and warnings).

pub mod expiry;
pub(crate) mod leaves;
pub mod signers;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use bulkhead_tls::{BundleSlot, TrustBundle};
use tokio::sync::watch;

use crate::ca::{self, Ca, CaError, IssuerFiles, Keyring, TokenClaims, TokenError, TrustRecord};
use crate::hub::Hub;
use crate::keys;
use crate::store::Store;

/// The files a replica's trust starts from.
#[derive(Clone, Debug)]
pub struct TrustFiles {
    pub trust_domain: String,
    /// `--trust-bundle`: the roots, until the store says otherwise.
    pub bundle: PathBuf,
    /// `--issuer-cert/--issuer-key` first; then any further pairs
    /// (`--next-issuer-*`), which may be absent.
    pub issuers: Vec<IssuerFiles>,
    /// How often the issuer files are read again.
    pub reload: std::time::Duration,
}

impl TrustFiles {
    /// The files of a CA folder as `bulkheadctl ca init` and `ca rotate
    /// prepare` write them: `bundle.crt`, `issuer.crt/.key`, and
    /// `next-issuer.crt/.key` when a rotation is prepared.
    pub fn in_dir(dir: &std::path::Path, trust_domain: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_owned(),
            bundle: dir.join("bundle.crt"),
            issuers: vec![
                IssuerFiles {
                    flag: "--issuer-cert",
                    cert: dir.join("issuer.crt"),
                    key: dir.join("issuer.key"),
                    optional: false,
                },
                IssuerFiles {
                    flag: "--next-issuer-cert",
                    cert: dir.join(NEXT_ISSUER_CERT),
                    key: dir.join(NEXT_ISSUER_KEY),
                    optional: true,
                },
            ],
            reload: DEFAULT_RELOAD,
        }
    }
}

/// Where `ca rotate prepare` puts the next issuer, beside the current one
/// (the default of `--next-issuer-cert`/`--next-issuer-key`).
pub use crate::ca::rotation_files::{NEXT_ISSUER_CERT, NEXT_ISSUER_KEY};
/// How often issuer files are read again by default.
pub const DEFAULT_RELOAD: std::time::Duration = std::time::Duration::from_secs(10);

/// This replica cannot sign: the record's active issuer is not among the
/// issuers it holds keys for.
#[derive(Debug, thiserror::Error)]
#[error(
    "this control-plane replica has no key for the active issuer {fingerprint} ({subject}); it holds: {held}. Give it that issuer's certificate and key files (in Kubernetes: the issuer Secret); they are read again every {reload:?}"
)]
pub struct NoSigner {
    pub fingerprint: String,
    pub subject: String,
    pub held: String,
    pub reload: std::time::Duration,
}

/// The trust this replica acts on now.
pub struct Trust {
    trust_domain: String,
    keyring: Arc<Keyring>,
    record: watch::Sender<Arc<TrustRecord>>,
    bundle: BundleSlot,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("trust_domain", &self.trust_domain)
            .field("stage", &self.record().stage())
            .field("keyring", &self.keyring)
            .finish()
    }
}

fn record_error(path: &std::path::Path, e: impl std::fmt::Display) -> CaError {
    CaError::BadFile {
        path: path.to_owned(),
        problem: e.to_string(),
    }
}

impl Trust {
    /// Loads the files: the first issuer must sign for the bundle file
    /// (checked as `Ca::load` does); further ones may be absent.
    pub fn load(files: &TrustFiles) -> Result<Self, CaError> {
        let first = files.issuers.first().ok_or_else(|| CaError::BadFile {
            path: files.bundle.clone(),
            problem: "no issuer files given".into(),
        })?;
        let ca = Ca::load(&first.cert, &first.key, &files.bundle, &files.trust_domain)?;
        let keyring = Keyring::load(&files.trust_domain, files.issuers.clone(), files.reload)?;
        let roots = bulkhead_tls::certs_from_pem(
            &std::fs::read(&files.bundle).map_err(|source| CaError::Io {
                path: files.bundle.clone(),
                source,
            })?,
            &files.bundle.display().to_string(),
        )
        .map_err(|e| record_error(&files.bundle, e))?;
        let issuer = ca.issuer_chain_der()[0].clone();
        let record = TrustRecord::new(roots, issuer).map_err(|e| record_error(&files.bundle, e))?;
        Self::new(Arc::new(keyring), record).map_err(|e| record_error(&files.bundle, e))
    }

    /// Acts on `record` until the store says otherwise.
    pub fn new(keyring: Arc<Keyring>, record: TrustRecord) -> Result<Self, String> {
        let trust_domain = keyring
            .first()
            .map(|ca| ca.trust_domain().to_owned())
            .ok_or("no issuer loaded")?;
        let bundle = TrustBundle::new(record.roots_der(), &trust_domain)
            .map_err(|e| format!("trust bundle: {e}"))?;
        Ok(Self {
            trust_domain,
            keyring,
            record: watch::Sender::new(Arc::new(record)),
            bundle: BundleSlot::new(bundle),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The record in force now.
    pub fn record(&self) -> Arc<TrustRecord> {
        self.record.borrow().clone()
    }

    /// Told of each record put in force.
    pub fn subscribe(&self) -> watch::Receiver<Arc<TrustRecord>> {
        self.record.subscribe()
    }

    /// The bundle this replica's TLS verifies with (replaced live).
    pub fn bundle(&self) -> &BundleSlot {
        &self.bundle
    }

    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.keyring
    }

    /// The issuer to sign with: the record's active one.
    pub fn signer(&self) -> Result<Arc<Ca>, NoSigner> {
        let record = self.record();
        let active = &record.issuer().cert;
        self.keyring
            .get(&active.fingerprint)
            .ok_or_else(|| NoSigner {
                fingerprint: active.fingerprint.clone(),
                subject: active.subject.clone(),
                held: self.keyring.describe(),
                reload: self.keyring.reload_interval(),
            })
    }

    /// Checks a bootstrap token against the active issuer and, until the
    /// old root is retired, the issuer it replaced. One-time use is the
    /// caller's job.
    pub fn verify_token(&self, token: &str, now: SystemTime) -> Result<TokenClaims, TokenError> {
        let record = self.record();
        let mut first_error = None;
        for issuer in record.token_issuers() {
            match ca::token::verify(token, &issuer.cert.public_key, &self.trust_domain, now) {
                Ok(claims) => return Ok(claims),
                // Another issuer may have signed it; anything else is final.
                Err(TokenError::BadSignature) => {
                    first_error.get_or_insert(TokenError::BadSignature);
                }
                Err(other) => return Err(other),
            }
        }
        Err(first_error.unwrap_or(TokenError::BadSignature))
    }

    /// Puts `record` in force: the bundle's roots, then the record (whose
    /// followers re-issue what the new active issuer must sign).
    pub fn apply(&self, record: Arc<TrustRecord>) {
        if *self.record.borrow() == record {
            return;
        }
        match self.bundle.replace_roots(record.roots_der()) {
            Ok(changed) => {
                if changed {
                    let roots: Vec<&str> = record
                        .roots()
                        .iter()
                        .map(|r| r.fingerprint.as_str())
                        .collect();
                    tracing::info!(?roots, "trust bundle replaced: new handshakes use it now");
                }
            }
            Err(error) => {
                tracing::error!(%error, "the trust record's roots do not load; keeping the current trust");
                return;
            }
        }
        tracing::info!(
            stage = record.stage().as_str(),
            issuer = %record.issuer().cert.fingerprint,
            "trust record in force"
        );
        self.record.send_replace(record);
    }
}

/// Keeps this replica's trust equal to the store's, for as long as the
/// process runs: seeds the store when it has no record yet, then applies
/// every record the hub sees.
pub(crate) async fn follow(trust: Arc<Trust>, hub: Arc<Hub>, store: Arc<dyn Store>) {
    let mut records = hub.trust();
    hub.wait_synced().await;
    if records.borrow().is_none() {
        seed(&trust, store.as_ref()).await;
    }
    loop {
        let record = records.borrow_and_update().clone();
        if let Some(record) = record {
            trust.apply(record);
        }
        if records.changed().await.is_err() {
            return;
        }
    }
}

/// Writes this replica's record when the store has none (retrying while
/// the store is unavailable); another replica's, written first, wins.
async fn seed(trust: &Trust, store: &dyn Store) {
    let mut backoff = bulkhead_process::Backoff::new(
        std::time::Duration::from_millis(200),
        std::time::Duration::from_secs(10),
    );
    let record = trust.record();
    loop {
        match store.create(keys::TRUST, record.encode(), None).await {
            Ok(true) => {
                tracing::info!(roots = record.roots().len(), issuer = %record.issuer().cert.fingerprint, "the store had no trust record: wrote this replica's (from --trust-bundle and --issuer-cert)");
                return;
            }
            Ok(false) => return,
            Err(error) => {
                let retry_in = backoff.next_delay();
                tracing::warn!(%error, ?retry_in, "cannot write the trust record; retrying");
                tokio::time::sleep(retry_in).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::init_ca;

    fn first(path: &std::path::Path) -> rustls_pki_types::CertificateDer<'static> {
        bulkhead_tls::certs_from_pem(&std::fs::read(path).unwrap(), "c")
            .unwrap()
            .remove(0)
    }

    #[test]
    fn signs_with_the_records_issuer_and_says_so_when_it_holds_no_key() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        init_ca("example.org", &dir).unwrap();
        let other = init_ca("example.org", &tmp.path().join("other")).unwrap();
        let trust = Trust::load(&TrustFiles::in_dir(&dir, "example.org")).unwrap();
        let ours = trust.signer().unwrap();
        assert_eq!(ours.fingerprint(), trust.record().issuer().cert.fingerprint);
        let token = crate::ca::mint_token(
            &std::fs::read_to_string(dir.join("issuer.key")).unwrap(),
            &"spiffe://example.org/ns/shop/sa/web".parse().unwrap(),
            std::time::Duration::from_secs(60),
            false,
            SystemTime::now(),
        )
        .unwrap();
        trust.verify_token(&token, SystemTime::now()).unwrap();

        // The store names an issuer whose key this replica was not given.
        let foreign =
            TrustRecord::new(vec![first(&other.root_cert)], first(&other.issuer_cert)).unwrap();
        trust.apply(Arc::new(foreign.clone()));
        assert_eq!(trust.bundle().get().roots_der(), foreign.roots_der());
        let err = trust.signer().unwrap_err().to_string();
        assert!(
            err.contains(&foreign.issuer().cert.fingerprint) && err.contains("--issuer-cert"),
            "{err}"
        );
        assert!(matches!(
            trust.verify_token(&token, SystemTime::now()),
            Err(TokenError::BadSignature)
        ));
    }
}
