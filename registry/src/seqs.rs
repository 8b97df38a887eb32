//! Each reader's highest processed batch seq, stored so that a restart does not reopen the
//! replay window: ingest keeps the seq window in memory and writes the highs here in batches
//! (every second and at a clean stop, never per message); at start each reader's window
//! begins above its stored high, so a batch captured off the wire is refused as a replay.

use sqlx::Row;

use crate::db::now_ms;
use crate::error::RegistryError;
use crate::store::Registry;

impl Registry {
    /// Every reader's stored highest seq.
    pub async fn reader_seqs(&self) -> Result<Vec<(String, u64)>, RegistryError> {
        let rows = sqlx::query("SELECT reader_id, highest_seq FROM reader_seqs")
            .fetch_all(self.db().pool())
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("reader_id")?,
                    u64::try_from(r.try_get::<i64, _>("highest_seq")?).unwrap_or(0),
                ))
            })
            .collect()
    }

    /// Stores readers' highest seqs in one transaction; a stored high is never lowered (on
    /// PostgreSQL several nodes may write the same reader).
    pub async fn store_reader_seqs(&self, seqs: &[(String, u64)]) -> Result<(), RegistryError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let mut tx = self.db().begin_write().await?;
        for (reader, seq) in seqs {
            sqlx::query(
                "INSERT INTO reader_seqs (reader_id, highest_seq, updated_at_ms) \
                 VALUES ($1, $2, $3) ON CONFLICT (reader_id) DO UPDATE SET \
                 highest_seq = CASE WHEN reader_seqs.highest_seq < excluded.highest_seq \
                   THEN excluded.highest_seq ELSE reader_seqs.highest_seq END, \
                 updated_at_ms = excluded.updated_at_ms",
            )
            .bind(reader)
            .bind(i64::try_from(*seq).unwrap_or(i64::MAX))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
