//! `bulkhead-proxy`: the sidecar binary. See `bulkhead-proxy run --help`.

fn main() -> std::process::ExitCode {
    bulkhead_proxy::cli::main(std::env::args_os().collect())
}
