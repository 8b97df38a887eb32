//! greenplate alerting: decides which sightings matter and makes sure the right patrol units
//! hear about them, fast, and hear about all of them. See `ARCHITECTURE.md` beside `src/`.
//!
//! Layout, in the order a flagged sighting goes through it:
//! - [`engine`]: the batch loop. Drains flagged sightings (and readers gone offline) from its
//!   queue, runs the rules, commits, publishes; retries a failed commit.
//! - [`rules`]: which sightings become alerts and which incident each belongs to (stolen,
//!   armed and moving, revoked tag, clone by speed, reader offline); [`rules::clone`] is the
//!   clone rule's memory, consulted by ingest for every read.
//! - [`route`]: who gets an alert (the units of the zones containing the reader, command
//!   centers, the nearest on-duty units), beside [`zones`] (GeoJSON zones, containment).
//! - [`incidents`]: one incident per matter and its lifecycle (open, acknowledge, resolve);
//!   [`hits`]: officers' verdicts on hits (confirm, reject with a reason);
//!   [`escalation`]: an urgent incident nobody acknowledged in time is sent again, raised.
//! - [`log`]: the durable alert log, the commit point (group commit, seq); replay; on
//!   PostgreSQL [`log::follow`] feeds the hub from every node's commits.
//! - [`hub`]: the live fan-out of committed alerts to open streams.
//! - [`service`]: the `greenplate.v1.Patrol` gRPC service (replay, then live).
//!
//! - [`canary`]: canary tags, whose sightings prove the whole path works in production, and
//!   the watch that raises a command-center alert when one is not seen on schedule;
//!   [`canaries`], what the node knows of them.
//!
//! Beside the alert path:
//! - [`command`]: the `greenplate.v1.Command` gRPC service (command centers: watch lists,
//!   list imports, investigations), and the task ending watch entries at their expiry;
//!   [`investigate`]: stakeouts and companion searches over the pass history.
//! - [`admin`]: the `greenplate.v1.Admin` gRPC service (readers and kiosks in the registry;
//!   zones and units here).
//! - [`state`]: [`Alerting`], the shared value the stages above are methods of (it holds
//!   the [`route::Router`], the [`hub::Hub`] and the [`History`]); `schema`: the tables;
//!   [`provision`]: adding zones and units (Admin).
//! - [`claims`]: signed (Ed25519) insurance claim records of thefts unresolved for long.
//! - [`forward`]: alerts forwarded to partner systems (signed webhooks, JSON or CAP 1.2),
//!   at least once from the log, one node per target, dead letters an operator replays.
//! - [`lookback`]: a theft reported late: the pass history since the theft, searched once
//!   per report; its incident lists the passes, and the latest is alerted.
//! - [`history`]: the pass history (where each tag was seen) and its retention job;
//!   [`track`]: `Patrol.GetTrack` over it, and who may see a track.

pub mod admin;
pub mod canaries;
pub mod canary;
pub mod claims;
pub mod command;
pub mod engine;
mod error;
pub mod escalation;
pub mod forward;
pub mod history;
pub mod hits;
pub mod hub;
pub mod incidents;
pub mod investigate;
pub mod log;
pub mod lookback;
pub mod provision;
pub mod route;
pub mod rules;
mod schema;
pub mod service;
pub mod state;
pub mod track;
pub mod zones;

pub use admin::AdminService;
pub use command::CommandService;
pub use engine::EngineHandle;
pub use error::AlertingError;
pub use escalation::EscalationRule;
pub use history::{History, Pass};
pub use hub::LoggedAlert;
pub use incidents::{OpenIncident, WaitingTheft};
pub use provision::UnitRole;
pub use route::RoutingConfig;
pub use rules::clone::{CloneConfig, CloneEvidence, CloneWatch};
pub use rules::{ReaderOffline, Sighted};
pub use service::{PatrolService, alert_feed};
pub use state::Alerting;
pub use zones::{Zone, ZoneKind};

#[cfg(test)]
mod tests;
