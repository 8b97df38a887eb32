//! The `greenplate.v1.Registry` gRPC service (kiosk or admin token).

use std::sync::Arc;

use greenplate_proto::v1::registry_server::{self, RegistryServer};
use greenplate_proto::v1::{
    Bike, BikeDetails, DeregisterBikeRequest, DeregisterBikeResponse, GetBikeRequest,
    ListOwnerBikesRequest, ListOwnerBikesResponse, Owner, RegisterBikeRequest,
    RegisterBikeResponse, ReplaceTagRequest, ReplaceTagResponse, ReportRecoveredRequest,
    ReportRecoveredResponse, ReportStolenRequest, ReportStolenResponse, SetArmedRequest,
    SetArmedResponse, SetPinRequest, SetPinResponse, TransferOwnershipRequest,
    TransferOwnershipResponse, get_bike_request,
};
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use crate::auth::{AuthInterceptor, Role, require};
use crate::bikes::{BikeKey, BikeRecord, NewBike, NewOwner};
use crate::store::Registry;
use crate::thefts::TheftDetails;

const ROLES: &[Role] = &[Role::Kiosk, Role::Admin];

/// The Registry service over a [`Registry`].
#[derive(Debug, Clone)]
pub struct RegistryService {
    registry: Arc<Registry>,
}

impl RegistryService {
    /// The service alone; its calls expect [`AuthInterceptor`] to have run (the HTTP/JSON
    /// API runs it too).
    pub fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }

    /// The service wrapped in its authentication interceptor, ready to add to a router.
    pub fn server(
        registry: Arc<Registry>,
    ) -> InterceptedService<RegistryServer<Self>, AuthInterceptor> {
        let auth = registry.auth().interceptor();
        RegistryServer::with_interceptor(Self::new(registry), auth)
    }
}

fn owner_of(o: Option<Owner>) -> NewOwner {
    let o = o.unwrap_or_default();
    NewOwner {
        name: o.name,
        id_number: o.id_number,
        phone: o.phone,
    }
}

#[tonic::async_trait]
impl registry_server::Registry for RegistryService {
    async fn register_bike(
        &self,
        req: Request<RegisterBikeRequest>,
    ) -> Result<Response<RegisterBikeResponse>, Status> {
        let caller = require(&req, ROLES)?;
        let r = req.into_inner();
        let bike = r.bike.unwrap_or_default();
        let done = self
            .registry
            .register_bike(
                &caller,
                NewBike {
                    tag_id: r.tag_id,
                    plate: r.plate,
                    owner: owner_of(r.owner),
                    make: bike.make,
                    model: bike.model,
                    color: bike.color,
                    frame_number: bike.frame_number,
                    request_id: r.request_id,
                    pin: Some(r.pin),
                },
            )
            .await?;
        tracing::info!(
            caller = %caller.audit_name(),
            bike_id = done.bike_id,
            created = done.created,
            "Registered a bike."
        );
        Ok(Response::new(RegisterBikeResponse {
            bike_id: done.bike_id,
        }))
    }

    async fn get_bike(&self, req: Request<GetBikeRequest>) -> Result<Response<Bike>, Status> {
        let caller = require(&req, ROLES)?;
        let r = req.into_inner();
        let key = match r.key {
            Some(get_bike_request::Key::Plate(p)) => BikeKey::Plate(p),
            Some(get_bike_request::Key::TagId(t)) => BikeKey::Tag(t),
            None => return Err(Status::invalid_argument("key: give a plate or a tag_id")),
        };
        Ok(Response::new(to_proto(
            self.registry.get_bike(&caller, &key, &r.reason).await?,
        )))
    }

    async fn report_stolen(
        &self,
        req: Request<ReportStolenRequest>,
    ) -> Result<Response<ReportStolenResponse>, Status> {
        let caller = require(&req, ROLES)?;
        let r = req.into_inner();
        let report = self
            .registry
            .report_stolen(
                &caller,
                &r.plate,
                &TheftDetails {
                    stolen_at_ms: r.stolen_at_ms,
                    place: r.place,
                    notes: r.notes,
                },
            )
            .await?;
        tracing::info!(
            caller = %caller.audit_name(),
            report_id = report.report_id,
            already_open = report.already_open,
            "Theft report."
        );
        Ok(Response::new(ReportStolenResponse {
            report_id: report.report_id,
            already_open: report.already_open,
        }))
    }

