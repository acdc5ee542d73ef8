//! Turning a workload's CSR into a leaf certificate. The CSR contributes only its
//! public key (after proving possession of it); the identity comes from attestation
//! and everything else from the CA, so a CSR can never ask for more than it gets.

use std::time::{Duration, SystemTime};

use bulkhead_proto::SpiffeId;
use rcgen::ExtendedKeyUsagePurpose;
use rustls_pki_types::CertificateDer;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_DSA, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384,
    OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519, OID_X509_EXT_SUBJECT_ALT_NAME,
};
use x509_parser::prelude::{FromDer, ParsedCriAttribute, X509CertificationRequest};
use x509_parser::x509::SubjectPublicKeyInfo;

use super::issuer::Leaf;
use super::{Ca, CaError};

/// Largest CSR accepted, in DER bytes. A P-256 CSR is a few hundred bytes and an
/// RSA-4096 one under 2 KiB; anything near this is not a workload's CSR.
pub const MAX_CSR_LEN: usize = 16 * 1024;

/// Smallest RSA modulus accepted, in bits.
const MIN_RSA_BITS: usize = 2048;

/// A certificate issued for a CSR.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The leaf, then the issuer chain.
    pub chain_der: Vec<CertificateDer<'static>>,
    /// The leaf's `not_after`: the requested lifetime, cut at the issuer's expiry.
    pub not_after: SystemTime,
    /// The leaf's serial in lower-case hex without leading zeros (as
    /// `openssl x509 -serial` prints it, less its zero padding).
    pub serial: String,
}

/// Why a CSR was refused (or could not be signed).
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("CSR is {size} bytes, more than the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("CSR does not parse as PKCS#10 DER: {0}")]
    Malformed(String),
    #[error(
        "CSR public key is {0}: accepted keys are ECDSA P-256 or P-384, Ed25519, and RSA of at least 2048 bits"
    )]
    WeakKey(String),
    #[error(
        "CSR signature does not verify with the CSR's own public key (key and signature do not match): {0}"
    )]
    BadSignature(String),
    #[error("CSR asks for identity {requested:?} but the workload attested as {attested}")]
    ForeignIdentity { requested: String, attested: String },
    #[error(
        "CSR asks for {0}: workload certificates carry only their SPIFFE ID, no DNS, IP or other names"
    )]
    UnexpectedName(String),
    #[error("could not issue a certificate: {0}")]
    Issue(#[from] CaError),
}

impl Ca {
    /// Issues a leaf certificate for the key in `csr_der`, for `identity` (which
    /// the caller has attested), valid from a minute ago for `lifetime` but not
    /// past the issuer's own expiry.
    pub fn certify(
        &self,
        csr_der: &[u8],
        identity: &SpiffeId,
        lifetime: Duration,
    ) -> Result<Issued, CsrError> {
        self.certify_at(csr_der, identity, lifetime, SystemTime::now())
    }

    pub(super) fn certify_at(
        &self,
        csr_der: &[u8],
        identity: &SpiffeId,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<Issued, CsrError> {
        if csr_der.len() > MAX_CSR_LEN {
            return Err(CsrError::TooLarge {
                size: csr_der.len(),
                limit: MAX_CSR_LEN,
            });
        }
        let csr = match X509CertificationRequest::from_der(csr_der) {
            Ok((rest, _)) if !rest.is_empty() => {
                return Err(CsrError::Malformed(format!(
                    "{} trailing bytes after the request",
                    rest.len()
                )));
            }
            Ok((_, csr)) => csr,
            Err(e) => return Err(CsrError::Malformed(e.to_string())),
        };
        let spki = &csr.certification_request_info.subject_pki;
        // Key strength first: ring refuses to verify with weak keys, which would
        // otherwise be reported as a bad signature.
        let key_kind = classify_key(spki)?;
        csr.verify_signature()
            .map_err(|e| CsrError::BadSignature(e.to_string()))?;
        check_requested_names(&csr, identity)?;

        // rcgen re-encodes the SPKI from the raw key and the algorithm it
        // recognises; classify_key only lets through keys it knows.
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(spki.raw)
            .map_err(|e| CsrError::WeakKey(format!("not usable for a certificate ({e})")))?;
        let leaf = Leaf {
            identity,
            extra_sans: Vec::new(),
            extended_key_usages: vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            key_encipherment: key_kind == KeyKind::Rsa,
            lifetime,
        };
        let signed = self.sign_leaf(&public_key, leaf, now)?;
        Ok(Issued {
            chain_der: self.chain_with(signed.der),
            not_after: signed.not_after,
            serial: signed.serial,
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
enum KeyKind {
    Ec,
    Ed25519,
    Rsa,
}

fn classify_key(spki: &SubjectPublicKeyInfo<'_>) -> Result<KeyKind, CsrError> {
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 || c == OID_NIST_EC_P384 => Ok(KeyKind::Ec),
            Some(c) => Err(CsrError::WeakKey(format!("ECDSA on curve {c}"))),
            None => Err(CsrError::WeakKey("ECDSA with no named curve".into())),
        };
    }
    if *alg == OID_SIG_ED25519 {
        return Ok(KeyKind::Ed25519);
    }
    if *alg == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => modulus_bits(rsa.modulus),
            _ => return Err(CsrError::WeakKey("an unreadable RSA key".into())),
        };
        return if bits >= MIN_RSA_BITS {
            Ok(KeyKind::Rsa)
        } else {
            Err(CsrError::WeakKey(format!("RSA-{bits}")))
        };
    }
    if *alg == OID_KEY_TYPE_DSA {
        return Err(CsrError::WeakKey("DSA".into()));
    }
    Err(CsrError::WeakKey(format!("of unknown type {alg}")))
}

/// Bit length of a big-endian unsigned integer (ignoring DER's sign padding).
fn modulus_bits(modulus: &[u8]) -> usize {
    let significant: &[u8] = match modulus.iter().position(|&b| b != 0) {
        Some(first) => &modulus[first..],
        None => return 0,
    };
    significant.len() * 8 - significant[0].leading_zeros() as usize
}

/// A CSR may name nothing (the usual case) or exactly the attested identity; any
/// other name is a workload asking for more than it proved.
fn check_requested_names(
    csr: &X509CertificationRequest<'_>,
    identity: &SpiffeId,
) -> Result<(), CsrError> {
    let attested = identity.to_string();
    // Every extension-request attribute, not just the first: a second one must not
    // be a place to hide names.
    let requests = csr
        .certification_request_info
        .iter_attributes()
        .filter_map(|attr| match attr.parsed_attribute() {
            ParsedCriAttribute::ExtensionRequest(req) => Some(req),
            _ => None,
        });
    for request in requests {
        for ext in &request.extensions {
            let san = match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => san,
                _ if ext.oid == OID_X509_EXT_SUBJECT_ALT_NAME => {
                    return Err(CsrError::Malformed(
                        "unreadable subjectAltName extension".into(),
                    ));
                }
                _ => continue,
            };
            for name in &san.general_names {
                match name {
                    GeneralName::URI(uri) if *uri == attested => {}
                    GeneralName::URI(uri) => {
                        return Err(CsrError::ForeignIdentity {
                            requested: (*uri).to_owned(),
                            attested,
                        });
                    }
                    GeneralName::DNSName(dns) => {
                        return Err(CsrError::UnexpectedName(format!("DNS name {dns:?}")));
                    }
                    GeneralName::IPAddress(_) => {
                        return Err(CsrError::UnexpectedName("an IP address".into()));
                    }
                    other => {
                        return Err(CsrError::UnexpectedName(format!("the name {other}")));
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "csr_tests.rs"]
mod tests;
