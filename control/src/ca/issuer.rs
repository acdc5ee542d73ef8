//! A loaded issuer: an intermediate CA whose key the control plane reads from a
//! file, checked once at load (is a CA, key matches, valid now; for the issuer
//! given at start also: chains to the trust bundle file) so that signing later
//! cannot fail for a reason visible at load. A replica may hold several (see
//! [`super::Keyring`]): the store's trust record says which one signs.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bulkhead_proto::{SpiffeId, identity::validate_trust_domain};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::token::{self, TokenClaims, TokenError};
use super::{CaError, files};

/// How far back a leaf's `not_before` is set, so peers with slightly slow clocks
/// accept a certificate the moment it is issued.
pub(super) const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// The issuing CA, loaded and checked. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Ca {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    /// Issuer certificate first, then any further intermediates from its file.
    issuer_chain: Vec<CertificateDer<'static>>,
    /// SHA-256 of the issuer certificate: how the trust record names it.
    fingerprint: String,
    /// Unix seconds; no leaf outlives its issuer.
    issuer_not_after: u64,
    /// The issuer's public key as an uncompressed P-256 point (verifies tokens).
    token_key: Vec<u8>,
}

/// What a leaf certificate is for, apart from its public key.
pub(super) struct Leaf<'a> {
    pub(super) identity: &'a SpiffeId,
    /// DNS and IP SANs after the SPIFFE URI SAN (only for local issuance).
    pub(super) extra_sans: Vec<SanType>,
    pub(super) extended_key_usages: Vec<ExtendedKeyUsagePurpose>,
    pub(super) key_encipherment: bool,
    pub(super) lifetime: Duration,
}

/// A signed leaf certificate.
pub(super) struct SignedLeaf {
    pub(super) der: CertificateDer<'static>,
    pub(super) not_after: SystemTime,
    pub(super) serial: String,
}

impl Ca {
    /// Loads the issuer certificate (plus any intermediates after it in the same
    /// file), its PKCS#8 key and the trust bundle, and checks that they form a
    /// usable CA for `trust_domain` right now.
    pub fn load(
        issuer_cert: &Path,
        issuer_key: &Path,
        trust_bundle: &Path,
        trust_domain: &str,
    ) -> Result<Self, CaError> {
        Self::load_at(
            issuer_cert,
            issuer_key,
            trust_bundle,
            trust_domain,
            SystemTime::now(),
        )
    }

    pub(super) fn load_at(
        issuer_cert: &Path,
        issuer_key: &Path,
        trust_bundle: &Path,
        trust_domain: &str,
        now: SystemTime,
    ) -> Result<Self, CaError> {
        validate_trust_domain(trust_domain).map_err(CaError::TrustDomain)?;
        // The chain first: a file out of order is refused as untrusted
        // before its key is compared with the wrong certificate.
        let issuer_chain = files::read_certs(issuer_cert)?;
        let bundle = files::read_certs(trust_bundle)?;
        let chain = parse_certs(issuer_cert, &issuer_chain)?;
        let roots = parse_certs(trust_bundle, &bundle)?;
        for (i, root) in roots.iter().enumerate() {
            check_is_ca(trust_bundle, i, root)?;
        }
        check_chains_to_bundle(
            issuer_cert,
            trust_bundle,
            &chain,
            &issuer_chain,
            &roots,
            &bundle,
        )?;
        Self::load_issuer_at(issuer_cert, issuer_key, trust_domain, now)
    }

    /// Loads an issuer certificate (plus any intermediates after it in the
    /// same file) and its PKCS#8 key without a trust bundle: for an issuer
    /// whose root is not (yet) in the bundle file, such as the next one of
    /// a root rotation. Whether it chains to the bundle in force is the
    /// trust record's business.
    pub fn load_issuer(
        issuer_cert: &Path,
        issuer_key: &Path,
        trust_domain: &str,
    ) -> Result<Self, CaError> {
        Self::load_issuer_at(issuer_cert, issuer_key, trust_domain, SystemTime::now())
    }

