//! Test fixtures for the CA: a throwaway CA directory and certificate readers.

use std::path::Path;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tempfile::TempDir;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{Ca, CaFiles, init_ca};

/// Two CAs of one trust domain, as a root rotation has: the old one and
/// the new one.
pub(super) struct TwoCas {
    pub(super) old: CaFiles,
    pub(super) new: CaFiles,
    _dir: TempDir,
}

impl TwoCas {
    pub(super) fn new(trust_domain: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self {
            old: init_ca(trust_domain, &dir.path().join("old")).unwrap(),
            new: init_ca(trust_domain, &dir.path().join("new")).unwrap(),
            _dir: dir,
        }
    }
}

/// A CA made by `init_ca` in a temporary directory, loaded.
pub(super) struct TestCa {
    pub(super) files: CaFiles,
    pub(super) ca: Ca,
    _dir: TempDir,
}

impl TestCa {
    pub(super) fn new(trust_domain: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let files = init_ca(trust_domain, &dir.path().join("ca")).unwrap();
        let ca = Ca::load(
            &files.issuer_cert,
            &files.issuer_key,
            &files.bundle,
            trust_domain,
        )
        .unwrap();
        Self {
            files,
            ca,
            _dir: dir,
        }
    }

    pub(super) fn issuer_key_pem(&self) -> String {
        std::fs::read_to_string(&self.files.issuer_key).unwrap()
    }
}

pub(crate) fn certs_in(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

pub(super) fn cert_of<'a>(der: &'a [u8]) -> X509Certificate<'a> {
    let (rest, cert) = X509Certificate::from_der(der).unwrap();
    assert!(rest.is_empty());
    cert
}

/// The trust record of the CA in `ca`: its bundle's roots, its issuer.
pub(crate) fn trust_record(ca: &CaFiles) -> crate::ca::TrustRecord {
    crate::ca::TrustRecord::new(certs_in(&ca.bundle), certs_in(&ca.issuer_cert).remove(0)).unwrap()
}
