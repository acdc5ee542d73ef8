//! The trust a sidecar is pushed: the roots of the bundle and, while a root
//! rotation is activated, which issuer to renew onto and by when. Checked
//! at the boundary like every pushed item: a bad one is refused whole and
//! the trust in force stays.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::pb;

/// Most roots a pushed bundle may hold.
pub const MAX_TRUST_ROOTS: usize = 8;
/// Largest root accepted, in DER bytes.
pub const MAX_ROOT_BYTES: usize = 16 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("a trust bundle must hold 1 to {MAX_TRUST_ROOTS} roots, not {0}")]
    RootCount(usize),
    #[error("root #{index} is {size} bytes, more than {MAX_ROOT_BYTES}")]
    RootSize { index: usize, size: usize },
    #[error("issuer_sha256 {0:?} is not 64 lower-case hex digits")]
    Fingerprint(String),
    #[error("renew_by_unix {0} is negative")]
    RenewBy(i64),
}

/// The trust pushed by the control plane, checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trust {
    /// The roots (DER), in the order the control plane holds them.
    pub roots_der: Vec<Vec<u8>>,
    /// SHA-256 (lower-case hex) of the issuer the control plane signs with.
    pub issuer_sha256: Option<String>,
    /// While a rotation is activated: renew a certificate of another issuer
    /// before then.
    pub renew_by: Option<SystemTime>,
}

fn is_fingerprint(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl TryFrom<&pb::TrustBundle> for Trust {
    type Error = TrustError;

    fn try_from(pb: &pb::TrustBundle) -> Result<Self, Self::Error> {
        if pb.roots_der.is_empty() || pb.roots_der.len() > MAX_TRUST_ROOTS {
            return Err(TrustError::RootCount(pb.roots_der.len()));
        }
        if let Some((index, root)) = pb
            .roots_der
            .iter()
            .enumerate()
            .find(|(_, r)| r.len() > MAX_ROOT_BYTES)
        {
            return Err(TrustError::RootSize {
                index: index + 1,
                size: root.len(),
            });
        }
        let issuer_sha256 = match pb.issuer_sha256.as_str() {
            "" => None,
            fp if is_fingerprint(fp) => Some(fp.to_owned()),
            other => return Err(TrustError::Fingerprint(other.to_owned())),
        };
        let renew_by = match pb.renew_by_unix {
            0 => None,
            t if t < 0 => return Err(TrustError::RenewBy(t)),
            t => Some(UNIX_EPOCH + Duration::from_secs(t.unsigned_abs())),
        };
        Ok(Self {
            roots_der: pb.roots_der.clone(),
            issuer_sha256,
            renew_by,
        })
    }
}

impl From<&Trust> for pb::TrustBundle {
    fn from(trust: &Trust) -> Self {
        Self {
            roots_der: trust.roots_der.clone(),
            issuer_sha256: trust.issuer_sha256.clone().unwrap_or_default(),
            renew_by_unix: trust.renew_by.map_or(0, |t| {
                t.duration_since(UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(roots: usize, fp: &str, renew_by: i64) -> pb::TrustBundle {
        pb::TrustBundle {
            roots_der: vec![vec![0x30, 0x00]; roots],
            issuer_sha256: fp.to_owned(),
            renew_by_unix: renew_by,
        }
    }

    #[test]
    fn round_trips_and_refuses_what_cannot_be_trusted() {
        let fp = "ab".repeat(32);
        let trust = Trust::try_from(&bundle(2, &fp, 1_900_000_000)).unwrap();
        assert_eq!(trust.issuer_sha256.as_deref(), Some(fp.as_str()));
        assert_eq!(
            trust.renew_by,
            Some(UNIX_EPOCH + Duration::from_secs(1_900_000_000))
        );
        assert_eq!(pb::TrustBundle::from(&trust), bundle(2, &fp, 1_900_000_000));
        let plain = Trust::try_from(&bundle(1, "", 0)).unwrap();
        assert_eq!((plain.issuer_sha256, plain.renew_by), (None, None));

        for (bad, why) in [
            (bundle(0, "", 0), TrustError::RootCount(0)),
            (bundle(9, "", 0), TrustError::RootCount(9)),
            (bundle(1, "AB", 0), TrustError::Fingerprint("AB".into())),
            (bundle(1, "", -1), TrustError::RenewBy(-1)),
        ] {
            assert_eq!(Trust::try_from(&bad), Err(why));
        }
        let mut huge = bundle(1, "", 0);
        huge.roots_der[0] = vec![0; MAX_ROOT_BYTES + 1];
        assert!(matches!(
            Trust::try_from(&huge),
            Err(TrustError::RootSize { index: 1, .. })
        ));
    }
}
