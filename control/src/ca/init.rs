//! `bulkheadctl ca init`: a new root, issuer, trust bundle and operator certificate
//! in a fresh directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bulkhead_proto::SpiffeId;
use bulkhead_proto::identity::validate_trust_domain;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use super::files::{self, CERT_MODE, KEY_MODE};
use super::issuer::{CLOCK_SKEW, Leaf, random_serial, set_validity, unix_secs};
use super::{Ca, CaError};

/// Namespace and service account of the operator identity `init_ca` certifies.
pub const OPERATOR_NAMESPACE: &str = "bulkhead";
pub const OPERATOR_SERVICE_ACCOUNT: &str = "operator";

const DAY: u64 = 24 * 60 * 60;
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * DAY);
const ISSUER_LIFETIME: Duration = Duration::from_secs(365 * DAY);
const OPERATOR_LIFETIME: Duration = Duration::from_secs(365 * DAY);

/// Where a CA directory keeps its files (see the [module table](super)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaFiles {
    pub dir: PathBuf,
    pub root_cert: PathBuf,
    pub root_key: PathBuf,
    pub issuer_cert: PathBuf,
    pub issuer_key: PathBuf,
    pub bundle: PathBuf,
    pub operator_cert: PathBuf,
    pub operator_key: PathBuf,
}

impl CaFiles {
    /// The file names of a CA directory made by [`init_ca`].
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            root_cert: dir.join("root.crt"),
            root_key: dir.join("root.key"),
            issuer_cert: dir.join("issuer.crt"),
            issuer_key: dir.join("issuer.key"),
            bundle: dir.join("bundle.crt"),
            operator_cert: dir.join("operator.crt"),
            operator_key: dir.join("operator.key"),
        }
    }
}

/// Creates `out_dir` (mode 0700; it must not exist) holding a new root, issuer,
/// trust bundle and an operator certificate for `spiffe://<td>/ns/bulkhead/sa/operator`.
/// On failure the directory is removed again.
pub fn init_ca(trust_domain: &str, out_dir: &Path) -> Result<CaFiles, CaError> {
    validate_trust_domain(trust_domain).map_err(CaError::TrustDomain)?;
    let operator = SpiffeId::new(trust_domain, OPERATOR_NAMESPACE, OPERATOR_SERVICE_ACCOUNT)
        .map_err(CaError::TrustDomain)?;
    files::create_private_dir(out_dir)?;
    let paths = CaFiles::in_dir(out_dir);
    match write_ca(trust_domain, &paths, &operator, SystemTime::now()) {
        Ok(()) => Ok(paths),
        Err(e) => {
            // We created the directory a moment ago, so nothing of anyone else's is in it.
            let _ = std::fs::remove_dir_all(out_dir);
            Err(e)
        }
    }
}

fn write_ca(
    trust_domain: &str,
    paths: &CaFiles,
    operator: &SpiffeId,
    now: SystemTime,
) -> Result<(), CaError> {
    let root = make_root(trust_domain, "root", now)?;
    files::write_new(&paths.root_key, &root.key.serialize_pem(), KEY_MODE)?;
    files::write_new(&paths.root_cert, &root.cert.pem(), CERT_MODE)?;
    files::write_new(&paths.bundle, &root.cert.pem(), CERT_MODE)?;

    let (issuer_cert, issuer_key) =
        make_issuer(trust_domain, "issuer", &root.issuer, root.not_after, now)?;
    files::write_new(&paths.issuer_key, &issuer_key.serialize_pem(), KEY_MODE)?;
    files::write_new(&paths.issuer_cert, &issuer_cert.pem(), CERT_MODE)?;

    // Load what was just written: the same checks the control plane will make.
    let ca = Ca::load_at(
        &paths.issuer_cert,
        &paths.issuer_key,
        &paths.bundle,
        trust_domain,
        now,
    )?;
    let (chain, key) = make_operator(&ca, operator, now)?;
    files::write_new(&paths.operator_key, &key, KEY_MODE)?;
    files::write_new(&paths.operator_cert, &chain, CERT_MODE)?;
    Ok(())
}

/// A new self-signed root and what signs with it.
pub(super) struct NewRoot {
    pub(super) cert: rcgen::Certificate,
    pub(super) key: KeyPair,
    pub(super) issuer: Issuer<'static, KeyPair>,
    /// Unix seconds.
    pub(super) not_after: u64,
}

/// A root for `trust_domain` (URI SAN `spiffe://<td>`), ~10 years;
/// `label` tells roots of one trust domain apart in its CN.
pub(super) fn make_root(
    trust_domain: &str,
    label: &str,
    now: SystemTime,
) -> Result<NewRoot, CaError> {
    let now_s = unix_secs(now);
    let not_before = now_s.saturating_sub(CLOCK_SKEW.as_secs());
    let key = KeyPair::generate()?;
    let not_after = now_s + ROOT_LIFETIME.as_secs();
    let mut params = ca_params(
        trust_domain,
        label,
        BasicConstraints::Unconstrained,
        not_before,
        not_after,
    )?;
    params.subject_alt_names = vec![SanType::URI(format!("spiffe://{trust_domain}").try_into()?)];
    let cert = params.self_signed(&key)?;
    let issuer = Issuer::new(params, KeyPair::try_from(&key.serialize_der()[..])?);
    Ok(NewRoot {
        cert,
        key,
        issuer,
        not_after,
    })
}

