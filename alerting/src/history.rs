//! Pass history: where each tag was seen, for `Patrol.GetTrack`.
//!
//! Ingest folds a reader's reads of one tag into a pass and hands closed passes here in
//! batches ([`History::append`], one transaction of multi-row INSERTs); the alert path never
//! waits on these writes. [`History::track`] reads one bike's passes over a time window, and
//! [`History::purge`] (run by [`run_retention`]) deletes passes older than the retention in
//! small chunks, so it never holds the write lock for long.

use std::sync::Arc;
use std::time::Duration;

use greenplate_registry::{Db, TagId, now_ms};
use sqlx::{AssertSqlSafe, Row};
use tokio_util::sync::CancellationToken;

/// One pass: a reader's reads of one tag, folded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pass {
    pub tag: TagId,
    pub reader_id: Arc<str>,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub reads: u32,
    pub peak_rssi_dbm: i32,
}

/// Rows per INSERT statement (6 parameters each: well under both backends' limits).
const INSERT_ROWS: usize = 1000;

/// The pass history store.
#[derive(Debug, Clone)]
pub struct History {
    db: Db,
}

impl History {
    /// The history in `db` (its table comes with the alerting migrations).
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Appends closed passes in one transaction; a pass stored already (same tag, first
    /// read and reader: its batch was processed twice) is not stored again.
    pub async fn append(&self, passes: &[Pass]) -> Result<(), sqlx::Error> {
        if passes.is_empty() {
            return Ok(());
        }
        let b = self.db.backend();
        let mut tx = self.db.begin_write().await?;
        for chunk in passes.chunks(INSERT_ROWS) {
            let sql = format!(
                "INSERT INTO passes (tag_id, reader_id, first_seen_ms, last_seen_ms, reads, \
                 peak_rssi_dbm) VALUES {} \
                 ON CONFLICT (tag_id, first_seen_ms, reader_id) DO NOTHING",
                b.values(chunk.len(), 6)
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for p in chunk {
                q = q
                    .bind(p.tag.to_string())
                    .bind(p.reader_id.to_string())
                    .bind(p.first_seen_ms)
                    .bind(p.last_seen_ms)
                    .bind(i64::from(p.reads))
                    .bind(i64::from(p.peak_rssi_dbm));
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await
    }

    /// Passes of any of `tags` that overlap `[from_ms, to_ms]`, oldest first, at most
    /// `limit`.
    pub async fn track(
        &self,
        tags: &[TagId],
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<Pass>, sqlx::Error> {
        self.passes(tags, from_ms, to_ms, limit, "").await
    }

    /// As [`History::track`], but the newest `limit` passes (by first read), newest first.
    pub async fn track_newest(
        &self,
        tags: &[TagId],
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<Pass>, sqlx::Error> {
        self.passes(tags, from_ms, to_ms, limit, " DESC").await
    }

    async fn passes(
        &self,
        tags: &[TagId],
        from_ms: i64,
        to_ms: i64,
        limit: usize,
        order: &'static str,
    ) -> Result<Vec<Pass>, sqlx::Error> {
        if tags.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let b = self.db.backend();
        let n = tags.len();
        let sql = format!(
            "SELECT tag_id, reader_id, first_seen_ms, last_seen_ms, reads, peak_rssi_dbm \
             FROM passes WHERE tag_id IN {} AND first_seen_ms <= {} AND last_seen_ms >= {} \
             ORDER BY first_seen_ms{order}, pass_id{order} LIMIT {}",
            b.placeholders(1, n),
            b.ph(n + 1),
            b.ph(n + 2),
            b.ph(n + 3),
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for t in tags {
            q = q.bind(t.to_string());
        }
        let rows = q
            .bind(to_ms)
            .bind(from_ms)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(self.db.pool())
            .await?;
        rows.into_iter()
            .map(|row| {
                let tag: String = row.try_get("tag_id")?;
                let reader: String = row.try_get("reader_id")?;
                let reads: i64 = row.try_get("reads")?;
                let rssi: i64 = row.try_get("peak_rssi_dbm")?;
                Ok(Pass {
                    tag: TagId::parse(&tag).ok_or_else(|| {
                        sqlx::Error::Decode(format!("bad tag id {tag:?} in passes").into())
                    })?,
                    reader_id: reader.into(),
                    first_seen_ms: row.try_get("first_seen_ms")?,
                    last_seen_ms: row.try_get("last_seen_ms")?,
                    reads: u32::try_from(reads).unwrap_or(u32::MAX),
                    peak_rssi_dbm: i32::try_from(rssi).unwrap_or(i32::MIN),
                })
            })
            .collect()
    }

    /// Deletes up to `chunk` passes that ended before `before_ms`; returns how many.
    pub async fn purge(&self, before_ms: i64, chunk: i64) -> Result<u64, sqlx::Error> {
        let mut tx = self.db.begin_write().await?;
        let done = sqlx::query(
            "DELETE FROM passes WHERE pass_id IN \
             (SELECT pass_id FROM passes WHERE last_seen_ms < $1 LIMIT $2)",
        )
        .bind(before_ms)
        .bind(chunk)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(done)
    }
}

/// Passes deleted per statement by the retention job.
const PURGE_CHUNK: i64 = 5000;

/// Deletes passes older than `retention` now and every `every` until `shutdown`, a chunk
/// at a time. `on_purged` is told how many rows each round deleted (for metrics).
pub async fn run_retention(
    history: History,
    retention: Duration,
    every: Duration,
    shutdown: CancellationToken,
    on_purged: impl Fn(u64) + Send,
) {
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    loop {
        let cutoff = now_ms().saturating_sub(retention_ms);
        let mut total = 0;
        loop {
            match history.purge(cutoff, PURGE_CHUNK).await {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(e) => {
                    tracing::error!(error = %e, "Pass retention failed; will retry.");
                    break;
                }
            }
            if shutdown.is_cancelled() {
                return;
            }
            // Let writers in between chunks.
            tokio::task::yield_now().await;
        }
        if total > 0 {
            tracing::info!(deleted = total, "Deleted passes past the retention.");
            on_purged(total);
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(tag: u128, reader: &str, first: i64, last: i64) -> Pass {
        Pass {
            tag: TagId::parse(&format!("{tag:024X}")).unwrap(),
            reader_id: reader.into(),
            first_seen_ms: first,
            last_seen_ms: last,
            reads: 3,
            peak_rssi_dbm: -48,
        }
    }

    /// A pass history on a SQLite file in a temporary directory (kept while it lives).
    async fn history() -> (History, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&Db::sqlite_url(&dir.path().join("h.db")))
            .await
            .unwrap();
        // The alerting tables read the registry's (theft reports, bikes).
        db.migrate(greenplate_registry::store::migrations())
            .await
            .unwrap();
        db.migrate(crate::schema::migrations()).await.unwrap();
        (History::new(db), dir)
    }

    #[tokio::test]
    async fn append_track_and_purge() {
        let (h, _dir) = history().await;
        let mut passes: Vec<Pass> = (0..2500)
            .map(|i| pass(1, "r1", 10_000 + i * 10, 10_005 + i * 10))
            .collect();
        passes.push(pass(2, "r2", 10_000, 10_050));
        h.append(&passes).await.unwrap();

        let tag1 = [passes[0].tag];
        // Overlap, not containment: a pass that started before the window still counts.
        let got = h.track(&tag1, 10_003, 10_020, 100).await.unwrap();
        assert_eq!(
            got.iter().map(|p| p.first_seen_ms).collect::<Vec<_>>(),
            [10_000, 10_010, 10_020]
        );
        assert_eq!(got[0], passes[0]);
        assert_eq!(h.track(&tag1, 0, i64::MAX, 7).await.unwrap().len(), 7);
        let both = [passes[0].tag, passes[2500].tag];
        assert_eq!(h.track(&both, 10_000, 10_000, 100).await.unwrap().len(), 2);

        // Retention: everything that ended before 20,000 goes, a chunk at a time.
        assert_eq!(h.purge(20_000, 1000).await.unwrap(), 1000);
        while h.purge(20_000, 1000).await.unwrap() > 0 {}
        let left = h.track(&both, 0, i64::MAX, 10_000).await.unwrap();
        assert!(left.iter().all(|p| p.last_seen_ms >= 20_000));
        assert_eq!(left.len(), 1500);
    }

    /// The retention job goes on by itself: a pass that falls past the cutoff after the
    /// first round is deleted by a later round, without a restart, and each round's count
    /// reaches `on_purged`.
    #[tokio::test]
    async fn the_retention_job_repeats() {
        let (h, _dir) = history().await;
        let day = 24 * 3600 * 1000;
        let now = now_ms();
        h.append(&[pass(1, "r1", now - 3 * day, now - 3 * day + 5)])
            .await
            .unwrap();
        let (tx, mut rounds) = tokio::sync::mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let job = tokio::spawn(run_retention(
            h.clone(),
            Duration::from_millis(2 * day as u64),
            Duration::from_millis(50),
            shutdown.clone(),
            move |n| tx.send(n).unwrap(),
        ));
        let within = Duration::from_secs(10);
        assert_eq!(
            tokio::time::timeout(within, rounds.recv()).await,
            Ok(Some(1))
        );
        // Written after the first round, and already past the retention (a node that was
        // down, a late drain): only a later round can delete it. A recent pass stays.
        h.append(&[
            pass(2, "r1", now - 5 * day, now - 5 * day + 5),
            pass(3, "r1", now - 1000, now),
        ])
        .await
        .unwrap();
        assert_eq!(
            tokio::time::timeout(within, rounds.recv()).await,
            Ok(Some(1))
        );
        let tags = [pass(2, "", 0, 0).tag, pass(3, "", 0, 0).tag];
        let left = h.track(&tags, 0, i64::MAX, 10).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].tag, tags[1]);
        shutdown.cancel();
        tokio::time::timeout(within, job).await.unwrap().unwrap();
    }
}
