//! Workload identity: SPIFFE IDs of the form
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`, and reading
//! them from certificates (exactly one URI SAN; the CN means nothing).

use std::fmt;
use std::str::FromStr;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Default trust domain of a mesh.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// Longest SPIFFE ID accepted (the SPIFFE spec's limit).
const MAX_ID_LEN: usize = 2048;

/// A workload identity in the mesh.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

/// Why a string or certificate does not carry a valid mesh identity.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error(
        "not a SPIFFE ID: expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>, got {0:?}"
    )]
    Malformed(String),
    #[error(
        "invalid {what} {value:?}: expected 1-63 characters of a-z, 0-9 and '-', starting and ending alphanumeric"
    )]
    BadName { what: &'static str, value: String },
    #[error("invalid trust domain {0:?}: expected lower-case letters, digits, '.', '-' and '_'")]
    BadTrustDomain(String),
    #[error("certificate does not parse as X.509: {0}")]
    BadCertificate(String),
    #[error("certificate has {0} URI SANs: a mesh certificate must have exactly one")]
    UriSanCount(usize),
    #[error("certificate belongs to trust domain {found:?}, expected {expected:?}")]
    ForeignTrustDomain { found: String, expected: String },
}

impl SpiffeId {
    /// Builds an identity, validating each part.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        validate_trust_domain(trust_domain)?;
        validate_name("namespace", namespace)?;
        validate_name("service account", service_account)?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        })
    }

    /// Parses `ns/sa` in `trust_domain`.
    pub fn from_ns_sa(trust_domain: &str, ns_sa: &str) -> Result<Self, IdentityError> {
        let (ns, sa) = ns_sa
            .split_once('/')
            .ok_or_else(|| IdentityError::Malformed(ns_sa.to_owned()))?;
        Self::new(trust_domain, ns, sa)
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The identity's `ns/sa` short form.
    pub fn ns_sa(&self) -> String {
        format!("{}/{}", self.namespace, self.service_account)
    }

    /// Reads the identity of a DER certificate: it must have exactly one URI
    /// SAN and that SAN must be a SPIFFE ID in `trust_domain`. Chain and
    /// validity checks are the TLS verifier's job, not this function's.
    pub fn from_cert_der(der: &[u8], trust_domain: &str) -> Result<Self, IdentityError> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
        let uris = uri_sans(&cert)?;
        if uris.len() != 1 {
            return Err(IdentityError::UriSanCount(uris.len()));
        }
        let id: SpiffeId = uris[0].parse()?;
        if id.trust_domain != trust_domain {
            return Err(IdentityError::ForeignTrustDomain {
                found: id.trust_domain,
                expected: trust_domain.to_owned(),
            });
        }
        Ok(id)
    }
}

/// Every URI SAN of a certificate, in order.
pub fn uri_sans<'a>(cert: &'a X509Certificate<'_>) -> Result<Vec<&'a str>, IdentityError> {
    let mut uris = Vec::new();
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    if let Some(san) = san {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                uris.push(*uri);
            }
        }
    }
    Ok(uris)
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for SpiffeId {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let malformed = || IdentityError::Malformed(s.chars().take(200).collect());
        if s.len() > MAX_ID_LEN {
            return Err(malformed());
        }
        let rest = s.strip_prefix("spiffe://").ok_or_else(malformed)?;
        let mut parts = rest.split('/');
        let (Some(td), Some("ns"), Some(ns), Some("sa"), Some(sa), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(malformed());
        };
        Self::new(td, ns, sa)
    }
}

/// Kubernetes DNS-label rules: what namespaces and service accounts may be.
pub fn validate_name(what: &'static str, value: &str) -> Result<(), IdentityError> {
    let bytes = value.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(IdentityError::BadName {
            what,
            value: value.chars().take(100).collect(),
        })
    }
}

/// SPIFFE trust-domain rules.
pub fn validate_trust_domain(td: &str) -> Result<(), IdentityError> {
    let ok = !td.is_empty()
        && td.len() <= 255
        && td.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(IdentityError::BadTrustDomain(
            td.chars().take(100).collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let id: SpiffeId = "spiffe://cluster.local/ns/shop/sa/cart".parse().unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "shop");
        assert_eq!(id.service_account(), "cart");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/cart");
        assert_eq!(id.ns_sa(), "shop/cart");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "spiffe://",
            "http://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a/sa/b/extra",
            "spiffe://cluster.local/ns/a/sb/b",
            "spiffe://cluster.local/ns//sa/b",
            "spiffe://Cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/A/sa/b",
            "spiffe://cluster.local/ns/a/sa/-b",
            "spiffe://cluster.local/ns/a/sa/b%2F",
        ] {
            assert!(
                bad.parse::<SpiffeId>().is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn ns_sa_form() {
        let id = SpiffeId::from_ns_sa("example.org", "shop/cart").unwrap();
        assert_eq!(id.to_string(), "spiffe://example.org/ns/shop/sa/cart");
        assert!(SpiffeId::from_ns_sa("example.org", "cart").is_err());
    }
}
