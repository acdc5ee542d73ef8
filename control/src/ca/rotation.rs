//! The stages of a root rotation as pure steps from one trust record to the
//! next: `prepare` (the new root joins the bundle; its issuer waits),
//! `activate` (the new issuer signs; workloads renew onto it by a deadline)
//! and `retire` (the old root leaves, once nothing registered rests on it).
//! Each refuses to run out of order and says which stage is missing; a
//! repeat of a stage that already ran succeeds and changes nothing, so that
//! every command can be run again after an interruption.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;

use super::{Cert, RecordError, Rotation, TrustRecord};

/// Shortest and longest `--renew-within` accepted.
pub const MIN_RENEW_WITHIN: Duration = Duration::from_secs(1);
pub const MAX_RENEW_WITHIN: Duration = Duration::from_secs(30 * 24 * 3600);

/// What a stage does to the record.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Write this record.
    Write(Box<TrustRecord>),
    /// The stage already ran: nothing to write.
    AlreadyDone,
}

/// Why a stage was refused: each says what to do instead.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RotationError {
    #[error("{stage} needs a prepared rotation: run `bulkheadctl ca rotate prepare` first")]
    NotPrepared { stage: &'static str },
    #[error(
        "retire needs an activated rotation: run `bulkheadctl ca rotate activate` first (the new issuer must sign before the old root can go)"
    )]
    NotActivated,
    #[error(
        "a rotation to root {root} is already {stage}: finish it (`bulkheadctl ca rotate {next}`) before preparing another"
    )]
    InProgress {
        root: String,
        stage: &'static str,
        next: &'static str,
    },
    #[error("the new root: {0}")]
    BadRoot(String),
    #[error("the new issuer: {0}")]
    BadIssuer(String),
    #[error("--renew-within {0:?}: expected between {MIN_RENEW_WITHIN:?} and {MAX_RENEW_WITHIN:?}")]
    RenewWithin(Duration),
    #[error(
        "control-plane replica(s) {replicas} hold no key for the new issuer {issuer}: give each its next-issuer.crt and next-issuer.key (--next-issuer-cert/--next-issuer-key; in Kubernetes, add them to the issuer Secret) and run activate again once `bulkheadctl ca status` lists the key for every replica"
    )]
    MissingKeys { replicas: String, issuer: String },
    #[error(
        "{count} registered endpoint(s) still hold certificates of the old root {root}: {identities}; they renew onto the new issuer by {renew_by}, run retire again then (`bulkheadctl ca status` shows who is left)"
    )]
    StillOnOldRoot {
        count: u64,
        root: String,
        identities: String,
        renew_by: String,
    },
    #[error(transparent)]
    Record(#[from] RecordError),
}

fn der(bytes: &[u8]) -> CertificateDer<'static> {
    CertificateDer::from(bytes.to_vec())
}

/// Checks the new root: a self-signed CA valid now, naming `trust_domain`,
/// not already trusted.
fn check_root(
    record: &TrustRecord,
    root_der: &[u8],
    trust_domain: &str,
    now: SystemTime,
) -> Result<Cert, RotationError> {
    let bad = |why: String| RotationError::BadRoot(why);
    let root = Cert::parse(der(root_der), "root").map_err(|e| bad(e.to_string()))?;
    if !root.is_ca() {
        return Err(bad("not a CA certificate".into()));
    }
    if !root.is_signed_by(&root) {
        return Err(bad("not self-signed".into()));
    }
    if !root.is_valid_at(now) {
        return Err(bad(format!(
            "not valid now (from {} to {})",
            humantime::format_rfc3339_seconds(root.not_before),
            humantime::format_rfc3339_seconds(root.not_after)
        )));
    }
    match bulkhead_tls::trust_domain_of_roots(std::slice::from_ref(&root.der)) {
        Some(td) if td == trust_domain => {}
        named => {
            return Err(bad(format!(
                "it must name trust domain {trust_domain:?} in a URI SAN spiffe://{trust_domain} (it names {named:?})"
            )));
        }
    }
    if record.roots().iter().any(|r| r.der == root.der) {
        return Err(bad(format!(
            "{} is already in the trust bundle",
            root.fingerprint
        )));
    }
    Ok(root)
}

/// Checks the new issuer: a P-256 CA valid now, signed by `root`, not
/// outliving it.
fn check_issuer(root: &Cert, issuer_der: &[u8], now: SystemTime) -> Result<Cert, RotationError> {
    let bad = |why: String| RotationError::BadIssuer(why);
    let issuer = Cert::parse(der(issuer_der), "issuer").map_err(|e| bad(e.to_string()))?;
    if !issuer.is_ca() {
        return Err(bad("not a CA certificate".into()));
    }
    if !issuer.is_p256() {
        return Err(bad(
            "its key must be ECDSA P-256 (bootstrap tokens are signed with it)".into(),
        ));
    }
    if !issuer.is_signed_by(root) {
        return Err(bad(format!(
            "not signed by the new root {}",
            root.fingerprint
        )));
    }
    if !issuer.is_valid_at(now) {
        return Err(bad("not valid now".into()));
    }
    if issuer.not_after > root.not_after {
        return Err(bad("it outlives the new root".into()));
    }
    Ok(issuer)
}

