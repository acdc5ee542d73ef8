//! The trust bundle in force: seeded from `--trust-bundle` (or from the
//! last one the control plane pushed, kept in `--state-dir`), then replaced
//! by each one pushed — no restart. New handshakes, both directions and to
//! the control plane, use it at once; open connections it no longer trusts
//! end within a bounded time: the pool stops using them at once, and
//! inbound sends HTTP/2 GOAWAY after [`UNTRUSTED_GOAWAY_AFTER`] (the caller,
//! pushed the same bundle, has moved by then) and closes at
//! [`UNTRUSTED_CLOSE_AFTER`].

use std::sync::Arc;
use std::time::Duration;

use bulkhead_proto::model::Trust;
use bulkhead_tls::{BundleSlot, TrustBundle};
use rustls_pki_types::CertificateDer;

use crate::state::StateCell;

/// How long after its peer stops being trusted an inbound HTTP/2
/// connection is sent GOAWAY.
pub(crate) const UNTRUSTED_GOAWAY_AFTER: Duration = Duration::from_secs(5);
/// How long after its peer stops being trusted an inbound connection is
/// closed, whatever is still in flight.
pub(crate) const UNTRUSTED_CLOSE_AFTER: Duration = Duration::from_secs(15);

/// The roots of a pushed trust, as certificates.
fn roots(trust: &Trust) -> Vec<CertificateDer<'static>> {
    trust
        .roots_der
        .iter()
        .map(|der| CertificateDer::from(der.clone()))
        .collect()
}

/// Puts `trust`'s roots in force; says so when they changed.
pub(crate) fn apply(bundle: &BundleSlot, trust: &Trust) -> bool {
    match bundle.replace_roots(roots(trust)) {
        Ok(changed) => {
            if changed {
                let fingerprints: Vec<String> = trust
                    .roots_der
                    .iter()
                    .map(|r| bulkhead_tls::fingerprint(r))
                    .collect();
                metrics::counter!("bulkhead_trust_bundle_updates_total").increment(1);
                tracing::info!(roots = ?fingerprints, "trust bundle replaced: new handshakes use it now");
            }
            changed
        }
        Err(error) => {
            tracing::warn!(%error, "ignoring a pushed trust bundle that does not load; the current one stays");
            false
        }
    }
}

/// Follows the pushed trust for as long as the sidecar runs: each new one
/// goes in force, then `replaced` is told (the pool retires connections it
/// no longer trusts).
pub(crate) async fn follow(
    states: StateCell,
    bundle: BundleSlot,
    replaced: impl Fn(&TrustBundle) + Send + 'static,
) {
    let mut changes = states.subscribe();
    let mut seen: Option<Arc<Trust>> = None;
    loop {
        let trust = states.load().trust.clone();
        if let Some(trust) = trust.filter(|t| !seen.as_ref().is_some_and(|s| Arc::ptr_eq(s, t))) {
            if apply(&bundle, &trust) {
                replaced(&bundle.get());
            }
            seen = Some(trust);
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}
