//! `grpc.health.v1.Health` on the gRPC port: the overall status (service `""`) and one per
//! service (`greenplate.v1.Admin`, `greenplate.v1.Registry`, `greenplate.v1.Patrol`).
//!
//! SERVING while the node takes work and its database answers (the same test as `/readyz`,
//! every [`CHECK_EVERY`]); NOT_SERVING while the database does not answer within a second,
//! and for good once the node drains. On drain the statuses are then cleared, which ends open
//! `Watch` streams, so they do not hold the drain up.

use std::time::Duration;

use greenplate_registry::Db;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// The services whose status is reported besides the overall one.
pub const SERVICES: [&str; 4] = [
    "greenplate.v1.Admin",
    "greenplate.v1.Registry",
    "greenplate.v1.Patrol",
    "greenplate.v1.Command",
];

/// How often the database is pinged for the statuses.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Keeps the statuses true until `shutdown`, then reports NOT_SERVING and clears them.
pub async fn run(mut reporter: HealthReporter, db: Db, shutdown: CancellationToken) {
    let mut last = None;
    loop {
        let ping = tokio::time::timeout(Duration::from_secs(1), db.ping());
        let status = tokio::select! {
            up = ping => match up {
                Ok(true) => ServingStatus::Serving,
                _ => ServingStatus::NotServing,
            },
            _ = shutdown.cancelled() => break,
        };
        if last != Some(status) {
            if status == ServingStatus::NotServing {
                tracing::warn!("The database does not answer: gRPC health is NOT_SERVING.");
            }
            set_all(&reporter, status).await;
            last = Some(status);
        }
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    set_all(&reporter, ServingStatus::NotServing).await;
    for name in [""].into_iter().chain(SERVICES) {
        reporter.clear_service_status(name).await;
    }
}

async fn set_all(reporter: &HealthReporter, status: ServingStatus) {
    for name in [""].into_iter().chain(SERVICES) {
        reporter.set_service_status(name, status).await;
    }
}