/// Stage 1: `root_der` joins the bundle; `issuer_der` (signed by it) waits.
pub fn prepare(
    record: &TrustRecord,
    root_der: &[u8],
    issuer_der: &[u8],
    trust_domain: &str,
    now: SystemTime,
) -> Result<Step, RotationError> {
    match record.rotation() {
        Rotation::None => {}
        Rotation::Prepared { next } => {
            // The same material again: an interrupted prepare, run again.
            let same_root = record
                .roots()
                .iter()
                .any(|r| r.der.as_ref() == root_der && r.fingerprint == next.root);
            if same_root && next.cert.der.as_ref() == issuer_der {
                return Ok(Step::AlreadyDone);
            }
            return Err(RotationError::InProgress {
                root: next.root.clone(),
                stage: "prepared",
                next: "activate",
            });
        }
        Rotation::Activated { .. } => {
            return Err(RotationError::InProgress {
                root: record.issuer().root.clone(),
                stage: "activated",
                next: "retire",
            });
        }
    }
    let root = check_root(record, root_der, trust_domain, now)?;
    let issuer = check_issuer(&root, issuer_der, now)?;
    Ok(Step::Write(Box::new(record.prepared(root, issuer)?)))
}

/// Stage 2: the next issuer signs from now on; workloads renew onto it
/// within `renew_within`. `replicas`: each live replica and the issuer
/// fingerprints it holds keys for — every one must hold the next issuer's.
pub fn activate(
    record: &TrustRecord,
    renew_within: Duration,
    replicas: &[(String, Vec<String>)],
    now: SystemTime,
) -> Result<Step, RotationError> {
    let next = match record.rotation() {
        Rotation::None => return Err(RotationError::NotPrepared { stage: "activate" }),
        Rotation::Activated { .. } => return Ok(Step::AlreadyDone),
        Rotation::Prepared { next } => next,
    };
    if !(MIN_RENEW_WITHIN..=MAX_RENEW_WITHIN).contains(&renew_within) {
        return Err(RotationError::RenewWithin(renew_within));
    }
    let missing: Vec<&str> = replicas
        .iter()
        .filter(|(_, held)| !held.contains(&next.cert.fingerprint))
        .map(|(name, _)| name.as_str())
        .collect();
    if !missing.is_empty() || replicas.is_empty() {
        return Err(RotationError::MissingKeys {
            replicas: if missing.is_empty() {
                "(none is live)".into()
            } else {
                missing.join(", ")
            },
            issuer: next.cert.fingerprint.clone(),
        });
    }
    record
        .activated(now + renew_within)
        .map(|r| Step::Write(Box::new(r)))
        .ok_or(RotationError::NotPrepared { stage: "activate" })
}

/// Stage 3: the old root leaves the bundle. `endpoints`: each registered
/// endpoint's identity and the root its certificate chains to (empty:
/// unknown) — every one must be the new root.
pub fn retire(record: &TrustRecord, endpoints: &[(String, String)]) -> Result<Step, RotationError> {
    let renew_by = match record.rotation() {
        Rotation::None => return Err(RotationError::NotPrepared { stage: "retire" }),
        Rotation::Prepared { .. } => return Err(RotationError::NotActivated),
        Rotation::Activated { renew_by, .. } => *renew_by,
    };
    let new_root = &record.issuer().root;
    let mut pending: BTreeMap<&str, u64> = BTreeMap::new();
    for (identity, _) in endpoints.iter().filter(|(_, root)| root != new_root) {
        *pending.entry(identity.as_str()).or_default() += 1;
    }
    if !pending.is_empty() {
        let old_root = record
            .roots()
            .iter()
            .find(|r| &r.fingerprint != new_root)
            .map_or_else(String::new, |r| r.fingerprint.clone());
        return Err(RotationError::StillOnOldRoot {
            count: pending.values().sum(),
            root: old_root,
            identities: pending
                .iter()
                .map(|(id, n)| format!("{id} ({n})"))
                .collect::<Vec<_>>()
                .join(", "),
            renew_by: humantime::format_rfc3339_seconds(renew_by).to_string(),
        });
    }
    record
        .retired()
        .map(|r| Step::Write(Box::new(r)))
        .ok_or(RotationError::NotActivated)
}

#[cfg(test)]
#[path = "rotation_tests.rs"]
mod tests;
