//! The webhook's own serving certificate, when none is given as files: a
//! P-256 key made in memory (never written anywhere), a leaf signed by the
//! mesh issuer — the one that signs workload certificates — for the
//! webhook's DNS names, served with the issuer chain. The API server
//! verifies it against the trust bundle, which [`super::ca_bundle`] keeps
//! in the webhook configuration's `caBundle`.
//!
//! It is renewed when [`bulkhead_process::renewal_delay`] says — at about
//! 70 % of its lifetime, as sidecars renew theirs — and at once when a root
//! rotation activates another issuer (so that the old root can be retired),
//! by swapping it in a [`CertSlot`]: new handshakes get the new one, open
//! connections keep theirs, nothing restarts.
//!
//! A certificate given as files (bring your own, e.g. cert-manager's in a
//! mounted Secret) is swapped the same way when the files change
//! ([`reload_files_forever`]), so a renewed Secret is served without a
//! restart too.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bulkhead_process::Backoff;
use bulkhead_tls::{CertSlot, not_after};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use crate::ca::Ca;
use crate::runtime::control_identity;
use crate::trust::Trust;

/// A freshly issued serving certificate.
pub struct ServingCert {
    pub key: Arc<CertifiedKey>,
    pub not_after: SystemTime,
    /// Fingerprint of the issuer that signed it.
    pub issuer: String,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// Issues a serving certificate for `dns_names`: DNS SANs after the control
/// plane's SPIFFE ID (the API server looks only at the DNS names), EKU
/// server and client auth, `lifetime` long but never past the issuer.
pub fn issue(ca: &Ca, dns_names: &[String], lifetime: Duration) -> Result<ServingCert, String> {
    if dns_names.is_empty() {
        return Err("the webhook certificate needs at least one DNS name".into());
    }
    if let Some(bad) = dns_names.iter().find(|n| !super::is_dns_subdomain(n)) {
        return Err(format!(
            "{bad:?} is not a DNS name for the webhook certificate (expected e.g. bulkhead-control.bulkhead.svc)"
        ));
    }
    let (chain, key) = ca
        .issue_local(
            &control_identity(ca.trust_domain()),
            dns_names,
            &[],
            lifetime,
        )
        .map_err(|e| format!("cannot issue the webhook's serving certificate: {e}"))?;
    let not_after = chain
        .first()
        .ok_or("the issued chain is empty")
        .and_then(|leaf| not_after(leaf).ok_or("the issued certificate does not parse"))?;
    let key = CertSlot::certified_key(chain, key).map_err(|e| e.to_string())?;
    Ok(ServingCert {
        key,
        not_after,
        issuer: ca.fingerprint().to_owned(),
    })
}

/// [`issue`] with the issuer in force.
fn issue_now(
    trust: &Trust,
    dns_names: &[String],
    lifetime: Duration,
) -> Result<ServingCert, String> {
    let signer = trust.signer().map_err(|e| e.to_string())?;
    issue(&signer, dns_names, lifetime)
}

fn record_expiry(not_after: SystemTime) {
    let secs = not_after
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    metrics::gauge!("bulkhead_webhook_cert_expiry_timestamp_seconds").set(secs);
}

/// Issues the first certificate (an issuer that cannot sign fails start-up
/// there) and records its expiry.
pub fn first(
    trust: &Trust,
    dns_names: &[String],
    lifetime: Duration,
) -> Result<ServingCert, String> {
    let cert = issue_now(trust, dns_names, lifetime)?;
    record_expiry(cert.not_after);
    tracing::info!(
        dns_names = ?dns_names,
        not_after = %humantime::format_rfc3339_seconds(cert.not_after),
        "issued the webhook's serving certificate from the mesh issuer"
    );
    Ok(cert)
}

/// Renews forever into `slot`: when due, and when the trust record names
/// another active issuer than the one that signed the served certificate;
/// after each renewal bumps `renewed` (the `caBundle` keeper checks again).
/// A failed issuance (the issuer expired, or its key is not here yet) keeps
/// the current certificate and retries with backoff.
pub async fn renew_forever(
    trust: Arc<Trust>,
    dns_names: Vec<String>,
    lifetime: Duration,
    slot: CertSlot,
    first: ServingCert,
    renewed: watch::Sender<u64>,
) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let mut records = trust.subscribe();
    let mut keys = trust.keyring().subscribe();
    let (mut not_after, mut signed_by) = (first.not_after, first.issuer);
    loop {
        let due = bulkhead_process::renewal_delay(not_after, SystemTime::now());
        let reason = tokio::select! {
            () = tokio::time::sleep(due) => "due",
            _ = records.changed() => "issuer",
            _ = keys.changed() => "issuer",
        };
        if reason == "issuer" && trust.record().issuer().cert.fingerprint == signed_by {
            continue;
        }
        loop {
            match issue_now(&trust, &dns_names, lifetime) {
                Ok(cert) => {
                    slot.set(cert.key);
                    (not_after, signed_by) = (cert.not_after, cert.issuer);
                    record_expiry(not_after);
                    renewed.send_modify(|n| *n += 1);
                    backoff.reset();
                    tracing::info!(
                        reason,
                        issuer = %signed_by,
                        not_after = %humantime::format_rfc3339_seconds(not_after),
                        "renewed the webhook's serving certificate"
                    );
                    break;
                }
                Err(error) => {
                    let retry_in = backoff.next_delay();
                    tracing::error!(%error, ?retry_in, "renewing the webhook's serving certificate failed; the current one stays in use");
                    tokio::time::sleep(retry_in).await;
                }
            }
        }
    }
}

