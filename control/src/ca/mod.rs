//! The mesh's certificate authority: making a root and issuer (`init`), loading the
//! issuers a replica holds keys for (`issuer`, [`Keyring`]), the trust record every
//! replica shares through the store ([`TrustRecord`]: roots, the issuer that signs,
//! a root rotation's stage), turning workload CSRs into leaf certificates (`csr`)
//! and the bootstrap tokens workloads attest with ([`token`]).
//!
//! Layout on disk, as written by [`init_ca`] (PEM everywhere, keys PKCS#8, keys 0600,
//! directory 0700):
//!
//! | file           | what                                                          |
//! |----------------|---------------------------------------------------------------|
//! | `root.crt`     | self-signed root, ~10 years, URI SAN `spiffe://<td>`          |
//! | `root.key`     | root key: keep offline once the issuer exists                 |
//! | `issuer.crt`   | intermediate signed by the root, ~1 year, pathlen 0           |
//! | `issuer.key`   | issuer key: the control plane's Secret, also signs tokens     |
//! | `bundle.crt`   | trust bundle: the root(s) every peer trusts                   |
//! | `operator.crt` | CLI client certificate (leaf + issuer), `ns/bulkhead/sa/operator` |
//! | `operator.key` | its key                                                       |
//!
//! A root rotation adds `next-root.*` and `next-issuer.*` beside them
//! ([`rotation_files`]); its stages are [`rotation`].
//!
//! All keys are ECDSA P-256. The issuer key must be P-256 because bootstrap tokens
//! are ECDSA P-256 signatures made with it.

mod csr;
mod error;
mod files;
mod init;
mod issuer;
mod keyring;
mod record;
pub mod rotation;
pub mod rotation_files;
pub mod token;

#[cfg(test)]
pub(crate) mod test_support;

pub use self::csr::{CsrError, Issued, MAX_CSR_LEN};
pub use self::error::CaError;
pub use self::files::pem_block;
pub use self::init::{CaFiles, OPERATOR_NAMESPACE, OPERATOR_SERVICE_ACCOUNT, init_ca};
pub use self::issuer::Ca;
pub use self::keyring::{IssuerFiles, Keyring};
pub use self::record::{Cert, IssuerCert, MAX_ROOTS, RecordError, Rotation, Stage, TrustRecord};
pub use self::token::{MAX_TOKEN_LEN, TokenClaims, TokenError, mint_token};
