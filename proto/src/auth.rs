//! Client side of the contract's authentication: every call carries
//! `authorization: Bearer <token>`.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A tonic interceptor that adds the bearer token to every request.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bearer(..)")
    }
}

/// The token has characters that cannot go in a header.
#[derive(Debug, thiserror::Error)]
#[error("a token must be printable ASCII")]
pub struct BadToken;

impl Bearer {
    pub fn new(token: &str) -> Result<Self, BadToken> {
        format!("Bearer {}", token.trim())
            .parse()
            .map(Self)
            .map_err(|_| BadToken)
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut()
            .insert(crate::AUTHORIZATION, self.0.clone());
        Ok(req)
    }
}

/// A channel whose calls carry a bearer token.
pub type Authed = InterceptedService<Channel, Bearer>;
