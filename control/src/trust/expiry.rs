//! Expiry of what the trust rests on: the roots of the bundle and the
//! issuer that signs. Exported as gauges rendered from the trust in force
//! at each scrape (so that a retired root's series goes with it), and
//! warned about in the log from [`WARN_AHEAD`] before.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Trust;
use crate::ca::{Cert, TrustRecord};

/// How long before an expiry the log warns.
pub const WARN_AHEAD: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often the warning is repeated while it holds.
const CHECK_EVERY: Duration = Duration::from_secs(6 * 3600);

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The Prometheus text of `bulkhead_trust_root_expiry_timestamp_seconds`
/// (one series per root, by fingerprint) and
/// `bulkhead_issuer_expiry_timestamp_seconds` (the active issuer).
pub fn render(record: &TrustRecord) -> String {
    let mut out = String::new();
    out.push_str("# HELP bulkhead_trust_root_expiry_timestamp_seconds When each root of the trust bundle expires (unix seconds)\n");
    out.push_str("# TYPE bulkhead_trust_root_expiry_timestamp_seconds gauge\n");
    for root in record.roots() {
        let _ = writeln!(
            out,
            "bulkhead_trust_root_expiry_timestamp_seconds{{fingerprint=\"{}\"}} {}",
            root.fingerprint,
            unix(root.not_after)
        );
    }
    out.push_str("# HELP bulkhead_issuer_expiry_timestamp_seconds When the issuer the control plane signs with expires (unix seconds)\n");
    out.push_str("# TYPE bulkhead_issuer_expiry_timestamp_seconds gauge\n");
    let _ = writeln!(
        out,
        "bulkhead_issuer_expiry_timestamp_seconds {}",
        unix(record.issuer().cert.not_after)
    );
    out
}

/// What expires within `ahead` of `now`: (what, certificate).
pub fn expiring(
    record: &TrustRecord,
    now: SystemTime,
    ahead: Duration,
) -> Vec<(&'static str, &Cert)> {
    let soon = |cert: &Cert| cert.not_after <= now + ahead;
    let mut found: Vec<(&'static str, &Cert)> = record
        .roots()
        .iter()
        .filter(|r| soon(r))
        .map(|r| ("root", r))
        .collect();
    if soon(&record.issuer().cert) {
        found.push(("issuer", &record.issuer().cert));
    }
    found
}

/// Warns now, every few hours, and at each new trust record, about every
/// root or issuer that expires within [`WARN_AHEAD`].
pub(crate) async fn warn_forever(trust: Arc<Trust>) {
    let mut records = trust.subscribe();
    loop {
        let record = trust.record();
        let now = SystemTime::now();
        for (what, cert) in expiring(&record, now, WARN_AHEAD) {
            let days = cert
                .not_after
                .duration_since(now)
                .map_or(0, |d| d.as_secs() / 86_400);
            tracing::warn!(
                what,
                fingerprint = %cert.fingerprint,
                subject = %cert.subject,
                not_after = %humantime::format_rfc3339_seconds(cert.not_after),
                days_left = days,
                "the mesh's {what} expires within 30 days: rotate it with `bulkheadctl ca rotate prepare`, `activate`, `retire`"
            );
        }
        tokio::select! {
            () = tokio::time::sleep(CHECK_EVERY) => {}
            changed = records.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::init_ca;

    #[test]
    fn gauges_name_each_root_and_warnings_start_thirty_days_ahead() {
        let tmp = tempfile::tempdir().unwrap();
        let files = init_ca("example.org", &tmp.path().join("ca")).unwrap();
        let record = crate::ca::test_support::trust_record(&files);
        let text = render(&record);
        let root = &record.roots()[0];
        assert!(
            text.contains(&format!(
                "bulkhead_trust_root_expiry_timestamp_seconds{{fingerprint=\"{}\"}} {}",
                root.fingerprint,
                unix(root.not_after)
            )),
            "{text}"
        );
        assert!(text.contains(&format!(
            "bulkhead_issuer_expiry_timestamp_seconds {}",
            unix(record.issuer().cert.not_after)
        )));
        assert!(text.contains("# TYPE bulkhead_issuer_expiry_timestamp_seconds gauge"));

        // A one-year issuer under a ten-year root: nothing to say now; the
        // issuer a month before it ends; both near the root's end.
        let now = SystemTime::now();
        assert!(expiring(&record, now, WARN_AHEAD).is_empty());
        let issuer_end = record.issuer().cert.not_after;
        let soon = expiring(
            &record,
            issuer_end - Duration::from_secs(86_400),
            WARN_AHEAD,
        );
        assert_eq!(soon.iter().map(|(w, _)| *w).collect::<Vec<_>>(), ["issuer"]);
        let late = expiring(&record, root.not_after, WARN_AHEAD);
        assert_eq!(late.len(), 2);
    }
}
