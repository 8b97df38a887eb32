//! Compiles the contract with protox (pure Rust, no system `protoc`) and hands the descriptor
//! set to tonic-prost-build. The encoded descriptor set is also written to OUT_DIR so the
//! service can offer gRPC server reflection.

use prost::Message;

const FILES: &[&str] = &[
    "greenplate/v1/sighting.proto",
    "greenplate/v1/admin.proto",
    "greenplate/v1/registry.proto",
    "greenplate/v1/patrol.proto",
    "greenplate/v1/command.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for file in FILES {
        println!("cargo:rerun-if-changed={file}");
    }
    let fds = protox::compile(FILES, ["."])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("greenplate_descriptor.bin"),
        fds.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
