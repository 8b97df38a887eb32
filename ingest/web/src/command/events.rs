//! The live event stream: alerts from [`alert_feed`] and, every few seconds, readers' health,
//! ingest rates and the incidents others changed.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use greenplate_alerting::{AlertingError, alert_feed};
use greenplate_proto::v1::Alert;
use greenplate_registry::now_ms;
use serde::Deserialize;
use tokio_stream::wrappers::ReceiverStream;

use super::{MAX_INCIDENTS, kind_name, online};
use crate::error::WebError;
use crate::extract::CommandSession;
use crate::limits::FEEDS_PER_SESSION;
use crate::page::short_datetime;
use crate::state::WebState;

/// How far before its start a live stream looks for incidents others changed.
const INCIDENT_LOOKBACK_MS: i64 = 60_000;
/// How often the live stream sends readers' health and ingest rates.
const STATUS_EVERY: Duration = Duration::from_secs(2);

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
        "escalation": a.escalation,
        "reason": a.reason,
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
    let t = (web.totals)();
    Counts {
        at: Instant::now(),
        reads: t.reads,
        batches: t.batches,
        sightings: t.sightings,
        rejected: t.rejected,
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
    session: Option<CommandSession>,
) -> Result<Response, WebError> {
    let CommandSession(session) = session.ok_or(WebError::StreamSignedOut)?;
    let Some(slot) = web.sessions.open_feed(&session.id, FEEDS_PER_SESSION) else {
        web.metrics.feeds_refused.inc();
        tracing::warn!(caller = %session.caller.audit_name(), "Refused a live feed: the session holds the most allowed.");
        return Err(WebError::TooManyFeeds);
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
        let auth = web.auth().clone();
        let credential = session.credential.clone();
        async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    // The token was revoked or expired: the session ends with the feed.
                    _ = auth.ended(&credential) => {
                        sessions.remove(&id);
                        break;
                    }
                    _ = tokio::time::sleep(STATUS_EVERY) => {
                        if !sessions.alive(&id, Instant::now()) {
                            break;
                        }
                    }
                }
            }
        }
    };
    // The feed's slot goes with the stream, and back when the stream is dropped.
    let stream = futures::stream::select(alerts, status)
        .take_until(stop)
        .map(move |e| {
            let _held = &slot;
            e
        });
    let mut r = Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response();
    r.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_alerts_carry_their_seq_as_the_event_id() {
        let a = Alert {
            seq: 42,
            incident_id: "inc-1".into(),
            kind: 1,
            plate: "潮阳A1<b>".into(),
            ..Default::default()
        };
        // The event's wire form (its Debug shows the buffer): the seq is the event id, which
        // a browser sends back as Last-Event-ID; the body's "seq":42 must not satisfy this.
        let text = format!("{:?}", alert_event(&a));
        assert!(text.contains("id: 42\\n"), "{text}");
        let other = format!(
            "{:?}",
            alert_event(&Alert {
                seq: 43,
                ..a.clone()
            })
        );
        assert!(!other.contains("id: 42"), "{other}");
    }
}
