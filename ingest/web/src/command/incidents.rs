//! The incident list: a row per open incident, and acknowledge and resolve, as the
//! signed-in unit.

use axum::extract::State;
use axum::response::Response;
use greenplate_alerting::OpenIncident;
use greenplate_proto::v1::{Alert, Outcome};
use greenplate_registry::RegistryError;
use maud::{Markup, html};
use serde::Deserialize;

use super::{AREA, HOME, kind_name};
use crate::error::WebError;
use crate::extract::{CommandSession, Csrf};
use crate::page::{datetime, query_value, redirect, short_datetime};
use crate::session::Session;
use crate::state::WebState;

/// One row of the incident list (the script builds the same for live ones).
pub(super) fn incident_row(session: &Session, i: &OpenIncident) -> Markup {
    let a = &i.last;
    let (zh, en) = kind_name(i.kind);
    html! {
        tr data-incident=(a.incident_id) data-seq=(a.seq) data-priority=(a.priority.clamp(1, 3))
            class=(format!("priority-{}{}", a.priority.clamp(1, 3), if a.priority > 1 { " urgent" } else { "" })) {
            td.time title=(datetime(a.seen_at_ms)) { (short_datetime(a.seen_at_ms)) }
            td { span.zh { (zh) } br; span.en { (en) } }
            td.plate {
                @if a.plate.is_empty() { "-" } @else {
                    a href=(format!("/command?track={}", query_value(&a.plate))) { (a.plate) }
                }
            }
            td.reader { (a.reader_id) }
            td.state { @if i.acknowledged { "已受理 / acknowledged" } @else { "新 / open" } }
            td.act {
                a.details href=(format!("/command/incidents/{}", query_value(&a.incident_id))) { "详情 / Details" }
                (incident_actions(session, &a.incident_id, i.acknowledged))
            }
        }
    }
}

/// One row of the escalations and rejected hits (the script builds the same for live
/// ones).
pub(super) fn notable_row(a: &Alert) -> Markup {
    let (zh, en) = kind_name(a.kind);
    html! {
        tr data-seq=(a.seq) class=(if a.escalation > 0 { "escalated" } else { "rejected" }) {
            td.time title=(datetime(a.seen_at_ms)) { (short_datetime(a.seen_at_ms)) }
            td {
                @if a.escalation > 0 { span.badge.escalated { "升级 / escalated" } " " }
                span.zh { (zh) } br; span.en { (en) }
            }
            td.plate {
                a href=(format!("/command/incidents/{}", query_value(&a.incident_id))) {
                    @if a.plate.is_empty() { (a.incident_id) } @else { (a.plate) }
                }
            }
            td.reader { (a.reader_id) }
            td.why {
                @if a.reason.is_empty() && a.escalation > 0 {
                    "无人及时受理 / nobody acknowledged it in time"
                } @else { (a.reason) }
            }
        }
    }
}

fn incident_actions(session: &Session, incident_id: &str, acknowledged: bool) -> Markup {
    html! {
        @if !acknowledged {
            form method="post" action="/command/incident" {
                input type="hidden" name="csrf" value=(session.csrf);
                input type="hidden" name="incident_id" value=(incident_id);
                input type="hidden" name="action" value="ack";
                button type="submit" { "受理 / Ack" }
            }
        }
        form method="post" action="/command/incident" {
            input type="hidden" name="csrf" value=(session.csrf);
            input type="hidden" name="incident_id" value=(incident_id);
            input type="hidden" name="action" value="resolve";
            select name="outcome" aria-label="结果 / Outcome" {
                option value="recovered" { "找回 / recovered" }
                option value="false_alarm" { "误报 / false alarm" }
                option value="lost_track" { "失去踪迹 / lost track" }
            }
            button type="submit" { "结案 / Resolve" }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct IncidentForm {
    incident_id: String,
    action: String,
    outcome: String,
    note: String,
}

/// Acknowledge or resolve an incident, as the signed-in unit.
pub async fn incident(
    State(web): State<WebState>,
    Csrf(CommandSession(session), form): Csrf<CommandSession, IncidentForm>,
) -> Result<Response, WebError> {
    let result = match form.action.as_str() {
        "ack" => {
            web.alerting
                .acknowledge(&session.caller, &form.incident_id, &form.note)
                .await
        }
        "resolve" => {
            let outcome = match form.outcome.as_str() {
                "recovered" => Outcome::Recovered,
                "false_alarm" => Outcome::FalseAlarm,
                "lost_track" => Outcome::LostTrack,
                _ => Outcome::Unspecified,
            };
            web.alerting
                .resolve(&session.caller, &form.incident_id, outcome, &form.note)
                .await
        }
        _ => Err(RegistryError::invalid("action", "must be ack or resolve").into()),
    };
    result.map_err(|e| WebError::Alerting(AREA, e))?;
    tracing::info!(
        caller = %session.caller.audit_name(),
        incident = %form.incident_id,
        action = %form.action,
        "Incident changed (web)."
    );
    Ok(redirect(HOME, None))
}
