//! What `bulkheadctl ca rotate` keeps in a CA folder (the one `ca init`
//! made, which is also the CLI's credentials folder):
//!
//! | file | written by | what |
//! |---|---|---|
//! | `next-root.crt`, `next-root.key` | `prepare --generate` | the new root (the key only when made here: keep it offline) |
//! | `next-root.crt` | `prepare --root-cert F --root-key F` | a copy of the given root (its key stays where it is) |
//! | `next-issuer.crt`, `next-issuer.key` | `prepare` | the new issuer, signed by the new root: give it to every control-plane replica |
//! | `bundle.crt` | `prepare`, `retire` | the bundle in force: both roots, then the new one |
//! | `operator.crt`, `operator.key` | `prepare` | an operator certificate of the new issuer, so the CLI works through every stage |
//! | `issuer.*`, `root.*` | `retire` | the next ones take their place; the old ones move to `retired/<fingerprint>/` |
//!
//! Files are replaced whole (written beside, then renamed) so that a
//! control plane reading the same folder never sees half of one; a pair
//! torn between two renames is refused by its keyring until whole again.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bulkhead_proto::SpiffeId;
use rcgen::{Issuer, KeyPair};
use rustls_pki_types::CertificateDer;

use super::files::{self, CERT_MODE, KEY_MODE};
use super::init::{
    OPERATOR_NAMESPACE, OPERATOR_SERVICE_ACCOUNT, make_issuer, make_operator, make_root,
};
use super::{Ca, CaError};

pub const NEXT_ROOT_CERT: &str = "next-root.crt";
pub const NEXT_ROOT_KEY: &str = "next-root.key";
pub const NEXT_ISSUER_CERT: &str = "next-issuer.crt";
pub const NEXT_ISSUER_KEY: &str = "next-issuer.key";

/// The new root and issuer of a rotation, as certificates.
#[derive(Debug)]
pub struct NextCa {
    pub root: CertificateDer<'static>,
    pub issuer: CertificateDer<'static>,
    /// Made now (false: left by an earlier, interrupted `prepare`).
    pub made: bool,
}

/// Where the given root of `prepare --root-cert/--root-key` is.
#[derive(Clone, Copy, Debug)]
pub struct GivenRoot<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
}

fn bad(path: &Path, problem: impl Into<String>) -> CaError {
    CaError::BadFile {
        path: path.to_owned(),
        problem: problem.into(),
    }
}

fn label(now: SystemTime) -> String {
    // Roots of one trust domain differ in their CN by when they were made.
    let date = humantime::format_rfc3339_seconds(now).to_string();
    date.get(..10).unwrap_or(&date).to_owned()
}

