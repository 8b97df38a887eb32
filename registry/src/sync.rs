//! Keeping several nodes on one PostgreSQL in step.
//!
//! Each node keeps the registry's hot state in memory (hot index, readers, tokens). A change
//! is announced with `pg_notify` inside the transaction that makes it, so PostgreSQL delivers
//! the announcement exactly when (and only if) the change commits; every node listens
//! ([`listen`]) and reloads what the change names from the database (the announcement
//! carries names, never data). A node that loses its listening connection reloads
//! everything once it is back, since announcements sent meanwhile are gone. On SQLite (one
//! node by construction) nothing is announced.
//!
//! Other crates' in-memory state (alerting's zones and units) is announced as
//! [`Change::Zones`]; whoever composes the crates applies it.

use std::sync::Arc;
use std::time::Duration;

use sqlx::Row;
use tokio_util::sync::CancellationToken;

pub use crate::changes::{CHANNEL, Change, announce};
use crate::error::RegistryError;
use crate::readers::{READER_COLUMNS, Reader};
use crate::store::Registry;

impl Registry {
    /// Reloads what `change` names from the database. [`Change::Zones`] is not the
    /// registry's: it is ignored here.
    pub async fn apply(&self, change: &Change) -> Result<(), RegistryError> {
        match change {
            Change::Tag(tag) => self.reload_tag(*tag).await,
            Change::Reader { id, grace_ms } => self.reload_reader(id, *grace_ms).await,
            Change::Tokens => self.auth().reload(self.db()).await,
            Change::Zones => Ok(()),
            Change::All => {
                self.index().load_into(self.db()).await?;
                self.auth().reload(self.db()).await?;
                let ids: Vec<String> = sqlx::query("SELECT reader_id FROM readers")
                    .fetch_all(self.db().pool())
                    .await?
                    .iter()
                    .filter_map(|r| r.try_get("reader_id").ok())
                    .collect();
                for id in ids {
                    self.reload_reader(&id, 0).await?;
                }
                Ok(())
            }
        }
    }

    async fn reload_reader(&self, id: &str, grace_ms: i64) -> Result<(), RegistryError> {
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {READER_COLUMNS} FROM readers WHERE reader_id = $1"
        )))
        .bind(id)
        .fetch_optional(self.db().pool())
        .await?
        else {
            return Ok(());
        };
        let (stored, secret) = Reader::from_row(&row, self.secrets())?;
        match self.readers().get(id) {
            Some(reader) => {
                if !reader.check_secret_current(&secret) {
                    reader.rotate(&secret, grace_ms);
                }
                reader.set_enabled(stored.enabled());
                reader.set_cameras(stored.cameras().as_ref().clone());
            }
            None => self.readers().insert(stored),
        }
        Ok(())
    }
}

/// Listens for announcements on PostgreSQL at `url` until `shutdown`, applying each to the
/// registry, and handing [`Change::Zones`] (and every change, after a reconnect) to
/// `others`. Returns at once on another backend.
pub async fn listen<F, Fut>(
    registry: Arc<Registry>,
    url: String,
    shutdown: CancellationToken,
    others: F,
) where
    F: Fn(Change) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    if !(url.starts_with("postgres:") || url.starts_with("postgresql:")) {
        return;
    }
    let mut backoff = Duration::from_millis(100);
    'connect: loop {
        let listener = async {
            let mut l = sqlx::postgres::PgListener::connect(&url).await?;
            l.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        };
        let mut listener = tokio::select! {
            l = listener => match l {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "Cannot listen for other nodes' changes; retrying.");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue 'connect;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        backoff = Duration::from_millis(100);
        // Whatever was announced before this connection listened is unknown: reload all.
        if let Err(e) = registry.apply(&Change::All).await {
            tracing::error!(error = %e, "Reloading after (re)connecting failed.");
        }
        others(Change::All).await;
        loop {
            let next = tokio::select! {
                n = listener.try_recv() => n,
                _ = shutdown.cancelled() => return,
            };
            match next {
                Ok(Some(n)) => match Change::decode(n.payload()) {
                    Some(change) => {
                        if let Err(e) = registry.apply(&change).await {
                            tracing::error!(error = %e, ?change, "Applying another node's change failed.");
                        }
                        if matches!(change, Change::Zones) {
                            others(change).await;
                        }
                    }
                    None => tracing::warn!(payload = n.payload(), "Unknown change announcement."),
                },
                // The connection dropped; the next try_recv reconnects, and what was
                // announced meanwhile is lost: reload all then.
                Ok(None) => continue 'connect,
                Err(e) => {
                    tracing::error!(error = %e, "Listening for changes failed; reconnecting.");
                    continue 'connect;
                }
            }
        }
    }
}