    pub(super) fn load_issuer_at(
        issuer_cert: &Path,
        issuer_key: &Path,
        trust_domain: &str,
        now: SystemTime,
    ) -> Result<Self, CaError> {
        validate_trust_domain(trust_domain).map_err(CaError::TrustDomain)?;
        let issuer_chain = files::read_certs(issuer_cert)?;
        let key_der = files::read_pkcs8_key(issuer_key)?;

        let chain = parse_certs(issuer_cert, &issuer_chain)?;
        for (i, cert) in chain.iter().enumerate() {
            check_is_ca(issuer_cert, i, cert)?;
            check_valid_at(issuer_cert, cert, now)?;
        }

        let issuer = &chain[0];
        let key = KeyPair::try_from(&key_der).map_err(|e| CaError::BadFile {
            path: issuer_key.to_owned(),
            problem: format!("unusable private key: {e}"),
        })?;
        if key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(CaError::UnsupportedKey {
                path: issuer_key.to_owned(),
            });
        }
        let token_key = issuer.public_key().subject_public_key.data.to_vec();
        if key.public_key_raw() != token_key.as_slice() {
            return Err(CaError::KeyMismatch {
                key: issuer_key.to_owned(),
                cert: issuer_cert.to_owned(),
            });
        }
        let issuer_not_after = u64::try_from(issuer.validity().not_after.timestamp()).unwrap_or(0);
        let signer =
            Issuer::from_ca_cert_der(&issuer_chain[0], key).map_err(|e| CaError::BadFile {
                path: issuer_cert.to_owned(),
                problem: format!("cannot sign with this certificate: {e}"),
            })?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            issuer: signer,
            fingerprint: bulkhead_tls::fingerprint(&issuer_chain[0]),
            issuer_chain,
            issuer_not_after,
            token_key,
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// SHA-256 of the issuer certificate (lower-case hex).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The issuer certificate followed by any further intermediates; sent after
    /// every leaf.
    pub fn issuer_chain_der(&self) -> &[CertificateDer<'static>] {
        &self.issuer_chain
    }

