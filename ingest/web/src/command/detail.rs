//! One incident: what it is, its alerts (each with the cameras of its reader, their URLs
//! filled in for the moment of the sighting, so the officer can check the hit on video),
//! and every step of its history. Read through `Alerting::incident_detail`, as the
//! signed-in unit, so it is audited like `Patrol.GetIncident`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use greenplate_alerting::incidents::IncidentKey;
use greenplate_proto::v1::{CameraLink, IncidentState};
use maud::{Markup, html};

use super::{AREA, kind_name, top_bar};
use crate::error::WebError;
use crate::extract::CommandSession;
use crate::page::{datetime, html_response, layout};
use crate::state::WebState;

/// What the audit log says the page's lookups are for.
const WHY: &str = "command center: incident view";

fn cameras(links: &[CameraLink]) -> Markup {
    html! {
        @if links.is_empty() { span.quiet { "-" } }
        ul.cameras {
            @for c in links {
                li {
                    @if c.url.is_empty() {
                        (c.name) " (" (c.camera_id) ")"
                    } @else {
                        a.camera href=(c.url) target="_blank" rel="noopener noreferrer" data-camera=(c.camera_id) {
                            "视频 / Video: " (c.name)
                        }
                    }
                }
            }
        }
    }
}

fn state_name(state: IncidentState) -> &'static str {
    match state {
        IncidentState::Open => "新 / open",
        IncidentState::Acknowledged => "已受理 / acknowledged",
        IncidentState::Resolved => "已结案 / resolved",
        _ => "-",
    }
}

/// `GET /command/incidents/{id}`.
pub async fn incident_detail(
    State(web): State<WebState>,
    Path(incident_id): Path<String>,
    CommandSession(session): CommandSession,
) -> Result<Response, WebError> {
    let detail = web
        .alerting
        .incident_detail(&session.caller, &IncidentKey::Id(incident_id.clone()), WHY)
        .await
        .map_err(|e| WebError::Alerting(AREA, e))?;
    let incident = detail.incident.unwrap_or_default();
    let (kind_zh, kind_en) = kind_name(incident.kind);
    let body = html! {
        (top_bar(&session, false))
        main #incident data-incident=(incident.incident_id) {
            h1 { "事件 / Incident " span.mono { (incident.incident_id) } }
            dl.card {
                dt { "类型 / Kind" } dd { (kind_zh) " / " (kind_en) }
                dt { "车牌 / Plate" } dd { @if incident.plate.is_empty() { "-" } @else { (incident.plate) } }
                dt { "状态 / State" } dd #incident-state { (state_name(incident.state())) }
                dt { "开始 / Opened" } dd { (datetime(incident.opened_at_ms)) }
                dt { "更新 / Updated" } dd { (datetime(incident.updated_at_ms)) }
                @if !incident.acknowledged_by.is_empty() {
                    dt { "受理 / Acknowledged by" } dd { (incident.acknowledged_by) }
                }
            }
            h2 { "告警 / Alerts " span.count { (detail.alerts.len()) } }
            table #incident-alerts {
                thead { tr { th { "时间 / Seen" } th { "类型 / Kind" } th { "读写器 / Reader" } th { "优先级 / Priority" } th { "附近摄像头 / Cameras" } } }
                tbody {
                    @for a in &detail.alerts {
                        @let (zh, en) = kind_name(a.kind);
                        tr data-seq=(a.seq) class=(format!("priority-{}", a.priority.clamp(1, 3))) {
                            td.time { (datetime(a.seen_at_ms)) }
                            td {
                                @if a.escalation > 0 { span.badge.escalated { "升级 / escalated" } " " }
                                span.zh { (zh) } br; span.en { (en) }
                                @if !a.reason.is_empty() { br; span.quiet { (a.reason) } }
                            }
                            td.reader { (a.reader_id) }
                            td { (a.priority) }
                            td { (cameras(&a.cameras)) }
                        }
                    }
                }
            }
            h2 { "经过 / History" }
            table #incident-events {
                thead { tr { th { "时间 / When" } th { "谁 / Who" } th { "步骤 / Step" } th { "说明 / Note" } th { "读写器 / Reader" } } }
                tbody {
                    @for e in &detail.events {
                        tr data-action=(e.action) {
                            td.time { (datetime(e.at_ms)) }
                            td { (e.actor) }
                            td { (e.action) }
                            td { (e.note) }
                            td {
                                @if let Some(p) = &e.pass {
                                    (p.reader_id) " (" (p.reads) ")"
                                    (cameras(&e.cameras))
                                }
                            }
                        }
                    }
                }
            }
            p { a href="/command" { "← 返回地图 / Back to the map" } }
        }
    };
    Ok(html_response(
        StatusCode::OK,
        layout("Incident", None, body),
    ))
}
