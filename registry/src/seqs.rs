//! Each reader's seq window, stored so that a restart does not reopen the replay window and
//! so that a node taking a reader over from another (NATS JetStream partitions) knows which
//! batches were processed: ingest keeps the window in memory and writes it here in batches
//! (every second and at a clean stop, never per message). At start, and when a node takes a
//! partition, each reader's window begins from what is stored here.
//!
//! The window itself is ingest's business ([`StoredSeqs::window`] is opaque here); the
//! registry keeps the highest seq in a column of its own, so that a stored window is never
//! replaced by one with a lower highest seq (on PostgreSQL several nodes may write a reader).

use sqlx::Row;

use crate::db::now_ms;
use crate::error::RegistryError;
use crate::store::Registry;

/// One reader's stored seqs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StoredSeqs {
    pub reader_id: String,
    /// The highest batch seq processed.
    pub highest: u64,
    /// Which seqs below it were processed, as ingest encodes its window; None when only the
    /// highest was stored (rows written before windows were).
    pub window: Option<Vec<u8>>,
}

impl Registry {
    /// Every reader's stored seqs.
    pub async fn reader_seqs(&self) -> Result<Vec<StoredSeqs>, RegistryError> {
        let rows = sqlx::query("SELECT reader_id, highest_seq, window_bits FROM reader_seqs")
            .fetch_all(self.db().pool())
            .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredSeqs {
                    reader_id: r.try_get("reader_id")?,
                    highest: u64::try_from(r.try_get::<i64, _>("highest_seq")?).unwrap_or(0),
                    window: r.try_get("window_bits")?,
                })
            })
            .collect()
    }

    /// Stores readers' seqs in one transaction. A stored row is replaced only by one whose
    /// highest seq is not lower (on PostgreSQL several nodes may write the same reader).
    pub async fn store_reader_seqs(&self, seqs: &[StoredSeqs]) -> Result<(), RegistryError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let mut tx = self.db().begin_write().await?;
        for s in seqs {
            sqlx::query(
                "INSERT INTO reader_seqs (reader_id, highest_seq, window_bits, updated_at_ms) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (reader_id) DO UPDATE SET \
                 highest_seq = excluded.highest_seq, window_bits = excluded.window_bits, \
                 updated_at_ms = excluded.updated_at_ms \
                 WHERE reader_seqs.highest_seq <= excluded.highest_seq",
            )
            .bind(&s.reader_id)
            .bind(i64::try_from(s.highest).unwrap_or(i64::MAX))
            .bind(s.window.clone())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