    async fn report_recovered(
        &self,
        req: Request<ReportRecoveredRequest>,
    ) -> Result<Response<ReportRecoveredResponse>, Status> {
        let caller = require(&req, ROLES)?;
        let r = req.get_ref();
        self.registry
            .report_recovered(&caller, &r.plate, &r.pin)
            .await?;
        tracing::info!(caller = %caller.audit_name(), "Recorded a recovery.");
        Ok(Response::new(ReportRecoveredResponse {}))
    }

    async fn list_owner_bikes(
        &self,
        req: Request<ListOwnerBikesRequest>,
    ) -> Result<Response<ListOwnerBikesResponse>, Status> {
        let caller = require(&req, ROLES)?;
        let r = req.get_ref();
        let bikes = self
            .registry
            .list_owner_bikes(&caller, &r.id_number, &r.reason)
            .await?;
        Ok(Response::new(ListOwnerBikesResponse {
            bikes: bikes.into_iter().map(to_proto).collect(),
        }))
    }

    async fn transfer_ownership(
        &self,
        req: Request<TransferOwnershipRequest>,
    ) -> Result<Response<TransferOwnershipResponse>, Status> {
        let caller = require(&req, ROLES)?;
        let r = req.into_inner();
        self.registry
            .transfer_ownership(
                &caller,
                &r.plate,
                &owner_of(r.new_owner),
                &r.pin,
                &r.new_pin,
            )
            .await?;
        Ok(Response::new(TransferOwnershipResponse {}))
    }

    async fn set_pin(
        &self,
        req: Request<SetPinRequest>,
    ) -> Result<Response<SetPinResponse>, Status> {
        let caller = require(&req, ROLES)?;
        let r = req.into_inner();
        self.registry
            .set_pin(&caller, &r.plate, &r.owner_id_number, &r.new_pin)
            .await?;
        Ok(Response::new(SetPinResponse {}))
    }

    async fn replace_tag(
        &self,
        req: Request<ReplaceTagRequest>,
    ) -> Result<Response<ReplaceTagResponse>, Status> {
        let caller = require(&req, ROLES)?;
        let r = req.into_inner();
        self.registry
            .replace_tag(&caller, &r.plate, &r.new_tag_id, &r.pin)
            .await?;
        Ok(Response::new(ReplaceTagResponse {}))
    }

    async fn deregister_bike(
        &self,
        req: Request<DeregisterBikeRequest>,
    ) -> Result<Response<DeregisterBikeResponse>, Status> {
        let caller = require(&req, ROLES)?;
        let r = req.into_inner();
        self.registry
            .deregister_bike(&caller, &r.plate, &r.reason)
            .await?;
        Ok(Response::new(DeregisterBikeResponse {}))
    }

    async fn set_armed(
        &self,
        req: Request<SetArmedRequest>,
    ) -> Result<Response<SetArmedResponse>, Status> {
        let caller = require(&req, ROLES)?;
        let r = req.into_inner();
        let armed = self
            .registry
            .set_armed(&caller, &r.plate, &r.pin, r.armed)
            .await?;
        Ok(Response::new(SetArmedResponse { armed }))
    }
}

fn to_proto(b: BikeRecord) -> Bike {
    Bike {
        bike_id: b.bike_id,
        tag_id: b.tag_id,
        plate: b.plate,
        owner: Some(Owner {
            name: b.owner_name,
            id_number: b.owner_id_number_masked,
            phone: b.owner_phone_masked,
        }),
        bike: Some(BikeDetails {
            make: b.make,
            model: b.model,
            color: b.color,
            frame_number: b.frame_number,
        }),
        stolen: b.stolen,
        registered_at_ms: b.registered_at_ms,
        armed: b.armed,
        registered: b.registered,
    }
}
