//! The `greenplate.v1.Admin` gRPC service: provisioning readers, zones, patrol units and
//! kiosks. It composes the registry (readers, kiosks) and alerting (zones, units): alerting
//! is the lowest crate that sees both, so it lives here. Admin token only.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::{Alerting, UnitRole, ZoneKind};
use greenplate_proto::v1::admin_server::{self, AdminServer};
use greenplate_proto::v1::{
    AddCanaryRequest, AddCanaryResponse, AddInsurerRequest, AddInsurerResponse, AddKioskRequest,
    AddKioskResponse, AddPatrolUnitRequest, AddPatrolUnitResponse, AddReaderRequest,
    AddReaderResponse, AddZoneRequest, AddZoneResponse, AuditEntry, Canary, ListAuditRequest,
    ListAuditResponse, ListCanariesRequest, ListCanariesResponse, ListDeadLettersRequest,
    ListDeadLettersResponse, ListReadersRequest, ListReadersResponse, ReaderInfo,
    ReplayDeadLettersRequest, ReplayDeadLettersResponse, RevokeTokenRequest, RevokeTokenResponse,
    RotateReaderSecretRequest, RotateReaderSecretResponse, RotateTokenRequest, RotateTokenResponse,
    SetReaderCamerasRequest, SetReaderCamerasResponse, SetReaderEnabledRequest,
    SetReaderEnabledResponse, TokenHolder,
};
use greenplate_registry::auth::{AuthInterceptor, Role, require};
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

/// The Admin service.
#[derive(Debug, Clone)]
pub struct AdminService {
    alerting: Arc<Alerting>,
}

impl AdminService {
    pub fn server(
        alerting: Arc<Alerting>,
    ) -> InterceptedService<AdminServer<Self>, AuthInterceptor> {
        let auth = alerting.registry().auth().interceptor();
        AdminServer::with_interceptor(Self { alerting }, auth)
    }
}

#[tonic::async_trait]
impl admin_server::Admin for AdminService {
    async fn add_reader(
        &self,
        req: Request<AddReaderRequest>,
    ) -> Result<Response<AddReaderResponse>, Status> {
        let caller = require(&req, &[Role::Admin])?;
        let r = req.into_inner();
        let secret = self
            .alerting
            .registry()
            .add_reader(
                &caller,
                greenplate_registry::store::NewReader {
                    reader_id: &r.reader_id,
                    name: &r.name,
                    lat: r.lat,
                    lon: r.lon,
                    format: &r.format,
                    key_version: r.key_version,
                    cameras: r.cameras.into_iter().map(camera_from_proto).collect(),
                },
            )
            .await?;
        tracing::info!(reader = %r.reader_id, "Added a reader.");
        Ok(Response::new(AddReaderResponse {
            mqtt_password: greenplate_proto::seal::login_password(&secret),
            secret,
        }))
    }

    async fn add_zone(
        &self,
        req: Request<AddZoneRequest>,
    ) -> Result<Response<AddZoneResponse>, Status> {
        let caller = require(&req, &[Role::Admin])?;
        let r = req.into_inner();
        let kind = match r.kind() {
            greenplate_proto::v1::ZoneKind::Patrol => ZoneKind::Patrol,
            greenplate_proto::v1::ZoneKind::Watch => ZoneKind::Watch,
        };
        self.alerting
            .add_zone(&caller, &r.zone_id, &r.name, kind, &r.geojson)
            .await?;
        tracing::info!(zone = %r.zone_id, "Added a patrol zone.");
        Ok(Response::new(AddZoneResponse {}))
    }

