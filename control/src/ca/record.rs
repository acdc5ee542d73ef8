//! The trust record: what the store holds about the mesh's CA, so that every
//! control-plane replica serves the same trust — the roots of the trust
//! bundle, the issuer certificate replicas sign with, and where a root
//! rotation stands. Public material only: no key ever enters the store
//! (DESIGN.md: the issuer key is read from a file).
//!
//! Stored at `ca/trust` as JSON (certificates as base64 DER):
//!
//! ```text
//! {"v":1, "roots":[...], "issuer":"...", "stage":"none|prepared|activated",
//!  "next":"..." (prepared), "previous":"...", "renewBy":<unix s> (activated)}
//! ```
//!
//! A record is checked whole when it is read: every certificate parses,
//! roots are CAs, and each issuer it names is signed by one of its roots.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bulkhead_proto::pb;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Most roots a bundle may hold (a rotation needs two).
pub const MAX_ROOTS: usize = 8;
const RECORD_VERSION: u32 = 1;

/// Why a trust record (or a certificate for one) was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("the stored trust record is not valid JSON of version {RECORD_VERSION}: {0}")]
    Format(String),
    #[error("{what}: {problem}")]
    Certificate { what: String, problem: String },
    #[error("the trust bundle must hold 1 to {MAX_ROOTS} roots, not {0}")]
    RootCount(usize),
    #[error("{what} ({fingerprint}) is signed by none of the bundle's roots")]
    Unanchored { what: String, fingerprint: String },
}

fn cert_error(what: &str, problem: impl Into<String>) -> RecordError {
    RecordError::Certificate {
        what: what.to_owned(),
        problem: problem.into(),
    }
}

/// One certificate of the record, with what status and metrics show of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cert {
    pub der: CertificateDer<'static>,
    /// SHA-256, lower-case hex.
    pub fingerprint: String,
    pub subject: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The raw public key (for a P-256 issuer, the point that verifies the
    /// bootstrap tokens it signed).
    pub public_key: Vec<u8>,
    is_ca: bool,
    is_p256: bool,
}

impl Cert {
    pub fn parse(der: CertificateDer<'static>, what: &str) -> Result<Self, RecordError> {
        let (rest, cert) = X509Certificate::from_der(&der)
            .map_err(|e| cert_error(what, format!("not an X.509 certificate: {e}")))?;
        if !rest.is_empty() {
            return Err(cert_error(what, "trailing bytes after the certificate"));
        }
        let time = |t: x509_parser::time::ASN1Time| {
            UNIX_EPOCH + Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0))
        };
        let is_p256 = matches!(
            cert.public_key().parsed(),
            Ok(x509_parser::public_key::PublicKey::EC(point)) if point.key_size() == 256
        );
        Ok(Self {
            fingerprint: bulkhead_tls::fingerprint(&der),
            subject: cert.subject().to_string(),
            not_before: time(cert.validity().not_before),
            not_after: time(cert.validity().not_after),
            public_key: cert.public_key().subject_public_key.data.to_vec(),
            is_ca: cert.is_ca(),
            is_p256,
            der,
        })
    }

    /// Whether basicConstraints says CA:TRUE.
    pub fn is_ca(&self) -> bool {
        self.is_ca
    }

    /// Whether its key is ECDSA P-256 (an issuer's must be: it signs the
    /// bootstrap tokens).
    pub fn is_p256(&self) -> bool {
        self.is_p256
    }

    /// Whether `now` is inside its validity window.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now <= self.not_after
    }

    /// Whether `parent`'s key made this certificate's signature.
    pub fn is_signed_by(&self, parent: &Cert) -> bool {
        let (Ok((_, child)), Ok((_, parent))) = (
            X509Certificate::from_der(&self.der),
            X509Certificate::from_der(&parent.der),
        ) else {
            return false;
        };
        child.verify_signature(Some(parent.public_key())).is_ok()
    }
}

/// An issuer certificate and the bundle root it chains to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuerCert {
    pub cert: Cert,
    /// Fingerprint of the root that signed it.
    pub root: String,
}

/// Where a root rotation stands (`bulkheadctl ca rotate ...`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rotation {
    /// No rotation: one root, one issuer.
    None,
    /// `prepare` ran: the new root is in the bundle beside the old one, and
    /// `next` (signed by it) waits to be activated.
    Prepared { next: IssuerCert },
    /// `activate` ran: replicas sign with the new issuer; workloads renew
    /// onto it by `renew_by`. Tokens `previous` signed are still accepted,
    /// and its root stays in the bundle until `retire`.
    Activated {
        previous: IssuerCert,
        renew_by: SystemTime,
    },
}

