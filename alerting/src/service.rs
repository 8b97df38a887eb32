//! The `greenplate.v1.Patrol` gRPC service: each stream replays what the unit missed from
//! the alert log, then follows the live hub, with no gap and no duplicate between the two.
//!
//! The stream's task subscribes to the hub *before* reading the log, and remembers the last
//! seq it sent: an alert that is both in the log and in the hub is sent once; a stream whose
//! hub receiver lags (a slow client) goes back to the log from its last seq. The stream has a
//! bounded queue, so a stalled client holds only its own task.
//!
//! A stream lives as long as the token it was opened with: when that token is revoked (on
//! any node) or expires, the stream ends with UNAUTHENTICATED.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use greenplate_proto::v1::patrol_server::{self, PatrolServer};
use greenplate_proto::v1::{
    AcknowledgeIncidentRequest, Alert, ConfirmHitRequest, GetIncidentRequest, GetTrackRequest,
    GetTrackResponse, Incident, IncidentDetail, RejectHitRequest, ResolveIncidentRequest,
    StreamAlertsRequest, TrackPoint, UpdatePositionRequest, UpdatePositionResponse,
    get_incident_request, get_track_request,
};
use greenplate_registry::auth::{AuthInterceptor, Role, credential, require};
use greenplate_registry::{BikeKey, now_ms};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use crate::hits::Verdict;
use crate::incidents::IncidentKey;
use crate::state::Alerting;

/// Alerts buffered per stream before the stream task waits for the client.
const STREAM_QUEUE: usize = 64;
/// Alerts read from the log per query while replaying.
const REPLAY_PAGE: i64 = 256;
/// Most points one GetTrack returns.
const MAX_TRACK_POINTS: usize = 10_000;
/// The default track window: the last day.
pub const DEFAULT_TRACK_WINDOW_MS: i64 = 24 * 3600 * 1000;

/// The `[from, to]` window of a GetTrack: 0 for `to` is now, 0 for `from` is a day before
/// `to`; a window that ends before it starts is INVALID_ARGUMENT.
fn track_window(from_ms: i64, to_ms: i64, now_ms: i64) -> Result<(i64, i64), Status> {
    let to = if to_ms == 0 { now_ms } else { to_ms };
    let from = if from_ms == 0 {
        to.saturating_sub(DEFAULT_TRACK_WINDOW_MS)
    } else {
        from_ms
    };
    if from > to || from < 0 {
        return Err(Status::invalid_argument(
            "from_ms/to_ms: the window must not end before it starts",
        ));
    }
    Ok((from, to))
}

/// The Patrol service.
#[derive(Debug, Clone)]
pub struct PatrolService {
    alerting: Arc<Alerting>,
    shutdown: CancellationToken,
    slots: Arc<StreamSlots>,
}

impl PatrolService {
    /// The service behind its authentication interceptor; streams end when `shutdown` fires;
    /// each unit may hold `max_streams_per_unit` live streams.
    pub fn server(
        alerting: Arc<Alerting>,
        shutdown: CancellationToken,
        max_streams_per_unit: usize,
    ) -> InterceptedService<PatrolServer<Self>, AuthInterceptor> {
        let auth = alerting.registry().auth().interceptor();
        PatrolServer::with_interceptor(Self::new(alerting, shutdown, max_streams_per_unit), auth)
    }

    /// The service alone; its calls expect the authentication interceptor to have run (the
    /// HTTP/JSON API runs it too). Its stream slots are its own, not shared with another
    /// instance's.
    pub fn new(
        alerting: Arc<Alerting>,
        shutdown: CancellationToken,
        max_streams_per_unit: usize,
    ) -> Self {
        Self {
            alerting,
            shutdown,
            slots: Arc::new(StreamSlots {
                max: max_streams_per_unit,
                open: Mutex::new(HashMap::new()),
            }),
        }
    }
}

/// Live streams per unit, capped.
#[derive(Debug)]
struct StreamSlots {
    max: usize,
    open: Mutex<HashMap<String, usize>>,
}

impl StreamSlots {
    /// A slot for one more stream of `unit`, or `None` when it holds `max` already.
    fn acquire(self: &Arc<Self>, unit: &str) -> Option<StreamSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(unit.to_owned()).or_default();
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(StreamSlot {
            slots: self.clone(),
            unit: unit.to_owned(),
        })
    }
}

/// One open stream's slot, given back when the stream is dropped (the client went away,
/// or the server stopped).
#[derive(Debug)]
struct StreamSlot {
    slots: Arc<StreamSlots>,
    unit: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.unit) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.unit);
            }
        }
    }
}

/// A unit's alert stream, holding its slot for as long as tonic holds the stream, and
/// ending when the token it was opened with ends.
pub struct AlertStream {
    inner: ReceiverStream<Result<Alert, Status>>,
    /// Completes when the stream's token was revoked or expired; `None` once it did.
    token_ended: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    _slot: StreamSlot,
}

