//! Reading and writing the CA's PEM files: private files are created with their
//! final mode (never chmod-ed after the secret is already on disk).

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};

use super::CaError;

pub(super) const DIR_MODE: u32 = 0o700;
pub(super) const KEY_MODE: u32 = 0o600;
pub(super) const CERT_MODE: u32 = 0o644;

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_owned(),
        source,
    }
}

fn bad_file(path: &Path, problem: impl Into<String>) -> CaError {
    CaError::BadFile {
        path: path.to_owned(),
        problem: problem.into(),
    }
}

/// Creates `dir` with mode 0700, its parents as needed; fails if `dir` exists.
pub(super) fn create_private_dir(dir: &Path) -> Result<(), CaError> {
    if dir.symlink_metadata().is_ok() {
        return Err(CaError::DirExists(dir.to_owned()));
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io_error(parent))?;
    }
    // Not recursive: creation itself is the existence check, so a directory that
    // appeared since the check above is still refused.
    DirBuilder::new()
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => CaError::DirExists(dir.to_owned()),
            _ => io_error(dir)(source),
        })
}

/// Writes a new file (never an existing one) created with `mode`.
pub(super) fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), CaError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_error(path))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error(path))
}

/// Replaces `path` whole: `contents` go to a new file beside it (created
/// with `mode`), which is then renamed over it, so that no reader sees half.
pub(super) fn replace(path: &Path, contents: &str, mode: u32) -> Result<(), CaError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    // A leftover of an interrupted replace is ours to drop.
    let _ = std::fs::remove_file(&tmp);
    write_new(&tmp, contents, mode)?;
    std::fs::rename(&tmp, path).map_err(io_error(path))
}

fn read(path: &Path) -> Result<Vec<u8>, CaError> {
    std::fs::read(path).map_err(io_error(path))
}

/// Every certificate of a PEM file, in order; at least one.
pub(super) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_file(path, format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad_file(path, "no CERTIFICATE in PEM file"));
    }
    Ok(certs)
}

/// The PKCS#8 private key of a PEM file.
pub(super) fn read_pkcs8_key(path: &Path) -> Result<PrivatePkcs8KeyDer<'static>, CaError> {
    let pem = read(path)?;
    PrivatePkcs8KeyDer::from_pem_slice(&pem).map_err(|e| {
        bad_file(
            path,
            format!("no PKCS#8 PRIVATE KEY in PEM file ({e}); convert with `openssl pkcs8 -topk8 -nocrypt`"),
        )
    })
}

/// PEM text of certificates, one block each.
pub(super) fn certs_pem<'a>(certs: impl IntoIterator<Item = &'a CertificateDer<'a>>) -> String {
    certs
        .into_iter()
        .map(|cert| pem_block("CERTIFICATE", cert))
        .collect()
}

/// PEM text of one DER object (`label`: CERTIFICATE, PRIVATE KEY, ...).
pub fn pem_block(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    // Base64 output is ASCII, so splitting at any byte offset is a char boundary.
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
