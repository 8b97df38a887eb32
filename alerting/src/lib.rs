//! greenplate alerting: decides which sightings matter and makes sure the right patrol units
//! hear about them, fast, and hear about all of them. See `ARCHITECTURE.md` beside `src/`.
//!
//! Layout:
//! - [`zones`]: GeoJSON patrol zones (parsed, validated) and routing by containment.
//! - [`store`]: [`Alerting`], the shared state: zones and units, the durable alert log,
//!   and the live hub.
//! - [`engine`]: the task that runs the rules on flagged sightings and logs the alerts.
//! - [`clone`]: where each tag was last seen, for the clone (impossible speed) rule.
//! - [`follow`]: on PostgreSQL, feeds the live hub from the shared alert log in seq order
//!   (alerts of every node).
//! - [`history`]: the pass history (where each tag was seen) behind `Patrol.GetTrack`, and
//!   its retention job.
//! - [`service`]: the `greenplate.v1.Patrol` gRPC service (replay, then live).

pub mod clone;
pub mod engine;
mod error;
pub mod follow;
pub mod history;
pub mod service;
pub mod store;
pub mod zones;

pub use clone::{CloneConfig, CloneEvidence, CloneWatch};
pub use engine::{EngineHandle, ReaderOffline, Sighted};
pub use error::AlertingError;
pub use history::{History, Pass};
pub use service::{PatrolService, alert_feed};
pub use store::{Alerting, LoggedAlert, OpenIncident, RoutingConfig};
pub use zones::{Zone, ZoneKind};