impl std::fmt::Debug for AlertStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertStream")
            .field("slot", &self._slot)
            .finish_non_exhaustive()
    }
}

impl tokio_stream::Stream for AlertStream {
    type Item = Result<Alert, Status>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let Some(ended) = self.token_ended.as_mut() else {
            return Poll::Ready(None);
        };
        if ended.as_mut().poll(cx).is_ready() {
            self.token_ended = None;
            return Poll::Ready(Some(Err(Status::unauthenticated(
                "the token of this stream was revoked or expired",
            ))));
        }
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

#[tonic::async_trait]
impl patrol_server::Patrol for PatrolService {
    type StreamAlertsStream = AlertStream;

    async fn stream_alerts(
        &self,
        req: Request<StreamAlertsRequest>,
    ) -> Result<Response<Self::StreamAlertsStream>, Status> {
        let caller = require(&req, &[Role::Patrol])?;
        let credential = credential(&req)?;
        let resume_after = req.get_ref().resume_after;
        let Some(slot) = self.slots.acquire(&caller.id) else {
            self.alerting.streams_refused.inc();
            tracing::warn!(unit = %caller.id, max = self.slots.max, "Refused a patrol stream: the unit holds the most live streams allowed.");
            return Err(Status::resource_exhausted(format!(
                "unit {} already holds {} live alert streams (grpc.max_streams_per_unit); \
                 close one first",
                caller.id, self.slots.max
            )));
        };
        tracing::info!(unit = %caller.id, resume_after, "Patrol stream opened.");
        let unit = caller.id.clone();
        let rx = alert_feed(
            self.alerting.clone(),
            caller.id,
            resume_after,
            self.shutdown.clone(),
        );
        let auth = self.alerting.registry().auth().clone();
        let token_ended = Box::pin(async move {
            auth.ended(&credential).await;
            tracing::info!(unit = %unit, "Ended a patrol stream: its token was revoked or expired.");
        });
        Ok(Response::new(AlertStream {
            inner: ReceiverStream::new(rx),
            token_ended: Some(token_ended),
            _slot: slot,
        }))
    }

    async fn acknowledge_incident(
        &self,
        req: Request<AcknowledgeIncidentRequest>,
    ) -> Result<Response<Incident>, Status> {
        let caller = require(&req, &[Role::Patrol, Role::Admin])?;
        let r = req.into_inner();
        let incident = self
            .alerting
            .acknowledge(&caller, &r.incident_id, &r.note)
            .await?;
        tracing::info!(caller = %caller.audit_name(), incident = %r.incident_id, "Incident acknowledged.");
        Ok(Response::new(incident))
    }

    async fn get_incident(
        &self,
        req: Request<GetIncidentRequest>,
    ) -> Result<Response<IncidentDetail>, Status> {
        let caller = require(&req, &[Role::Patrol, Role::Admin])?;
        let r = req.into_inner();
        let key = match r.key {
            Some(get_incident_request::Key::IncidentId(id)) => IncidentKey::Id(id),
            Some(get_incident_request::Key::Plate(p)) => IncidentKey::Plate(p),
            None => {
                return Err(Status::invalid_argument(
                    "incident_id or plate: one is required",
                ));
            }
        };
        let detail = self
            .alerting
            .incident_detail(&caller, &key, &r.reason)
            .await?;
        Ok(Response::new(detail))
    }

    async fn confirm_hit(
        &self,
        req: Request<ConfirmHitRequest>,
    ) -> Result<Response<Incident>, Status> {
        let caller = require(&req, &[Role::Patrol, Role::Admin])?;
        let r = req.into_inner();
        let incident = self
            .alerting
            .judge_hit(
                &caller,
                &r.incident_id,
                &r.alert_id,
                Verdict::Confirmed,
                &r.note,
            )
            .await?;
        tracing::info!(caller = %caller.audit_name(), incident = %r.incident_id, "Hit confirmed.");
        Ok(Response::new(incident))
    }

    async fn reject_hit(
        &self,
        req: Request<RejectHitRequest>,
    ) -> Result<Response<Incident>, Status> {
        let caller = require(&req, &[Role::Patrol, Role::Admin])?;
        let r = req.into_inner();
        let verdict = Verdict::Rejected(r.reason());
        let incident = self
            .alerting
            .judge_hit(&caller, &r.incident_id, &r.alert_id, verdict, &r.note)
            .await?;
        tracing::info!(
            caller = %caller.audit_name(),
            incident = %r.incident_id,
            reason = r.reason().as_str_name(),
            "Hit rejected."
        );
        Ok(Response::new(incident))
    }

    async fn update_position(
        &self,
        req: Request<UpdatePositionRequest>,
    ) -> Result<Response<UpdatePositionResponse>, Status> {
        let caller = require(&req, &[Role::Patrol])?;
        let r = req.into_inner();
        self.alerting
            .router()
            .update_position(&caller.id, r.lat, r.lon, r.on_duty)?;
        Ok(Response::new(UpdatePositionResponse {}))
    }

