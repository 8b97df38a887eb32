//! The alerting crate's error type and its gRPC mapping.

use greenplate_registry::RegistryError;
use tonic::Status;

use crate::zones::ZoneError;

#[derive(Debug, thiserror::Error)]
pub enum AlertingError {
    #[error(transparent)]
    Zone(#[from] ZoneError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

impl From<AlertingError> for Status {
    fn from(e: AlertingError) -> Self {
        match e {
            AlertingError::Zone(z) => Status::invalid_argument(z.to_string()),
            AlertingError::Registry(r) => r.into(),
            AlertingError::Db(d) => RegistryError::Db(d).into(),
        }
    }
}
