//! Which root each registered endpoint's certificate chains to: sidecars
//! report the leaf they serve with when they register and after each
//! renewal; the control plane checks it (it must name the caller and be
//! signed by an issuer the trust record knows) and notes its root beside
//! the endpoint, on the same lease. `ca status` counts these notes and
//! `ca rotate retire` waits until every one names the new root.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bulkhead_proto::SpiffeId;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use crate::ca::{Cert, TrustRecord};

/// What is noted about an endpoint's current certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LeafNote {
    /// SHA-256 of the root it chains to; empty when no issuer of the trust
    /// record signed it.
    pub(crate) root: String,
    /// SHA-256 of the issuer that signed it (empty as `root`).
    pub(crate) issuer: String,
    pub(crate) not_after: u64,
}

/// Why a reported certificate was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum LeafError {
    #[error("the reported certificate does not parse: {0}")]
    Malformed(String),
    #[error("the reported certificate names {found}, not the caller {caller}")]
    NotTheCaller { found: String, caller: String },
}

impl LeafNote {
    /// Checks the leaf `der` reported by `caller` against the issuers of
    /// `record`.
    pub(crate) fn check(
        record: &TrustRecord,
        caller: &SpiffeId,
        der: &[u8],
    ) -> Result<Self, LeafError> {
        let leaf = Cert::parse(CertificateDer::from(der.to_vec()), "certificate")
            .map_err(|e| LeafError::Malformed(e.to_string()))?;
        let named = SpiffeId::from_cert_der(der, caller.trust_domain())
            .map_err(|e| LeafError::Malformed(e.to_string()))?;
        if &named != caller {
            return Err(LeafError::NotTheCaller {
                found: named.to_string(),
                caller: caller.to_string(),
            });
        }
        let issuer = record.issuers().find(|i| leaf.is_signed_by(&i.cert));
        Ok(Self {
            root: issuer.map(|i| i.root.clone()).unwrap_or_default(),
            issuer: issuer
                .map(|i| i.cert.fingerprint.clone())
                .unwrap_or_default(),
            not_after: leaf
                .not_after
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        })
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A stored note; `None` when it does not parse (then the endpoint's
    /// root is unknown).
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }

    pub(crate) fn not_after(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.not_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{Ca, init_ca};

    fn id(text: &str) -> SpiffeId {
        text.parse().unwrap()
    }

    #[test]
    fn a_reported_certificate_names_its_root_and_must_name_the_caller() {
        let tmp = tempfile::tempdir().unwrap();
        let ours = init_ca("example.org", &tmp.path().join("ours")).unwrap();
        let theirs = init_ca("example.org", &tmp.path().join("theirs")).unwrap();
        let load = |f: &crate::ca::CaFiles| {
            Ca::load(&f.issuer_cert, &f.issuer_key, &f.bundle, "example.org").unwrap()
        };
        let (ca, other) = (load(&ours), load(&theirs));
        let record = TrustRecord::new(
            bulkhead_tls::certs_from_pem(&std::fs::read(&ours.bundle).unwrap(), "b").unwrap(),
            ca.issuer_chain_der()[0].clone(),
        )
        .unwrap();
        let web = id("spiffe://example.org/ns/shop/sa/web");
        let leaf = |ca: &Ca, who: &SpiffeId| {
            ca.issue_local(who, &[], &[], Duration::from_secs(3600))
                .unwrap()
                .0
                .remove(0)
        };

        let note = LeafNote::check(&record, &web, &leaf(&ca, &web)).unwrap();
        assert_eq!(note.root, record.roots()[0].fingerprint);
        assert_eq!(note.issuer, ca.fingerprint());
        assert!(note.not_after() > SystemTime::now());
        assert_eq!(LeafNote::decode(&note.encode()), Some(note));

        // Signed by an issuer the record does not know: its root is unknown.
        let foreign = LeafNote::check(&record, &web, &leaf(&other, &web)).unwrap();
        assert_eq!((foreign.root.as_str(), foreign.issuer.as_str()), ("", ""));

        let cart = id("spiffe://example.org/ns/shop/sa/cart");
        assert!(matches!(
            LeafNote::check(&record, &web, &leaf(&ca, &cart)),
            Err(LeafError::NotTheCaller { .. })
        ));
        assert!(matches!(
            LeafNote::check(&record, &web, b"junk"),
            Err(LeafError::Malformed(_))
        ));
    }
}
