//! The `greenplate.v1.Command` gRPC service: what command centers do beyond receiving alerts
//! (issue #17): watch lists, and imports of the police system's watch and theft lists. Command-center units and the admin only; another unit
//! is refused PERMISSION_DENIED. The storage and the audit are the registry's
//! ([`greenplate_registry::watch`]); this crate knows which units are command centers.
//!
//! Beside it, [`expire`]: the task that ends watch entries at their expiry.

use std::sync::Arc;
use std::time::Duration;

use greenplate_proto::v1::command_server::{self, CommandServer};
use greenplate_proto::v1::{
    AddWatchEntryRequest, CompanionsRequest, CompanionsResponse, ImportListRequest,
    ImportListResponse, ImportRowError, ListFormat, ListKind, ListWatchEntriesRequest,
    ListWatchEntriesResponse, RemoveWatchEntryRequest, StakeoutRequest, StakeoutResponse,
    UpdateWatchEntryRequest, WatchEntry, WatchPriority, companions_request,
};
use greenplate_registry::auth::{AuthInterceptor, Role, require};
use greenplate_registry::lists;
use greenplate_registry::{BikeKey, Caller, NewWatchEntry, WatchChange, now_ms};
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use crate::Alerting;
use crate::investigate::{self, CompanionQuery, Watched};

/// How often expired watch entries are ended.
pub const EXPIRE_EVERY: Duration = Duration::from_secs(30);

/// The Command service.
#[derive(Debug, Clone)]
pub struct CommandService {
    alerting: Arc<Alerting>,
}

impl CommandService {
    pub fn server(
        alerting: Arc<Alerting>,
    ) -> InterceptedService<CommandServer<Self>, AuthInterceptor> {
        let auth = alerting.registry().auth().interceptor();
        CommandServer::with_interceptor(Self { alerting }, auth)
    }

    /// The caller, if it is the admin or a command-center unit.
    fn command<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let caller = require(req, &[Role::Patrol, Role::Admin])?;
        if caller.role == Role::Admin
            || self
                .alerting
                .router
                .zones_read()
                .is_command_unit(&caller.id)
        {
            Ok(caller)
        } else {
            Err(Status::permission_denied(
                "command-center units and the admin only",
            ))
        }
    }
}

fn to_proto(e: greenplate_registry::WatchEntry) -> WatchEntry {
    WatchEntry {
        entry_id: e.entry_id,
        plate: e.plate,
        tag_id: e.tag_id,
        priority: i32::try_from(e.priority).unwrap_or(0),
        reason: e.reason,
        case_number: e.case_number,
        covert: e.covert,
        expires_at_ms: e.expires_at_ms,
        added_by: e.added_by,
        added_at_ms: e.added_at_ms,
        updated_at_ms: e.updated_at_ms,
        removed_by: e.removed_by.unwrap_or_default(),
        removed_at_ms: e.removed_at_ms.unwrap_or_default(),
    }
}

/// A priority as the registry stores it (0 for unspecified, which it refuses).
fn priority(p: i32) -> u32 {
    match WatchPriority::try_from(p) {
        Ok(WatchPriority::Normal) => 1,
        Ok(WatchPriority::Urgent) => 2,
        Ok(WatchPriority::Critical) => 3,
        _ => 0,
    }
}

#[tonic::async_trait]
impl command_server::Command for CommandService {
    async fn add_watch_entry(
        &self,
        req: Request<AddWatchEntryRequest>,
    ) -> Result<Response<WatchEntry>, Status> {
        let caller = self.command(&req)?;
        let r = req.into_inner();
        let (entry, created) = self
            .alerting
            .registry()
            .add_watch_entry(
                &caller,
                &NewWatchEntry {
                    entry_id: (!r.entry_id.is_empty()).then_some(r.entry_id),
                    plate: r.plate,
                    tag_id: r.tag_id,
                    priority: priority(r.priority),
                    reason: r.reason,
                    case_number: r.case_number,
                    covert: r.covert,
                    expires_at_ms: r.expires_at_ms,
                },
            )
            .await?;
        tracing::info!(caller = %caller.audit_name(), entry = %entry.entry_id, created, "Watch entry added.");
        Ok(Response::new(to_proto(entry)))
    }

    async fn list_watch_entries(
        &self,
        req: Request<ListWatchEntriesRequest>,
    ) -> Result<Response<ListWatchEntriesResponse>, Status> {
        let caller = self.command(&req)?;
        let entries = self
            .alerting
            .registry()
            .list_watch_entries(&caller, req.get_ref().include_ended)
            .await?;
        Ok(Response::new(ListWatchEntriesResponse {
            entries: entries.into_iter().map(to_proto).collect(),
        }))
    }

    async fn update_watch_entry(
        &self,
        req: Request<UpdateWatchEntryRequest>,
    ) -> Result<Response<WatchEntry>, Status> {
        let caller = self.command(&req)?;
        let r = req.into_inner();
        let entry = self
            .alerting
            .registry()
            .update_watch_entry(
                &caller,
                &r.entry_id,
                &WatchChange {
                    priority: r.priority.map(priority),
                    reason: r.reason,
                    case_number: r.case_number,
                    covert: r.covert,
                    expires_at_ms: r.expires_at_ms,
                },
            )
            .await?;
        tracing::info!(caller = %caller.audit_name(), entry = %entry.entry_id, "Watch entry changed.");
        Ok(Response::new(to_proto(entry)))
    }

