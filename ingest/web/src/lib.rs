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
//! - `state`: [`WebState`], what every handler shares (alerting, sessions, ingest's totals).
//! - [`session`]: sign-in sessions (cookie, idle expiry, CSRF tokens).
//! - [`limits`]: sign-in budgets per client and per token, live feeds per session, and the
//!   counters of both.
//! - `extract`: what a handler is handed, checked: the signed-in session of its app, a
//!   posted form that carries that session's CSRF token.
//! - `error`: the handlers' one error type, and what each error answers.
//! - `i18n`: registry errors in Chinese and English, at the field at fault.
//! - `page`: the HTML shell, security headers, redirects, message pages.
//! - `sign_in`: signing in and out, shared by both apps.
//! - `kiosk`: sign-in, registration, lookup and the bike actions.
//! - `command`: sign-in, the map, the incident list, the live event stream, an incident's
//!   history with its cameras, the watch list, investigations.
//! - `sound`: the command center's alarms, one per priority, made as WAV.
//! - `owner`: the owner page: sign-in with a texted code, own bikes, arm, report a theft,
//!   passes and the case; `owner_codes`: its one-time codes.
//! - `assets/`: `style.css`, `kiosk.js`, `command.js`.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

mod command;
mod error;
mod extract;
mod i18n;
mod kiosk;
pub mod limits;
mod owner;
mod owner_codes;
mod page;
pub mod session;
mod sign_in;
mod sound;
mod state;

pub use limits::WebMetrics;
pub use state::{IngestTotals, OwnerSms, Totals, WebState};

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
        .route("/command/incidents/{id}", get(command::incident_detail))
        .route(
            "/command/watch",
            get(command::watch).post(command::watch_action),
        )
        .route("/command/investigate", get(command::investigate))
        .route("/web/alarm-{priority}", get(alarm))
        .route("/command/events", get(command::events))
        .route("/owner", get(owner::home))
        .route("/owner/code", post(owner::code))
        .route("/owner/login", post(owner::login))
        .route("/owner/logout", post(owner::logout))
        .route("/owner/arm", post(owner::arm))
        .route("/owner/stolen", post(owner::stolen))
        .route("/owner/claim", get(owner::claim))
        .route("/owner/bike", get(owner::bike))
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
                        li { a href="/owner" { "车主服务 / Owners" } }
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

/// `/web/alarm-N.wav`: the alarm of priority N (1-3).
async fn alarm(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    let priority = match file.as_str() {
        "1.wav" => 1,
        "2.wav" => 2,
        "3.wav" => 3,
        _ => return axum::http::StatusCode::NOT_FOUND.into_response(),
    };
    let mut r = sound::alarm(priority).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("audio/wav"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    r
}

async fn command_js() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/command.js"),
    )
}
