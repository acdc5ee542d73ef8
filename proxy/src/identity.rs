//! The workload's certificate: a key made here (never sent anywhere), a CSR
//! and the bootstrap token for the first certificate, then renewal at ~70 %
//! of the lifetime (with jitter) by presenting the current certificate, so a
//! one-time token stays one-time. A failed renewal retries with backoff and
//! never touches the certificate in use, so serving connections never drop.
//!
//! While a root rotation is activated (the pushed trust names the issuer to
//! renew onto and a deadline), a certificate of another issuer is renewed
//! early: at a moment drawn at random from the first 80 % of the time left,
//! so that a mesh's sidecars reach the control plane spread out, not at once.
//!
//! The current key and certificate are also kept in `--state-dir` (mode
//! 0600; the folder is the pod's own) so a restarted sidecar can serve while
//! the control plane is unreachable.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bulkhead_process::Backoff;
use bulkhead_proto::SpiffeId;
use bulkhead_proto::model::Trust;
use bulkhead_proto::pb::{self, identity_client::IdentityClient};
use bulkhead_tls::CertSlot;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tonic::transport::Channel;

use crate::state::StateCell;

/// The certificate in use and what it says.
#[derive(Clone, Debug)]
pub(crate) struct Issued {
    pub(crate) id: SpiffeId,
    pub(crate) not_after: SystemTime,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum IdentityError {
    #[error("token file {path}: {reason}")]
    Token { path: String, reason: String },
    #[error("control plane refused the certificate request: {0}")]
    Refused(String),
    #[error("control plane unreachable: {0}")]
    Unavailable(String),
    #[error("issued certificate unusable: {0}")]
    BadCertificate(String),
}

fn new_key_and_csr() -> Result<(rcgen::KeyPair, Vec<u8>), IdentityError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| IdentityError::BadCertificate(format!("key generation: {e}")))?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .map_err(|e| IdentityError::BadCertificate(format!("CSR: {e}")))?;
    Ok((key, csr.der().to_vec()))
}

fn status_error(s: tonic::Status) -> IdentityError {
    match s.code() {
        tonic::Code::Unavailable
        | tonic::Code::DeadlineExceeded
        | tonic::Code::Unknown
        | tonic::Code::Cancelled => IdentityError::Unavailable(s.message().to_owned()),
        _ => IdentityError::Refused(format!("{:?}: {}", s.code(), s.message())),
    }
}

/// Installs an issued chain and key in `slot`; returns what it says.
fn install(
    slot: &CertSlot,
    chain_der: Vec<Vec<u8>>,
    key: PrivateKeyDer<'static>,
    trust_domain: &str,
) -> Result<Issued, IdentityError> {
    let chain: Vec<CertificateDer<'static>> = chain_der.into_iter().map(Into::into).collect();
    let leaf = chain
        .first()
        .ok_or_else(|| IdentityError::BadCertificate("empty chain".into()))?;
    let id = SpiffeId::from_cert_der(leaf, trust_domain)
        .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    let not_after = not_after(leaf)?;
    let certified = CertSlot::certified_key(chain, key)
        .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    slot.set(certified);
    metrics::gauge!("bulkhead_cert_expiry_timestamp_seconds").set(unix(not_after) as f64);
    Ok(Issued { id, not_after })
}

fn not_after(der: &[u8]) -> Result<SystemTime, IdentityError> {
    bulkhead_tls::not_after(der)
        .ok_or_else(|| IdentityError::BadCertificate("the leaf does not parse".into()))
}

/// When a connection authenticated by the certificate `der` must be over:
/// its notAfter, as a timer instant (now when it does not parse or has
/// passed: fail closed). No mesh connection outlives the certificate that
/// let it in; the pool stops using one, and inbound asks the peer to close
/// one, [`ahead_of`] that.
pub(crate) fn connection_deadline(der: &[u8]) -> tokio::time::Instant {
    let left = bulkhead_tls::not_after(der)
        .and_then(|t| t.duration_since(SystemTime::now()).ok())
        .unwrap_or_default();
    tokio::time::Instant::now() + left
}

