//! gRPC clients that send `authorization: Bearer <token>` on every call.

use greenplate_proto::v1::AddReaderRequest;
use greenplate_proto::v1::admin_client::AdminClient;
use greenplate_proto::v1::command_client::CommandClient;
use greenplate_proto::v1::patrol_client::PatrolClient;
use greenplate_proto::v1::registry_client::RegistryClient;
use tonic::transport::{Channel, Endpoint};

pub use greenplate_proto::auth::{Authed, Bearer};

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

/// Command-center calls (watch lists): a command-center unit's token or the admin's.
pub fn command(channel: Channel, token: &str) -> anyhow::Result<CommandClient<Authed>> {
    Ok(CommandClient::with_interceptor(
        channel,
        Bearer::new(token)?,
    ))
}

pub fn patrol(channel: Channel, token: &str) -> anyhow::Result<PatrolClient<Authed>> {
    Ok(PatrolClient::with_interceptor(channel, Bearer::new(token)?))
}

/// Provisions a reader of the native sealed format through Admin; returns its secret.
pub async fn add_reader(
    admin: &mut AdminClient<Authed>,
    id: &str,
    name: String,
    lat: f64,
    lon: f64,
) -> anyhow::Result<String> {
    let response = admin
        .add_reader(AddReaderRequest {
            reader_id: id.to_owned(),
            name,
            lat,
            lon,
            format: String::new(),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("AddReader {id}: {e}"))?;
    Ok(response.into_inner().secret)
}
