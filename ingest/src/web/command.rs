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
//! [`Alerting`]: greenplate_alerting::Alerting

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use greenplate_alerting::{AlertingError, OpenIncident, Pass, Zone, ZoneKind, alert_feed};
use greenplate_proto::v1::{Alert, Outcome};
use greenplate_registry::{BikeKey, Reader, RegistryError, Role, TagId, now_ms};
use maud::{Markup, html};
use serde::Deserialize;
use tokio_stream::wrappers::ReceiverStream;

use super::WebState;
use super::i18n::{Bilingual, explain, is_internal};
use super::page::{
    both, csrf_refused, datetime, html_response, layout, message, query_value, redirect,
    session_expired, short_datetime,
};
use super::session::{Area, Session};
use super::sign_in::{self, CsrfForm, Door, LoginForm};

const AREA: Area = Area::Command;
const HOME: &str = "/command";
/// Open incidents drawn on the page at most (the newest).
const MAX_INCIDENTS: i64 = 500;
/// Track points drawn at most.
const MAX_TRACK_POINTS: usize = 2000;
/// How far before its start a live stream looks for incidents others changed.
const INCIDENT_LOOKBACK_MS: i64 = 60_000;
/// How often the live stream sends readers' health and ingest rates.
const STATUS_EVERY: Duration = Duration::from_secs(2);
/// Map drawing size (SVG user units).
const MAP_W: f64 = 800.0;
const MAP_H: f64 = 560.0;

/// What an alert kind is called.
pub fn kind_name(kind: i32) -> (&'static str, &'static str) {
    match kind {
        1 => ("被盗车辆出现", "Stolen bike seen"),
        2 => ("设防车辆移动", "Armed bike moving"),
        3 => ("作废标签出现", "Revoked tag seen"),
        4 => ("疑似克隆标签", "Suspected cloned tag"),
        5 => ("布控区域告警", "Watch zone"),
        6 => ("读卡器离线", "Reader offline"),
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
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let alerting = web.alerting.clone();
    sign_in::sign_in(&DOOR, &web, &headers, &form, |c| {
        c.role == Role::Patrol && alerting.is_command_unit(&c.id)
    })
}

pub async fn logout(
    State(web): State<WebState>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    sign_in::sign_out(&DOOR, &web, &headers, &form)
}

/// A linear map projection fitted to the district's extent (a district is small enough
/// that longitude scaled by cos(latitude) is as good as any projection).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Proj {
    min_lon: f64,
    max_lat: f64,
    /// SVG units per degree.
    kx: f64,
    ky: f64,
}

impl Proj {
    fn fit(points: impl Iterator<Item = (f64, f64)>) -> Self {
        let (mut lo_lat, mut hi_lat, mut lo_lon, mut hi_lon) = (
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
        );
        for (lat, lon) in points.filter(|(a, o)| a.is_finite() && o.is_finite()) {
            lo_lat = lo_lat.min(lat);
            hi_lat = hi_lat.max(lat);
            lo_lon = lo_lon.min(lon);
            hi_lon = hi_lon.max(lon);
        }
        if !lo_lat.is_finite() {
            // Nothing provisioned yet: Chaoyang.
            (lo_lat, hi_lat, lo_lon, hi_lon) = (23.22, 23.30, 116.55, 116.65);
        }
        // At least ~1 km across, plus a margin.
        let pad_lat = ((hi_lat - lo_lat) * 0.08).max(0.005);
        let pad_lon = ((hi_lon - lo_lon) * 0.08).max(0.005);
        let (lo_lat, hi_lat) = (lo_lat - pad_lat, hi_lat + pad_lat);
        let (lo_lon, hi_lon) = (lo_lon - pad_lon, hi_lon + pad_lon);
        let cos = ((lo_lat + hi_lat) / 2.0).to_radians().cos().max(0.01);
        let k = (MAP_W / ((hi_lon - lo_lon) * cos)).min(MAP_H / (hi_lat - lo_lat));
        // Centre the extent in the drawing.
        let used_w = (hi_lon - lo_lon) * cos * k;
        let used_h = (hi_lat - lo_lat) * k;
        Self {
            min_lon: lo_lon - (MAP_W - used_w) / 2.0 / (cos * k),
            max_lat: hi_lat + (MAP_H - used_h) / 2.0 / k,
            kx: cos * k,
            ky: k,
        }
    }

