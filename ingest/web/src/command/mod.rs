//! The command center: the duty officer signs in with the token of a command-center patrol
//! unit and sees a live map of the district (readers, zones, the latest position of every
//! open incident, drawn as SVG from the district's own data), the live incident list with
//! acknowledge and resolve, a bike's track, readers' health and ingest rates.
//!
//! The live part is a server-sent event stream fed by [`alert_feed`], the same feed as
//! `Patrol.StreamAlerts`: the log first, then the live hub, from the seq the page was drawn
//! at (`?after=`), or from the browser's `Last-Event-ID` when it reconnects, so a reload or a
//! dropped connection misses nothing. Acknowledge, resolve and track call the same
//! [`Alerting`] functions as the Patrol service, as the signed-in unit.
//!
//! [`alert_feed`]: greenplate_alerting::alert_feed
//! [`Alerting`]: greenplate_alerting::Alerting
//!
//! The page plays an alarm for each live alert, a different sound per priority
//! (`/web/alarm-N.wav`, see `sound`), and keeps a panel of escalations and hits officers
//! rejected as a misread or a suspected clone. Beside it: the watch list (`watch`),
//! investigations over the pass history (`investigate`), and each incident's history with
//! the cameras of its readers (`detail`).
//!
//! Layout:
//! - `map`: the district map, drawn as SVG.
//! - `track`: a bike's last day, for the map.
//! - `incidents`: the incident list, acknowledge and resolve.
//! - `detail`: one incident: its alerts and steps, with camera links.
//! - `watch`: the watch list (布控): add, change the priority, remove.
//! - `investigate`: stakeout and companion searches, each with its audited reason.
//! - `events`: the live event stream.

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use greenplate_alerting::AlertingError;
use greenplate_registry::{Reader, Role};
use maud::{Markup, html};
use serde::Deserialize;

use super::error::WebError;
use super::extract::{ClientIp, CommandSession, Csrf};
use super::i18n::Bilingual;
use super::page::{both, datetime, html_response, layout, query_value, short_datetime};
use super::session::{Area, Session};
use super::sign_in::{self, Door, LoginForm};
use crate::state::WebState;
use map::{Proj, map_svg};
use track::{load_track, track_error};

mod detail;
mod events;
mod incidents;
mod investigate;
mod map;
mod track;
mod watch;

pub use detail::incident_detail;
pub use events::events;
pub use incidents::incident;
use incidents::{incident_row, notable_row};
pub use investigate::investigate;
pub use watch::{watch, watch_action};

const AREA: Area = Area::Command;
const HOME: &str = "/command";
/// Open incidents drawn on the page at most (the newest).
const MAX_INCIDENTS: i64 = 500;
/// Track points drawn at most.
const MAX_TRACK_POINTS: usize = 2000;
/// Escalations and rejected hits shown at most.
const MAX_NOTABLE: i64 = 50;

