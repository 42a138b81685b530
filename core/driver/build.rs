//! Generates the gRPC code for `proto/keel.proto` with a vendored `protoc`, so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY-free: build scripts are single-threaded, so setting the variable here races with nothing.
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure().compile_protos(&["proto/keel.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/keel.proto");
    Ok(())
}
