//! TLS between mesh identities: rustls configurations that authenticate peers
//! by SPIFFE ID rather than by host name.
//!
//! Both directions check the same things (DESIGN.md, "Peer checks"): the chain
//! leads to the trust bundle, the certificate is inside its validity window,
//! and it carries exactly one URI SAN, a SPIFFE ID in our trust domain. A
//! client additionally checks that the server is the identity it meant to
//! reach. The CN is never looked at. Only TLS 1.3 is offered.

use std::fmt;
use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, verify_tls13_signature};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    ServerConfig, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use bulkhead_proto::identity::{IdentityError, SpiffeId};

use crate::bundle::BundleSlot;

/// ALPN protocol ids offered on gRPC listeners.
pub const ALPN_H2: &[u8] = b"h2";

/// Why TLS material could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what}: no PEM certificate found")]
    NoCertificates { what: String },
    #[error("{what}: not valid PEM: {reason}")]
    BadPem { what: String, reason: String },
    #[error("{what}: rejected by rustls: {reason}")]
    Rejected { what: String, reason: String },
}

/// The process-wide crypto provider (ring). Installing it as the default
/// avoids rustls panicking when two providers end up in the dependency tree.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as rustls' process default; harmless if already installed.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Parses every certificate in a PEM text (`what` names the source in errors).
pub fn certs_from_pem(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            what: what.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificates {
            what: what.to_owned(),
        });
    }
    Ok(certs)
}

/// Parses a PEM private key (PKCS#8, SEC1 or PKCS#1).
pub fn key_from_pem(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::BadPem {
        what: what.to_owned(),
        reason: e.to_string(),
    })
}

/// The identity a TLS client accepts from the server it dialled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExpectedServer {
    /// Exactly this identity (an endpoint's registered identity).
    Identity(SpiffeId),
    /// Any identity in the trust domain with this namespace and service
    /// account (used to reach the control plane, `bulkhead/control`).
    NsSa {
        namespace: String,
        service_account: String,
    },
}

impl ExpectedServer {
    /// The control plane's identity in any replica: `ns/bulkhead/sa/control`.
    pub fn control_plane() -> Self {
        Self::NsSa {
            namespace: "bulkhead".to_owned(),
            service_account: "control".to_owned(),
        }
    }

    fn accepts(&self, id: &SpiffeId) -> bool {
        match self {
            Self::Identity(want) => want == id,
            Self::NsSa {
                namespace,
                service_account,
            } => id.namespace() == namespace && id.service_account() == service_account,
        }
    }
}

/// A server's certificate did not carry the identity the client expected.
#[derive(Debug, thiserror::Error)]
#[error("server identity {found} is not the expected {expected:?}")]
struct UnexpectedIdentity {
    found: String,
    expected: ExpectedServer,
}

fn identity_error(e: IdentityError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// Client-side verifier: chain to the bundle in force, validity, one SPIFFE
/// ID in the trust domain, and that ID is the expected one. Host names are
/// not checked.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    bundle: BundleSlot,
    expected: ExpectedServer,
    algs: WebPkiSupportedAlgorithms,
}

impl SpiffeServerVerifier {
    pub fn new(bundle: BundleSlot, expected: ExpectedServer) -> Self {
        Self {
            bundle,
            expected,
            algs: provider().signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let bundle = self.bundle.get();
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &bundle.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        let id =
            SpiffeId::from_cert_der(end_entity, &bundle.trust_domain).map_err(identity_error)?;
        if !self.expected.accepts(&id) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(UnexpectedIdentity {
                    found: id.to_string(),
                    expected: self.expected.clone(),
                })),
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Only TLS 1.3 is ever negotiated (see `client_config`).
        Err(rustls::Error::General(
            "TLS 1.2 is not offered by the mesh".to_owned(),
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Server-side verifier: WebPKI chain/validity/clientAuth checks against
/// the bundle in force, then the SPIFFE rules, so a peer without a valid
/// mesh identity fails the handshake.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    bundle: BundleSlot,
    mandatory: bool,
}

impl SpiffeClientVerifier {
    /// `mandatory = false` lets clients without a certificate through the
    /// handshake (the control plane's Certify call); a certificate that is
    /// presented is still fully checked.
    pub fn new(bundle: BundleSlot, mandatory: bool) -> Self {
        Self { bundle, mandatory }
    }

    fn inner(&self) -> Arc<dyn ClientCertVerifier> {
        self.bundle.get().client_verifier(self.mandatory).clone()
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: they would only leak the CA's name.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let bundle = self.bundle.get();
        bundle.client_verifier(self.mandatory).verify_client_cert(
            end_entity,
            intermediates,
            now,
        )?;
        SpiffeId::from_cert_der(end_entity, &bundle.trust_domain).map_err(identity_error)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner().supported_verify_schemes()
    }
}

/// The current certificate and key of a workload, swappable at run time so
/// that rotation never drops a connection: new handshakes pick up the new
/// certificate, established connections keep theirs.
#[derive(Clone)]
pub struct CertSlot {
    current: Arc<RwLock<Option<Arc<CertifiedKey>>>>,
}

impl fmt::Debug for CertSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertSlot")
            .field("loaded", &self.get().is_some())
            .finish()
    }
}

impl Default for CertSlot {
    fn default() -> Self {
        Self::empty()
    }
}

impl CertSlot {
    pub fn empty() -> Self {
        Self {
            current: Arc::new(RwLock::new(None)),
        }
    }

