//! The one error type of the web handlers, and what each error answers: a request that is
//! not signed in, a form without its session's CSRF token, a body that is not the form, an
//! alerting call that failed, a page that only says something. A handler returns
//! `Result<Response, WebError>` and keeps only what is particular to it; a page that shows a
//! registry error at the field at fault (the kiosk's forms) is that handler's own page, so an
//! `Ok` with the status of [`registry_status`].

use axum::extract::rejection::FormRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use greenplate_alerting::AlertingError;
use greenplate_registry::RegistryError;

use super::i18n::{Bilingual, explain_alerting, is_internal};
use super::page::{csrf_refused, message, redirect, session_expired};
use super::session::Area;

/// Why a web request gets an answer other than its handler's page.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// A form posted without a live session (expired, signed out, or never signed in):
    /// 401 and a page that says to sign in again.
    #[error("no live session")]
    SignedOut(Area),
    /// A page asked for without a live session: 303 to the app's start page, which is its
    /// sign-in.
    #[error("not signed in")]
    SignInFirst(Area),
    /// The live event stream asked for without a live session: 401 in plain text (an
    /// `EventSource` shows no page).
    #[error("no live session for the event stream")]
    StreamSignedOut,
    /// A live feed past the session's [`crate::limits::FEEDS_PER_SESSION`]: 429.
    #[error("the session holds the most live feeds allowed")]
    TooManyFeeds,
    /// A form without its session's CSRF token, or with another: 403, nothing done.
    #[error("the form's CSRF token is missing or wrong")]
    Csrf(Area),
    /// A body that is not the form: axum's own answer (415, 422, 413, ...).
    #[error(transparent)]
    Form(#[from] FormRejection),
    /// An incident change the alerting library refused or failed: the reason in both
    /// languages, with the status of [`alerting_status`].
    #[error("{1}")]
    Alerting(Area, AlertingError),
    /// A page that only says something, with a link back to the app's start page.
    #[error("{message}")]
    Message {
        status: StatusCode,
        message: Bilingual,
        area: Area,
    },
}

impl WebError {
    pub fn message(status: StatusCode, message: Bilingual, area: Area) -> Self {
        Self::Message {
            status,
            message,
            area,
        }
    }
}

/// For `Option<Session>` extractors, which never fail.
impl From<std::convert::Infallible> for WebError {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        match self {
            WebError::SignedOut(area) => session_expired(area.path()),
            WebError::SignInFirst(area) => redirect(area.path(), None),
            WebError::StreamSignedOut => {
                (StatusCode::UNAUTHORIZED, "session expired\n").into_response()
            }
            WebError::TooManyFeeds => (
                StatusCode::TOO_MANY_REQUESTS,
                "this session holds the most live feeds allowed; close another tab\n",
            )
                .into_response(),
            WebError::Csrf(area) => csrf_refused(area.path()),
            WebError::Form(rejection) => rejection.into_response(),
            WebError::Alerting(area, e) => {
                let status = alerting_status(&e);
                if status.is_server_error() {
                    tracing::error!(error = %e, app = area.path(), "Web request failed.");
                }
                message(status, &explain_alerting(&e), area.path())
            }
            WebError::Message {
                status,
                message: m,
                area,
            } => message(status, &m, area.path()),
        }
    }
}

/// The HTTP status of a registry error on a kiosk page, logging the server's own failures.
pub fn registry_status(e: &RegistryError) -> StatusCode {
    if is_internal(e) {
        tracing::error!(error = %e, "Kiosk web request failed.");
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    match e {
        RegistryError::NotFound(_) => StatusCode::NOT_FOUND,
        RegistryError::AlreadyExists(_) | RegistryError::FailedPrecondition(_) => {
            StatusCode::CONFLICT
        }
        RegistryError::PermissionDenied(_) => StatusCode::FORBIDDEN,
        RegistryError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

/// The HTTP status of an alerting error on an incident change. Unlike
/// [`registry_status`], a refusal (permission denied, already exists) is a 422 here, as it
/// has been since the command center's first version.
pub fn alerting_status(e: &AlertingError) -> StatusCode {
    match e {
        AlertingError::Registry(RegistryError::NotFound(_)) => StatusCode::NOT_FOUND,
        AlertingError::Registry(RegistryError::FailedPrecondition(_)) => StatusCode::CONFLICT,
        AlertingError::Registry(r) if is_internal(r) => StatusCode::INTERNAL_SERVER_ERROR,
        AlertingError::Db(_) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_answers_as_the_handlers_did() {
        let status = |e: WebError| e.into_response().status();
        assert_eq!(
            status(WebError::SignedOut(Area::Kiosk)),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(status(WebError::StreamSignedOut), StatusCode::UNAUTHORIZED);
        assert_eq!(status(WebError::Csrf(Area::Command)), StatusCode::FORBIDDEN);
        let r = WebError::SignInFirst(Area::Kiosk).into_response();
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        assert_eq!(r.headers()["location"], "/kiosk");
        assert_eq!(
            status(WebError::Alerting(
                Area::Command,
                RegistryError::NotFound("incident x".into()).into()
            )),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status(WebError::Alerting(
                Area::Command,
                RegistryError::PermissionDenied("no".into()).into()
            )),
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }

    #[test]
    fn registry_refusals_have_their_own_statuses() {
        assert_eq!(
            registry_status(&RegistryError::PermissionDenied("PIN".into())),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            registry_status(&RegistryError::AlreadyExists("plate x".into())),
            StatusCode::CONFLICT
        );
        assert_eq!(
            registry_status(&RegistryError::invalid("plate", "is required")),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            registry_status(&RegistryError::Crypto),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
