//! The sidecar's command line: parse, set up logs and metrics, run.
//! `bulkhead-proxy` calls [`main`]; so does `bulkhead-demo`, which
//! starts real sidecar processes from its own binary.

use std::ffi::OsString;
use std::process::ExitCode;

use bulkhead_process::init_logs;

use crate::config::{Cli, Command, Config};
use crate::run::{self, Exit};

/// Runs the sidecar CLI with `args` (the first is the program name).
pub fn main(args: Vec<OsString>) -> ExitCode {
    let cli: Cli = match bulkhead_process::parse_args("bulkhead-proxy", args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (args, gateway) = match cli.command {
        Command::Run(args) => (args, None),
        Command::Gateway(gw) => {
            let check_only = gw.run.check_config;
            match gw.into_config() {
                Ok((gateway, config)) if !check_only => {
                    return launch(config, Some(gateway));
                }
                Ok((_, config)) => {
                    println!("{:#}", config.to_json());
                    return ExitCode::SUCCESS;
                }
                Err(e) => {
                    eprintln!("bulkhead-proxy gateway: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        Command::InitIptables(init) => {
            return match crate::capture::init_iptables(&init) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bulkhead-proxy init-iptables: {e}");
                    ExitCode::FAILURE
                }
            };
        }
    };
    let check_only = args.check_config;
    let config = match Config::from_args(*args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bulkhead-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    if check_only {
        println!("{:#}", config.to_json());
        return ExitCode::SUCCESS;
    }
    launch(config, gateway)
}

/// Logs, metrics and the runtime, then the sidecar (or the gateway) until
/// it ends.
fn launch(config: Config, gateway: Option<crate::gateway::GatewayConfig>) -> ExitCode {
    init_logs(config.log_format, &config.log_level);
    bulkhead_tls::install_default_provider();
    tracing::debug!(?config, "effective configuration");
    let metrics = match bulkhead_process::install_metrics() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("bulkhead-proxy: {e}");
            return ExitCode::FAILURE;
        }
    };
    // One worker: the whole proxy on the main thread, so a request's hops
    // (app connection → pooled HTTP/2 → peer → app) never wake another
    // thread (bench/README.md: -25 % CPU per request against two workers).
    let runtime = if config.workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.workers)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bulkhead-proxy: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ran = match gateway {
        None => runtime.block_on(run::run(config, metrics)),
        Some(gateway) => runtime.block_on(crate::gateway::run(gateway, config, metrics)),
    };
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(Exit::Usage(e)) => {
            eprintln!("bulkhead-proxy: {e}");
            ExitCode::from(2)
        }
        Err(Exit::Failure(e)) => {
            eprintln!("bulkhead-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}