    /// Builds a certified key from a chain (leaf first) and its private key.
    pub fn certified_key(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Arc<CertifiedKey>, TlsError> {
        let signing =
            provider()
                .key_provider
                .load_private_key(key)
                .map_err(|e| TlsError::Rejected {
                    what: "private key".to_owned(),
                    reason: e.to_string(),
                })?;
        Ok(Arc::new(CertifiedKey::new(chain, signing)))
    }

    pub fn set(&self, key: Arc<CertifiedKey>) {
        // A poisoned lock only means a writer panicked mid-swap of an Arc;
        // the value is still a whole Arc, so keep going.
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(key);
    }

    pub fn get(&self) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get()
    }
}

impl ResolvesClientCert for CertSlot {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.get()
    }

    fn has_certs(&self) -> bool {
        self.get().is_some()
    }
}

/// A TLS 1.3 client config that verifies the server's SPIFFE identity
/// against the bundle in force at each handshake, and presents the
/// certificate in `slot` when it holds one.
pub fn client_config(
    bundle: impl Into<BundleSlot>,
    expected: ExpectedServer,
    slot: Option<CertSlot>,
    alpn: &[&[u8]],
) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Rejected {
            what: "client config".to_owned(),
            reason: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(
            bundle.into(),
            expected,
        )));
    let mut config = match slot {
        Some(slot) => builder.with_client_cert_resolver(Arc::new(slot)),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // Mesh servers never resume (see `server_config`): offering it only
    // sends tickets nobody will take.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// A TLS 1.3 server config presenting the certificate in `slot` and
/// verifying client certificates by SPIFFE identity, against the bundle in
/// force at each handshake.
pub fn server_config(
    bundle: impl Into<BundleSlot>,
    slot: CertSlot,
    client_auth_mandatory: bool,
    alpn: &[&[u8]],
) -> Result<ServerConfig, TlsError> {
    let verifier = SpiffeClientVerifier::new(bundle.into(), client_auth_mandatory);
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Rejected {
            what: "server config".to_owned(),
            reason: e.to_string(),
        })?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(slot));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // No session resumption. A resumed TLS 1.3 session skips the client
    // certificate checks: a peer whose certificate has expired, or whose
    // root has left the bundle, would be let in on an old ticket (the class
    // of Envoy's CVE-2022-21654). Checking the saved certificate again on
    // every resumption would cost what resumption saves, and saves little:
    // sidecars pool one HTTP/2 connection per endpoint and port, so full
    // handshakes are rare (measured in tests/tests/rolling_restart.rs: a
    // caller made 3 handshakes for ~560 requests over four pods coming and
    // going).
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    // (rustls's default ticketer already makes no stateless tickets.)
    Ok(config)
}

/// When the certificate `der` stops being valid; `None` when it does not
/// parse.
pub fn not_after(der: &[u8]) -> Option<std::time::SystemTime> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let seconds = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds))
}

/// Accepts any server certificate (the handshake signature is still
/// checked): for clients that must not care who the server is — the app
/// probes the kubelet would make over HTTPS without verifying, and tests
/// of what a server refuses.
#[derive(Debug)]
pub struct AnyServer(pub Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
