//! The live fan-out: committed alerts go to every open stream through one broadcast
//! channel. A stream that falls more than [`HUB_CAPACITY`] alerts behind catches up from the
//! alert log ([`crate::log`]) instead, so nothing committed is missed. Only committed alerts
//! enter the hub: on SQLite the engine publishes after its commit, on PostgreSQL the log
//! follower does, for every node's alerts, in seq order.

use std::sync::Arc;

use tokio::sync::broadcast;

use greenplate_proto::v1::Alert;

/// An alert as committed to the log, with the units entitled to it: what the hub carries.
#[derive(Debug, Clone)]
pub struct LoggedAlert {
    pub alert: Alert,
    pub recipients: Vec<String>,
}

/// Alerts kept in the live hub for streams that fall behind; a stream that lags further
/// catches up from the alert log instead.
pub const HUB_CAPACITY: usize = 1024;

/// The broadcast of committed alerts.
#[derive(Debug)]
pub struct Hub {
    tx: broadcast::Sender<Arc<LoggedAlert>>,
}

impl Hub {
    pub(crate) fn new() -> Self {
        Self {
            tx: broadcast::channel(HUB_CAPACITY).0,
        }
    }

    /// A receiver of every alert committed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LoggedAlert>> {
        self.tx.subscribe()
    }

    /// Publishes a committed alert to open streams (in seq order).
    pub(crate) fn publish(&self, alert: LoggedAlert) {
        // No receiver is fine: the alert is in the log for whoever connects later.
        let _ = self.tx.send(Arc::new(alert));
    }
}