    async fn add_patrol_unit(
        &self,
        req: Request<AddPatrolUnitRequest>,
    ) -> Result<Response<AddPatrolUnitResponse>, Status> {
        let caller = require(&req, &[Role::Admin])?;
        let r = req.into_inner();
        let role = match (r.command_center, r.canary) {
            (false, false) => UnitRole::Patrol,
            (true, false) => UnitRole::CommandCenter,
            (false, true) => UnitRole::Canary,
            (true, true) => {
                return Err(Status::invalid_argument(
                    "canary: a unit is a command center or a canary unit, not both",
                ));
            }
        };
        let issued = self
            .alerting
            .add_patrol_unit(
                &caller,
                &r.unit_id,
                &r.name,
                &r.zone_ids,
                role,
                ttl(r.token_ttl_s),
            )
            .await?;
        tracing::info!(unit = %r.unit_id, zones = r.zone_ids.len(), "Added a patrol unit.");
        Ok(Response::new(AddPatrolUnitResponse {
            expires_at_ms: issued.expires_at_ms().unwrap_or(0),
            token: issued.token,
        }))
    }

    async fn add_kiosk(
        &self,
        req: Request<AddKioskRequest>,
    ) -> Result<Response<AddKioskResponse>, Status> {
        let caller = require(&req, &[Role::Admin])?;
        let r = req.into_inner();
        let issued = self
            .alerting
            .registry()
            .add_kiosk(&caller, &r.kiosk_id, &r.name, ttl(r.token_ttl_s))
            .await?;
        tracing::info!(kiosk = %r.kiosk_id, "Added a kiosk.");
        Ok(Response::new(AddKioskResponse {
            expires_at_ms: issued.expires_at_ms().unwrap_or(0),
            token: issued.token,
        }))
    }

    async fn add_insurer(
        &self,
        req: Request<AddInsurerRequest>,
    ) -> Result<Response<AddInsurerResponse>, Status> {
        let caller = require(&req, &[Role::Admin])?;
        let r = req.into_inner();
        let issued = self
            .alerting
            .registry()
            .add_insurer(&caller, &r.insurer_id, &r.name, ttl(r.token_ttl_s))
            .await?;
        tracing::info!(insurer = %r.insurer_id, "Added an insurer.");
        Ok(Response::new(AddInsurerResponse {
            expires_at_ms: issued.expires_at_ms().unwrap_or(0),
            token: issued.token,
        }))
    }

    async fn revoke_token(
        &self,
        req: Request<RevokeTokenRequest>,
    ) -> Result<Response<RevokeTokenResponse>, Status> {
        let caller = require(&req, &[Role::Admin])?;
        let r = req.into_inner();
        let role = holder_role(r.holder())?;
        let revoked = self
            .alerting
            .revoke_tokens(&caller, role, &r.holder_id, &r.reason)
            .await?;
        tracing::info!(holder = %r.holder_id, revoked, "Revoked tokens.");
        Ok(Response::new(RevokeTokenResponse {
            revoked: u32::try_from(revoked).unwrap_or(u32::MAX),
        }))
    }

    async fn rotate_token(
        &self,
        req: Request<RotateTokenRequest>,
    ) -> Result<Response<RotateTokenResponse>, Status> {
        let caller = require(&req, &[Role::Admin])?;
        let r = req.into_inner();
        let role = holder_role(r.holder())?;
        let issued = self
            .alerting
            .rotate_token(&caller, role, &r.holder_id, &r.reason, ttl(r.ttl_s))
            .await?;
        tracing::info!(holder = %r.holder_id, "Rotated a token.");
        Ok(Response::new(RotateTokenResponse {
            expires_at_ms: issued.expires_at_ms().unwrap_or(0),
            token: issued.token,
        }))
    }

    async fn list_readers(
        &self,
        req: Request<ListReadersRequest>,
    ) -> Result<Response<ListReadersResponse>, Status> {
        require(&req, &[Role::Admin])?;
        let readers = self
            .alerting
            .registry()
            .readers()
            .all()
            .into_iter()
            .map(|r| {
                let liveness = r.liveness();
                ReaderInfo {
                    reader_id: r.id.clone(),
                    name: r.name.clone(),
                    lat: r.lat,
                    lon: r.lon,
                    last_seen_ms: r.last_seen_ms.load(Ordering::Relaxed),
                    batches_accepted: r.batches_accepted.load(Ordering::Relaxed),
                    sightings_accepted: r.sightings_accepted.load(Ordering::Relaxed),
                    online: r.enabled()
                        && r.last_activity_ms() > 0
                        && liveness.offline_since_ms.is_none(),
                    last_status_ms: r.last_status_ms.load(Ordering::Relaxed),
                    firmware: liveness.firmware,
                    enabled: r.enabled(),
                    format: r.format.as_str().into(),
                    key_version: r.key_version(),
                    cameras: r.cameras().iter().map(camera_to_proto).collect(),
                }
            })
            .collect();
        Ok(Response::new(ListReadersResponse { readers }))
    }

