//! Investigations over the pass history on the command center: a stakeout (which tags passed
//! these readers, or any reader inside a polygon, in a window) and a companion search (伴随:
//! which tags rode with a bike, on at least k of its readers within delta-t of it). The
//! same bounded, audited calls as `Command.Stakeout` and `Command.Companions`: each needs a
//! reason or case number, which goes into the audit log with the search.
//!
//! A search is a `GET` (it changes nothing but the audit log), so its result has a link
//! the officer can keep; times are China Standard Time, as shown everywhere else.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use greenplate_alerting::investigate::{self, Companion, CompanionQuery, Stakeout, Watched};
use greenplate_registry::{BikeKey, TagId, now_ms};
use maud::{Markup, html};
use serde::Deserialize;

use super::{AREA, top_bar};
use crate::error::{WebError, alerting_status};
use crate::extract::CommandSession;
use crate::i18n::{Bilingual, explain_alerting};
use crate::page::{both, datetime, html_response, layout, parse_datetime, query_value};
use crate::state::WebState;

const PAGE: &str = "/command/investigate";
const DAY_MS: i64 = 24 * 3_600_000;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SearchForm {
    /// `stakeout` or `companions`; empty: the forms only.
    kind: String,
    /// Stakeout: reader ids, separated by commas or spaces.
    readers: String,
    /// Stakeout: a GeoJSON Polygon or MultiPolygon (instead of readers).
    polygon: String,
    /// Companions: a plate or a tag id.
    subject: String,
    from: String,
    to: String,
    delta_s: Option<u32>,
    min_readers: Option<u32>,
    limit: Option<u32>,
    reason: String,
}

enum Found {
    Stakeout(Stakeout),
    Companions(Vec<Companion>, usize),
}

fn refused(zh: &str, en: &str) -> Bilingual {
    Bilingual::new(zh, en)
}

/// The window of the form, or what is wrong with it.
fn window(form: &SearchForm) -> Result<(i64, i64), Bilingual> {
    let from = parse_datetime(&form.from).ok_or_else(|| {
        refused(
            "开始时间格式应为 YYYY-MM-DD HH:MM",
            "From: write YYYY-MM-DD HH:MM",
        )
    })?;
    let to = parse_datetime(&form.to).ok_or_else(|| {
        refused(
            "结束时间格式应为 YYYY-MM-DD HH:MM",
            "To: write YYYY-MM-DD HH:MM",
        )
    })?;
    Ok((from, to))
}

async fn search(
    web: &WebState,
    session: &crate::session::Session,
    form: &SearchForm,
) -> Result<Found, (StatusCode, Bilingual)> {
    let bad = |b: Bilingual| (StatusCode::BAD_REQUEST, b);
    let (from, to) = window(form).map_err(bad)?;
    let failed = |e: greenplate_alerting::AlertingError| {
        let status = alerting_status(&e);
        if status.is_server_error() {
            tracing::error!(error = %e, "Investigation failed.");
        }
        (status, explain_alerting(&e))
    };
    match form.kind.as_str() {
        "stakeout" => {
            let readers: Vec<String> = form
                .readers
                .split([',', ' ', '\n', '\r', '\t', '，'])
                .filter(|r| !r.is_empty())
                .map(str::to_owned)
                .collect();
            let watched = match (readers.is_empty(), form.polygon.trim().is_empty()) {
                (false, true) => Watched::Readers(readers),
                (true, false) => Watched::Polygon(form.polygon.clone()),
                _ => {
                    return Err(bad(refused(
                        "请填写读写器或区域（二选一）",
                        "Give readers or an area (one of the two)",
                    )));
                }
            };
            let limit = form.limit.map_or(investigate::MAX_STAKEOUT, |n| n as usize);
            web.alerting
                .stakeout(&session.caller, &watched, from, to, limit, &form.reason)
                .await
                .map(Found::Stakeout)
                .map_err(failed)
        }
        "companions" => {
            let subject = form.subject.trim();
            if subject.is_empty() {
                return Err(bad(refused(
                    "请填写车牌号或电子标签号",
                    "Give a plate or a tag id",
                )));
            }
            let subject = if TagId::parse(subject).is_some() {
                BikeKey::Tag(subject.to_owned())
            } else {
                BikeKey::Plate(subject.to_owned())
            };
            let query = CompanionQuery {
                subject,
                from_ms: from,
                to_ms: to,
                delta_ms: i64::from(form.delta_s.unwrap_or(60)) * 1000,
                min_readers: form.min_readers.unwrap_or(3),
                limit: form
                    .limit
                    .map_or(investigate::MAX_COMPANIONS, |n| n as usize),
            };
            web.alerting
                .companions(&session.caller, &query, &form.reason)
                .await
                .map(|(c, searched)| Found::Companions(c, searched))
                .map_err(failed)
        }
        _ => Err(bad(refused(
            "未知的研判类型",
            "Unknown kind of investigation",
        ))),
    }
}

fn plate_link(plate: &str, tag: &str) -> Markup {
    html! {
        @if plate.is_empty() { span.mono { (tag) } } @else {
            a href=(format!("/command?track={}", query_value(plate))) { (plate) }
        }
    }
}

