//! Compiles the contract with protox (pure Rust, no system `protoc`) and hands the descriptor
//! set to tonic-prost-build and to pbjson-build (serde in the proto3 JSON mapping). The
//! encoded descriptor set is also written to OUT_DIR for gRPC server reflection and the
//! OpenAPI document.

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
    let encoded = fds.encode_to_vec();
    std::fs::write(out_dir.join("greenplate_descriptor.bin"), &encoded)?;
    // serde impls in the proto3 JSON mapping (lowerCamelCase names, 64-bit integers as
    // strings, enums by name), for the HTTP/JSON API. Every field is written, defaults too,
    // so a response always has the fields its schema requires; unknown fields in a request
    // are skipped, as the binary encoding skips them.
    pbjson_build::Builder::new()
        .register_descriptors(&encoded)?
        .emit_fields()
        .ignore_unknown_fields()
        .build(&[".greenplate"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
