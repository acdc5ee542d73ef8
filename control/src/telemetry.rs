//! Logs and metrics set-up, shared by the binaries: text logs for terminals,
//! JSON for machines; a Prometheus recorder for the `metrics` crate.

use std::io::IsTerminal;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global tracing subscriber. `level` is an `EnvFilter`
/// directive such as `info` or `bulkhead_control=debug`; `RUST_LOG`, when
/// set, wins.
pub fn init_logs(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Installs the Prometheus recorder and returns a handle to render it.
pub fn init_metrics() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
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
    Ok(handle)
}