    fn x(&self, lon: f64) -> f64 {
        (lon - self.min_lon) * self.kx
    }

    fn y(&self, lat: f64) -> f64 {
        (self.max_lat - lat) * self.ky
    }

    fn lon(&self, x: f64) -> f64 {
        self.min_lon + x / self.kx
    }

    fn lat(&self, y: f64) -> f64 {
        self.max_lat - y / self.ky
    }
}

/// Web-Mercator tiles covering the map, at a zoom where about four span its width.
fn tiles(template: &str, proj: &Proj) -> Vec<(String, f64, f64, f64, f64)> {
    use std::f64::consts::PI;
    let (west, east) = (proj.lon(0.0), proj.lon(MAP_W));
    let (north, south) = (proj.lat(0.0), proj.lat(MAP_H));
    let span = (east - west).max(1e-6);
    let z = ((360.0 * 4.0 / span).log2().floor()).clamp(1.0, 19.0) as u32;
    let n = f64::from(1u32 << z);
    let tx = |lon: f64| ((lon + 180.0) / 360.0 * n).floor();
    let ty = |lat: f64| {
        let r = lat.to_radians();
        ((1.0 - (r.tan() + 1.0 / r.cos()).ln() / PI) / 2.0 * n).floor()
    };
    let tlon = |x: f64| x / n * 360.0 - 180.0;
    let tlat = |y: f64| (PI * (1.0 - 2.0 * y / n)).sinh().atan().to_degrees();
    let mut out = Vec::new();
    let (x0, x1, y0, y1) = (tx(west), tx(east), ty(north), ty(south));
    if (x1 - x0 + 1.0) * (y1 - y0 + 1.0) > 64.0 {
        return out;
    }
    let mut y = y0;
    while y <= y1 {
        let mut x = x0;
        while x <= x1 {
            let url = template
                .replace("{z}", &z.to_string())
                .replace("{x}", &(x as u64).to_string())
                .replace("{y}", &(y as u64).to_string());
            let (px, py) = (proj.x(tlon(x)), proj.y(tlat(y)));
            let (qx, qy) = (proj.x(tlon(x + 1.0)), proj.y(tlat(y + 1.0)));
            out.push((url, px, py, qx - px, qy - py));
            x += 1.0;
        }
        y += 1.0;
    }
    out
}

fn online(r: &Reader) -> bool {
    r.enabled() && r.last_activity_ms() > 0 && r.liveness().offline_since_ms.is_none()
}