/// An issuer (pathlen 0: it signs workloads, never another CA), ~1 year
/// but never past its root; ECDSA P-256, as bootstrap tokens need.
pub(super) fn make_issuer(
    trust_domain: &str,
    label: &str,
    root: &Issuer<'_, KeyPair>,
    root_not_after: u64,
    now: SystemTime,
) -> Result<(rcgen::Certificate, KeyPair), CaError> {
    let now_s = unix_secs(now);
    let key = KeyPair::generate()?;
    let mut params = ca_params(
        trust_domain,
        label,
        BasicConstraints::Constrained(0),
        now_s.saturating_sub(CLOCK_SKEW.as_secs()),
        (now_s + ISSUER_LIFETIME.as_secs()).min(root_not_after),
    )?;
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, root)?;
    Ok((cert, key))
}

/// An operator certificate from `ca`: the chain (leaf, issuer) and key, PEM.
pub(super) fn make_operator(
    ca: &Ca,
    operator: &SpiffeId,
    now: SystemTime,
) -> Result<(String, String), CaError> {
    let key = KeyPair::generate()?;
    let leaf = Leaf {
        identity: operator,
        extra_sans: Vec::new(),
        extended_key_usages: vec![ExtendedKeyUsagePurpose::ClientAuth],
        key_encipherment: false,
        lifetime: OPERATOR_LIFETIME,
    };
    let signed = ca.sign_leaf(&key, leaf, now)?;
    let chain = ca.chain_with(signed.der);
    Ok((files::certs_pem(&chain), key.serialize_pem()))
}

fn ca_params(
    trust_domain: &str,
    role: &str,
    constraints: BasicConstraints,
    not_before: u64,
    not_after: u64,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    set_validity(&mut params, not_before, not_after);
    params.serial_number = Some(random_serial()?.0);
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Bulkhead");
    params.distinguished_name.push(
        DnType::CommonName,
        format!("Bulkhead {role} CA {trust_domain}"),
    );
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use x509_parser::prelude::{FromDer, X509Certificate};

    use super::*;
    use crate::ca::test_support::{cert_of, certs_in};

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn writes_every_file_with_its_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("nested/ca");
        let files = init_ca("example.org", &dir).unwrap();
        assert_eq!(files, CaFiles::in_dir(&dir));

        assert_eq!(mode(&dir), 0o700);
        for key in [&files.root_key, &files.issuer_key, &files.operator_key] {
            assert_eq!(mode(key), 0o600, "{}", key.display());
            let pem = std::fs::read_to_string(key).unwrap();
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8 PEM");
        }
        for cert in [
            &files.root_cert,
            &files.issuer_cert,
            &files.bundle,
            &files.operator_cert,
        ] {
            assert!(!certs_in(cert).is_empty(), "{}", cert.display());
        }
        assert_eq!(certs_in(&files.bundle), certs_in(&files.root_cert));
        let operator_chain = certs_in(&files.operator_cert);
        assert_eq!(operator_chain.len(), 2, "leaf + issuer");
        assert_eq!(operator_chain[1], certs_in(&files.issuer_cert)[0]);
    }

    #[test]
    fn certificates_have_the_designed_shape() {
        let tmp = tempfile::tempdir().unwrap();
        let files = init_ca("example.org", &tmp.path().join("ca")).unwrap();
        let now = unix_secs(SystemTime::now()) as i64;
        let years = |cert: &X509Certificate<'_>| {
            let v = cert.validity();
            (v.not_after.timestamp() - v.not_before.timestamp()) as f64 / (365.0 * DAY as f64)
        };

        let root_der = certs_in(&files.root_cert).remove(0);
        let (_, root) = X509Certificate::from_der(&root_der).unwrap();
        assert!(root.is_ca());
        assert!(root.verify_signature(None).is_ok(), "self-signed");
        assert!((years(&root) - 10.0).abs() < 0.01);
        let uris = bulkhead_proto::identity::uri_sans(&root).unwrap();
        assert_eq!(uris, ["spiffe://example.org"]);

        let issuer_der = certs_in(&files.issuer_cert).remove(0);
        let (_, issuer) = X509Certificate::from_der(&issuer_der).unwrap();
        let bc = issuer.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(0));
        let ku = issuer.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
        assert!(issuer.verify_signature(Some(root.public_key())).is_ok());
        assert!((years(&issuer) - 1.0).abs() < 0.01);
        assert!(issuer.validity().not_before.timestamp() < now);

        let operator_der = certs_in(&files.operator_cert).remove(0);
        let operator = cert_of(&operator_der);
        assert!(!operator.is_ca());
        let eku = operator.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert!(operator.verify_signature(Some(issuer.public_key())).is_ok());
        let id = SpiffeId::from_cert_der(&operator_der, "example.org").unwrap();
        assert_eq!(
            id.to_string(),
            "spiffe://example.org/ns/bulkhead/sa/operator"
        );
    }

    #[test]
    fn refuses_an_existing_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("keep"), "x").unwrap();
        let err = init_ca("example.org", &dir).unwrap_err();
        assert!(
            matches!(err, CaError::DirExists(ref d) if d == &dir),
            "{err}"
        );
        assert!(
            err.to_string().contains(&dir.display().to_string()),
            "{err}"
        );
        assert!(dir.join("keep").exists(), "existing content untouched");

        let again = tmp.path().join("again");
        init_ca("example.org", &again).unwrap();
        assert!(matches!(
            init_ca("example.org", &again),
            Err(CaError::DirExists(_))
        ));
    }

    #[test]
    fn refuses_a_bad_trust_domain_before_touching_disk() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        assert!(matches!(
            init_ca("Not A Domain", &dir),
            Err(CaError::TrustDomain(_))
        ));
        assert!(!dir.exists());
    }
}
