//! The `greenplate.v1.Registry` gRPC service (kiosk or admin token).

use std::sync::Arc;

use greenplate_proto::v1::registry_server::{self, RegistryServer};
use greenplate_proto::v1::{
    Bike, BikeDetails, GetBikeRequest, Owner, RegisterBikeRequest, RegisterBikeResponse,
    ReportRecoveredRequest, ReportRecoveredResponse, ReportStolenRequest, ReportStolenResponse,
    get_bike_request,
};
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use crate::auth::{AuthInterceptor, Role, require};
use crate::store::{BikeKey, BikeRecord, NewBike, Registry};

const ROLES: &[Role] = &[Role::Kiosk, Role::Admin];

/// The Registry service over a [`Registry`].
#[derive(Debug, Clone)]
pub struct RegistryService {
    registry: Arc<Registry>,
}

impl RegistryService {
    /// The service wrapped in its authentication interceptor, ready to add to a router.
    pub fn server(
        registry: Arc<Registry>,
    ) -> InterceptedService<RegistryServer<Self>, AuthInterceptor> {
        let auth = registry.auth().interceptor();
        RegistryServer::with_interceptor(Self { registry }, auth)
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
        let owner = r.owner.unwrap_or_default();
        let bike = r.bike.unwrap_or_default();
        let bike_id = self
            .registry
            .register_bike(
                &caller,
                NewBike {
                    tag_id: r.tag_id,
                    plate: r.plate,
                    owner_name: owner.name,
                    owner_id_number: owner.id_number,
                    owner_phone: owner.phone,
                    make: bike.make,
                    model: bike.model,
                    color: bike.color,
                },
            )
            .await?;
        tracing::info!(caller = %caller.audit_name(), bike_id, "Registered a bike.");
        Ok(Response::new(RegisterBikeResponse { bike_id }))
    }

    async fn get_bike(&self, req: Request<GetBikeRequest>) -> Result<Response<Bike>, Status> {
        require(&req, ROLES)?;
        let key = match req.into_inner().key {
            Some(get_bike_request::Key::Plate(p)) => BikeKey::Plate(p),
            Some(get_bike_request::Key::TagId(t)) => BikeKey::Tag(t),
            None => return Err(Status::invalid_argument("key: give a plate or a tag_id")),
        };
        Ok(Response::new(to_proto(self.registry.get_bike(&key).await?)))
    }

    async fn report_stolen(
        &self,
        req: Request<ReportStolenRequest>,
    ) -> Result<Response<ReportStolenResponse>, Status> {
        let caller = require(&req, ROLES)?;
        let report_id = self
            .registry
            .report_stolen(&caller, &req.get_ref().plate)
            .await?;
        tracing::info!(caller = %caller.audit_name(), report_id, "Recorded a theft report.");
        Ok(Response::new(ReportStolenResponse { report_id }))
    }

    async fn report_recovered(
        &self,
        req: Request<ReportRecoveredRequest>,
    ) -> Result<Response<ReportRecoveredResponse>, Status> {
        let caller = require(&req, ROLES)?;
        self.registry
            .report_recovered(&caller, &req.get_ref().plate)
            .await?;
        tracing::info!(caller = %caller.audit_name(), "Recorded a recovery.");
        Ok(Response::new(ReportRecoveredResponse {}))
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
        }),
        stolen: b.stolen,
        registered_at_ms: b.registered_at_ms,
    }
}
