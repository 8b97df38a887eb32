//! greenplate: the service that composes every part. Ingest is the front door that roadside
//! readers hit all day: an MQTT broker takes their sealed sighting batches, ingest opens and
//! checks them, looks every tag up in the registry's in-memory hot index, and hands
//! sightings of stolen bikes to the alerting engine. See `ARCHITECTURE.md`.
//!
//! The crates under `ingest/`, composed here (linkerd2-proxy's `linkerd/app/*`):
//! - `greenplate-ingest-pipeline` (`ingest/pipeline/`, re-exported as [`pipeline`], with its
//!   [`broker`] and [`metrics`]): the brokers and the stages admit -> open -> decode ->
//!   smooth -> alerting, statuses, the history writer. Benches and fuzz targets need it
//!   alone.
//! - `greenplate-ingest-web` (`ingest/web/`, re-exported as [`web`]): the kiosk and
//!   command-center pages.
//!
//! Layout of this crate:
//! - [`config`]: the service configuration (TOML; `greenplate generate-config`), layered.
//! - [`http`]: `/healthz`, `/readyz`, `/metrics`, and the web pages' routes.
//! - [`api`]: the HTTP/JSON API (Connect's unary JSON form of the Registry and Patrol read
//!   calls) and its OpenAPI document at `/openapi.json`.
//! - [`health`]: `grpc.health.v1.Health` on the gRPC port (per service; NOT_SERVING while
//!   draining or while the database does not answer).
//! - [`logging`]: text or JSON logs, and rumqttd's ordinary disconnects taken off ERROR.
//! - [`app`]: [`Service`], which starts all of it and stops it on one path.
//! - [`data_dir`]: the generated secrets in the data directory (admin token, at-rest key).
//! - [`patrol_client`]: `greenplate patrol`, the officers' command-line client.
//! - [`zones_import`]: `greenplate zones import`, zones from GeoJSON through Admin.
//! - [`rotate_key`]: `greenplate registry rotate-key`, a new at-rest key.
//!
//! The `greenplate` binary (`src/bin/greenplate/`) parses flags and hands each subcommand to
//! its module; `serve` calls [`Service`].

pub mod api;
pub mod app;
pub mod config;
pub mod data_dir;
pub mod health;
pub mod http;
pub mod logging;
pub mod patrol_client;
pub mod rotate_key;
pub mod tls;
pub mod zones_import;

pub use greenplate_ingest_pipeline as pipeline;
pub use greenplate_ingest_pipeline::{broker, metrics};
pub use greenplate_ingest_web as web;

pub use app::{Service, StartError};
pub use config::Config;