    async fn set_reader_enabled(
        &self,
        req: Request<SetReaderEnabledRequest>,
    ) -> Result<Response<SetReaderEnabledResponse>, Status> {
        let caller = require(&req, &[Role::Admin])?;
        let r = req.into_inner();
        self.alerting
            .registry()
            .set_reader_enabled(&caller, &r.reader_id, r.enabled)
            .await?;
        tracing::info!(reader = %r.reader_id, enabled = r.enabled, "Reader enabled or disabled.");
        Ok(Response::new(SetReaderEnabledResponse {}))
    }

    async fn list_dead_letters(
        &self,
        req: Request<ListDeadLettersRequest>,
    ) -> Result<Response<ListDeadLettersResponse>, Status> {
        require(&req, &[Role::Admin])?;
        let r = req.into_inner();
        let limit = match r.limit {
            0 => 100,
            n => i64::from(n.min(1000)),
        };
        let letters = crate::forward::outbox::dead_letters(self.alerting.db(), &r.target, limit)
            .await
            .map_err(crate::AlertingError::from)?;
        Ok(Response::new(ListDeadLettersResponse {
            dead_letters: letters
                .into_iter()
                .map(|d| greenplate_proto::v1::DeadLetter {
                    target: d.target,
                    seq: d.seq,
                    alert_id: d.alert_id,
                    attempts: d.attempts,
                    last_error: d.last_error,
                    failed_at_ms: d.failed_at_ms,
                    replay: d.replay,
                })
                .collect(),
        }))
    }

    async fn replay_dead_letters(
        &self,
        req: Request<ReplayDeadLettersRequest>,
    ) -> Result<Response<ReplayDeadLettersResponse>, Status> {
        let caller = require(&req, &[Role::Admin])?;
        let r = req.into_inner();
        let what = if r.seqs.is_empty() {
            "all".to_owned()
        } else {
            format!("{} chosen", r.seqs.len())
        };
        let mut tx = self
            .alerting
            .db()
            .begin_write()
            .await
            .map_err(crate::AlertingError::from)?;
        let marked = crate::forward::outbox::replay(&mut tx, &r.target, &r.seqs)
            .await
            .map_err(crate::AlertingError::from)?;
        greenplate_registry::store::audit(
            &mut tx,
            &caller,
            "replay_dead_letters",
            &format!("{}: {what}, {marked} marked", r.target),
        )
        .await?;
        tx.commit().await.map_err(crate::AlertingError::from)?;
        tracing::info!(target_name = %r.target, marked, "Dead letters marked for replay.");
        Ok(Response::new(ReplayDeadLettersResponse { marked }))
    }

    async fn set_reader_cameras(
        &self,
        req: Request<SetReaderCamerasRequest>,
    ) -> Result<Response<SetReaderCamerasResponse>, Status> {
        let caller = require(&req, &[Role::Admin])?;
        let r = req.into_inner();
        let count = r.cameras.len();
        self.alerting
            .registry()
            .set_reader_cameras(
                &caller,
                &r.reader_id,
                r.cameras.into_iter().map(camera_from_proto).collect(),
            )
            .await?;
        tracing::info!(reader = %r.reader_id, cameras = count, "Reader's cameras set.");
        Ok(Response::new(SetReaderCamerasResponse {}))
    }

