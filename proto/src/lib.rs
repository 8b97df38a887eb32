//! The greenplate contract: the protobuf messages and gRPC services every reader, kiosk,
//! patrol unit and the server itself speak, plus the sealing that readers apply to their
//! MQTT payloads. Other programs are written against these names.
//!
//! Layout:
//! - [`v1`]: generated types and tonic clients/servers for package `greenplate.v1`
//!   (`proto/greenplate/v1/*.proto`).
//! - [`seal`]: sealing and opening `SealedSightingBatch` (ChaCha20-Poly1305, HKDF-SHA256).
//! - [`auth`]: the client side of `authorization: Bearer <token>`.
//! - [`topics`]: the MQTT topic names readers publish to.
//! - [`tls`]: the TLS client settings a reader, a client or ingest uses to reach a server
//!   whose CA it is given.
//! - [`openapi`]: the OpenAPI document of the HTTP/JSON API, built from the descriptors.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for gRPC server reflection and
//!   [`openapi`].

pub mod auth;
pub mod openapi;
pub mod seal;
pub mod tls;
pub mod topics;

/// Generated code for protobuf package `greenplate.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("greenplate.v1");
    // serde in the proto3 JSON mapping (pbjson-build), for the HTTP/JSON API.
    include!(concat!(env!("OUT_DIR"), "/greenplate.v1.serde.rs"));
}

/// The encoded `FileDescriptorSet` of the whole contract, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/greenplate_descriptor.bin"));

/// The gRPC metadata key that carries `Bearer <token>`.
pub const AUTHORIZATION: &str = "authorization";
