//! Logs and metrics set-up, shared by the binaries: text logs for terminals,
//! JSON for machines; a Prometheus recorder for the `metrics` crate.

use metrics_exporter_prometheus::PrometheusHandle;

pub use bulkhead_process::{LogFormat, init_logs};

/// Installs the Prometheus recorder and returns a handle to render it.
pub fn init_metrics() -> Result<PrometheusHandle, String> {
    let handle = bulkhead_process::install_metrics()?;
    metrics::describe_counter!(
        "bulkhead_tls_handshakes_total",
        "TLS handshakes on the gRPC port, by result"
    );
    metrics::describe_counter!(
        "bulkhead_certificates_issued_total",
        "Workload certificates issued, by method (certify|renew)"
    );
    metrics::describe_counter!(
        "bulkhead_certify_refused_total",
        "Certificate requests refused, by reason"
    );
    metrics::describe_counter!(
        "bulkhead_admin_denied_total",
        "Admin API calls refused to non-operators"
    );
    metrics::describe_gauge!(
        "bulkhead_watch_subscribers",
        "Open Watch streams on this replica"
    );
    metrics::describe_gauge!(
        "bulkhead_store_revision",
        "Store revision of this replica's mesh view"
    );
    metrics::describe_gauge!(
        "bulkhead_webhook_cert_expiry_timestamp_seconds",
        "When the webhook's self-made serving certificate expires (unix seconds)"
    );
    metrics::describe_counter!(
        "bulkhead_webhook_ca_bundle_patches_total",
        "Webhook configuration caBundle upkeep, by result (patched|conflict|error)"
    );
    metrics::describe_counter!(
        "bulkhead_untrusted_connections_closed_total",
        "gRPC connections closed because the trust bundle stopped trusting the client certificate"
    );
    Ok(handle)
}
