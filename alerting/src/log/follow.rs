//! Several nodes on one PostgreSQL: the live hub of every node is fed from the shared alert
//! log, in seq order, so a patrol stream on any node gets every alert it is entitled to,
//! whichever node's engine committed it, with the same no-gap, no-duplicate promise as on
//! one node.
//!
//! The engine announces each commit with `pg_notify` (delivered on commit). The follower
//! reads the log after its cursor and hands alerts to the hub strictly in seq order. A seq
//! can show up committed before a lower one that another node's transaction still holds: the
//! follower waits for the hole to fill, and only after [`HOLE_WAIT`] (a transaction that
//! rolled back leaves a hole forever) goes past it; an alert that then commits behind the
//! cursor reaches streams only by replay (a stream that restarts, or lags). On SQLite the
//! engine publishes to the hub itself and no follower runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::Row;
use tokio_util::sync::CancellationToken;

use crate::error::AlertingError;
use crate::hub::LoggedAlert;
use crate::schema::{ALERT_COLUMNS, alert_from_row};
use crate::state::Alerting;

/// The PostgreSQL notification channel the engine announces commits on.
pub const CHANNEL: &str = "greenplate_alerts";
/// How long a hole in the seqs is waited for before the follower goes past it.
pub const HOLE_WAIT: Duration = Duration::from_secs(3);
/// Alerts read per query.
const PAGE: i64 = 512;

/// A log follower that has its starting point: it listens for commits, and knows the log's
/// end as it was once it listened. Made by [`start`] before the service reports up, so an
/// alert committed after the start is never behind its cursor; driven by [`Follower::run`].
pub struct Follower {
    alerting: Arc<Alerting>,
    url: String,
    cursor: i64,
    listener: Option<sqlx::postgres::PgListener>,
}

/// Listens for commits, then reads where the log ends: every alert committed after this
/// returns reaches the hub (an alert committed between the two is read by the first
/// catch-up). A follower that could not listen polls until it can.
pub async fn start(alerting: Arc<Alerting>, url: String) -> Result<Follower, AlertingError> {
    let listener = match connect(&url).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "Cannot listen for alert commits; polling meanwhile.");
            None
        }
    };
    let cursor = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS top FROM alerts")
        .fetch_one(alerting.registry().db().pool())
        .await?
        .try_get::<i64, _>("top")?;
    // Streams replay what is below the cursor from the log.
    alerting.hub.advance_to(u64::try_from(cursor).unwrap_or(0));
    Ok(Follower {
        alerting,
        url,
        cursor,
        listener,
    })
}

