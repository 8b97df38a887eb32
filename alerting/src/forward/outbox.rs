//! The outbox in the database: each target's cursor in the alert log and the lease of the
//! node delivering for it, and the dead letters.
//!
//! The lease makes one node at a time deliver for a target: a node takes it when it is free
//! or lapsed, renews it with every step, and moves the cursor only while it holds it (the
//! update names the owner). A node that stops renewing loses it after [`LEASE_MS`], and
//! another node resumes from the stored cursor: the alert the dead node was sending may go
//! out twice (at least once; receivers drop repeats by `Idempotency-Key`), none is skipped.

use greenplate_proto::v1::Alert;
use greenplate_registry::Db;
use sqlx::Row;

use crate::schema::{ALERT_COLUMNS, alert_from_row};

/// How long a lease lasts without renewal.
pub const LEASE_MS: i64 = 15_000;

/// A dead letter: an alert a target did not take in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub target: String,
    pub seq: u64,
    pub alert_id: String,
    pub attempts: u32,
    pub last_error: String,
    pub failed_at_ms: i64,
    /// An operator asked for it to be sent again.
    pub replay: bool,
}

/// An alert from the log, with whether it is a covert watch-list hit.
pub(crate) struct Logged {
    pub(crate) alert: Alert,
    pub(crate) covert: bool,
}

/// Registers a target (its cursor at the log's end: a new target gets what comes from now
/// on, not the history).
pub(crate) async fn register(db: &Db, target: &str, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO forward_targets (target, cursor_seq, owner, lease_until_ms, updated_at_ms) \
         SELECT $1, COALESCE(MAX(seq), 0), '', 0, $2 FROM alerts WHERE 1 = 1 \
         ON CONFLICT (target) DO NOTHING",
    )
    .bind(target)
    .bind(now)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Takes or renews the lease; the cursor if this node holds it now.
pub(crate) async fn lease(
    db: &Db,
    target: &str,
    node: &str,
    now: i64,
) -> Result<Option<u64>, sqlx::Error> {
    let row = sqlx::query(
        "UPDATE forward_targets SET owner = $1, lease_until_ms = $2 \
         WHERE target = $3 AND (owner = $4 OR lease_until_ms < $5) RETURNING cursor_seq",
    )
    .bind(node)
    .bind(now + LEASE_MS)
    .bind(target)
    .bind(node)
    .bind(now)
    .fetch_optional(db.pool())
    .await?;
    row.map(|r| r.try_get::<i64, _>("cursor_seq").map(|s| s as u64))
        .transpose()
}

/// Moves the cursor to `seq` (and renews the lease), if this node still holds the lease.
pub(crate) async fn advance(
    db: &Db,
    target: &str,
    node: &str,
    seq: u64,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE forward_targets SET cursor_seq = $1, updated_at_ms = $2, lease_until_ms = $3 \
         WHERE target = $4 AND owner = $5 AND cursor_seq < $6",
    )
    .bind(seq as i64)
    .bind(now)
    .bind(now + LEASE_MS)
    .bind(target)
    .bind(node)
    .bind(seq as i64)
    .execute(db.pool())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Lets the lease go (at shutdown), so another node need not wait for it to lapse.
pub(crate) async fn release(db: &Db, target: &str, node: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE forward_targets SET lease_until_ms = 0 WHERE target = $1 AND owner = $2")
        .bind(target)
        .bind(node)
        .execute(db.pool())
        .await?;
    Ok(())
}

const LOGGED_COLUMNS: &str = "COALESCE(w.covert, 0) AS covert";
/// Whether an alert is a covert watch-list hit (joined to `alerts a`).
const COVERT_JOIN: &str =
    "LEFT JOIN watch_entries w ON a.watch_entry_id <> '' AND w.entry_id = a.watch_entry_id";

fn logged(row: &sqlx::any::AnyRow) -> Result<Logged, sqlx::Error> {
    Ok(Logged {
        alert: alert_from_row(row)?,
        covert: row.try_get::<i64, _>("covert")? != 0,
    })
}

/// Up to `limit` alerts with `after` < seq <= `upto`, in seq order. `upto` is where the
/// hub has got: on PostgreSQL a seq may commit after a higher one, and the log follower
/// settles such holes before it moves on, so nothing below `upto` can still appear.
pub(crate) async fn after(
    db: &Db,
    after: u64,
    upto: u64,
    limit: i64,
) -> Result<Vec<Logged>, sqlx::Error> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ALERT_COLUMNS}, {LOGGED_COLUMNS} FROM alerts a {COVERT_JOIN} \
         WHERE a.seq > $1 AND a.seq <= $2 ORDER BY a.seq LIMIT $3"
    )))
    .bind(after as i64)
    .bind(i64::try_from(upto).unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    rows.iter().map(logged).collect()
}