    async fn rotate_reader_secret(
        &self,
        req: Request<RotateReaderSecretRequest>,
    ) -> Result<Response<RotateReaderSecretResponse>, Status> {
        let caller = require(&req, &[Role::Admin])?;
        let r = req.into_inner();
        if r.grace_s > 7 * 24 * 3600 {
            return Err(Status::invalid_argument("grace_s: at most 7 days (604800)"));
        }
        let secret = self
            .alerting
            .registry()
            .rotate_reader_secret(&caller, &r.reader_id, i64::from(r.grace_s) * 1000)
            .await?;
        tracing::info!(reader = %r.reader_id, grace_s = r.grace_s, "Rotated a reader's secret.");
        Ok(Response::new(RotateReaderSecretResponse {
            mqtt_password: greenplate_proto::seal::login_password(&secret),
            secret,
        }))
    }

    async fn list_audit(
        &self,
        req: Request<ListAuditRequest>,
    ) -> Result<Response<ListAuditResponse>, Status> {
        require(&req, &[Role::Admin])?;
        let r = req.into_inner();
        let limit = match r.limit {
            0 => 100,
            n => n.min(1000),
        };
        let entries = self
            .alerting
            .registry()
            .list_audit(r.after_id, i64::from(limit))
            .await?
            .into_iter()
            .map(|e| AuditEntry {
                audit_id: e.audit_id,
                at_ms: e.at_ms,
                actor: e.actor,
                action: e.action,
                subject: e.subject,
            })
            .collect();
        Ok(Response::new(ListAuditResponse { entries }))
    }

    async fn add_canary(
        &self,
        req: Request<AddCanaryRequest>,
    ) -> Result<Response<AddCanaryResponse>, Status> {
        let caller = require(&req, &[Role::Admin])?;
        let r = req.into_inner();
        self.alerting
            .add_canary(&caller, &r.tag_id, r.expected_every_s, &r.note)
            .await?;
        tracing::info!(tag = %r.tag_id, every_s = r.expected_every_s, "Added a canary.");
        Ok(Response::new(AddCanaryResponse {}))
    }

    async fn list_canaries(
        &self,
        req: Request<ListCanariesRequest>,
    ) -> Result<Response<ListCanariesResponse>, Status> {
        require(&req, &[Role::Admin])?;
        let canaries = self
            .alerting
            .canaries()
            .list()
            .into_iter()
            .map(|c| Canary {
                tag_id: c.tag.to_string(),
                expected_every_s: (c.every_ms / 1000) as u32,
                note: c.note,
                last_seen_ms: c.last_seen_ms,
                last_reader_id: c.last_reader,
                overdue: c.overdue,
            })
            .collect();
        Ok(Response::new(ListCanariesResponse { canaries }))
    }
}

/// A token's time to live from a request's seconds (0: it does not expire).
fn ttl(seconds: u64) -> Option<std::time::Duration> {
    (seconds > 0).then(|| std::time::Duration::from_secs(seconds))
}

/// Whose tokens a RevokeToken or RotateToken names.
fn holder_role(holder: TokenHolder) -> Result<Role, Status> {
    match holder {
        TokenHolder::Kiosk => Ok(Role::Kiosk),
        TokenHolder::PatrolUnit => Ok(Role::Patrol),
        TokenHolder::Insurer => Ok(Role::Insurer),
        TokenHolder::Unspecified => Err(Status::invalid_argument(
            "holder: TOKEN_HOLDER_KIOSK, TOKEN_HOLDER_PATROL_UNIT or TOKEN_HOLDER_INSURER is \
             required",
        )),
    }
}

fn camera_from_proto(c: greenplate_proto::v1::Camera) -> greenplate_registry::Camera {
    greenplate_registry::Camera {
        id: c.camera_id,
        name: c.name,
        url_template: c.url_template,
    }
}

fn camera_to_proto(c: &greenplate_registry::Camera) -> greenplate_proto::v1::Camera {
    greenplate_proto::v1::Camera {
        camera_id: c.id.clone(),
        name: c.name.clone(),
        url_template: c.url_template.clone(),
    }
}
