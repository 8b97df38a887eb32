//! What a web handler is handed, checked before it runs (as realworld-axum-sqlx's `AuthUser`):
//! the signed-in session of its app ([`KioskSession`], [`CommandSession`]), and a posted
//! form that carries that session's CSRF token ([`Csrf`]). A request that fails a check is
//! answered by [`WebError`], the same way for every handler.
//!
//! A session exists only for a caller its app's sign-in took (a kiosk or the admin at the
//! kiosk, a command-center unit at the command center), so holding one is being signed in as
//! one of those.
//!
//! A page (GET) takes `Option<KioskSession>` and decides what a signed-out visitor sees; a
//! form (POST) takes `Csrf<KioskSession, TheForm>`, refused with 401 without a session and
//! 403 without its token, in that order, after the body was read as the form (as before:
//! a body that is not the form gets axum's own answer first).

use std::time::Instant;

use axum::Form;
use axum::extract::{FromRequest, FromRequestParts, OptionalFromRequestParts, Request};
use axum::http::request::Parts;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::error::WebError;
use super::session::{Area, Session};
use crate::state::WebState;

/// Signed in at the kiosk (as a kiosk, or the admin).
#[derive(Debug, Clone)]
pub struct KioskSession(pub Session);

/// Signed in at the command center (as a command-center patrol unit).
#[derive(Debug, Clone)]
pub struct CommandSession(pub Session);

/// Signed in on the owner page (as a bike's owner: `Role::Owner`, id the owner's).
#[derive(Debug, Clone)]
pub struct OwnerSession(pub Session);

/// The live session the request's cookie for `area` names, marked used now. A session whose
/// token was revoked or expired ends here (an owner's session has no token: it lives
/// until it is idle or signed out).
fn signed_in(parts: &Parts, web: &WebState, area: Area) -> Option<Session> {
    let session = web
        .sessions
        .from_headers(area, &parts.headers, Instant::now())?;
    if area == Area::Owner || web.auth().is_live(&session.credential) {
        Some(session)
    } else {
        web.sessions.remove(&session.id);
        tracing::info!(caller = %session.caller.audit_name(), "Ended a web session: its token was revoked or expired.");
        None
    }
}

impl FromRequestParts<WebState> for KioskSession {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, web: &WebState) -> Result<Self, WebError> {
        signed_in(parts, web, Area::Kiosk)
            .map(Self)
            .ok_or(WebError::SignedOut(Area::Kiosk))
    }
}

impl OptionalFromRequestParts<WebState> for KioskSession {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        web: &WebState,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(signed_in(parts, web, Area::Kiosk).map(Self))
    }
}

/// The command center's session, while its unit is still a command-center unit (one
/// changed since it signed in loses the pages at once).
fn command_signed_in(parts: &Parts, web: &WebState) -> Option<CommandSession> {
    signed_in(parts, web, Area::Command)
        .filter(|s| web.alerting.is_command_unit(&s.caller.id))
        .map(CommandSession)
}

impl FromRequestParts<WebState> for CommandSession {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, web: &WebState) -> Result<Self, WebError> {
        command_signed_in(parts, web).ok_or(WebError::SignedOut(Area::Command))
    }
}

impl OptionalFromRequestParts<WebState> for CommandSession {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        web: &WebState,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(command_signed_in(parts, web))
    }
}

/// What a [`Csrf`] form is checked against: the session's token, if there is a session.
pub trait CsrfSession {
    /// The app whose start page a refused form links back to.
    const AREA: Area;
    /// The session (none: a sign-out without a session, which has nothing to protect).
    fn session(&self) -> Option<&Session>;
}

impl FromRequestParts<WebState> for OwnerSession {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, web: &WebState) -> Result<Self, WebError> {
        signed_in(parts, web, Area::Owner)
            .map(Self)
            .ok_or(WebError::SignedOut(Area::Owner))
    }
}

