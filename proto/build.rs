//! Compiles `proto/bulkhead.proto` with protox (a Rust protobuf compiler), so
//! this crate needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/bulkhead.proto");
    let fds = protox::compile(["bulkhead.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
