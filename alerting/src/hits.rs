//! Hit handling (issue #17): the officer at the scene confirms a hit ("this is the bike") or
//! rejects it with a reason. Each verdict is a step of the incident's history and is counted
//! by verdict and reason; a misread or a suspected clone is raised to command centers as
//! `ALERT_KIND_HIT_REJECTED` in the same incident. The incident's state is left alone: a
//! rejected hit does not end a theft, and a confirmed one is resolved as recovered when the
//! bike is in hand (`ResolveIncident`).

use greenplate_proto::v1::{Alert, AlertKind, Incident, IncidentState, RejectReason};
use greenplate_registry::{Caller, RegistryError, now_ms};

use crate::error::AlertingError;
use crate::incidents::{incident_row, record_event};
use crate::schema::{ALERT_COLUMNS, alert_from_row};
use crate::state::{Alerting, VerdictLabel};

/// What the officer says of a hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Confirmed,
    Rejected(RejectReason),
}

impl Verdict {
    fn labels(self) -> VerdictLabel {
        match self {
            Verdict::Confirmed => VerdictLabel {
                verdict: "confirmed",
                reason: "",
            },
            Verdict::Rejected(r) => VerdictLabel {
                verdict: "rejected",
                reason: reason_name(r),
            },
        }
    }
}

fn reason_name(r: RejectReason) -> &'static str {
    match r {
        RejectReason::Misread => "misread",
        RejectReason::WrongBike => "wrong_bike",
        RejectReason::AlreadyRecovered => "already_recovered",
        RejectReason::SuspectedClone => "suspected_clone",
        RejectReason::Other | RejectReason::Unspecified => "other",
    }
}

impl Alerting {
    /// Records `caller`'s verdict on the hit `alert_id` (or the incident's latest alert, if
    /// empty) of `incident_id`; returns the incident. The entitlement of acknowledging.
    pub async fn judge_hit(
        &self,
        caller: &Caller,
        incident_id: &str,
        alert_id: &str,
        verdict: Verdict,
        note: &str,
    ) -> Result<Incident, AlertingError> {
        let note = greenplate_registry::validate::optional_text("note", note, 2000)?;
        if verdict == Verdict::Rejected(RejectReason::Unspecified) {
            return Err(RegistryError::invalid(
                "reason",
                "must be MISREAD, WRONG_BIKE, ALREADY_RECOVERED, SUSPECTED_CLONE or OTHER",
            )
            .into());
        }
        self.require_entitled(caller, incident_id).await?;
        let now = now_ms();
        let mut tx = self.db().begin_write().await?;
        let incident = incident_row(&mut tx, incident_id).await?;
        if incident.state() == IncidentState::Resolved {
            return Err(RegistryError::FailedPrecondition(format!(
                "incident {incident_id} is resolved"
            ))
            .into());
        }
        let which = if alert_id.is_empty() {
            "ORDER BY a.seq DESC LIMIT 1"
        } else {
            "AND a.alert_id = $2"
        };
        let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ALERT_COLUMNS} FROM alerts a WHERE a.incident_id = $1 {which}"
        )))
        .bind(incident_id);
        if !alert_id.is_empty() {
            q = q.bind(alert_id);
        }
        let hit = q
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| alert_from_row(&r))
            .transpose()?
            .ok_or_else(|| {
                RegistryError::NotFound(format!("a hit {alert_id} of incident {incident_id}"))
            })?;
        let action = match verdict {
            Verdict::Confirmed => "confirm".to_owned(),
            Verdict::Rejected(r) => format!("reject:{}", reason_name(r)),
        };
        let step_note = if note.is_empty() {
            format!("{} at {}", hit.alert_id, hit.reader_id)
        } else {
            format!("{} at {}: {note}", hit.alert_id, hit.reader_id)
        };
        record_event(
            &mut tx,
            incident_id,
            &caller.audit_name(),
            &action,
            &step_note,
            now,
        )
        .await?;
        let alert = match verdict {
            Verdict::Rejected(r @ (RejectReason::Misread | RejectReason::SuspectedClone)) => {
                let alert = Alert {
                    kind: AlertKind::HitRejected as i32,
                    plate: hit.plate.clone(),
                    tag_id: hit.tag_id.clone(),
                    reader_id: hit.reader_id.clone(),
                    lat: hit.lat,
                    lon: hit.lon,
                    seen_at_ms: hit.seen_at_ms,
                    incident_id: incident_id.to_owned(),
                    priority: 1,
                    reason: format!("{} by {}: {note}", reason_name(r), caller.audit_name()),
                    ..Default::default()
                };
                let source = format!("reject/{}", hit.alert_id);
                Some((alert, self.router.command_units(), source))
            }
            _ => None,
        };
        let appended = self
            .append_outside(&mut tx, alert, incident_id, now)
            .await?;
        let out = incident_row(&mut tx, incident_id).await?;
        tx.commit().await?;
        self.hits_judged.get_or_create(&verdict.labels()).inc();
        self.publish_appended(appended);
        Ok(out)
    }
}