fn results(found: &Found) -> Markup {
    match found {
        Found::Stakeout(s) => html! {
            h2 { "蹲守结果 / Stakeout: " span #stakeout-count.count { (s.passes.len()) }
                @if s.truncated { " " span.quiet { "(部分 / truncated)" } } }
            p.quiet { "读写器 / Readers: " (s.reader_ids.join(", ")) }
            table #stakeout-results {
                thead { tr { th { "车牌 / Plate" } th { "电子标签 / Tag" } th { "读写器 / Reader" } th { "首次 / First" } th { "末次 / Last" } th { "读取 / Reads" } } }
                tbody {
                    @for p in &s.passes {
                        tr data-tag=(p.tag_id) {
                            td { (plate_link(&p.plate, &p.tag_id)) }
                            td.mono { (p.tag_id) }
                            td { (p.reader_id) }
                            td.time { (datetime(p.first_seen_ms)) }
                            td.time { (datetime(p.last_seen_ms)) }
                            td { (p.reads) }
                        }
                    }
                }
            }
        },
        Found::Companions(c, searched) => html! {
            h2 { "伴随结果 / Companions: " span #companion-count.count { (c.len()) } }
            p.quiet { "检索了目标车辆的 " (searched) " 次经过 / searched " (searched) " passes of the bike" }
            table #companion-results {
                thead { tr { th { "车牌 / Plate" } th { "电子标签 / Tag" } th { "共同读写器 / Readers" } th { "共同经过 / Passes" } th { "首次 / First" } th { "末次 / Last" } } }
                tbody {
                    @for x in c {
                        tr data-tag=(x.tag_id) {
                            td { (plate_link(&x.plate, &x.tag_id)) }
                            td.mono { (x.tag_id) }
                            td { (x.readers) }
                            td { (x.passes) }
                            td.time { (datetime(x.first_seen_ms)) }
                            td.time { (datetime(x.last_seen_ms)) }
                        }
                    }
                }
            }
        },
    }
}

fn reason_field(id: &str, value: &str) -> Markup {
    html! {
        div.field {
            label for=(id) { "研判理由或案件编号（记入审计日志）/ Reason or case number (audited)" }
            input id=(id) name="reason" required value=(value);
        }
    }
}

fn window_fields(prefix: &str, from: &str, to: &str) -> Markup {
    html! {
        div.field {
            label for=(format!("{prefix}-from")) { "开始 / From (YYYY-MM-DD HH:MM)" }
            input id=(format!("{prefix}-from")) name="from" value=(from);
        }
        div.field {
            label for=(format!("{prefix}-to")) { "结束 / To" }
            input id=(format!("{prefix}-to")) name="to" value=(to);
        }
    }
}

/// `GET /command/investigate`: the two search forms, and the result of one if asked.
pub async fn investigate(
    State(web): State<WebState>,
    Query(form): Query<SearchForm>,
    CommandSession(session): CommandSession,
) -> Result<Response, WebError> {
    let outcome = if form.kind.is_empty() {
        None
    } else {
        Some(search(&web, &session, &form).await)
    };
    let status = match &outcome {
        // Logged where it failed.
        Some(Err((status, problem))) if status.is_server_error() => {
            return Err(WebError::message(*status, problem.clone(), AREA));
        }
        Some(Err((status, _))) => *status,
        _ => StatusCode::OK,
    };
    // Unless the officer gave a window: the last day.
    let now = now_ms();
    let default = |given: &str, ms: i64| {
        if given.trim().is_empty() {
            datetime(ms)
        } else {
            given.to_owned()
        }
    };
    let (from, to) = (default(&form.from, now - DAY_MS), default(&form.to, now));
    let stakeout = form.kind == "stakeout";
    let companions = form.kind == "companions";
    let body = html! {
        (top_bar(&session, false))
        main #investigate {
            h1 { "研判 / Investigations" }
            p.quiet { "每次检索均记录理由、检索人及时间；时间窗最长 7 天。 / Every search is audited with its reason; windows of at most 7 days." }
            @if let Some(Err((_, problem))) = &outcome {
                p.error.banner role="alert" { (both(problem)) }
            }
            div.actions {
                form.card #stakeout-form method="get" action=(PAGE) {
                    input type="hidden" name="kind" value="stakeout";
                    h2 { "蹲守 / Stakeout" }
                    div.field {
                        label for="stakeout-readers" { "读写器（逗号分隔）/ Readers (comma separated)" }
                        input #stakeout-readers name="readers" value=[stakeout.then_some(form.readers.as_str())];
                    }
                    div.field {
                        label for="stakeout-polygon" { "或区域 GeoJSON / or an area, GeoJSON polygon" }
                        input #stakeout-polygon name="polygon" value=[stakeout.then_some(form.polygon.as_str())];
                    }
                    (window_fields("stakeout", &from, &to))
                    (reason_field("stakeout-reason", if stakeout { &form.reason } else { "" }))
                    button.primary type="submit" { "检索 / Search" }
                }
                form.card #companions-form method="get" action=(PAGE) {
                    input type="hidden" name="kind" value="companions";
                    h2 { "伴随分析 / Companions" }
                    div.field {
                        label for="companions-subject" { "车牌号或电子标签号 / Plate or tag id" }
                        input #companions-subject name="subject" value=[companions.then_some(form.subject.as_str())];
                    }
                    (window_fields("companions", &from, &to))
                    div.field {
                        label for="companions-delta" { "时间差（秒）/ Within (seconds)" }
                        input #companions-delta name="delta_s" type="number" min="1" value=(form.delta_s.unwrap_or(60));
                    }
                    div.field {
                        label for="companions-min" { "至少共同读写器数 / On at least (readers)" }
                        input #companions-min name="min_readers" type="number" min="2" value=(form.min_readers.unwrap_or(3));
                    }
                    (reason_field("companions-reason", if companions { &form.reason } else { "" }))
                    button.primary type="submit" { "检索 / Search" }
                }
            }
            @if let Some(Ok(found)) = &outcome { (results(found)) }
        }
    };
    Ok(html_response(status, layout("Investigations", None, body)))
}
