//! TLS between mesh identities, and the one connection every client makes
//! to the control plane.
//!
//! - [`bundle`]: the roots a mesh trusts, and the slot that holds the ones
//!   in force (replaced live when the control plane rotates a root).
//! - [`verify`]: rustls configurations that authenticate peers by SPIFFE ID
//!   (certificate slot, client and server verifiers).
//! - [`channel`]: a tonic channel to the control plane over that TLS.
//!
//! This crate holds the I/O the contract in `bulkhead-proto` leaves out:
//! it dials, handshakes and verifies. The control plane, the sidecar, the
//! CLI and the tests all build their TLS from here, so every peer check is
//! written once.

pub mod bundle;
pub mod channel;
pub mod verify;

pub use bundle::{BundleSlot, TrustBundle, fingerprint, trust_domain_of_roots};
pub use channel::{ClientError, channel, parse_control_url};
pub use verify::{
    ALPN_H2, AnyServer, CertSlot, ExpectedServer, SpiffeClientVerifier, SpiffeServerVerifier,
    TlsError, certs_from_pem, client_config, install_default_provider, key_from_pem, not_after,
    provider, server_config,
};