/// The bar at the top of every command-center page: who is signed in, the pages, sign-out.
fn top_bar(session: &Session, live: bool) -> Markup {
    html! {
        header.top {
            span.brand { "greenplate 指挥中心 / Command center" }
            nav.pages {
                a href="/command" { "地图 / Map" }
                a href="/command/watch" { "布控 / Watch list" }
                a href="/command/investigate" { "研判 / Investigations" }
            }
            span.who { "单位 / Unit: " (session.caller.id) }
            @if live { span #live.live { "连接中… / connecting…" } }
            form method="post" action="/command/logout" {
                input type="hidden" name="csrf" value=(session.csrf);
                button.secondary type="submit" { "退出 / Sign out" }
            }
        }
    }
}

/// A page's failure of the server's own (logged), as the officer sees it.
fn internal(what: &str, e: &dyn std::fmt::Display) -> WebError {
    tracing::error!(error = %e, "{what} failed.");
    WebError::message(
        StatusCode::INTERNAL_SERVER_ERROR,
        Bilingual::new("系统错误，请稍后再试", "Internal error; please try again"),
        AREA,
    )
}

/// What an alert kind is called.
pub fn kind_name(kind: i32) -> (&'static str, &'static str) {
    match kind {
        1 => ("被盗车辆出现", "Stolen bike seen"),
        2 => ("布防车辆移动", "Armed bike moving"),
        3 => ("作废电子标签出现", "Revoked tag seen"),
        4 => ("疑似克隆电子标签", "Suspected cloned tag"),
        5 => ("布控区域告警", "Watch zone"),
        6 => ("读写器离线", "Reader offline"),
        7 => ("探针标签出现", "Canary seen"),
        8 => ("探针标签未按时出现", "Canary missed"),
        9 => ("被盗车辆报案前出现", "Stolen bike seen before the report"),
        10 => ("布控车辆出现", "Watch list hit"),
        11 => (
            "民警否认命中（误读或克隆）",
            "Hit rejected (misread or clone)",
        ),
        _ => ("告警", "Alert"),
    }
}

const DOOR: Door = Door {
    area: AREA,
    home: HOME,
    title: "Command center sign-in",
    heading: "指挥中心 / Command center",
    token_zh: "指挥中心令牌",
    token_en: "Command-center token",
    wrong_kind: (
        "这不是指挥中心令牌",
        "This is not a command-center unit's token",
    ),
    signed_in: "Command-center web sign-in.",
};

fn sign_in_page(status: StatusCode, problem: Option<&Bilingual>) -> Response {
    sign_in::page(&DOOR, status, problem)
}

/// Signs a command-center unit in (a patrol unit provisioned with `command_center`).
pub async fn login(
    State(web): State<WebState>,
    ClientIp(client): ClientIp,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let alerting = web.alerting.clone();
    sign_in::sign_in(&DOOR, &web, client, &headers, &form, |c| {
        c.role == Role::Patrol && alerting.is_command_unit(&c.id)
    })
}

pub async fn logout(
    State(web): State<WebState>,
    Csrf(session, _): Csrf<Option<CommandSession>>,
) -> Response {
    sign_in::sign_out(&DOOR, &web, session.as_ref().map(|s| &s.0))
}

fn online(r: &Reader) -> bool {
    r.enabled() && r.last_activity_ms() > 0 && r.liveness().offline_since_ms.is_none()
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PageQuery {
    /// A plate or tag whose last day's track to draw.
    track: String,
}

/// The command-center page (or its sign-in).
pub async fn home(
    State(web): State<WebState>,
    Query(query): Query<PageQuery>,
    session: Option<CommandSession>,
) -> Result<Response, WebError> {
    let Some(CommandSession(session)) = session else {
        return Ok(sign_in_page(StatusCode::OK, None));
    };
    // The seq first, the list after: an alert committed in between is in both, and the
    // page's script folds it into its incident's row.
    let loaded = async {
        let after = web.alerting.last_seq().await?;
        let incidents = web.alerting.open_incidents(MAX_INCIDENTS).await?;
        let notable = web.alerting.notable_alerts(MAX_NOTABLE).await?;
        let waiting = web.alerting.waiting_thefts(MAX_INCIDENTS).await?;
        Ok::<_, AlertingError>((after, incidents, notable, waiting))
    }
    .await;
    let (after, incidents, notable, waiting) =
        loaded.map_err(|e| internal("Command-center page", &e))?;
    let track = if query.track.trim().is_empty() {
        None
    } else {
        Some(load_track(&web, &session, &query.track).await)
    };
    let mut readers = web.alerting.registry().readers().all();
    readers.sort_by(|a, b| (online(a), &a.id).cmp(&(online(b), &b.id)));
    let zones = web.alerting.zones();
    let track_points: &[(f64, f64)] = match &track {
        Some(Ok(t)) => &t.points,
        _ => &[],
    };
    let proj = Proj::fit(
        readers
            .iter()
            .map(|r| (r.lat, r.lon))
            .chain(
                zones
                    .iter()
                    .flat_map(|z| z.area.0.iter())
                    .flat_map(|p| p.exterior().0.iter().map(|c| (c.y, c.x))),
            )
            .chain(incidents.iter().map(|i| (i.last.lat, i.last.lon)))
            .chain(track_points.iter().copied()),
    );
    let body = html! {
        (top_bar(&session, true))
        // One alarm per priority; the script plays the one of each live alert.
        div.alarms hidden {
            @for p in 1..=3 {
                audio id=(format!("alarm-{p}")) src=(format!("/web/alarm-{p}.wav")) preload="auto" data-played="0" {}
            }
        }
        p #sound-off.notice hidden {
            button #sound-on type="button" { "开启声音 / Turn the alarm sound on" }
        }
        main.command #command data-after=(after) data-csrf=(session.csrf) {
            section.mapbox {
                (map_svg(&proj, web.tile_url.as_deref(), &zones, &readers, &incidents, track_points))
                form.track method="get" action="/command" {
                    label for="track" { span.zh { "车辆轨迹（24小时）" } " " span.en { "Track (last 24 h)" } }
                    div.row {
                        input #track name="track" type="search" value=(query.track) placeholder="车牌号或电子标签号 / plate or tag id";
                        button type="submit" { "显示 / Show" }
                    }
                }
                @match &track {
                    Some(Ok(t)) => {
                        p.notice #track-result {
                            (t.subject) ": " (t.passes.len()) " 次经过 / passes"
                            @if t.truncated { " (部分 / truncated)" }
                            @if let (Some(first), Some(last)) = (t.passes.first(), t.passes.last()) {
                                ", " (datetime(first.first_seen_ms)) " → " (datetime(last.last_seen_ms))
                            }
                        }
                    }
                    Some(Err(e)) => {
                        p.error role="alert" { (both(&track_error(e))) }
                    }
                    None => {}
                }
            }
            section.side {
                h2 { "告警事件 / Incidents " span #incident-count.count { (incidents.len()) } }
                table #incidents {
                    thead { tr { th { "时间 / Seen" } th { "类型 / Kind" } th { "车牌 / Plate" } th { "读写器 / Reader" } th { "状态 / State" } th {} } }
                    tbody #incident-rows {
                        @for i in &incidents { (incident_row(&session, i)) }
                    }
                }
                @if incidents.is_empty() {
                    p #no-incidents.quiet { "暂无未结案事件 / No open incidents" }
                }
                // Thefts reported and not seen since (no alert yet), as of the page's load.
                @if !waiting.is_empty() {
                    h2 { "已报案，尚未发现 / Reported, not seen yet " span #waiting-count.count { (waiting.len()) } }
                    table #waiting {
                        thead { tr { th { "报案 / Reported" } th { "车牌 / Plate" } } }
                        tbody {
                            @for w in &waiting {
                                tr data-incident=(w.incident_id) {
                                    td.time title=(datetime(w.opened_at_ms)) { (short_datetime(w.opened_at_ms)) }
                                    td.plate { a href=(format!("/command/incidents/{}", query_value(&w.incident_id))) { (w.plate) } }
                                }
                            }
                        }
                    }
                }
                h2 { "升级与否认命中 / Escalations and rejected hits" }
                table #notable {
                    thead { tr { th { "时间 / Seen" } th { "类型 / Kind" } th { "车牌 / Plate" } th { "读写器 / Reader" } th { "说明 / Why" } } }
                    tbody #notable-rows {
                        @for a in &notable { (notable_row(a)) }
                    }
                }
                h2 { "采集速率 / Ingest rates" }
                dl #rates.rates {
                    dt { "读取 / reads" } dd #rate-reads { "-" }
                    dt { "批次 / batches" } dd #rate-batches { "-" }
                    dt { "有效读取 / sightings" } dd #rate-sightings { "-" }
                    dt { "拒收批次 / rejected" } dd #rate-rejected { "-" }
                }
                h2 { "读写器 / Readers " span.count { (readers.len()) } }
                table #readers {
                    thead { tr { th { "编号 / Id" } th { "状态 / State" } th { "最后联系 / Last seen" } } }
                    tbody {
                        @for r in &readers {
                            tr data-reader=(r.id) class=(if online(r) { "online" } else { "offline" }) {
                                td { (r.id) }
                                td.state { @if online(r) { "在线 / online" } @else { "离线 / offline" } }
                                td.seen { (short_datetime(r.last_activity_ms())) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(html_response(
        StatusCode::OK,
        layout("Command center", Some("/web/command.js"), body),
    ))
}