/// `1/share` of the time left before `deadline`, at most `cap`, ahead of
/// it: when to stop starting work on a connection that must end then.
pub(crate) fn ahead_of(
    deadline: tokio::time::Instant,
    share: u32,
    cap: Duration,
) -> tokio::time::Instant {
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    deadline - (left / share.max(1)).min(cap)
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// First certificate, with the bootstrap token.
pub(crate) async fn certify(
    channel: Channel,
    token_file: &Path,
    kind: crate::config::Attestation,
    slot: &CertSlot,
    trust_domain: &str,
    state_dir: Option<&Path>,
) -> Result<Issued, IdentityError> {
    let token = std::fs::read_to_string(token_file).map_err(|e| IdentityError::Token {
        path: token_file.display().to_string(),
        reason: e.to_string(),
    })?;
    let (key, csr) = new_key_and_csr()?;
    let resp = IdentityClient::new(channel)
        .certify(pb::CertifyRequest {
            csr_der: csr,
            attestation: Some(match kind {
                crate::config::Attestation::Token => {
                    pb::certify_request::Attestation::BootstrapToken(token.trim().to_owned())
                }
                crate::config::Attestation::K8sJwt => {
                    pb::certify_request::Attestation::ServiceAccountJwt(token.trim().to_owned())
                }
            }),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    finish(resp, key, slot, trust_domain, state_dir)
}

/// A new certificate for the identity of the current one.
pub(crate) async fn renew(
    channel: Channel,
    slot: &CertSlot,
    trust_domain: &str,
    state_dir: Option<&Path>,
) -> Result<Issued, IdentityError> {
    let (key, csr) = new_key_and_csr()?;
    let resp = IdentityClient::new(channel)
        .renew(pb::RenewRequest { csr_der: csr })
        .await
        .map_err(status_error)?
        .into_inner();
    finish(resp, key, slot, trust_domain, state_dir)
}

fn finish(
    resp: pb::CertifyResponse,
    key: rcgen::KeyPair,
    slot: &CertSlot,
    trust_domain: &str,
    state_dir: Option<&Path>,
) -> Result<Issued, IdentityError> {
    let key_der = key.serialize_der();
    let chain = resp.chain_der.clone();
    let issued = install(
        slot,
        resp.chain_der,
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der.clone())),
        trust_domain,
    )?;
    if let Some(dir) = state_dir
        && let Err(error) = save(dir, &chain, &key_der)
    {
        tracing::warn!(%error, "could not keep the certificate in the state dir");
    }
    tracing::info!(identity = %issued.id, not_after = unix(issued.not_after), "certificate installed");
    Ok(issued)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(tmp, path)
}

/// `identity.key`: the PKCS#8 key (DER); `identity.chain`: the chain as a
/// `CertifyResponse` with only `chain_der` set.
fn save(dir: &Path, chain: &[Vec<u8>], key_der: &[u8]) -> std::io::Result<()> {
    use prost::Message;
    let record = pb::CertifyResponse {
        chain_der: chain.to_vec(),
        ..Default::default()
    };
    write_private(&dir.join("identity.key"), key_der)?;
    write_private(&dir.join("identity.chain"), &record.encode_to_vec())
}

/// A still-valid certificate kept by an earlier run, installed in `slot`.
pub(crate) fn load_saved(dir: &Path, slot: &CertSlot, trust_domain: &str) -> Option<Issued> {
    use prost::Message;
    let key = std::fs::read(dir.join("identity.key")).ok()?;
    let chain = std::fs::read(dir.join("identity.chain")).ok()?;
    let record = pb::CertifyResponse::decode(chain.as_slice()).ok()?;
    let not_after = not_after(record.chain_der.first()?).ok()?;
    if not_after <= SystemTime::now() {
        return None;
    }
    install(
        slot,
        record.chain_der,
        PrivateKeyDer::Pkcs8(key.into()),
        trust_domain,
    )
    .ok()
}

/// The fingerprint of the issuer of the certificate in `slot`.
fn own_issuer(slot: &CertSlot) -> Option<String> {
    let key = slot.get()?;
    key.cert
        .get(1)
        .map(|issuer| bulkhead_tls::fingerprint(issuer))
}

/// Share of a rotation's time left over which early renewals are spread;
/// the rest is for retries.
const EARLY_SPREAD: f64 = 0.8;

/// When to renew ahead of schedule because a root rotation is activated.
#[derive(Debug, Default)]
struct EarlyRenewal {
    /// The deadline `at` was drawn for.
    deadline: Option<SystemTime>,
    at: Option<tokio::time::Instant>,
}

impl EarlyRenewal {
    /// The moment to renew early, if the pushed trust asks for it and our
    /// certificate is not of the issuer it names. Drawn once per deadline.
    fn due(&mut self, slot: &CertSlot, trust: Option<&Trust>) -> Option<tokio::time::Instant> {
        let trust = trust?;
        let (renew_by, active) = (trust.renew_by?, trust.issuer_sha256.as_deref()?);
        if own_issuer(slot).as_deref() == Some(active) {
            return None;
        }
        if self.deadline != Some(renew_by) {
            let left = renew_by
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            let wait = left.mul_f64(EARLY_SPREAD * rand::random::<f64>());
            self.deadline = Some(renew_by);
            self.at = Some(tokio::time::Instant::now() + wait);
            tracing::info!(?wait, renew_by = %humantime::format_rfc3339_seconds(renew_by), issuer = active,
                "a root rotation is activated: renewing onto the new issuer early");
        }
        self.at
    }

    /// A renewal brought a certificate of another issuer still (a replica
    /// had not switched yet): try again after `wait`.
    fn retry_after(&mut self, wait: Duration) {
        self.at = Some(tokio::time::Instant::now() + wait);
    }
}

/// Renews forever: at the renewal time, or earlier while a root rotation
/// asks for it (see [`EarlyRenewal`]), then with backoff on failure (1 s
/// doubling to 60 s) until it succeeds; the current certificate stays in
/// use meanwhile.
pub(crate) async fn renew_forever(
    channel: Channel,
    slot: CertSlot,
    mut issued: Issued,
    trust_domain: String,
    state_dir: Option<PathBuf>,
    states: StateCell,
) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let mut early_backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let mut early = EarlyRenewal::default();
    let mut changes = states.subscribe();
    let schedule = |not_after| {
        tokio::time::Instant::now() + bulkhead_process::renewal_delay(not_after, SystemTime::now())
    };
    let mut due = schedule(issued.not_after);
    loop {
        let trust = states.load().trust.clone();
        let when = early
            .due(&slot, trust.as_deref())
            .map_or(due, |at| at.min(due));
        tokio::select! {
            () = tokio::time::sleep_until(when) => {}
            changed = changes.changed() => {
                if changed.is_err() {
                    // No more pushes: the schedule alone from now on.
                    tokio::time::sleep_until(due).await;
                } else {
                    continue;
                }
            }
        }
        let reason = if tokio::time::Instant::now() >= due {
            "due"
        } else {
            "rotation"
        };
        backoff.reset();
        loop {
            match renew(channel.clone(), &slot, &trust_domain, state_dir.as_deref()).await {
                Ok(next) => {
                    metrics::counter!("bulkhead_cert_renewals_total", "result" => "ok", "reason" => reason)
                        .increment(1);
                    issued = next;
                    due = schedule(issued.not_after);
                    if reason == "rotation" {
                        let trust = states.load().trust.clone();
                        if early.due(&slot, trust.as_deref()).is_some() {
                            early.retry_after(early_backoff.next_delay());
                        } else {
                            early_backoff.reset();
                        }
                    }
                    break;
                }
                Err(error) => {
                    metrics::counter!("bulkhead_cert_renewals_total", "result" => "error", "reason" => reason)
                        .increment(1);
                    let retry_in = backoff.next_delay();
                    tracing::warn!(%error, ?retry_in, "certificate renewal failed; the current certificate stays in use");
                    tokio::time::sleep(retry_in).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A slot holding a leaf and the CA that signed it; the CA's fingerprint.
    fn slot_with_issuer() -> (CertSlot, String) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::default();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::default()
            .signed_by(&key, &rcgen::Issuer::new(ca, ca_key))
            .unwrap();
        let chain = vec![leaf.der().clone(), ca_cert.der().clone()];
        let slot = CertSlot::empty();
        let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        slot.set(CertSlot::certified_key(chain, key).unwrap());
        (slot, bulkhead_tls::fingerprint(ca_cert.der()))
    }

    fn trust(issuer: &str, renew_in: Option<Duration>) -> Trust {
        Trust {
            roots_der: vec![],
            issuer_sha256: Some(issuer.to_owned()),
            renew_by: renew_in.map(|d| SystemTime::now() + d),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn early_renewal_is_drawn_once_within_the_first_80_percent() {
        let (slot, ours) = slot_with_issuer();
        let other = "ab".repeat(32);
        let mut early = EarlyRenewal::default();
        assert_eq!(early.due(&slot, None), None, "nothing pushed");
        assert_eq!(
            early.due(&slot, Some(&trust(&other, None))),
            None,
            "no rotation"
        );
        let activated = trust(&other, Some(Duration::from_secs(100)));
        assert_eq!(
            early.due(&slot, Some(&trust(&ours, Some(Duration::from_secs(100))))),
            None,
            "already on the issuer named"
        );
        let now = tokio::time::Instant::now();
        let at = early.due(&slot, Some(&activated)).expect("renew early");
        assert!(at <= now + Duration::from_secs(80), "{:?}", at - now);
        assert_eq!(early.due(&slot, Some(&activated)), Some(at), "drawn once");
        early.retry_after(Duration::from_secs(2));
        assert_eq!(
            early.due(&slot, Some(&activated)),
            Some(tokio::time::Instant::now() + Duration::from_secs(2))
        );
        // Past the deadline (a sidecar that was away): at once.
        let late = trust(&other, Some(Duration::ZERO));
        let at = early.due(&slot, Some(&late)).unwrap();
        assert!(at <= tokio::time::Instant::now() + Duration::from_millis(1));
    }

    #[test]
    fn the_draws_of_many_sidecars_spread_over_the_window() {
        let (slot, _) = slot_with_issuer();
        let activated = trust(&"cd".repeat(32), Some(Duration::from_secs(1000)));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let now = tokio::time::Instant::now();
            let waits: Vec<u64> = (0..200)
                .map(|_| {
                    let at = EarlyRenewal::default()
                        .due(&slot, Some(&activated))
                        .unwrap();
                    (at - now).as_secs()
                })
                .collect();
            // Four 200 s buckets over the 800 s spread, each well used.
            for bucket in 0..4 {
                let n = waits.iter().filter(|w| **w / 200 == bucket).count();
                assert!(n > 20, "bucket {bucket}: {n} of 200 ({waits:?})");
            }
            assert!(waits.iter().all(|w| *w <= 800));
        });
    }
}
