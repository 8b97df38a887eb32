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
//!
//! The district simulation, a module per stage:
//! - [`roads`]: a synthetic road network over Chaoyang, readers on intersections.
//! - [`traffic`]: bikes moving along the roads in real time with a daily rhythm.
//! - [`rf`]: what a reader reads of a pass: several reads, missed reads, RSSI.
//! - [`scenarios`]: thefts, armed bikes, a cloned tag, a reader offline, garbage; the oracle
//!   of which alerts the server owes.
//! - [`district`]: provisions the district, drives it, listens as every patrol unit; a
//!   module per stage inside (`spec`, `provision`, `bikes`, `alerts`, `readers`, `drive`,
//!   `metrics`).
//! - [`probe`]: the server's `/metrics` and its process's CPU and memory.
//! - [`report`]: the run's report, JSON and Markdown.
//! - [`server`]: spawns a release `greenplate` on free ports with a fresh data directory.
//! - [`bench`](mod@bench): the end-to-end benchmark: embedded broker, Mosquitto,
//!   Mosquitto alone.
//!
//! The `simulator` binary (`src/bin/simulator/`) parses the flags and hands each subcommand
//! to its module there (`town`, `kiosk_load`, `import_csv`, `patrol_load`, `district`,
//! `bench`, `fuzz_seeds`), which calls into this library.
//!
//! Beside them, [`fuzz_seeds`]: crafted reader messages, the binary seeds of ingest's fuzz
//! targets (`simulator fuzz-seeds`).

pub mod bench;
pub mod clients;
pub mod district;
pub mod fuzz_seeds;
pub mod patrol_load;
pub mod probe;
pub mod reader;
pub mod report;
pub mod rf;
pub mod roads;
pub mod scenarios;
pub mod server;
pub mod town;
pub mod traffic;