/// The stage names users and scripts see (`ca status -o json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    #[default]
    None,
    Prepared,
    Activated,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Prepared => "prepared",
            Self::Activated => "activated",
        }
    }
}

/// The trust every replica serves, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustRecord {
    roots: Vec<Cert>,
    issuer: IssuerCert,
    rotation: Rotation,
}

/// A rotation's other issuer before it is known to chain to a root.
enum Unanchored {
    None,
    Next(Cert),
    Previous(Cert, SystemTime),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Stored {
    v: u32,
    roots: Vec<String>,
    issuer: String,
    #[serde(default)]
    stage: Stage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    renew_by: Option<u64>,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn b64(cert: &Cert) -> String {
    STANDARD.encode(&cert.der)
}

fn from_b64(text: &str, what: &str) -> Result<Cert, RecordError> {
    let der = STANDARD
        .decode(text)
        .map_err(|e| cert_error(what, format!("not base64: {e}")))?;
    Cert::parse(CertificateDer::from(der), what)
}

impl TrustRecord {
    /// A record with no rotation: `roots` trusted, `issuer` signing.
    pub fn new(
        roots: Vec<CertificateDer<'static>>,
        issuer: CertificateDer<'static>,
    ) -> Result<Self, RecordError> {
        let roots = roots
            .into_iter()
            .enumerate()
            .map(|(i, der)| Cert::parse(der, &format!("root #{}", i + 1)))
            .collect::<Result<Vec<_>, _>>()?;
        let issuer = Cert::parse(issuer, "issuer")?;
        Self::checked(roots, issuer, Unanchored::None)
    }

    /// Builds and checks a record from its parts: every issuer must be a
    /// CA signed by one of the roots.
    fn checked(roots: Vec<Cert>, issuer: Cert, rotation: Unanchored) -> Result<Self, RecordError> {
        if roots.is_empty() || roots.len() > MAX_ROOTS {
            return Err(RecordError::RootCount(roots.len()));
        }
        for (i, root) in roots.iter().enumerate() {
            if !root.is_ca {
                return Err(cert_error(
                    &format!("root #{}", i + 1),
                    "not a CA certificate (basicConstraints CA:TRUE is missing)",
                ));
            }
        }
        let anchor = |cert: Cert, what: &str| -> Result<IssuerCert, RecordError> {
            if !cert.is_ca {
                return Err(cert_error(what, "not a CA certificate"));
            }
            let root = roots
                .iter()
                .find(|root| root.der == cert.der || cert.is_signed_by(root))
                .map(|root| root.fingerprint.clone())
                .ok_or_else(|| RecordError::Unanchored {
                    what: what.to_owned(),
                    fingerprint: cert.fingerprint.clone(),
                })?;
            Ok(IssuerCert { cert, root })
        };
        let issuer = anchor(issuer, "issuer")?;
        let rotation = match rotation {
            Unanchored::None => Rotation::None,
            Unanchored::Next(next) => Rotation::Prepared {
                next: anchor(next, "next issuer")?,
            },
            Unanchored::Previous(previous, renew_by) => Rotation::Activated {
                previous: anchor(previous, "previous issuer")?,
                renew_by,
            },
        };
        Ok(Self {
            roots,
            issuer,
            rotation,
        })
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let stored: Stored =
            serde_json::from_slice(bytes).map_err(|e| RecordError::Format(e.to_string()))?;
        if stored.v != RECORD_VERSION {
            return Err(RecordError::Format(format!(
                "version {} (this control plane reads {RECORD_VERSION})",
                stored.v
            )));
        }
        let roots = stored
            .roots
            .iter()
            .enumerate()
            .map(|(i, r)| from_b64(r, &format!("root #{}", i + 1)))
            .collect::<Result<Vec<_>, _>>()?;
        let issuer = from_b64(&stored.issuer, "issuer")?;
        let field =
            |name: &str| RecordError::Format(format!("stage {:?} needs {name}", stored.stage));
        let rotation = match stored.stage {
            Stage::None => Unanchored::None,
            Stage::Prepared => Unanchored::Next(from_b64(
                stored.next.as_deref().ok_or_else(|| field("next"))?,
                "next issuer",
            )?),
            Stage::Activated => Unanchored::Previous(
                from_b64(
                    stored
                        .previous
                        .as_deref()
                        .ok_or_else(|| field("previous"))?,
                    "previous issuer",
                )?,
                UNIX_EPOCH + Duration::from_secs(stored.renew_by.ok_or_else(|| field("renewBy"))?),
            ),
        };
        Self::checked(roots, issuer, rotation)
    }

    pub fn encode(&self) -> Vec<u8> {
        let (next, previous, renew_by) = match &self.rotation {
            Rotation::None => (None, None, None),
            Rotation::Prepared { next } => (Some(b64(&next.cert)), None, None),
            Rotation::Activated { previous, renew_by } => {
                (None, Some(b64(&previous.cert)), Some(unix(*renew_by)))
            }
        };
        let stored = Stored {
            v: RECORD_VERSION,
            roots: self.roots.iter().map(b64).collect(),
            issuer: b64(&self.issuer.cert),
            stage: self.stage(),
            next,
            previous,
            renew_by,
        };
        // A struct of strings and numbers always serializes.
        serde_json::to_vec(&stored).unwrap_or_default()
    }

    /// The bundle: every root a peer certificate may chain to.
    pub fn roots(&self) -> &[Cert] {
        &self.roots
    }

    pub fn roots_der(&self) -> Vec<CertificateDer<'static>> {
        self.roots.iter().map(|r| r.der.clone()).collect()
    }

    /// The issuer replicas sign with.
    pub fn issuer(&self) -> &IssuerCert {
        &self.issuer
    }

    pub fn rotation(&self) -> &Rotation {
        &self.rotation
    }

    pub fn stage(&self) -> Stage {
        match self.rotation {
            Rotation::None => Stage::None,
            Rotation::Prepared { .. } => Stage::Prepared,
            Rotation::Activated { .. } => Stage::Activated,
        }
    }

    /// Every issuer the record names: the active one, then the next or the
    /// previous one of a rotation.
    pub fn issuers(&self) -> impl Iterator<Item = &IssuerCert> {
        let other = match &self.rotation {
            Rotation::None => None,
            Rotation::Prepared { next } => Some(next),
            Rotation::Activated { previous, .. } => Some(previous),
        };
        std::iter::once(&self.issuer).chain(other)
    }

    /// The issuers whose bootstrap tokens are accepted: the active one and,
    /// until `retire`, the one it replaced.
    pub fn token_issuers(&self) -> impl Iterator<Item = &IssuerCert> {
        let previous = match &self.rotation {
            Rotation::Activated { previous, .. } => Some(previous),
            _ => None,
        };
        std::iter::once(&self.issuer).chain(previous)
    }

    /// What sidecars are pushed: the roots and, while a rotation is
    /// activated, the issuer to renew onto and by when.
    pub fn to_pb(&self) -> pb::TrustBundle {
        let renew_by = match &self.rotation {
            Rotation::Activated { renew_by, .. } => i64::try_from(unix(*renew_by)).unwrap_or(0),
            _ => 0,
        };
        pb::TrustBundle {
            roots_der: self.roots.iter().map(|r| r.der.to_vec()).collect(),
            issuer_sha256: self.issuer.cert.fingerprint.clone(),
            renew_by_unix: renew_by,
        }
    }

    /// The record after `prepare`: `new_root` joins the bundle and `next`
    /// (which it must sign) waits.
    pub fn prepared(&self, new_root: Cert, next: Cert) -> Result<Self, RecordError> {
        let new_fingerprint = new_root.fingerprint.clone();
        let mut roots = self.roots.clone();
        roots.push(new_root);
        let record = Self::checked(roots, self.issuer.cert.clone(), Unanchored::Next(next))?;
        match &record.rotation {
            Rotation::Prepared { next } if next.root == new_fingerprint => Ok(record),
            Rotation::Prepared { next } => Err(RecordError::Unanchored {
                what: "the next issuer, by the new root".to_owned(),
                fingerprint: next.cert.fingerprint.clone(),
            }),
            _ => Err(RecordError::Format("prepare made no rotation".into())),
        }
    }

    /// The record after `activate`: `next` signs; the old issuer's tokens
    /// and root stay accepted until `retire`.
    pub fn activated(&self, renew_by: SystemTime) -> Option<Self> {
        let Rotation::Prepared { next } = &self.rotation else {
            return None;
        };
        Some(Self {
            roots: self.roots.clone(),
            issuer: next.clone(),
            rotation: Rotation::Activated {
                previous: self.issuer.clone(),
                renew_by,
            },
        })
    }

    /// The record after `retire`: only the active issuer's root is left.
    pub fn retired(&self) -> Option<Self> {
        let Rotation::Activated { .. } = &self.rotation else {
            return None;
        };
        let roots: Vec<Cert> = self
            .roots
            .iter()
            .filter(|r| r.fingerprint == self.issuer.root)
            .cloned()
            .collect();
        Some(Self {
            roots,
            issuer: self.issuer.clone(),
            rotation: Rotation::None,
        })
    }
}

#[cfg(test)]
#[path = "record_tests.rs"]
mod tests;