    async fn import_list(
        &self,
        req: Request<ImportListRequest>,
    ) -> Result<Response<ImportListResponse>, Status> {
        let caller = self.command(&req)?;
        let r = req.into_inner();
        let kind = match ListKind::try_from(r.kind) {
            Ok(ListKind::Watch) => lists::ListKind::Watch,
            Ok(ListKind::Theft) => lists::ListKind::Theft,
            _ => return Err(Status::invalid_argument("kind must be WATCH or THEFT")),
        };
        let format = match ListFormat::try_from(r.format) {
            Ok(ListFormat::Csv) => lists::ListFormat::Csv,
            Ok(ListFormat::Json) => lists::ListFormat::Json,
            _ => return Err(Status::invalid_argument("format must be CSV or JSON")),
        };
        let report = self
            .alerting
            .registry()
            .import_list(&caller, kind, format, &r.data)
            .await?;
        tracing::info!(
            caller = %caller.audit_name(),
            rows = report.rows,
            added = report.added,
            rejected = report.errors.len(),
            "Imported a police list."
        );
        Ok(Response::new(ImportListResponse {
            rows: report.rows,
            added: report.added,
            unchanged_or_changed: report.unchanged_or_changed,
            errors: report
                .errors
                .into_iter()
                .map(|e| ImportRowError {
                    line: e.line,
                    reason: e.reason,
                })
                .collect(),
        }))
    }

    async fn stakeout(
        &self,
        req: Request<StakeoutRequest>,
    ) -> Result<Response<StakeoutResponse>, Status> {
        let caller = self.command(&req)?;
        let r = req.into_inner();
        let watched = match (r.reader_ids.is_empty(), r.polygon_geojson.trim().is_empty()) {
            (false, true) => Watched::Readers(r.reader_ids),
            (true, false) => Watched::Polygon(r.polygon_geojson),
            _ => {
                return Err(Status::invalid_argument(
                    "give reader_ids or polygon_geojson (one of the two)",
                ));
            }
        };
        let limit = match r.limit {
            0 => investigate::MAX_STAKEOUT,
            n => n as usize,
        };
        let found = self
            .alerting
            .stakeout(&caller, &watched, r.from_ms, r.to_ms, limit, &r.reason)
            .await?;
        Ok(Response::new(StakeoutResponse {
            passes: found
                .passes
                .into_iter()
                .map(|p| greenplate_proto::v1::StakeoutPass {
                    tag_id: p.tag_id,
                    plate: p.plate,
                    reader_id: p.reader_id,
                    first_seen_ms: p.first_seen_ms,
                    last_seen_ms: p.last_seen_ms,
                    reads: p.reads,
                })
                .collect(),
            reader_ids: found.reader_ids,
            truncated: found.truncated,
        }))
    }

    async fn companions(
        &self,
        req: Request<CompanionsRequest>,
    ) -> Result<Response<CompanionsResponse>, Status> {
        let caller = self.command(&req)?;
        let r = req.into_inner();
        let subject = match r.subject {
            Some(companions_request::Subject::Plate(p)) => BikeKey::Plate(p),
            Some(companions_request::Subject::TagId(t)) => BikeKey::Tag(t),
            None => return Err(Status::invalid_argument("plate or tag_id: one is required")),
        };
        let query = CompanionQuery {
            subject,
            from_ms: r.from_ms,
            to_ms: r.to_ms,
            delta_ms: if r.delta_ms == 0 { 60_000 } else { r.delta_ms },
            min_readers: if r.min_readers == 0 { 3 } else { r.min_readers },
            limit: match r.limit {
                0 => investigate::MAX_COMPANIONS,
                n => n as usize,
            },
        };
        let (found, searched) = self.alerting.companions(&caller, &query, &r.reason).await?;
        Ok(Response::new(CompanionsResponse {
            companions: found
                .into_iter()
                .map(|c| greenplate_proto::v1::Companion {
                    tag_id: c.tag_id,
                    plate: c.plate,
                    readers: c.readers,
                    passes: c.passes,
                    first_seen_ms: c.first_seen_ms,
                    last_seen_ms: c.last_seen_ms,
                })
                .collect(),
            subject_passes: u32::try_from(searched).unwrap_or(u32::MAX),
        }))
    }

    async fn remove_watch_entry(
        &self,
        req: Request<RemoveWatchEntryRequest>,
    ) -> Result<Response<WatchEntry>, Status> {
        let caller = self.command(&req)?;
        let entry = self
            .alerting
            .registry()
            .remove_watch_entry(&caller, &req.get_ref().entry_id)
            .await?;
        tracing::info!(caller = %caller.audit_name(), entry = %entry.entry_id, "Watch entry removed.");
        Ok(Response::new(to_proto(entry)))
    }
}

/// Ends watch entries whose expiry passed, every [`EXPIRE_EVERY`], until `shutdown`. (The
/// engine never alerts on an expired entry anyway; this clears the tags' flags and records
/// the end.)
pub async fn expire(alerting: Arc<Alerting>, shutdown: CancellationToken) {
    loop {
        match alerting.registry().expire_watch_entries(now_ms()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(entries = n, "Watch entries expired."),
            Err(e) => tracing::error!(error = %e, "Expiring watch entries failed; retrying."),
        }
        tokio::select! {
            _ = tokio::time::sleep(EXPIRE_EVERY) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
