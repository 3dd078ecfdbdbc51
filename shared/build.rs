//! Compiles the gRPC contract with `protox`, so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = "../proto";
    let proto_file = "../proto/tapwire/v1/replay.proto";
    println!("cargo:rerun-if-changed={proto_file}");
    let descriptors = protox::compile([proto_file], [proto_root])?;
    tonic_prost_build::configure()
        // Request bytes are shared between targets without copying.
        .bytes(".")
        .compile_fds(descriptors)?;
    Ok(())
}
