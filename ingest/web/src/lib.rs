//! greenplate's web pages on the HTTP port: the kiosk (`/kiosk`, bike registration at the counter)
//! and the command center (`/command`, the duty officer's live map and incident list).
//! Server-rendered HTML (maud escapes every value), our own CSS and a little JavaScript
//! embedded in the binary, nothing fetched from the internet: the district network may have
//! none.
//!
//! Both call the registry and alerting libraries directly, as the signed-in kiosk or unit,
//! through the same functions (and so the same validation and authorization) as the gRPC
//! Registry and Patrol services.
//!
//! Layout:
//! - [`session`]: sign-in sessions (cookie, idle expiry, CSRF tokens).
//! - `extract`: what a handler is handed, checked: the signed-in session of its app, a
//!   posted form that carries that session's CSRF token.
//! - `error`: the handlers' one error type, and what each error answers.
//! - `i18n`: registry errors in Chinese and English, at the field at fault.
//! - `page`: the HTML shell, security headers, redirects, message pages.
//! - `sign_in`: signing in and out, shared by both apps.
//! - `kiosk`: sign-in, registration, lookup and the bike actions.
//! - `command`: sign-in, the map, the incident list, the live event stream.
//! - `assets/`: `style.css`, `kiosk.js`, `command.js`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use greenplate_alerting::Alerting;
use greenplate_registry::Authenticator;
use tokio_util::sync::CancellationToken;

mod command;
mod error;
mod extract;
mod i18n;
mod kiosk;
mod page;
pub mod session;
mod sign_in;

use session::Sessions;

/// Sessions alive at once, at most (kiosks and command centers together).
const MAX_SESSIONS: usize = 10_000;

/// Ingest's totals so far, what the command center's rates are computed from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestTotals {
    /// Tag reads in accepted sightings.
    pub reads: u64,
    /// Batches accepted.
    pub batches: u64,
    /// Sightings accepted.
    pub sightings: u64,
    /// Reader messages rejected, every reason.
    pub rejected: u64,
}

/// Reads [`IngestTotals`] (the composing crate hands ingest's metrics in).
pub type Totals = Arc<dyn Fn() -> IngestTotals + Send + Sync>;

/// What the web handlers share.
#[derive(Clone)]
pub struct WebState {
    alerting: Arc<Alerting>,
    totals: Totals,
    sessions: Arc<Sessions>,
    shutdown: CancellationToken,
    tile_url: Option<Arc<str>>,
}

impl WebState {
    /// `session_idle`: how long an unused session lives; `tile_url`: optional map tiles.
    pub fn new(
        alerting: Arc<Alerting>,
        totals: Totals,
        shutdown: CancellationToken,
        session_idle: Duration,
        tile_url: Option<String>,
    ) -> Self {
        Self {
            alerting,
            totals,
            sessions: Arc::new(Sessions::new(session_idle, MAX_SESSIONS)),
            shutdown,
            tile_url: tile_url.filter(|t| !t.trim().is_empty()).map(Into::into),
        }
    }

    fn auth(&self) -> &Arc<Authenticator> {
        self.alerting.registry().auth()
    }
}

/// False when a browser says the request comes from a page of another site (`Origin`
/// naming another host than `Host`). Sign-in forms have no session yet, so no CSRF token:
/// this keeps another site from signing a browser in to a session of its choosing.
fn same_origin(headers: &axum::http::HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin
        .split_once("://")
        .map_or(origin, |(_, rest)| rest)
        .trim_end_matches('/');
    !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
}

/// The web routes, to merge into the HTTP port's router.
pub fn router(state: WebState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/web/style.css", get(style))
        .route("/web/kiosk.js", get(kiosk_js))
        .route("/web/command.js", get(command_js))
        .route("/kiosk", get(kiosk::home))
        .route("/kiosk/login", post(kiosk::login))
        .route("/kiosk/logout", post(kiosk::logout))
        .route("/kiosk/register", post(kiosk::register))
        .route("/kiosk/bike", get(kiosk::bike))
        .route("/kiosk/bike/{action}", post(kiosk::action))
        .route("/command", get(command::home))
        .route("/command/login", post(command::login))
        .route("/command/logout", post(command::logout))
        .route("/command/incident", post(command::incident))
        .route("/command/events", get(command::events))
        .with_state(state)
}

async fn index() -> Response {
    page::html_response(
        axum::http::StatusCode::OK,
        page::layout(
            "greenplate",
            None,
            maud::html! {
                main.narrow {
                    h1 { "greenplate" }
                    ul.links {
                        li { a href="/kiosk" { "摩托车登记终端 / Bike registration kiosk" } }
                        li { a href="/command" { "指挥中心 / Command center" } }
                    }
                }
            },
        ),
    )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", include_str!("assets/style.css"))
}

async fn kiosk_js() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/kiosk.js"),
    )
}

async fn command_js() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/command.js"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;

    fn headers(host: &str, origin: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        h
    }

    #[test]
    fn sign_in_only_from_our_own_pages() {
        assert!(same_origin(&headers("10.0.0.5:8080", None)));
        assert!(same_origin(&headers(
            "10.0.0.5:8080",
            Some("http://10.0.0.5:8080")
        )));
        assert!(!same_origin(&headers(
            "10.0.0.5:8080",
            Some("http://evil.example")
        )));
        assert!(!same_origin(&headers("10.0.0.5:8080", Some("null"))));
    }
}
