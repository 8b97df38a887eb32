//! Escalation (issue #17): an incident whose urgent alert nobody acknowledged in time is
//! raised. Its latest alert is sent again, one priority higher and with `escalation` 1, to
//! the units of the zones around its reader and to command centers, and the incident's
//! history gets an `escalate` step. Once per incident.
//!
//! Which alerts, and how soon, is configured per kind and priority: a list of
//! [`EscalationRule`]s; the first rule that matches an alert gives its time. By default
//! critical alerts (priority 3) escalate after 30 s and urgent ones (2) after 60 s.
//!
//! [`run`] looks every [`EVERY`]; [`Alerting::escalate_due`] takes the clock as an
//! argument, so tests can move time. On several nodes each may find the same incident; the
//! re-send's `source` (`escalate/<incident>`) is unique in the log, so it is sent once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use greenplate_proto::v1::{Alert, AlertKind};
use greenplate_registry::now_ms;
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use crate::error::AlertingError;
use crate::hub::LoggedAlert;
use crate::incidents::record_event;
use crate::schema::{ALERT_COLUMNS, alert_from_row};
use crate::state::Alerting;

/// How often [`run`] looks for incidents to escalate.
pub const EVERY: Duration = Duration::from_secs(1);
/// Alerts older than their time plus this are not escalated any more (after an outage, an
/// hour-old urgent alert is history, not news).
const STALE_MS: i64 = 3_600_000;

/// When an unacknowledged alert escalates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EscalationRule {
    /// The kinds it applies to; empty: any kind.
    pub kinds: Vec<AlertKind>,
    /// Alerts of at least this priority.
    pub min_priority: u32,
    /// Time without an acknowledgement, ms.
    pub after_ms: i64,
}

impl EscalationRule {
    fn matches(&self, alert: &Alert) -> bool {
        alert.priority >= self.min_priority
            && (self.kinds.is_empty() || self.kinds.iter().any(|k| *k as i32 == alert.kind))
    }

    /// The defaults: critical after 30 s, urgent after 60 s, any kind.
    pub fn defaults() -> Vec<EscalationRule> {
        vec![
            EscalationRule {
                kinds: Vec::new(),
                min_priority: 3,
                after_ms: 30_000,
            },
            EscalationRule {
                kinds: Vec::new(),
                min_priority: 2,
                after_ms: 60_000,
            },
        ]
    }
}

/// Escalates what is due every [`EVERY`] until `shutdown`.
pub async fn run(alerting: Arc<Alerting>, rules: Vec<EscalationRule>, shutdown: CancellationToken) {
    if rules.is_empty() {
        return;
    }
    loop {
        if let Err(e) = alerting.escalate_due(&rules, now_ms()).await {
            tracing::error!(error = %e, "Escalating incidents failed; retrying.");
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

impl Alerting {
    /// Escalates every open (unacknowledged) incident that has an alert past its rule's
    /// time at `now` and was not escalated yet; returns how many this call escalated.
    pub async fn escalate_due(
        &self,
        rules: &[EscalationRule],
        now: i64,
    ) -> Result<usize, AlertingError> {
        let Some(min_priority) = rules.iter().map(|r| r.min_priority).min() else {
            return Ok(0);
        };
        let shortest = rules.iter().map(|r| r.after_ms).min().unwrap_or(0);
        let longest = rules.iter().map(|r| r.after_ms).max().unwrap_or(0);
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ALERT_COLUMNS}, a.created_at_ms FROM alerts a \
             JOIN incidents i ON i.incident_id = a.incident_id \
             WHERE i.state = 'open' AND a.escalation = 0 AND a.priority >= $1 \
               AND a.created_at_ms <= $2 AND a.created_at_ms > $3 \
               AND NOT EXISTS (SELECT 1 FROM alerts e \
                               WHERE e.source = 'escalate/' || a.incident_id) \
             ORDER BY a.seq"
        )))
        .bind(i64::from(min_priority))
        .bind(now - shortest)
        .bind(now - longest - STALE_MS)
        .fetch_all(self.db().pool())
        .await?;
        // Per incident: the time of the first rule that is due.
        let mut due: HashMap<String, i64> = HashMap::new();
        for row in &rows {
            let alert = alert_from_row(row)?;
            let created: i64 = row.try_get("created_at_ms")?;
            if let Some(rule) = rules.iter().find(|r| r.matches(&alert))
                && created + rule.after_ms <= now
            {
                due.entry(alert.incident_id.clone())
                    .or_insert(rule.after_ms);
            }
        }
        let mut escalated = 0;
        for (incident_id, after_ms) in due {
            if self.escalate(&incident_id, after_ms, now).await? {
                escalated += 1;
            }
        }
        Ok(escalated)
    }

    /// Sends the incident's latest alert again, raised; false if it was escalated already
    /// (by another node) or acknowledged meanwhile.
    async fn escalate(
        &self,
        incident_id: &str,
        after_ms: i64,
        now: i64,
    ) -> Result<bool, AlertingError> {
        let mut tx = self.db().begin_write().await?;
        let latest = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ALERT_COLUMNS} FROM alerts a JOIN incidents i ON i.incident_id = a.incident_id \
             WHERE a.incident_id = $1 AND i.state = 'open' AND a.escalation = 0 \
             ORDER BY a.seen_at_ms DESC, a.seq DESC LIMIT 1"
        )))
        .bind(incident_id)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| alert_from_row(&r))
        .transpose()?;
        let Some(latest) = latest else {
            return Ok(false);
        };
        // The units around where it was seen now (zones and units may have changed since
        // it was first sent), and every command center.
        let mut recipients = self.router.units_covering(latest.lat, latest.lon);
        for cc in self.router.command_units() {
            if !recipients.contains(&cc) {
                recipients.push(cc);
            }
        }
        recipients.sort();
        let alert = Alert {
            seq: 0,
            alert_id: String::new(),
            priority: (latest.priority + 1).min(3),
            escalation: 1,
            ..latest
        };
        let source = format!("escalate/{incident_id}");
        let appended = self
            .append_outside(&mut tx, Some((alert, recipients, source)), incident_id, now)
            .await?;
        // Escalated already (by another node, or before a restart): nothing more to do.
        let Some(LoggedAlert { alert, recipients }) = appended.logged() else {
            return Ok(false);
        };
        record_event(
            &mut tx,
            incident_id,
            "engine",
            "escalate",
            &format!(
                "not acknowledged within {} s: {} sent again at priority {} to {} units",
                after_ms / 1000,
                alert.alert_id,
                alert.priority,
                recipients.len()
            ),
            now,
        )
        .await?;
        let (seq, units) = (alert.seq, recipients.len());
        tx.commit().await?;
        self.escalations.inc();
        tracing::warn!(
            incident = %incident_id,
            seq,
            units,
            "Incident escalated: not acknowledged in time."
        );
        self.publish_appended(appended);
        Ok(true)
    }
}