impl OptionalFromRequestParts<WebState> for OwnerSession {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        web: &WebState,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(signed_in(parts, web, Area::Owner).map(Self))
    }
}

impl CsrfSession for OwnerSession {
    const AREA: Area = Area::Owner;
    fn session(&self) -> Option<&Session> {
        Some(&self.0)
    }
}

impl CsrfSession for KioskSession {
    const AREA: Area = Area::Kiosk;
    fn session(&self) -> Option<&Session> {
        Some(&self.0)
    }
}

impl CsrfSession for CommandSession {
    const AREA: Area = Area::Command;
    fn session(&self) -> Option<&Session> {
        Some(&self.0)
    }
}

impl<S: CsrfSession> CsrfSession for Option<S> {
    const AREA: Area = S::AREA;
    fn session(&self) -> Option<&Session> {
        self.as_ref().and_then(CsrfSession::session)
    }
}

/// A form `F` posted from a page of session `S`, taken only when its `csrf` field is that
/// session's token: `Csrf(KioskSession(session), form): Csrf<KioskSession, RegisterForm>`.
/// `F` holds the other fields (a field named `csrf` in it stays empty).
#[derive(Debug)]
pub struct Csrf<S, F = NoFields>(pub S, pub F);

/// A form of nothing but its CSRF token (sign-out).
#[derive(Debug, Default, Deserialize)]
pub struct NoFields {}

/// A posted form: the CSRF token every form carries, and the rest.
#[derive(Debug, Deserialize)]
struct Posted<F> {
    #[serde(default)]
    csrf: String,
    #[serde(flatten)]
    form: F,
}

impl<S, F> FromRequest<WebState> for Csrf<S, F>
where
    S: FromRequestParts<WebState> + CsrfSession + Send,
    WebError: From<S::Rejection>,
    F: DeserializeOwned + Send,
{
    type Rejection = WebError;

    async fn from_request(req: Request, web: &WebState) -> Result<Self, WebError> {
        let (mut parts, body) = req.into_parts();
        // The body first, then the session, then the token.
        let Form(posted) =
            Form::<Posted<F>>::from_request(Request::from_parts(parts.clone(), body), web).await?;
        let session = S::from_request_parts(&mut parts, web).await?;
        if let Some(s) = session.session()
            && !s.csrf_ok(&posted.csrf)
        {
            return Err(WebError::Csrf(S::AREA));
        }
        Ok(Csrf(session, posted.form))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default)]
    struct Plate {
        plate: String,
        #[serde(rename = "owner.name")]
        owner_name: String,
    }

    /// The body read as a posted form, or axum's rejection text.
    async fn read(body: &'static str) -> Result<(String, Plate), String> {
        let req = Request::post("/")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap();
        Form::<Posted<Plate>>::from_request(req, &())
            .await
            .map(|Form(p)| (p.csrf, p.form))
            .map_err(|e| e.body_text())
    }

    #[tokio::test]
    async fn the_token_is_read_apart_from_the_form() {
        let (csrf, form) = read("csrf=abc&plate=%E6%BD%AE%E9%98%B3A1&owner.name=x&other=1")
            .await
            .unwrap();
        assert_eq!(csrf, "abc");
        assert_eq!(
            form,
            Plate {
                plate: "潮阳A1".into(),
                owner_name: "x".into()
            }
        );
        // No token: an empty one, which no session has.
        let (csrf, form) = read("plate=p").await.unwrap();
        assert_eq!((csrf.as_str(), form.plate.as_str()), ("", "p"));
    }

    #[tokio::test]
    async fn a_field_given_twice_is_refused_as_before() {
        let e = read("csrf=a&csrf=b").await.unwrap_err();
        assert!(e.contains("duplicate field `csrf`"), "{e}");
        let e = read("csrf=a&plate=p&plate=q").await.unwrap_err();
        assert!(e.contains("duplicate field `plate`"), "{e}");
    }
}

/// The client's address, when the server put one in the request (`ConnectInfo`).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}
