//! greenplate ingest, and the service that composes every part. Ingest is the front door
//! that roadside readers hit all day: an MQTT broker takes their sealed sighting batches,
//! ingest opens and checks them, looks every tag up in the registry's in-memory hot index,
//! and hands sightings of stolen bikes to the alerting engine. See `ARCHITECTURE.md`.
//!
//! Layout:
//! - [`config`]: the service configuration (TOML; `greenplate generate-config`).
//! - [`broker`]: the embedded rumqttd broker and the in-process link ingest reads.
//! - [`pipeline`]: open (unseal, reader, seq) -> decode (tag ids, clocks) -> lookup -> alerting.
//! - [`admin`]: the `greenplate.v1.Admin` gRPC service (readers, zones, units, kiosks).
//! - [`http`]: `/healthz`, `/readyz`, `/metrics`, and the web pages' routes.
//! - [`health`]: `grpc.health.v1.Health` on the gRPC port (per service; NOT_SERVING while
//!   draining or while the database does not answer).
//! - [`logging`]: text or JSON logs, and rumqttd's ordinary disconnects taken off ERROR.
//! - [`web`]: the kiosk and command-center web pages (sessions, forms, live map).
//! - [`metrics`]: counters by reason.
//! - [`app`]: [`Service`], which starts all of it and stops it on one path.
//! - [`data_dir`]: the generated secrets in the data directory (admin token, at-rest key).
//! - [`patrol_client`]: `greenplate patrol`, the officers' command-line client.
//! - [`zones_import`]: `greenplate zones import`, zones from GeoJSON through Admin.
//! - [`rotate_key`]: `greenplate registry rotate-key`, a new at-rest key.
//!
//! The `greenplate` binary (`src/main.rs`) only parses flags and calls [`Service`].

pub mod admin;
pub mod app;
pub mod broker;
pub mod config;
pub mod data_dir;
pub mod health;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod patrol_client;
pub mod pipeline;
pub mod rotate_key;
pub mod web;
pub mod zones_import;

pub use app::{Service, StartError};
pub use config::Config;
