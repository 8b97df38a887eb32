//! The registry's error type and its mapping to gRPC status codes.

use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{field} {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
    /// A field's value refused with a reason that names it (a file's row, a parse error).
    #[error("{field} {reason}")]
    InvalidValue { field: &'static str, reason: String },
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    RateLimited(String),
    #[error("stored data could not be decrypted with the configured key")]
    Crypto,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

impl RegistryError {
    pub fn invalid(field: &'static str, reason: &'static str) -> Self {
        Self::Invalid { field, reason }
    }
}

impl From<RegistryError> for Status {
    fn from(e: RegistryError) -> Self {
        match &e {
            RegistryError::Invalid { .. } | RegistryError::InvalidValue { .. } => {
                Status::invalid_argument(e.to_string())
            }
            RegistryError::AlreadyExists(_) => Status::already_exists(e.to_string()),
            RegistryError::NotFound(_) => Status::not_found(e.to_string()),
            RegistryError::FailedPrecondition(_) => Status::failed_precondition(e.to_string()),
            RegistryError::PermissionDenied(_) => Status::permission_denied(e.to_string()),
            RegistryError::RateLimited(_) => Status::resource_exhausted(e.to_string()),
            RegistryError::Crypto | RegistryError::Corrupt(_) | RegistryError::Db(_) => {
                tracing::error!(error = %e, "Registry request failed.");
                Status::internal("internal error; see the server log")
            }
        }
    }
}

/// True when a database error is a unique-constraint violation (both backends).
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}
