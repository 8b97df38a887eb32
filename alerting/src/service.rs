//! The `greenplate.v1.Patrol` gRPC service: each stream replays what the unit missed from
//! the alert log, then follows the live hub, with no gap and no duplicate between the two.
//!
//! The stream's task subscribes to the hub *before* reading the log, and remembers the last
//! seq it sent: an alert that is both in the log and in the hub is sent once; a stream whose
//! hub receiver lags (a slow client) goes back to the log from its last seq. The stream has a
//! bounded queue, so a stalled client holds only its own task.

use std::sync::Arc;

use greenplate_proto::v1::patrol_server::{self, PatrolServer};
use greenplate_proto::v1::{
    AcknowledgeIncidentRequest, Alert, Incident, ResolveIncidentRequest, StreamAlertsRequest,
    UpdatePositionRequest, UpdatePositionResponse,
};
use greenplate_registry::auth::{AuthInterceptor, Role, require};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use crate::store::Alerting;

/// Alerts buffered per stream before the stream task waits for the client.
const STREAM_QUEUE: usize = 64;
/// Alerts read from the log per query while replaying.
const REPLAY_PAGE: i64 = 256;

/// The Patrol service.
#[derive(Debug, Clone)]
pub struct PatrolService {
    alerting: Arc<Alerting>,
    shutdown: CancellationToken,
}

impl PatrolService {
    /// The service behind its authentication interceptor; streams end when `shutdown` fires.
    pub fn server(
        alerting: Arc<Alerting>,
        shutdown: CancellationToken,
    ) -> InterceptedService<PatrolServer<Self>, AuthInterceptor> {
        let auth = alerting.registry().auth().interceptor();
        PatrolServer::with_interceptor(Self { alerting, shutdown }, auth)
    }
}

#[tonic::async_trait]
impl patrol_server::Patrol for PatrolService {
    type StreamAlertsStream = ReceiverStream<Result<Alert, Status>>;

    async fn stream_alerts(
        &self,
        req: Request<StreamAlertsRequest>,
    ) -> Result<Response<Self::StreamAlertsStream>, Status> {
        let caller = require(&req, &[Role::Patrol])?;
        let resume_after = req.get_ref().resume_after;
        let live = self.alerting.subscribe();
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        tracing::info!(unit = %caller.id, resume_after, "Patrol stream opened.");
        tokio::spawn(follow(
            self.alerting.clone(),
            caller.id,
            resume_after,
            live,
            tx,
            self.shutdown.clone(),
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
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

    async fn update_position(
        &self,
        req: Request<UpdatePositionRequest>,
    ) -> Result<Response<UpdatePositionResponse>, Status> {
        let caller = require(&req, &[Role::Patrol])?;
        let r = req.into_inner();
        self.alerting
            .update_position(&caller.id, r.lat, r.lon, r.on_duty)?;
        Ok(Response::new(UpdatePositionResponse {}))
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

async fn follow(
    alerting: Arc<Alerting>,
    unit: String,
    mut last: u64,
    mut live: broadcast::Receiver<Arc<crate::LoggedAlert>>,
    tx: mpsc::Sender<Result<Alert, Status>>,
    shutdown: CancellationToken,
) {
    'replay: loop {
        loop {
            let page = match alerting.replay(&unit, last, REPLAY_PAGE).await {
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
                if tx.send(Ok(alert)).await.is_err() {
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
                    if tx.send(Ok(logged.alert.clone())).await.is_err() {
                        break 'replay;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    alerting
                        .stream_catchups
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(unit = %unit, missed, "Patrol stream lagged; catching up from the log.");
                    continue 'replay;
                }
                Err(broadcast::error::RecvError::Closed) => break 'replay,
            }
        }
    }
    tracing::info!(unit = %unit, last_seq = last, "Patrol stream closed.");
}