/// The next root and issuer in `dir`: the ones an interrupted `prepare`
/// left there, else new ones — made here (`given` None) or from a given
/// root and its key. The issuer is checked to load as the control plane
/// will load it.
pub fn next_ca(
    dir: &Path,
    trust_domain: &str,
    given: Option<GivenRoot<'_>>,
) -> Result<NextCa, CaError> {
    let (root_path, issuer_cert, issuer_key) = (
        dir.join(NEXT_ROOT_CERT),
        dir.join(NEXT_ISSUER_CERT),
        dir.join(NEXT_ISSUER_KEY),
    );
    if root_path.exists() && issuer_cert.exists() && issuer_key.exists() {
        let root = files::read_certs(&root_path)?.remove(0);
        if let Some(given) = given {
            let wanted = files::read_certs(given.cert)?.remove(0);
            if wanted != root {
                return Err(bad(
                    &root_path,
                    format!(
                        "an earlier prepare left another root here; remove {}, {} and {} to start over with {}",
                        NEXT_ROOT_CERT,
                        NEXT_ISSUER_CERT,
                        NEXT_ISSUER_KEY,
                        given.cert.display()
                    ),
                ));
            }
        }
        let ca = Ca::load_issuer(&issuer_cert, &issuer_key, trust_domain)?;
        return Ok(NextCa {
            root,
            issuer: ca.issuer_chain_der()[0].clone(),
            made: false,
        });
    }
    for leftover in [&root_path, &issuer_cert, &issuer_key] {
        if leftover.exists() {
            return Err(bad(
                leftover,
                "left by an interrupted prepare without the rest; remove it and run prepare again",
            ));
        }
    }
    let now = SystemTime::now();
    let when = label(now);
    let (root_der, issuer) = match given {
        None => {
            let root = make_root(trust_domain, &format!("root {when}"), now)?;
            files::write_new(
                &dir.join(NEXT_ROOT_KEY),
                &root.key.serialize_pem(),
                KEY_MODE,
            )?;
            files::write_new(&root_path, &root.cert.pem(), CERT_MODE)?;
            let issuer = make_issuer(
                trust_domain,
                &format!("issuer {when}"),
                &root.issuer,
                root.not_after,
                now,
            )?;
            (root.cert.der().clone(), issuer)
        }
        Some(given) => {
            let pem = std::fs::read_to_string(given.cert).map_err(|source| CaError::Io {
                path: given.cert.to_owned(),
                source,
            })?;
            let key_pem = std::fs::read_to_string(given.key).map_err(|source| CaError::Io {
                path: given.key.to_owned(),
                source,
            })?;
            let key = KeyPair::from_pem(&key_pem)
                .map_err(|e| bad(given.key, format!("not a usable private key: {e}")))?;
            let root_der = files::read_certs(given.cert)?.remove(0);
            let not_after = bulkhead_tls::not_after(&root_der)
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs())
                .ok_or_else(|| bad(given.cert, "the root does not parse"))?;
            let signer = Issuer::from_ca_cert_pem(&pem, key).map_err(|e| {
                bad(
                    given.cert,
                    format!("cannot sign with this root and key: {e}"),
                )
            })?;
            files::write_new(&root_path, &files::certs_pem([&root_der]), CERT_MODE)?;
            let issuer = make_issuer(
                trust_domain,
                &format!("issuer {when}"),
                &signer,
                not_after,
                now,
            )?;
            (root_der, issuer)
        }
    };
    let (issuer_cert_made, issuer_key_made) = issuer;
    files::write_new(&issuer_key, &issuer_key_made.serialize_pem(), KEY_MODE)?;
    files::write_new(&issuer_cert, &issuer_cert_made.pem(), CERT_MODE)?;
    // Checked as the control plane will load it.
    Ca::load_issuer(&issuer_cert, &issuer_key, trust_domain)?;
    Ok(NextCa {
        root: root_der,
        issuer: issuer_cert_made.der().clone(),
        made: true,
    })
}