    async fn get_track(
        &self,
        req: Request<GetTrackRequest>,
    ) -> Result<Response<GetTrackResponse>, Status> {
        let caller = require(&req, &[Role::Patrol, Role::Admin])?;
        let r = req.into_inner();
        let key = match r.subject {
            Some(get_track_request::Subject::Plate(p)) => BikeKey::Plate(p),
            Some(get_track_request::Subject::TagId(t)) => BikeKey::Tag(t),
            None => return Err(Status::invalid_argument("plate or tag_id: one is required")),
        };
        let (from_ms, to_ms) = track_window(r.from_ms, r.to_ms, now_ms())?;
        let limit = match r.limit {
            0 => MAX_TRACK_POINTS,
            n => (n as usize).min(MAX_TRACK_POINTS),
        };
        let (subject, passes, truncated) = self
            .alerting
            .track(&caller, &key, from_ms, to_ms, limit, &r.reason)
            .await?;
        let readers = self.alerting.registry().readers();
        let points = passes
            .into_iter()
            .map(|p| {
                let (lat, lon) = readers
                    .get(&p.reader_id)
                    .map_or((0.0, 0.0), |r| (r.lat, r.lon));
                TrackPoint {
                    reader_id: p.reader_id.to_string(),
                    lat,
                    lon,
                    first_seen_ms: p.first_seen_ms,
                    last_seen_ms: p.last_seen_ms,
                    reads: p.reads,
                    peak_rssi_dbm: p.peak_rssi_dbm,
                    tag_id: p.tag.to_string(),
                }
            })
            .collect();
        Ok(Response::new(GetTrackResponse {
            plate: subject.plate,
            points,
            truncated,
        }))
    }

    async fn resolve_incident(
        &self,
        req: Request<ResolveIncidentRequest>,
    ) -> Result<Response<Incident>, Status> {
        let caller = require(&req, &[Role::Patrol, Role::Admin])?;
        let r = req.into_inner();
        let incident = self
            .alerting
            .resolve(&caller, &r.incident_id, r.outcome(), &r.note)
            .await?;
        tracing::info!(
            caller = %caller.audit_name(),
            incident = %r.incident_id,
            outcome = r.outcome().as_str_name(),
            "Incident resolved."
        );
        Ok(Response::new(incident))
    }
}

/// A unit's alerts with seq > `resume_after`: first what the log holds, then the live ones,
/// with no gap and no duplicate (see the module doc). The feed's task ends when the receiver
/// is dropped or `shutdown` fires. The same feed serves `Patrol.StreamAlerts` and the
/// command-center web page, so both see exactly the alert log.
pub fn alert_feed<E>(
    alerting: Arc<Alerting>,
    unit: String,
    resume_after: u64,
    shutdown: CancellationToken,
) -> mpsc::Receiver<Result<Alert, E>>
where
    E: From<crate::AlertingError> + Send + 'static,
{
    // Subscribe before the task reads the log, so nothing committed in between is missed.
    let live = alerting.subscribe();
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    tokio::spawn(feed(alerting, unit, resume_after, live, tx, shutdown));
    rx
}

async fn feed<E: From<crate::AlertingError>>(
    alerting: Arc<Alerting>,
    unit: String,
    mut last: u64,
    mut live: broadcast::Receiver<Arc<crate::LoggedAlert>>,
    tx: mpsc::Sender<Result<Alert, E>>,
    shutdown: CancellationToken,
) {
    'replay: loop {
        // Up to where the hub has got: what follows comes live, in seq order.
        let upto = alerting.hub.published();
        loop {
            let page = match alerting.replay(&unit, last, upto, REPLAY_PAGE).await {
                Ok(p) => p,
                Err(e) => {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            };
            if page.is_empty() {
                break;
            }
            for alert in page {
                last = alert.seq;
                if tx.send(Ok(alerting.with_cameras(alert))).await.is_err() {
                    return;
                }
            }
        }
        loop {
            let next = tokio::select! {
                r = live.recv() => r,
                _ = tx.closed() => break 'replay,
                _ = shutdown.cancelled() => break 'replay,
            };
            match next {
                Ok(logged) => {
                    if logged.alert.seq <= last || !logged.recipients.contains(&unit) {
                        continue;
                    }
                    last = logged.alert.seq;
                    let alert = alerting.with_cameras(logged.alert.clone());
                    if tx.send(Ok(alert)).await.is_err() {
                        break 'replay;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    alerting.stream_catchups.inc();
                    tracing::debug!(unit = %unit, missed, "Patrol stream lagged; catching up from the log.");
                    continue 'replay;
                }
                Err(broadcast::error::RecvError::Closed) => break 'replay,
            }
        }
    }
    tracing::info!(unit = %unit, last_seq = last, "Patrol stream closed.");
}
