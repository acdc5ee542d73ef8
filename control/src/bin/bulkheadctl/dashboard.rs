//! `bulkheadctl dashboard`: the web dashboard on loopback, talking to the
//! control plane with this operator's credentials (see
//! `bulkhead_control::dashboard`).

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};

use bulkhead_control::dashboard::Dashboard;

use crate::settings::Settings;
use crate::{CliError, CliResult};

pub(crate) const EXAMPLES: &str = "\
Examples:
  bulkheadctl dashboard
  bulkheadctl dashboard --port 0 --no-open     # any free port; the URL is printed";

pub(crate) async fn run(settings: &Settings, address: IpAddr, port: u16, open: bool) -> CliResult {
    if !address.is_loopback() {
        return Err(CliError::usage(format!(
            "--address {address}: the dashboard listens on loopback only (127.0.0.1 or ::1); \
             reach it from elsewhere through an SSH tunnel"
        )));
    }
    let admin = crate::ops::client(settings)?;
    let trust_domain = crate::certs::trust_domain_for(settings, None)?;
    let dashboard = Dashboard::bind(SocketAddr::new(address, port), admin)
        .await
        .map_err(|e| CliError::failure(e.to_string()))?
        .trust_domain(&trust_domain);
    let url = dashboard.url();
    // Scripts read this line (and may close the pipe after it): never
    // let a closed stdout end the server.
    {
        use std::io::Write;
        let mut out = std::io::stdout();
        let _ = writeln!(out, "Dashboard: {url}").and_then(|()| out.flush());
    }
    eprintln!(
        "bulkheadctl: dashboard talking to {} as the operator; Ctrl-C stops it",
        settings.control
    );
    if open {
        open_browser(&url);
    }
    dashboard
        .serve(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    Ok(())
}

/// Opens the page with `xdg-open` when there is a display; never fails.
fn open_browser(url: &str) {
    let display = ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()));
    if !display {
        return;
    }
    let _ = Command::new("xdg-open")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}
