//! `bulkhead-proxy`: the sidecar binary. See `bulkhead-proxy run --help`.

/// mimalloc instead of glibc's malloc: allocation was ~10 % of the sidecar's
/// CPU under load, and glibc kept the memory of a burst long after it
/// (bench/README.md); mimalloc is faster on small objects and returns
/// freed pages to the system.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    bulkhead_proxy::cli::main(std::env::args_os().collect())
}