/// SVG points of a ring of (lon, lat).
fn ring_points(proj: &Proj, ring: impl Iterator<Item = (f64, f64)>) -> String {
    ring.map(|(lon, lat)| format!("{:.1},{:.1}", proj.x(lon), proj.y(lat)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The district map as SVG: tiles (if configured), zones, readers, incidents, a track.
fn map_svg(
    proj: &Proj,
    tile_url: Option<&str>,
    zones: &[Zone],
    readers: &[Arc<Reader>],
    incidents: &[OpenIncident],
    track: &[(f64, f64)],
) -> Markup {
    html! {
        svg #map viewBox=(format!("0 0 {MAP_W} {MAP_H}")) role="img"
            aria-label="区域地图 / District map"
            data-min-lon=(proj.min_lon) data-max-lat=(proj.max_lat)
            data-kx=(proj.kx) data-ky=(proj.ky) xmlns="http://www.w3.org/2000/svg" {
            rect.sea x="0" y="0" width=(MAP_W) height=(MAP_H) {}
            @if let Some(t) = tile_url {
                g.tiles {
                    @for (url, x, y, w, h) in tiles(t, proj) {
                        image href=(url) x=(format!("{x:.1}")) y=(format!("{y:.1}"))
                            width=(format!("{w:.1}")) height=(format!("{h:.1}"))
                            preserveAspectRatio="none" {}
                    }
                }
            }
            g.zones {
                @for z in zones {
                    @for poly in &z.area.0 {
                        polygon class=(match z.kind { ZoneKind::Watch => "zone watch", ZoneKind::Patrol => "zone patrol" })
                            points=(ring_points(proj, poly.exterior().0.iter().map(|c| (c.x, c.y)))) {
                            title { (z.name) " (" (z.id) ")" }
                        }
                    }
                }
            }
            @if !track.is_empty() {
                g.track {
                    polyline points=(track.iter().map(|(lat, lon)| format!("{:.1},{:.1}", proj.x(*lon), proj.y(*lat))).collect::<Vec<_>>().join(" ")) {}
                    @for (lat, lon) in track {
                        circle cx=(format!("{:.1}", proj.x(*lon))) cy=(format!("{:.1}", proj.y(*lat))) r="3" {}
                    }
                }
            }
            g.readers {
                @for r in readers {
                    circle class=(if online(r) { "reader online" } else { "reader offline" })
                        data-reader=(r.id)
                        cx=(format!("{:.1}", proj.x(r.lon))) cy=(format!("{:.1}", proj.y(r.lat))) r="4" {
                        title { (r.id) " " (r.name) }
                    }
                }
            }
            g #markers {
                @for i in incidents {
                    g class=(format!("marker kind-{}", i.kind)) data-incident=(i.last.incident_id)
                        transform=(format!("translate({:.1},{:.1})", proj.x(i.last.lon), proj.y(i.last.lat))) {
                        circle r="8" {}
                        text x="11" y="4" { (i.last.plate) }
                    }
                }
            }
        }
    }
}

/// One row of the incident list (the script builds the same for live ones).
fn incident_row(session: &Session, i: &OpenIncident) -> Markup {
    let a = &i.last;
    let (zh, en) = kind_name(i.kind);
    html! {
        tr data-incident=(a.incident_id) data-seq=(a.seq) class=(if a.priority > 1 { "urgent" } else { "" }) {
            td.time title=(datetime(a.seen_at_ms)) { (short_datetime(a.seen_at_ms)) }
            td { span.zh { (zh) } br; span.en { (en) } }
            td.plate {
                @if a.plate.is_empty() { "-" } @else {
                    a href=(format!("/command?track={}", query_value(&a.plate))) { (a.plate) }
                }
            }
            td.reader { (a.reader_id) }
            td.state { @if i.acknowledged { "已受理 / acknowledged" } @else { "新 / open" } }
            td.act { (incident_actions(session, &a.incident_id, i.acknowledged)) }
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
pub struct PageQuery {
    /// A plate or tag whose last day's track to draw.
    track: String,
}

/// What a track request found.
struct Track {
    subject: String,
    points: Vec<(f64, f64)>,
    passes: Vec<Pass>,
    truncated: bool,
}

async fn load_track(web: &WebState, session: &Session, q: &str) -> Result<Track, AlertingError> {
    let q = q.trim();
    let key = if TagId::parse(q).is_some() {
        BikeKey::Tag(q.to_owned())
    } else {
        BikeKey::Plate(q.to_owned())
    };
    let to = now_ms();
    let from = to - greenplate_alerting::service::DEFAULT_TRACK_WINDOW_MS;
    let (subject, passes, truncated) = web
        .alerting
        .track(&session.caller, &key, from, to, MAX_TRACK_POINTS)
        .await?;
    let readers = web.alerting.registry().readers();
    let points = passes
        .iter()
        .filter_map(|p| readers.get(&p.reader_id).map(|r| (r.lat, r.lon)))
        .collect();
    Ok(Track {
        subject: if subject.plate.is_empty() {
            q.to_owned()
        } else {
            subject.plate
        },
        points,
        passes,
        truncated,
    })
}

/// The command-center page (or its sign-in).
pub async fn home(
    State(web): State<WebState>,
    headers: HeaderMap,
    Query(query): Query<PageQuery>,
) -> Response {
    let Some(session) = web.sessions.from_headers(AREA, &headers, Instant::now()) else {
        return sign_in_page(StatusCode::OK, None);
    };
    // The seq first, the list after: an alert committed in between is in both, and the
    // page's script folds it into its incident's row.
    let loaded = async {
        let after = web.alerting.last_seq().await?;
        let incidents = web.alerting.open_incidents(MAX_INCIDENTS).await?;
        Ok::<_, AlertingError>((after, incidents))
    }
    .await;
    let (after, incidents) = match loaded {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(error = %e, "Command-center page failed.");
            return message(
                StatusCode::INTERNAL_SERVER_ERROR,
                &Bilingual::new("系统错误，请稍后再试", "Internal error; please try again"),
                HOME,
            );
        }
    };
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
        header.top {
            span.brand { "greenplate 指挥中心 / Command center" }
            span.who { "单位 / Unit: " (session.caller.id) }
            span #live.live { "连接中… / connecting…" }
            form method="post" action="/command/logout" {
                input type="hidden" name="csrf" value=(session.csrf);
                button.secondary type="submit" { "退出 / Sign out" }
            }
        }
        main.command #command data-after=(after) data-csrf=(session.csrf) {
            section.mapbox {
                (map_svg(&proj, web.tile_url.as_deref(), &zones, &readers, &incidents, track_points))
                form.track method="get" action="/command" {
                    label for="track" { span.zh { "车辆轨迹（24小时）" } " " span.en { "Track (last 24 h)" } }
                    div.row {
                        input #track name="track" type="search" value=(query.track) placeholder="车牌号或标签号 / plate or tag id";
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
                    thead { tr { th { "时间 / Seen" } th { "类型 / Kind" } th { "车牌 / Plate" } th { "读卡器 / Reader" } th { "状态 / State" } th {} } }
                    tbody #incident-rows {
                        @for i in &incidents { (incident_row(&session, i)) }
                    }
                }
                @if incidents.is_empty() {
                    p #no-incidents.quiet { "暂无未结案事件 / No open incidents" }
                }
                h2 { "采集速率 / Ingest rates" }
                dl #rates.rates {
                    dt { "读取 / reads" } dd #rate-reads { "-" }
                    dt { "批次 / batches" } dd #rate-batches { "-" }
                    dt { "有效读取 / sightings" } dd #rate-sightings { "-" }
                    dt { "拒收批次 / rejected" } dd #rate-rejected { "-" }
                }
                h2 { "读卡器 / Readers " span.count { (readers.len()) } }
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
    html_response(
        StatusCode::OK,
        layout("Command center", Some("/web/command.js"), body),
    )
}

fn track_error(e: &AlertingError) -> Bilingual {
    match e {
        AlertingError::Registry(r) => {
            if is_internal(r) {
                tracing::error!(error = %r, "Track failed.");
            }
            explain(r).1
        }
        AlertingError::Zone(z) => Bilingual::new("无效", z.to_string()),
        AlertingError::Db(d) => {
            tracing::error!(error = %d, "Track failed.");
            Bilingual::new("系统错误", "Internal error")
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct IncidentForm {
    csrf: String,
    incident_id: String,
    action: String,
    outcome: String,
    note: String,
}

/// Acknowledge or resolve an incident, as the signed-in unit.
pub async fn incident(
    State(web): State<WebState>,
    headers: HeaderMap,
    Form(form): Form<IncidentForm>,
) -> Response {
    let Some(session) = web.sessions.from_headers(AREA, &headers, Instant::now()) else {
        return session_expired(HOME);
    };
    if !session.csrf_ok(&form.csrf) {
        return csrf_refused(HOME);
    }
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
    match result {
        Ok(_) => {
            tracing::info!(
                caller = %session.caller.audit_name(),
                incident = %form.incident_id,
                action = %form.action,
                "Incident changed (web)."
            );
            redirect(HOME, None)
        }
        Err(e) => {
            let status = match &e {
                AlertingError::Registry(RegistryError::NotFound(_)) => StatusCode::NOT_FOUND,
                AlertingError::Registry(RegistryError::FailedPrecondition(_)) => {
                    StatusCode::CONFLICT
                }
                AlertingError::Registry(r) if is_internal(r) => StatusCode::INTERNAL_SERVER_ERROR,
                AlertingError::Db(_) => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            message(status, &track_error(&e), HOME)
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct EventsQuery {
    /// The last seq the page has (used when the browser sends no Last-Event-ID).
    after: u64,
}

fn alert_event(a: &Alert) -> Event {
    let (zh, en) = kind_name(a.kind);
    let data = serde_json::json!({
        "seq": a.seq,
        "incident_id": a.incident_id,
        "kind": a.kind,
        "kind_zh": zh,
        "kind_en": en,
        "plate": a.plate,
        "tag_id": a.tag_id,
        "reader_id": a.reader_id,
        "lat": a.lat,
        "lon": a.lon,
        "seen": short_datetime(a.seen_at_ms),
        "priority": a.priority,
    });
    Event::default()
        .id(a.seq.to_string())
        .event("alert")
        .data(data.to_string())
}

/// Counter readings for rates.
#[derive(Debug, Clone, Copy)]
struct Counts {
    at: Instant,
    reads: u64,
    batches: u64,
    sightings: u64,
    rejected: u64,
}

fn counts(web: &WebState) -> Counts {
    let m = &web.metrics;
    Counts {
        at: Instant::now(),
        reads: m.reads.get(),
        batches: m.batches_accepted.get(),
        sightings: m.sightings_accepted.get(),
        rejected: m.batches_rejected_all.get(),
    }
}

/// What a stream last told its page about each reader (online, last seen).
type ReadersShown = HashMap<String, (bool, String)>;

/// Rates since `before`, and the readers whose health changed since the stream last said
/// (all of them the first time): a district has thousands of readers and a kiosk or
/// command center may be on a slow line.
fn status_event(
    web: &WebState,
    before: &Counts,
    now: &Counts,
    shown: &mut ReadersShown,
    incidents: &[(String, String)],
) -> Event {
    let secs = now.at.duration_since(before.at).as_secs_f64().max(0.001);
    let rate = |a: u64, b: u64| (a.saturating_sub(b) as f64 / secs * 10.0).round() / 10.0;
    let mut readers = Vec::new();
    for r in web.alerting.registry().readers().all() {
        let state = (online(&r), short_datetime(r.last_activity_ms()));
        if shown.get(&r.id) == Some(&state) {
            continue;
        }
        readers.push(serde_json::json!({
            "id": r.id,
            "online": state.0,
            "last_seen": state.1,
        }));
        shown.insert(r.id.clone(), state);
    }
    let data = serde_json::json!({
        "rates": {
            "reads": rate(now.reads, before.reads),
            "batches": rate(now.batches, before.batches),
            "sightings": rate(now.sightings, before.sightings),
            "rejected": rate(now.rejected, before.rejected),
        },
        "readers": readers,
        "incidents": incidents
            .iter()
            .map(|(id, state)| serde_json::json!({ "id": id, "state": state }))
            .collect::<Vec<_>>(),
    });
    Event::default().event("status").data(data.to_string())
}

/// The live stream: alerts (with their seq as the event id) and, every few seconds,
/// readers' health and ingest rates. It ends when the session ends or the service stops;
/// the browser then reconnects with `Last-Event-ID` (and, if signed out, is refused).
pub async fn events(
    State(web): State<WebState>,
    headers: HeaderMap,
    Query(query): Query<EventsQuery>,
) -> Response {
    let Some(session) = web.sessions.from_headers(AREA, &headers, Instant::now()) else {
        return (StatusCode::UNAUTHORIZED, "session expired\n").into_response();
    };
    let resume_after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(query.after);
    let feed = alert_feed::<AlertingError>(
        web.alerting.clone(),
        session.caller.id.clone(),
        resume_after,
        web.shutdown.clone(),
    );
    let alerts = ReceiverStream::new(feed).map(|r| {
        Ok::<_, Infallible>(match r {
            Ok(a) => alert_event(&a),
            Err(e) => {
                tracing::error!(error = %e, "Command-center feed failed.");
                Event::default().event("failed").data("feed failed")
            }
        })
    });
    // The first status at once (every reader), then one every few seconds (changes only),
    // with the incidents other users acknowledged or resolved meanwhile (from a little
    // before the stream opened: the page may be a few seconds old).
    let status_web = web.clone();
    let since = now_ms() - INCIDENT_LOOKBACK_MS;
    let status = futures::stream::unfold(
        (None::<Counts>, ReadersShown::new(), since),
        move |(before, mut shown, since)| {
            let web = status_web.clone();
            async move {
                if before.is_some() {
                    tokio::time::sleep(STATUS_EVERY).await;
                }
                let now = counts(&web);
                let checked_at = now_ms();
                // A little overlap between checks: a change committed with a clock reading
                // just before the previous check is not missed (repeats are harmless).
                let changes = match web
                    .alerting
                    .incident_changes(since - 1000, MAX_INCIDENTS)
                    .await
                {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "Reading incident changes failed.");
                        Vec::new()
                    }
                };
                let event = status_event(&web, &before.unwrap_or(now), &now, &mut shown, &changes);
                Some((Ok::<_, Infallible>(event), (Some(now), shown, checked_at)))
            }
        },
    );
    let stop = {
        let shutdown = web.shutdown.clone();
        let sessions = web.sessions.clone();
        let id = session.id.clone();
        async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(STATUS_EVERY) => {
                        if !sessions.alive(&id, Instant::now()) {
                            break;
                        }
                    }
                }
            }
        }
    };
    let stream = futures::stream::select(alerts, status).take_until(stop);
    let mut r = Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response();
    r.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_map_fits_the_district_and_round_trips() {
        let pts = [(23.20, 116.50), (23.32, 116.66)];
        let p = Proj::fit(pts.iter().copied());
        for (lat, lon) in pts {
            let (x, y) = (p.x(lon), p.y(lat));
            assert!(
                (0.0..=MAP_W).contains(&x) && (0.0..=MAP_H).contains(&y),
                "{x},{y}"
            );
            assert!((p.lat(y) - lat).abs() < 1e-9 && (p.lon(x) - lon).abs() < 1e-9);
        }
        // North is up.
        assert!(p.y(23.32) < p.y(23.20));
        // An empty district still draws.
        let empty = Proj::fit(std::iter::empty());
        assert!(empty.kx.is_finite() && empty.ky > 0.0);
    }

    #[test]
    fn tiles_cover_the_map() {
        let p = Proj::fit([(23.20, 116.50), (23.32, 116.66)].into_iter());
        let t = tiles("http://tiles.local/{z}/{x}/{y}.png", &p);
        assert!(!t.is_empty() && t.len() <= 64, "{}", t.len());
        assert!(t[0].0.starts_with("http://tiles.local/"));
        let (_, x, y, w, h) = &t[0];
        assert!(*x <= 0.0 && *y <= 0.0 && *w > 0.0 && *h > 0.0);
    }

    #[test]
    fn live_alerts_carry_their_seq_as_the_event_id() {
        let a = Alert {
            seq: 42,
            incident_id: "inc-1".into(),
            kind: 1,
            plate: "潮阳A1<b>".into(),
            ..Default::default()
        };
        let text = format!("{:?}", alert_event(&a));
        assert!(text.contains("42"), "{text}");
    }
}