/// Replaces `bundle.crt` in `dir` with `roots`.
pub fn write_bundle(dir: &Path, roots: &[CertificateDer<'_>]) -> Result<(), CaError> {
    files::replace(&dir.join("bundle.crt"), &files::certs_pem(roots), CERT_MODE)
}

/// Replaces `operator.crt`/`operator.key` in `dir` with a certificate of
/// the issuer in `next-issuer.crt`/`.key` (key first: a reader of the pair
/// between the two renames holds a key its certificate does not match, and
/// is refused rather than let in as someone else).
pub fn write_operator(dir: &Path, trust_domain: &str) -> Result<(), CaError> {
    let ca = Ca::load_issuer(
        &dir.join(NEXT_ISSUER_CERT),
        &dir.join(NEXT_ISSUER_KEY),
        trust_domain,
    )?;
    let operator = SpiffeId::new(trust_domain, OPERATOR_NAMESPACE, OPERATOR_SERVICE_ACCOUNT)
        .map_err(CaError::TrustDomain)?;
    let (chain, key) = make_operator(&ca, &operator, SystemTime::now())?;
    files::replace(&dir.join("operator.key"), &key, KEY_MODE)?;
    files::replace(&dir.join("operator.crt"), &chain, CERT_MODE)
}

/// After `retire`: the next root and issuer become `root.*` and `issuer.*`;
/// the old ones move to `retired/<old root fingerprint>/`. Returns that
/// folder. Run again after an interruption, it finishes the move.
pub fn promote_next(dir: &Path) -> Result<PathBuf, CaError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| CaError::Io { path, source }
    };
    let old_root = dir.join("root.crt");
    let retired = match files::read_certs(&old_root) {
        Ok(certs) => dir
            .join("retired")
            .join(&bulkhead_tls::fingerprint(&certs[0])[..16]),
        Err(_) => dir.join("retired").join("unknown"),
    };
    std::fs::create_dir_all(&retired).map_err(io(&retired))?;
    // Copied over the current files first, removed after, the issuer before
    // the root (key, then certificate): a control plane reading this folder
    // holds the active issuer in one of its pairs at every moment.
    let pairs = [
        (NEXT_ISSUER_KEY, "issuer.key", KEY_MODE),
        (NEXT_ISSUER_CERT, "issuer.crt", CERT_MODE),
        (NEXT_ROOT_KEY, "root.key", KEY_MODE),
        (NEXT_ROOT_CERT, "root.crt", CERT_MODE),
    ];
    for (next, current, mode) in pairs {
        let (next, current) = (dir.join(next), dir.join(current));
        if !next.exists() {
            continue;
        }
        if current.exists() {
            let keep = retired.join(current.file_name().unwrap_or_default());
            std::fs::copy(&current, &keep).map_err(io(&keep))?;
        }
        let contents = std::fs::read_to_string(&next).map_err(io(&next))?;
        files::replace(&current, &contents, mode)?;
    }
    for (next, ..) in pairs {
        let next = dir.join(next);
        if next.exists() {
            std::fs::remove_file(&next).map_err(io(&next))?;
        }
    }
    Ok(retired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::init_ca;
    use crate::ca::test_support::certs_in;

    #[test]
    fn prepare_makes_the_next_ca_once_and_retire_promotes_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        init_ca("example.org", &dir).unwrap();
        let old_issuer = certs_in(&dir.join("issuer.crt"));

        let made = next_ca(&dir, "example.org", None).unwrap();
        assert!(made.made);
        assert_eq!(certs_in(&dir.join(NEXT_ROOT_CERT))[0], made.root);
        assert!(dir.join(NEXT_ROOT_KEY).exists());
        // Run again (an interrupted prepare): the same material.
        let again = next_ca(&dir, "example.org", None).unwrap();
        assert!(!again.made);
        assert_eq!(
            (again.root, again.issuer.clone()),
            (made.root.clone(), made.issuer.clone())
        );

        write_operator(&dir, "example.org").unwrap();
        assert_eq!(certs_in(&dir.join("operator.crt"))[1], made.issuer);
        write_bundle(
            &dir,
            &[certs_in(&dir.join("root.crt")).remove(0), made.root.clone()],
        )
        .unwrap();
        assert_eq!(certs_in(&dir.join("bundle.crt")).len(), 2);

        let retired = promote_next(&dir).unwrap();
        assert_eq!(certs_in(&dir.join("issuer.crt"))[0], made.issuer);
        assert_eq!(certs_in(&dir.join("root.crt"))[0], made.root);
        assert_eq!(certs_in(&retired.join("issuer.crt")), old_issuer);
        for next in [
            NEXT_ROOT_CERT,
            NEXT_ROOT_KEY,
            NEXT_ISSUER_CERT,
            NEXT_ISSUER_KEY,
        ] {
            assert!(!dir.join(next).exists(), "{next} moved");
        }
        // What is left loads as the control plane loads it.
        Ca::load_issuer(
            &dir.join("issuer.crt"),
            &dir.join("issuer.key"),
            "example.org",
        )
        .unwrap();
    }

    #[test]
    fn a_given_root_signs_the_next_issuer_and_its_key_stays_where_it_is() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        init_ca("example.org", &dir).unwrap();
        let offline = init_ca("example.org", &tmp.path().join("offline")).unwrap();
        let given = GivenRoot {
            cert: &offline.root_cert,
            key: &offline.root_key,
        };
        let made = next_ca(&dir, "example.org", Some(given)).unwrap();
        assert_eq!(made.root, certs_in(&offline.root_cert)[0]);
        assert!(
            !dir.join(NEXT_ROOT_KEY).exists(),
            "the root key is not copied"
        );
        let (_, issuer) = x509_parser::parse_x509_certificate(&made.issuer).unwrap();
        let (_, root) = x509_parser::parse_x509_certificate(&made.root).unwrap();
        issuer.verify_signature(Some(root.public_key())).unwrap();

        // Another root given while the first one's files are there: refused.
        let other = init_ca("example.org", &tmp.path().join("other")).unwrap();
        let err = next_ca(
            &dir,
            "example.org",
            Some(GivenRoot {
                cert: &other.root_cert,
                key: &other.root_key,
            }),
        )
        .unwrap_err();
        assert!(err.to_string().contains("start over"), "{err}");
    }
}
