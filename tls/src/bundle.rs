//! The roots a mesh trusts: a [`TrustBundle`] (immutable, cheap to clone)
//! and a [`BundleSlot`] that holds the one in force and can be replaced at
//! run time. Every verifier reads the slot at each handshake, so a root
//! added or retired by the control plane counts for the next handshake
//! without a restart; connections already open are re-checked by their
//! owners through [`BundleSlot::subscribe`] (see `still_trusts_*`).

use std::fmt;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio::sync::watch;

use crate::verify::{TlsError, certs_from_pem, provider};

/// The SHA-256 fingerprint of a DER certificate: lower-case hex, no colons
/// (how `bulkheadctl ca status` and the control plane's metrics name
/// roots and issuers).
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The roots a mesh trusts, and the trust domain its identities live in.
/// The client-certificate checks for these roots are built once, here.
#[derive(Clone)]
pub struct TrustBundle {
    pub(crate) roots: Arc<RootCertStore>,
    roots_der: Arc<[CertificateDer<'static>]>,
    pub(crate) trust_domain: Arc<str>,
    /// WebPKI chain, validity and clientAuth checks, a certificate required.
    clients_required: Arc<dyn ClientCertVerifier>,
    /// The same, letting clients without a certificate through.
    clients_optional: Arc<dyn ClientCertVerifier>,
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustBundle")
            .field("roots", &self.roots_der.len())
            .field("trust_domain", &self.trust_domain)
            .finish()
    }
}

impl TrustBundle {
    pub fn new(
        roots_der: Vec<CertificateDer<'static>>,
        trust_domain: &str,
    ) -> Result<Self, TlsError> {
        let rejected = |what: &str, reason: String| TlsError::Rejected {
            what: what.to_owned(),
            reason,
        };
        let mut roots = RootCertStore::empty();
        for root in &roots_der {
            roots
                .add(root.clone())
                .map_err(|e| rejected("trust bundle", e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(TlsError::NoCertificates {
                what: "trust bundle".to_owned(),
            });
        }
        let roots = Arc::new(roots);
        let clients = |optional: bool| {
            let mut builder =
                WebPkiClientVerifier::builder_with_provider(roots.clone(), provider());
            if optional {
                builder = builder.allow_unauthenticated();
            }
            builder
                .build()
                .map_err(|e| rejected("client verifier", e.to_string()))
        };
        Ok(Self {
            clients_required: clients(false)?,
            clients_optional: clients(true)?,
            roots,
            roots_der: roots_der.into(),
            trust_domain: trust_domain.into(),
        })
    }

    pub fn from_pem(pem: &[u8], what: &str, trust_domain: &str) -> Result<Self, TlsError> {
        Self::new(certs_from_pem(pem, what)?, trust_domain)
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn roots_der(&self) -> &[CertificateDer<'static>] {
        &self.roots_der
    }

    /// Whether these are the same roots, in any order.
    pub fn same_roots(&self, other: &[CertificateDer<'_>]) -> bool {
        let sorted = |certs: &[CertificateDer<'_>]| {
            let mut v: Vec<Vec<u8>> = certs.iter().map(|c| c.to_vec()).collect();
            v.sort();
            v
        };
        sorted(&self.roots_der) == sorted(other)
    }

    pub(crate) fn client_verifier(&self, mandatory: bool) -> &Arc<dyn ClientCertVerifier> {
        if mandatory {
            &self.clients_required
        } else {
            &self.clients_optional
        }
    }

    /// Whether a client presenting `chain` (leaf first) would pass the
    /// chain and validity checks now. For connections let in under an
    /// earlier bundle: one this bundle would refuse must end.
    pub fn still_trusts_client(&self, chain: &[CertificateDer<'_>]) -> bool {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return false;
        };
        self.clients_required
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .is_ok()
    }

    /// [`TrustBundle::still_trusts_client`] for a server's chain.
    pub fn still_trusts_server(&self, chain: &[CertificateDer<'_>]) -> bool {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return false;
        };
        let Ok(cert) = ParsedCertificate::try_from(leaf) else {
            return false;
        };
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            UnixTime::now(),
            provider().signature_verification_algorithms.all,
        )
        .is_ok()
    }
}

/// The trust bundle in force, replaceable while the process runs (the
/// sidecar takes each bundle the control plane pushes; the control plane
/// each one its store holds). Clones share it.
#[derive(Clone)]
pub struct BundleSlot {
    current: Arc<watch::Sender<TrustBundle>>,
}

impl fmt::Debug for BundleSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BundleSlot")
            .field(&*self.current.borrow())
            .finish()
    }
}

impl BundleSlot {
    pub fn new(bundle: TrustBundle) -> Self {
        Self {
            current: Arc::new(watch::Sender::new(bundle)),
        }
    }

    /// The bundle in force now.
    pub fn get(&self) -> TrustBundle {
        self.current.borrow().clone()
    }

    pub fn trust_domain(&self) -> String {
        self.current.borrow().trust_domain.to_string()
    }

