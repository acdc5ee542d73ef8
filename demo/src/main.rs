//! `bulkhead-demo`: the mesh at work on loopback, in one command, no etcd
//! needed (`cargo run --release -p bulkhead-demo`).
//!
//! It links both halves of the mesh: the control plane runs in this
//! process on its embedded store, and every sidecar is a real
//! `bulkhead-proxy` process — this binary re-executed as
//! `bulkhead-demo sidecar ...`, which is exactly `bulkhead-proxy ...` — so
//! the one `cargo run` builds everything the demo needs, while the control
//! plane's own crate never depends on the data plane's.
//!
//! `--dashboard` serves the web dashboard (`bulkhead_control::dashboard`,
//! the same server as `bulkheadctl dashboard`, which cannot run the demo
//! since it never links the proxy) on the demo's mesh, as its operator.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

mod rollouts;
mod shop;

/// Why the demo stopped early, for the user: one line.
#[derive(Debug)]
pub(crate) struct DemoError(String);

impl DemoError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

pub(crate) type DemoResult = Result<(), DemoError>;

#[derive(Debug, Parser)]
#[command(
    name = "bulkhead-demo",
    version,
    about = "Run the Bulkhead mesh demo on loopback (embedded store, real sidecars)",
    after_help = "Examples:\n  bulkhead-demo --duration 60s\n  bulkhead-demo --dashboard        # then open http://127.0.0.1:50750/"
)]
struct Cli {
    /// How long to run in all.
    #[arg(long, value_parser = bulkhead_process::parse_duration, default_value = "15s")]
    duration: Duration,
    /// Also serve the web dashboard on 127.0.0.1:PORT (0: any free port;
    /// the URL is printed) and keep the shop running until Ctrl-C.
    #[arg(long, value_name = "PORT", num_args = 0..=1, default_missing_value = "50750")]
    dashboard: Option<u16>,
}

fn main() -> ExitCode {
    // `bulkhead-demo sidecar ARGS` is `bulkhead-proxy ARGS`: the demo starts
    // its sidecars this way. Handled before anything sets up logging.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "sidecar") {
        let mut proxy_args = vec![std::ffi::OsString::from("bulkhead-proxy")];
        proxy_args.extend(args.into_iter().skip(2));
        return bulkhead_proxy::cli::main(proxy_args);
    }
    let cli: Cli = match bulkhead_process::parse_args("bulkhead-demo", args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    bulkhead_tls::install_default_provider();
    // The embedded control plane's refusals are the point of the show:
    // keep its logs to errors so they do not drown the narration.
    bulkhead_process::init_logs(bulkhead_process::LogFormat::Text, "error");
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bulkhead-demo: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(shop::run(cli.duration, cli.dashboard)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(DemoError(message)) => {
            eprintln!("bulkhead-demo: {message}");
            ExitCode::FAILURE
        }
    }
}
