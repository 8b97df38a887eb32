//! gRPC clients that send `authorization: Bearer <token>` on every call.

use greenplate_proto::v1::admin_client::AdminClient;
use greenplate_proto::v1::patrol_client::PatrolClient;
use greenplate_proto::v1::registry_client::RegistryClient;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// Adds the bearer token to every request.
#[derive(Clone)]
pub struct Bearer(MetadataValue<tonic::metadata::Ascii>);

impl Bearer {
    pub fn new(token: &str) -> anyhow::Result<Self> {
        Ok(Self(format!("Bearer {token}").parse()?))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut()
            .insert(greenplate_proto::AUTHORIZATION, self.0.clone());
        Ok(req)
    }
}

pub type Authed = InterceptedService<Channel, Bearer>;

/// Connects to a gRPC URL such as `http://127.0.0.1:50051`.
pub async fn channel(url: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(url.to_owned())?.connect().await?)
}

pub fn admin(channel: Channel, token: &str) -> anyhow::Result<AdminClient<Authed>> {
    Ok(AdminClient::with_interceptor(channel, Bearer::new(token)?))
}

pub fn registry(channel: Channel, token: &str) -> anyhow::Result<RegistryClient<Authed>> {
    Ok(RegistryClient::with_interceptor(
        channel,
        Bearer::new(token)?,
    ))
}

pub fn patrol(channel: Channel, token: &str) -> anyhow::Result<PatrolClient<Authed>> {
    Ok(PatrolClient::with_interceptor(channel, Bearer::new(token)?))
}
