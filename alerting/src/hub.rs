//! The live fan-out: committed alerts go to every open stream through one broadcast
//! channel. A stream that falls more than [`HUB_CAPACITY`] alerts behind catches up from the
//! alert log ([`crate::log`]) instead, so nothing committed is missed. Only committed alerts
//! enter the hub: on SQLite the engine publishes after its commit, on PostgreSQL the log
//! follower does, for every node's alerts, in seq order.
//!
//! The hub also knows how far it has got ([`Hub::published`]): every seq up to there was
//! published or given up as a hole, so a stream replays the log only up to there and takes
//! the rest live. (Replaying the whole log instead would skip a seq that another node's
//! transaction still holds, and drop it as old when it arrives live.)

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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
    /// The highest seq published, or gone past ([`Hub::advance_to`]).
    published: AtomicU64,
}

impl Hub {
    pub(crate) fn new() -> Self {
        Self {
            tx: broadcast::channel(HUB_CAPACITY).0,
            published: AtomicU64::new(0),
        }
    }

    /// Every seq up to here has been published, or will never be (a hole gone past, or the
    /// log as it was when the publisher started): a stream replays the log up to here and
    /// takes what follows live.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Acquire)
    }

    /// Marks everything up to `seq` as settled without publishing it (the log's end when
    /// the publisher starts).
    pub(crate) fn advance_to(&self, seq: u64) {
        self.published.fetch_max(seq, Ordering::AcqRel);
    }

    /// A receiver of every alert committed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LoggedAlert>> {
        self.tx.subscribe()
    }

    /// Publishes a committed alert to open streams (in seq order).
    pub(crate) fn publish(&self, alert: LoggedAlert) {
        // Marked before it is sent: a stream that subscribes after the send reads a mark
        // that includes it, and replays it from the log.
        self.advance_to(alert.alert.seq);
        // No receiver is fine: the alert is in the log for whoever connects later.
        let _ = self.tx.send(Arc::new(alert));
    }
}