    /// Puts `roots` in force (same trust domain). Returns whether anything
    /// changed: the same roots in another order are no change, and wake
    /// nobody.
    pub fn replace_roots(&self, roots: Vec<CertificateDer<'static>>) -> Result<bool, TlsError> {
        if self.current.borrow().same_roots(&roots) {
            return Ok(false);
        }
        let bundle = TrustBundle::new(roots, &self.trust_domain())?;
        self.current.send_replace(bundle);
        Ok(true)
    }

    /// A receiver told of every replacement (for re-checking open
    /// connections against the new roots).
    pub fn subscribe(&self) -> watch::Receiver<TrustBundle> {
        self.current.subscribe()
    }

    /// Resolves once the bundle in force no longer trusts the client chain
    /// `chain` (leaf first); never, if it always does. A server races it
    /// against each connection a client certificate let in.
    pub fn until_untrusted(
        &self,
        chain: Vec<CertificateDer<'static>>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut bundles = self.subscribe();
        async move {
            loop {
                if bundles.changed().await.is_err() {
                    return std::future::pending().await;
                }
                let trusted = bundles.borrow_and_update().still_trusts_client(&chain);
                if !trusted {
                    return;
                }
            }
        }
    }
}

impl From<TrustBundle> for BundleSlot {
    fn from(bundle: TrustBundle) -> Self {
        Self::new(bundle)
    }
}

impl From<&TrustBundle> for BundleSlot {
    fn from(bundle: &TrustBundle) -> Self {
        Self::new(bundle.clone())
    }
}

impl From<&BundleSlot> for BundleSlot {
    fn from(slot: &BundleSlot) -> Self {
        slot.clone()
    }
}

/// The trust domain named by a bundle's roots: `bulkheadctl ca init` puts a
/// URI SAN `spiffe://<trust-domain>` on the root. `None` when no root says.
pub fn trust_domain_of_roots(roots_der: &[CertificateDer<'_>]) -> Option<String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    roots_der.iter().find_map(|der| {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let uris = bulkhead_proto::identity::uri_sans(&cert).ok()?;
        uris.iter().find_map(|uri| {
            let td = uri.strip_prefix("spiffe://")?.trim_end_matches('/');
            bulkhead_proto::identity::validate_trust_domain(td)
                .ok()
                .map(|()| td.to_owned())
        })
    })
}

#[cfg(test)]
mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose, SanType,
    };
    use rustls::server::danger::ClientCertVerifier as _;

    use super::*;
    use crate::verify::SpiffeClientVerifier;

    const TD: &str = "example.org";

    /// A self-signed root and a workload leaf it signed directly.
    fn root_and_leaf() -> (CertificateDer<'static>, Vec<CertificateDer<'static>>) {
        let root_key = KeyPair::generate().unwrap();
        let mut root = CertificateParams::default();
        root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        root.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let root_cert = root.self_signed(&root_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::default();
        leaf.subject_alt_names = vec![SanType::URI(
            format!("spiffe://{TD}/ns/shop/sa/web").try_into().unwrap(),
        )];
        leaf.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        let leaf_cert = leaf
            .signed_by(&leaf_key, &Issuer::new(root, root_key))
            .unwrap();
        (root_cert.der().clone(), vec![leaf_cert.der().clone()])
    }

    #[test]
    fn open_connections_are_checked_against_the_roots_in_force() {
        let (old_root, old_leaf) = root_and_leaf();
        let (new_root, new_leaf) = root_and_leaf();
        let both = TrustBundle::new(vec![old_root.clone(), new_root.clone()], TD).unwrap();
        for chain in [&old_leaf, &new_leaf] {
            assert!(both.still_trusts_client(chain) && both.still_trusts_server(chain));
        }
        let retired = TrustBundle::new(vec![new_root], TD).unwrap();
        assert!(retired.still_trusts_client(&new_leaf));
        assert!(!retired.still_trusts_client(&old_leaf));
        assert!(!retired.still_trusts_server(&old_leaf));
        assert!(!retired.still_trusts_client(&[]));
    }

    #[test]
    fn a_replaced_bundle_counts_for_the_next_handshake() {
        let (old_root, _) = root_and_leaf();
        let (new_root, new_leaf) = root_and_leaf();
        let slot = BundleSlot::new(TrustBundle::new(vec![old_root.clone()], TD).unwrap());
        let verifier = SpiffeClientVerifier::new(slot.clone(), true);
        let verify = || verifier.verify_client_cert(&new_leaf[0], &[], UnixTime::now());
        assert!(verify().is_err(), "a root not yet in the bundle");

        let mut changes = slot.subscribe();
        assert!(
            slot.replace_roots(vec![old_root.clone(), new_root.clone()])
                .unwrap()
        );
        assert!(changes.has_changed().unwrap(), "subscribers are told");
        assert!(verify().is_ok(), "the added root, without a new config");
        changes.mark_unchanged();
        // The same roots in another order: nothing to tell anyone.
        assert!(!slot.replace_roots(vec![new_root, old_root]).unwrap());
        assert!(!changes.has_changed().unwrap());
        assert!(slot.replace_roots(vec![]).is_err(), "never trust nothing");
        assert_eq!(slot.get().roots_der().len(), 2);
    }

    #[test]
    fn fingerprints_are_lower_hex_sha256() {
        // SHA-256 of the empty input.
        assert_eq!(
            fingerprint(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