    /// When the issuer certificate expires; no leaf is issued past it.
    pub fn issuer_not_after(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.issuer_not_after)
    }

    /// Issues a certificate for a key generated here (the control plane's own
    /// server certificate): the SPIFFE URI SAN, then `dns_names` and `ips`.
    /// Returns the chain (leaf first) and the PKCS#8 key.
    pub fn issue_local(
        &self,
        identity: &SpiffeId,
        dns_names: &[String],
        ips: &[IpAddr],
        lifetime: Duration,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CaError> {
        let key = KeyPair::generate()?;
        let mut extra_sans = Vec::with_capacity(dns_names.len() + ips.len());
        for name in dns_names {
            extra_sans.push(SanType::DnsName(name.as_str().try_into()?));
        }
        extra_sans.extend(ips.iter().copied().map(SanType::IpAddress));
        let leaf = Leaf {
            identity,
            extra_sans,
            extended_key_usages: vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            key_encipherment: false,
            lifetime,
        };
        let signed = self.sign_leaf(&key, leaf, SystemTime::now())?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((self.chain_with(signed.der), key_der))
    }

    /// Checks a bootstrap token signed with this issuer's key; see
    /// [`token`](super::token) for the format. One-time use is the caller's job
    /// (record `id` when `once` is set).
    pub fn verify_token(&self, token: &str, now: SystemTime) -> Result<TokenClaims, TokenError> {
        token::verify(token, &self.token_key, &self.trust_domain, now)
    }

    /// `leaf` followed by the issuer chain.
    pub(super) fn chain_with(&self, leaf: CertificateDer<'static>) -> Vec<CertificateDer<'static>> {
        let mut chain = Vec::with_capacity(1 + self.issuer_chain.len());
        chain.push(leaf);
        chain.extend(self.issuer_chain.iter().cloned());
        chain
    }

    /// Signs a leaf for `public_key`. Everything in it comes from `leaf` and the
    /// clock, never from what the key's owner asked for.
    pub(super) fn sign_leaf(
        &self,
        public_key: &impl PublicKeyData,
        leaf: Leaf<'_>,
        now: SystemTime,
    ) -> Result<SignedLeaf, CaError> {
        if leaf.identity.trust_domain() != self.trust_domain {
            return Err(CaError::ForeignTrustDomain {
                identity: leaf.identity.to_string(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        if leaf.lifetime.as_secs() == 0 {
            return Err(CaError::ZeroLifetime);
        }
        let now = unix_secs(now);
        let not_after = now
            .saturating_add(leaf.lifetime.as_secs())
            .min(self.issuer_not_after);
        if not_after <= now {
            return Err(CaError::IssuerExpired(x509_time(self.issuer_not_after)));
        }
        let not_before = now.saturating_sub(CLOCK_SKEW.as_secs());

        let mut key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if leaf.key_encipherment {
            key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        let mut sans = vec![SanType::URI(leaf.identity.to_string().try_into()?)];
        sans.extend(leaf.extra_sans);
        let (serial, serial_hex) = random_serial()?;

        let mut params = CertificateParams::default();
        set_validity(&mut params, not_before, not_after);
        params.serial_number = Some(serial);
        // Informational only: peers authorize on the URI SAN, never the CN.
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, leaf.identity.service_account());
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = key_usages;
        params.extended_key_usages = leaf.extended_key_usages;
        params.use_authority_key_identifier_extension = true;

        let cert = params.signed_by(public_key, &self.issuer)?;
        Ok(SignedLeaf {
            der: cert.into(),
            not_after: UNIX_EPOCH + Duration::from_secs(not_after),
            serial: serial_hex,
        })
    }
}

fn parse_certs<'a>(
    path: &Path,
    ders: &'a [CertificateDer<'static>],
) -> Result<Vec<X509Certificate<'a>>, CaError> {
    ders.iter()
        .enumerate()
        .map(|(i, der)| match X509Certificate::from_der(der) {
            Ok(([], cert)) => Ok(cert),
            Ok(_) => Err(format!("certificate #{} has trailing bytes", i + 1)),
            Err(e) => Err(format!("certificate #{} is not X.509: {e}", i + 1)),
        })
        .map(|r| {
            r.map_err(|problem| CaError::BadFile {
                path: path.to_owned(),
                problem,
            })
        })
        .collect()
}

fn check_is_ca(path: &Path, index: usize, cert: &X509Certificate<'_>) -> Result<(), CaError> {
    let not_ca = |problem: String| CaError::NotCa {
        path: path.to_owned(),
        problem: format!("certificate #{}: {problem}", index + 1),
    };
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {}
        Ok(_) => return Err(not_ca("basicConstraints CA:TRUE is missing".into())),
        Err(e) => return Err(not_ca(format!("bad basicConstraints: {e}"))),
    }
    match cert.key_usage() {
        Ok(Some(ku)) if !ku.value.key_cert_sign() => {
            Err(not_ca("keyUsage lacks keyCertSign".into()))
        }
        Ok(_) => Ok(()),
        Err(e) => Err(not_ca(format!("bad keyUsage: {e}"))),
    }
}

fn check_valid_at(path: &Path, cert: &X509Certificate<'_>, now: SystemTime) -> Result<(), CaError> {
    let now = i64::try_from(unix_secs(now)).unwrap_or(i64::MAX);
    let validity = cert.validity();
    if validity.not_before.timestamp() <= now && now <= validity.not_after.timestamp() {
        return Ok(());
    }
    Err(CaError::NotValid {
        path: path.to_owned(),
        not_before: validity.not_before.to_string(),
        not_after: validity.not_after.to_string(),
    })
}

/// Each certificate of the issuer file must be signed by the next one, and the
/// last one must be a bundle root or signed by one.
fn check_chains_to_bundle(
    issuer_path: &Path,
    bundle_path: &Path,
    chain: &[X509Certificate<'_>],
    chain_der: &[CertificateDer<'_>],
    roots: &[X509Certificate<'_>],
    roots_der: &[CertificateDer<'_>],
) -> Result<(), CaError> {
    let untrusted = |problem: String| CaError::Untrusted {
        cert: issuer_path.to_owned(),
        bundle: bundle_path.to_owned(),
        problem,
    };
    for (i, pair) in chain.windows(2).enumerate() {
        if let Err(e) = pair[0].verify_signature(Some(pair[1].public_key())) {
            return Err(untrusted(format!(
                "certificate #{} is not signed by certificate #{} of the same file: {e}",
                i + 1,
                i + 2
            )));
        }
    }
    let (last, last_der) = match (chain.last(), chain_der.last()) {
        (Some(last), Some(der)) => (last, der),
        _ => return Err(untrusted("no certificate".into())),
    };
    let anchored = roots_der
        .iter()
        .any(|root| root.as_ref() == last_der.as_ref())
        || roots
            .iter()
            .any(|root| last.verify_signature(Some(root.public_key())).is_ok());
    if anchored {
        Ok(())
    } else {
        Err(untrusted(format!(
            "its signature verifies with none of the bundle's {} root(s)",
            roots.len()
        )))
    }
}

/// A random positive 128-bit serial and its hex form as X.509 tools print it
/// (no leading zeros).
pub(super) fn random_serial() -> Result<(SerialNumber, String), CaError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::Generate(rcgen::Error::RingUnspecified))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let hex = match hex.trim_start_matches('0') {
        "" => "0".to_owned(),
        trimmed => trimmed.to_owned(),
    };
    Ok((SerialNumber::from_slice(&bytes), hex))
}

pub(super) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Sets a certificate's validity from unix seconds. rcgen takes
/// `time::OffsetDateTime`; offsetting its epoch value avoids depending on `time`.
pub(super) fn set_validity(params: &mut CertificateParams, not_before: u64, not_after: u64) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + Duration::from_secs(not_before);
    params.not_after = epoch + Duration::from_secs(not_after);
}

fn x509_time(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|t| x509_parser::time::ASN1Time::from_timestamp(t).ok())
        .map_or_else(|| format!("{unix} (unix)"), |t| t.to_string())
}

#[cfg(test)]
#[path = "issuer_tests.rs"]
mod tests;