/// Reads a certificate chain (leaf first) and its key from PEM files,
/// checked to belong together; records the leaf's expiry.
pub fn load_files(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let read = |path: &Path| std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
    let chain = bulkhead_tls::certs_from_pem(&read(cert)?, &cert.display().to_string())
        .map_err(|e| e.to_string())?;
    let leaf_not_after = chain.first().and_then(|leaf| not_after(leaf));
    let key_der = bulkhead_tls::key_from_pem(&read(key)?, &key.display().to_string())
        .map_err(|e| e.to_string())?;
    let certified = CertifiedKey::from_der(chain, key_der, &bulkhead_tls::provider())
        .map_err(|e| format!("{} and {}: {e}", cert.display(), key.display()))?;
    if let Some(not_after) = leaf_not_after {
        record_expiry(not_after);
    }
    Ok(Arc::new(certified))
}

/// Reads the files again every `interval`; when either changed and the pair
/// is valid, it replaces the served certificate. A pair that does not load
/// (half updated, key and certificate from different rotations) is logged
/// and the current certificate kept until the next look.
pub async fn reload_files_forever(cert: PathBuf, key: PathBuf, slot: CertSlot, interval: Duration) {
    let contents = || (std::fs::read(&cert).ok(), std::fs::read(&key).ok());
    let mut served = contents();
    loop {
        tokio::time::sleep(interval).await;
        let now = contents();
        if now == served {
            continue;
        }
        match load_files(&cert, &key) {
            Ok(certified) => {
                slot.set(certified);
                served = now;
                tracing::info!(cert = %cert.display(), "serving the webhook certificate from the changed files");
            }
            Err(error) => {
                tracing::warn!(%error, "the webhook certificate files changed but do not load; still serving the previous certificate");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_proto::identity::uri_sans;
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::{FromDer, X509Certificate};

    struct TestCa {
        ca: Ca,
        _dir: tempfile::TempDir,
    }

    fn test_ca() -> TestCa {
        let dir = tempfile::tempdir().unwrap();
        let files = crate::ca::init_ca("example.org", &dir.path().join("ca")).unwrap();
        let ca = Ca::load(
            &files.issuer_cert,
            &files.issuer_key,
            &files.bundle,
            "example.org",
        )
        .unwrap();
        TestCa { ca, _dir: dir }
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_certificate_names_the_service_and_chains_to_the_issuer() {
        let test = test_ca();
        let dns = names(&[
            "bulkhead-control.mesh.svc",
            "bulkhead-control.mesh.svc.cluster.local",
        ]);
        let cert = issue(&test.ca, &dns, Duration::from_secs(3600)).unwrap();
        let chain = &cert.key.cert;
        assert_eq!(chain.len(), 2, "leaf + issuer");
        assert_eq!(chain[1], test.ca.issuer_chain_der()[0]);

        let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
        let (_, issuer) = X509Certificate::from_der(&chain[1]).unwrap();
        leaf.verify_signature(Some(issuer.public_key())).unwrap();
        let sans = leaf.subject_alternative_name().unwrap().unwrap();
        let dns_sans: Vec<&str> = sans
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(*d),
                _ => None,
            })
            .collect();
        assert_eq!(dns_sans, dns);
        assert_eq!(
            uri_sans(&leaf).unwrap(),
            ["spiffe://example.org/ns/bulkhead/sa/control"]
        );
        assert!(!leaf.is_ca());
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth, "the API server checks serverAuth");
        // A P-256 key, made here.
        match leaf.public_key().parsed().unwrap() {
            x509_parser::public_key::PublicKey::EC(point) => assert_eq!(point.key_size(), 256),
            other => panic!("not an EC key: {other:?}"),
        }
    }

    #[test]
    fn the_lifetime_is_the_one_asked_for() {
        let test = test_ca();
        let now = SystemTime::now();
        let lifetime = Duration::from_secs(24 * 3600);
        let cert = issue(&test.ca, &names(&["a.b.svc"]), lifetime).unwrap();
        let left = cert.not_after.duration_since(now).unwrap();
        assert!(
            left <= lifetime && left >= lifetime - Duration::from_secs(5),
            "{left:?}"
        );
        let (_, leaf) = X509Certificate::from_der(&cert.key.cert[0]).unwrap();
        assert_eq!(not_after(&cert.key.cert[0]), Some(cert.not_after));
        assert!(leaf.validity().not_before.timestamp() < leaf.validity().not_after.timestamp());
    }

    #[test]
    fn no_certificate_outlives_its_issuer_and_bad_names_are_refused() {
        let test = test_ca();
        let cert = issue(
            &test.ca,
            &names(&["a.b.svc"]),
            Duration::from_secs(20 * 365 * 24 * 3600),
        )
        .unwrap();
        assert!(cert.not_after <= test.ca.issuer_not_after());
        assert!(issue(&test.ca, &[], Duration::from_secs(60)).is_err());
        let err = issue(&test.ca, &names(&["not a name"]), Duration::from_secs(60)).unwrap_err();
        assert!(err.contains("webhook"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn renewal_swaps_the_certificate_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        crate::ca::init_ca("example.org", &dir.path().join("ca")).unwrap();
        let files = crate::trust::TrustFiles::in_dir(&dir.path().join("ca"), "example.org");
        let trust = Arc::new(Trust::load(&files).unwrap());
        let dns = names(&["bulkhead-control.bulkhead.svc"]);
        let lifetime = Duration::from_secs(120);
        let first = first(&trust, &dns, lifetime).unwrap();
        let slot = CertSlot::empty();
        slot.set(first.key.clone());
        let first_key = first.key.clone();
        let (renewed, mut told) = watch::channel(0);
        let task = tokio::spawn(renew_forever(
            trust.clone(),
            dns,
            lifetime,
            slot.clone(),
            first,
            renewed,
        ));
        // Paused time advances to the renewal at once.
        tokio::time::timeout(Duration::from_secs(3600), told.changed())
            .await
            .unwrap()
            .unwrap();
        let now = slot.get().unwrap();
        assert_ne!(now.cert[0], first_key.cert[0], "a new certificate");
        assert_eq!(now.cert[1], first_key.cert[1], "from the same issuer");
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn changed_files_are_served_and_broken_ones_are_not() {
        let test = test_ca();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let write = |names: &[&str]| {
            let (chain, key_der) = test
                .ca
                .issue_local(
                    &control_identity("example.org"),
                    &names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                    &[],
                    Duration::from_secs(3600),
                )
                .unwrap();
            let pem: String = chain
                .iter()
                .map(|c| crate::ca::pem_block("CERTIFICATE", c))
                .collect();
            std::fs::write(&cert, pem).unwrap();
            std::fs::write(
                &key,
                crate::ca::pem_block("PRIVATE KEY", key_der.secret_der()),
            )
            .unwrap();
            chain[0].to_vec()
        };
        let first = write(&["a.mesh.svc"]);
        let slot = CertSlot::empty();
        slot.set(load_files(&cert, &key).unwrap());
        let served = |slot: &CertSlot| slot.get().unwrap().cert[0].to_vec();
        let task = tokio::spawn(reload_files_forever(
            cert.clone(),
            key.clone(),
            slot.clone(),
            Duration::from_secs(30),
        ));
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert_eq!(
            served(&slot),
            first,
            "unchanged files: the same certificate"
        );

        let second = write(&["b.mesh.svc"]);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(served(&slot), second, "renewed files are served");

        // A key of another rotation: refused, the current one stays.
        let old_key = std::fs::read(&key).unwrap();
        write(&["c.mesh.svc"]);
        std::fs::write(&key, old_key).unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(served(&slot), second);
        task.abort();
        assert!(load_files(&cert, &key).unwrap_err().contains("tls.crt"));
    }
}