/// How far a target is behind: alerts after its cursor, and the age of the oldest (ms).
pub(crate) async fn lag(db: &Db, target: &str, now: i64) -> Result<(u64, i64), sqlx::Error> {
    let row = sqlx::query(
        "SELECT (SELECT COALESCE(MAX(seq), 0) FROM alerts) - t.cursor_seq AS behind, \
                (SELECT MIN(a.created_at_ms) FROM alerts a WHERE a.seq > t.cursor_seq) AS oldest \
         FROM forward_targets t WHERE t.target = $1",
    )
    .bind(target)
    .fetch_optional(db.pool())
    .await?;
    let Some(row) = row else {
        return Ok((0, 0));
    };
    let behind = row.try_get::<i64, _>("behind")?.max(0) as u64;
    let oldest: Option<i64> = row.try_get("oldest")?;
    Ok((behind, oldest.map_or(0, |t| (now - t).max(0))))
}

/// Records a dead letter (or, sent again and failed again, updates it).
pub(crate) async fn dead_letter(
    db: &Db,
    target: &str,
    alert: &Alert,
    attempts: u32,
    error: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO forward_dead_letters \
             (target, seq, alert_id, attempts, last_error, failed_at_ms, replay) \
         VALUES ($1, $2, $3, $4, $5, $6, 0) \
         ON CONFLICT (target, seq) DO UPDATE SET attempts = forward_dead_letters.attempts + $7, \
             last_error = $8, failed_at_ms = $9, replay = 0",
    )
    .bind(target)
    .bind(alert.seq as i64)
    .bind(&alert.alert_id)
    .bind(i64::from(attempts))
    .bind(error)
    .bind(now)
    .bind(i64::from(attempts))
    .bind(error)
    .bind(now)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// The dead letters an operator asked to send again, oldest first, with their alerts.
pub(crate) async fn to_replay(
    db: &Db,
    target: &str,
    limit: i64,
) -> Result<Vec<Logged>, sqlx::Error> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ALERT_COLUMNS}, {LOGGED_COLUMNS} FROM forward_dead_letters d \
         JOIN alerts a ON a.seq = d.seq {COVERT_JOIN} \
         WHERE d.target = $1 AND d.replay <> 0 ORDER BY d.seq LIMIT $2"
    )))
    .bind(target)
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    rows.iter().map(logged).collect()
}

/// A dead letter sent at last.
pub(crate) async fn delivered_again(db: &Db, target: &str, seq: u64) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM forward_dead_letters WHERE target = $1 AND seq = $2")
        .bind(target)
        .bind(seq as i64)
        .execute(db.pool())
        .await?;
    Ok(())
}

/// A target's dead letters, oldest first, at most `limit`.
pub async fn dead_letters(
    db: &Db,
    target: &str,
    limit: i64,
) -> Result<Vec<DeadLetter>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT target, seq, alert_id, attempts, last_error, failed_at_ms, replay \
         FROM forward_dead_letters WHERE target = $1 ORDER BY seq LIMIT $2",
    )
    .bind(target)
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(DeadLetter {
                target: r.try_get("target")?,
                seq: r.try_get::<i64, _>("seq")? as u64,
                alert_id: r.try_get("alert_id")?,
                attempts: u32::try_from(r.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
                last_error: r.try_get("last_error")?,
                failed_at_ms: r.try_get("failed_at_ms")?,
                replay: r.try_get::<i64, _>("replay")? != 0,
            })
        })
        .collect()
}

/// Marks a target's dead letters (those of `seqs`, or all) to be sent again, in `tx`; how
/// many.
pub async fn replay(
    tx: &mut sqlx::AnyConnection,
    target: &str,
    seqs: &[u64],
) -> Result<u64, sqlx::Error> {
    if seqs.is_empty() {
        let done = sqlx::query("UPDATE forward_dead_letters SET replay = 1 WHERE target = $1")
            .bind(target)
            .execute(&mut *tx)
            .await?;
        return Ok(done.rows_affected());
    }
    let mut n = 0;
    for seq in seqs {
        n += sqlx::query(
            "UPDATE forward_dead_letters SET replay = 1 WHERE target = $1 AND seq = $2",
        )
        .bind(target)
        .bind(*seq as i64)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    }
    Ok(n)
}

/// How many dead letters a target has.
pub(crate) async fn dead_count(db: &Db, target: &str) -> Result<i64, sqlx::Error> {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM forward_dead_letters WHERE target = $1")
        .bind(target)
        .fetch_one(db.pool())
        .await?;
    row.try_get("n")
}
