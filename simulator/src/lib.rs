//! The greenplate simulator, a load generator that is an outside client exactly like a real
//! reader, kiosk or patrol unit: it only speaks the public contract (MQTT + gRPC), so what
//! it proves, the contract proves. End-to-end tests use the same clients.
//!
//! Layout:
//! - [`clients`]: gRPC clients carrying a bearer token.
//! - [`reader`]: a roadside reader: its own MQTT connection and credentials, sealed batches.
//! - [`patrol_load`]: alert latency with many concurrent patrol streams.
//! - [`town`]: provisions a small town through Admin and Registry (readers, zones, units,
//!   a kiosk, registered bikes) with valid synthetic owners.

pub mod clients;
pub mod patrol_load;
pub mod reader;
pub mod town;