impl Follower {
    /// Follows the alert log until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let Follower {
            alerting,
            url,
            mut cursor,
            listener,
        } = self;
        let mut listener = Some(listener);
        let mut seen = Seen::default();
        'connect: loop {
            let mut listener = match listener.take() {
                Some(l) => l,
                None => match connect(&url).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "Cannot listen for alert commits; polling meanwhile.");
                        None
                    }
                },
            };
            loop {
                // Read what is there, then wait for the next commit (or a short tick, to
                // notice a filled hole or a lost connection).
                match catch_up(&alerting, &mut cursor, &mut seen).await {
                    Ok(()) => {}
                    Err(e) => tracing::error!(error = %e, "Reading the alert log failed."),
                }
                let tick = if seen.waiting {
                    Duration::from_millis(20)
                } else {
                    Duration::from_millis(500)
                };
                let Some(l) = listener.as_mut() else {
                    // No listening connection: poll, and try to listen again.
                    tokio::select! {
                        _ = tokio::time::sleep(tick) => continue 'connect,
                        _ = shutdown.cancelled() => return,
                    }
                };
                tokio::select! {
                    r = l.try_recv() => match r {
                        Ok(Some(_)) => {}
                        // Connection lost: reconnect (the catch-up reads whatever was missed).
                        Ok(None) | Err(_) => continue 'connect,
                    },
                    _ = tokio::time::sleep(tick) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}

async fn connect(url: &str) -> Result<Option<sqlx::postgres::PgListener>, sqlx::Error> {
    let mut l = sqlx::postgres::PgListener::connect(url).await?;
    l.listen(CHANNEL).await?;
    Ok(Some(l))
}

/// When the follower first saw each part of the log: a hole (a seq not committed while a
/// higher one is) has been waited for since a higher seq was first seen. So the holes that
/// showed up together (one transaction of a node that died holds seqs interleaved with
/// another node's) are gone past together, after one [`HOLE_WAIT`], not one after another.
#[derive(Debug, Default)]
struct Seen {
    /// (the highest seq seen committed, when it was first seen), increasing.
    marks: std::collections::VecDeque<(i64, Instant)>,
    /// Stopped at a hole younger than [`HOLE_WAIT`].
    waiting: bool,
}

impl Seen {
    fn saw(&mut self, top: i64) {
        if self.marks.back().is_none_or(|(s, _)| top > *s) {
            self.marks.push_back((top, Instant::now()));
        }
    }

    /// Since when the hole just below the committed `seq` has been visible.
    fn hole_since(&self, seq: i64) -> Instant {
        self.marks
            .iter()
            .find(|(s, _)| *s >= seq)
            .map_or_else(Instant::now, |(_, at)| *at)
    }

    fn passed(&mut self, cursor: i64) {
        while self.marks.front().is_some_and(|(s, _)| *s <= cursor) {
            self.marks.pop_front();
        }
    }
}

/// Hands every committed alert after `cursor` to the hub, in seq order, stopping at a hole
/// visible for less than [`HOLE_WAIT`].
async fn catch_up(
    alerting: &Alerting,
    cursor: &mut i64,
    seen: &mut Seen,
) -> Result<(), sqlx::Error> {
    seen.waiting = false;
    loop {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ALERT_COLUMNS} FROM alerts a WHERE a.seq > $1 ORDER BY a.seq LIMIT $2"
        )))
        .bind(*cursor)
        .bind(PAGE)
        .fetch_all(alerting.registry().db().pool())
        .await?;
        if rows.is_empty() {
            return Ok(());
        }
        let mut alerts = Vec::with_capacity(rows.len());
        for row in &rows {
            alerts.push(alert_from_row(row)?);
        }
        let top = alerts.last().map_or(*cursor, |a| a.seq as i64);
        seen.saw(top);
        let recipients =
            sqlx::query("SELECT seq, unit_id FROM alert_recipients WHERE seq > $1 AND seq <= $2")
                .bind(*cursor)
                .bind(top)
                .fetch_all(alerting.registry().db().pool())
                .await?;
        let mut by_seq: std::collections::HashMap<i64, Vec<String>> = Default::default();
        for r in recipients {
            by_seq
                .entry(r.try_get("seq")?)
                .or_default()
                .push(r.try_get("unit_id")?);
        }
        let n = alerts.len();
        for alert in alerts {
            let seq = alert.seq as i64;
            if seq != *cursor + 1 {
                if seen.hole_since(seq).elapsed() < HOLE_WAIT {
                    seen.waiting = true;
                    return Ok(());
                }
                tracing::warn!(
                    from = *cursor + 1,
                    to = seq - 1,
                    "Going past a hole in the alert log (a rolled-back or very slow commit)."
                );
            }
            *cursor = seq;
            seen.passed(*cursor);
            let recipients = by_seq.remove(&seq).unwrap_or_default();
            alerting.hub.publish(LoggedAlert { alert, recipients });
        }
        if (n as i64) < PAGE {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_seen_together_are_waited_for_together() {
        let mut seen = Seen::default();
        // 10 committed with 3..=9 not: every hole below 10 visible from now.
        seen.saw(10);
        let first = seen.hole_since(4);
        assert_eq!(seen.hole_since(10), first);
        std::thread::sleep(Duration::from_millis(5));
        // 20 shows up later: holes just below 11..=20 are younger.
        seen.saw(20);
        assert_eq!(seen.hole_since(7), first);
        assert!(seen.hole_since(15) > first);
        // Going past 10 forgets its mark; a lower top adds none.
        seen.passed(10);
        seen.saw(12);
        assert_eq!(seen.marks.len(), 1);
        assert!(seen.hole_since(12) > first);
    }
}
