//! Why the CA could not be created, loaded or could not sign: every file problem
//! names the file.

use std::path::PathBuf;

use bulkhead_proto::IdentityError;

/// Errors of [`init_ca`](super::init_ca), [`Ca::load`](super::Ca::load) and
/// [`Ca::issue_local`](super::Ca::issue_local).
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{}: already exists; refusing to overwrite a CA (remove it or choose another directory)", .0.display())]
    DirExists(PathBuf),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is there but its content is not what it should be (not PEM, no
    /// certificate, not a PKCS#8 key, not X.509, ...).
    #[error("{}: {problem}", path.display())]
    BadFile { path: PathBuf, problem: String },
    #[error("{}: not a CA certificate ({problem})", path.display())]
    NotCa { path: PathBuf, problem: String },
    #[error("{}: issuer key must be ECDSA P-256 (bootstrap tokens are signed with it)", path.display())]
    UnsupportedKey { path: PathBuf },
    #[error("{}: private key does not belong to certificate {}", key.display(), cert.display())]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    #[error("{}: does not chain to any root of trust bundle {}: {problem}", cert.display(), bundle.display())]
    Untrusted {
        cert: PathBuf,
        bundle: PathBuf,
        problem: String,
    },
    #[error("{}: certificate is not valid now (valid from {not_before} to {not_after})", path.display())]
    NotValid {
        path: PathBuf,
        not_before: String,
        not_after: String,
    },
    #[error("invalid trust domain: {0}")]
    TrustDomain(IdentityError),
    #[error("identity {identity} is outside this CA's trust domain {trust_domain:?}")]
    ForeignTrustDomain {
        identity: String,
        trust_domain: String,
    },
    #[error("issuer certificate has expired (not after {0})")]
    IssuerExpired(String),
    #[error("lifetime must be at least one second")]
    ZeroLifetime,
    #[error("could not build certificate: {0}")]
    Generate(#[from] rcgen::Error),
}
