//! The watch list (布控) on the command center: the active entries by priority (colour),
//! with reason, case number, expiry and who added them; a form to add one, and per entry a
//! priority change and removal. The same registry calls as `greenplate.v1.Command`, so the
//! same validation and the same audit log; a refusal is shown at the form.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use greenplate_registry::{NewWatchEntry, RegistryError, WatchChange, WatchEntry, now_ms};
use maud::{Markup, html};
use serde::Deserialize;

use super::{internal, top_bar};
use crate::error::{WebError, registry_status};
use crate::extract::{CommandSession, Csrf};
use crate::i18n::{Bilingual, explain, is_internal};
use crate::page::{both, datetime, html_response, layout, redirect};
use crate::session::Session;
use crate::state::WebState;

const PAGE: &str = "/command/watch";
/// How long a new entry lasts unless the officer says otherwise.
const DEFAULT_HOURS: u32 = 72;

pub(super) fn priority_name(p: u32) -> (&'static str, &'static str) {
    match p {
        3 => ("特急", "critical"),
        2 => ("紧急", "urgent"),
        _ => ("一般", "normal"),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct WatchQuery {
    /// What the last action did, for the notice: added, changed, removed.
    done: String,
}

fn entry_row(session: &Session, e: &WatchEntry) -> Markup {
    let (zh, en) = priority_name(e.priority);
    html! {
        tr data-entry=(e.entry_id) class=(format!("priority-{}", e.priority)) {
            td.subject {
                @if e.plate.is_empty() { span.mono { (e.tag_id) } } @else { (e.plate) }
            }
            td.priority { span.badge class=(format!("badge p{}", e.priority)) { (zh) " / " (en) } }
            td { (e.reason) }
            td { (e.case_number) }
            td.time { (datetime(e.expires_at_ms)) }
            td { @if e.covert { "秘密 / covert" } @else { "-" } }
            td { (e.added_by) }
            td.act {
                form method="post" action=(PAGE) {
                    input type="hidden" name="csrf" value=(session.csrf);
                    input type="hidden" name="action" value="priority";
                    input type="hidden" name="entry_id" value=(e.entry_id);
                    select name="priority" aria-label="优先级 / Priority" {
                        @for p in 1..=3u32 {
                            @let (pzh, pen) = priority_name(p);
                            option value=(p) selected[p == e.priority] { (pzh) " / " (pen) }
                        }
                    }
                    button type="submit" { "更改 / Change" }
                }
                form method="post" action=(PAGE) {
                    input type="hidden" name="csrf" value=(session.csrf);
                    input type="hidden" name="action" value="remove";
                    input type="hidden" name="entry_id" value=(e.entry_id);
                    button.remove type="submit" { "撤销 / Remove" }
                }
            }
        }
    }
}

fn page(
    session: &Session,
    entries: &[WatchEntry],
    status: StatusCode,
    notice: Option<&str>,
    problem: Option<(Option<&'static str>, Bilingual)>,
    form: &WatchForm,
) -> Response {
    let body = html! {
        (top_bar(session, false))
        main #watch {
            h1 { "布控名单 / Watch list " span #watch-count.count { (entries.len()) } }
            @if let Some(n) = notice { p.notice { (n) } }
            @if let Some((field, p)) = &problem {
                p.error.banner role="alert" data-field=[field] { (both(p)) }
            }
            form.card.watch-add method="post" action=(PAGE) {
                input type="hidden" name="csrf" value=(session.csrf);
                input type="hidden" name="action" value="add";
                h2 { "新增布控 / Watch a bike" }
                fieldset {
                    div.field {
                        label for="watch-subject" { "车牌号或电子标签号 / Plate or tag id" }
                        input #watch-subject name="subject" required value=(form.subject);
                    }
                    div.field {
                        label for="watch-priority" { "优先级 / Priority" }
                        select #watch-priority name="priority" {
                            @for p in 1..=3u32 {
                                @let (zh, en) = priority_name(p);
                                option value=(p) selected[form.priority() == p] { (zh) " / " (en) }
                            }
                        }
                    }
                    div.field {
                        label for="watch-reason" { "布控原因 / Reason" }
                        input #watch-reason name="reason" required value=(form.reason);
                    }
                    div.field {
                        label for="watch-case" { "案件编号 / Case number" }
                        input #watch-case name="case_number" value=(form.case_number);
                    }
                    div.field {
                        label for="watch-hours" { "有效时长（小时）/ Lasts (hours)" }
                        input #watch-hours name="hours" type="number" min="1" max="8760" value=(form.hours());
                    }
                    div.field {
                        label for="watch-covert" {
                            input #watch-covert name="covert" type="checkbox" value="1" checked[form.covert.is_some()];
                            " 秘密布控（仅通知指挥中心）/ Covert (command centers only)"
                        }
                    }
                }
                button.primary type="submit" { "布控 / Add to the watch list" }
            }
            table #watch-entries {
                thead { tr {
                    th { "对象 / Plate or tag" } th { "优先级 / Priority" } th { "原因 / Reason" }
                    th { "案件 / Case" } th { "到期 / Expires" } th { "秘密 / Covert" }
                    th { "添加人 / Added by" } th {}
                } }
                tbody {
                    @for e in entries { (entry_row(session, e)) }
                }
            }
            @if entries.is_empty() { p #no-entries.quiet { "暂无布控 / Nothing on the watch list" } }
        }
    };
    html_response(status, layout("Watch list", None, body))
}

/// `GET /command/watch`: the active entries and the form.
pub async fn watch(
    State(web): State<WebState>,
    Query(q): Query<WatchQuery>,
    CommandSession(session): CommandSession,
) -> Result<Response, WebError> {
    let entries = web
        .alerting
        .registry()
        .list_watch_entries(&session.caller, false)
        .await
        .map_err(|e| internal("Watch list", &e))?;
    let notice = match q.done.as_str() {
        "added" => Some("已布控 / Added to the watch list"),
        "changed" => Some("已更改 / Changed"),
        "removed" => Some("已撤销 / Removed"),
        _ => None,
    };
    Ok(page(
        &session,
        &entries,
        StatusCode::OK,
        notice,
        None,
        &WatchForm::default(),
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct WatchForm {
    action: String,
    entry_id: String,
    /// A plate or a tag id (told apart by their form).
    subject: String,
    /// 1-3 (strings: the CSRF check reads the form through a flattened struct, which
    /// hands every value over as a string).
    priority: String,
    reason: String,
    case_number: String,
    hours: String,
    /// Present (any value) when ticked.
    covert: Option<String>,
}

impl WatchForm {
    /// The priority asked for; 0 (refused, at the field) if it is not a number.
    fn priority(&self) -> u32 {
        self.priority.trim().parse().unwrap_or(0)
    }

    fn hours(&self) -> u32 {
        self.hours.trim().parse().unwrap_or(DEFAULT_HOURS)
    }
}

/// `POST /command/watch`: add, change the priority of, or remove an entry.
pub async fn watch_action(
    State(web): State<WebState>,
    Csrf(CommandSession(session), form): Csrf<CommandSession, WatchForm>,
) -> Result<Response, WebError> {
    let registry = web.alerting.registry();
    let result: Result<&str, RegistryError> = match form.action.as_str() {
        "add" => {
            let subject = form.subject.trim();
            let is_tag = greenplate_registry::TagId::parse(subject).is_some();
            let hours = i64::from(form.hours().clamp(1, 8760));
            registry
                .add_watch_entry(
                    &session.caller,
                    &NewWatchEntry {
                        entry_id: None,
                        plate: if is_tag { "" } else { subject }.to_owned(),
                        tag_id: if is_tag { subject } else { "" }.to_owned(),
                        priority: form.priority(),
                        reason: form.reason.clone(),
                        case_number: form.case_number.clone(),
                        covert: form.covert.is_some(),
                        expires_at_ms: now_ms() + hours * 3_600_000,
                    },
                )
                .await
                .map(|_| "added")
        }
        "priority" => registry
            .update_watch_entry(
                &session.caller,
                &form.entry_id,
                &WatchChange {
                    priority: Some(form.priority()),
                    ..Default::default()
                },
            )
            .await
            .map(|_| "changed"),
        "remove" => registry
            .remove_watch_entry(&session.caller, &form.entry_id)
            .await
            .map(|_| "removed"),
        _ => Err(RegistryError::invalid(
            "action",
            "must be add, priority or remove",
        )),
    };
    match result {
        Ok(done) => {
            tracing::info!(caller = %session.caller.audit_name(), action = %form.action, "Watch list changed (web).");
            Ok(redirect(&format!("{PAGE}?done={done}"), None))
        }
        Err(e) if is_internal(&e) => Err(internal("Watch list change", &e)),
        Err(e) => {
            let status = registry_status(&e);
            let entries = registry
                .list_watch_entries(&session.caller, false)
                .await
                .map_err(|e| internal("Watch list", &e))?;
            Ok(page(
                &session,
                &entries,
                status,
                None,
                Some(explain(&e)),
                &form,
            ))
        }
    }
}
