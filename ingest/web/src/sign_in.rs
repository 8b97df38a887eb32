//! Signing in and out, the same for both apps but for the words and who may enter.

use std::time::Instant;

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use greenplate_registry::Caller;
use maud::html;
use serde::Deserialize;

use super::WebState;
use super::i18n::Bilingual;
use super::page::{both, html_response, layout, redirect};
use super::session::{Area, Session, clear_cookie, set_cookie};

/// What one app's sign-in says, and where it leads.
pub struct Door {
    pub area: Area,
    pub home: &'static str,
    /// The page title, and the heading (Chinese / English).
    pub title: &'static str,
    pub heading: &'static str,
    /// The token field's label.
    pub token_zh: &'static str,
    pub token_en: &'static str,
    /// Said to a valid token of the wrong kind.
    pub wrong_kind: (&'static str, &'static str),
    /// Logged on a sign-in.
    pub signed_in: &'static str,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct LoginForm {
    token: String,
}

/// The sign-in page, with a problem shown above the button.
pub fn page(door: &Door, status: StatusCode, problem: Option<&Bilingual>) -> Response {
    let action = format!("{}/login", door.home);
    html_response(
        status,
        layout(
            door.title,
            None,
            html! {
                main.narrow {
                    h1 { (door.heading) }
                    form.card method="post" action=(action) {
                        label for="token" { span.zh { (door.token_zh) } " " span.en { (door.token_en) } }
                        input id="token" name="token" type="password" required autocomplete="off";
                        @if let Some(m) = problem {
                            p.error role="alert" { (both(m)) }
                        }
                        button type="submit" { "登录 / Sign in" }
                    }
                }
            },
        ),
    )
}

/// Checks the token once (it is never kept) and opens a session for a caller `allowed`
/// takes.
pub fn sign_in(
    door: &Door,
    web: &WebState,
    headers: &HeaderMap,
    form: &LoginForm,
    allowed: impl Fn(&Caller) -> bool,
) -> Response {
    if !super::same_origin(headers) {
        return page(
            door,
            StatusCode::FORBIDDEN,
            Some(&Bilingual::new(
                "请从本系统的登录页登录",
                "Sign in from this server's own sign-in page",
            )),
        );
    }
    match web.auth().authenticate(form.token.trim()) {
        Some(c) if allowed(&c) => {
            tracing::info!(caller = %c.audit_name(), "{}", door.signed_in);
            let s = web.sessions.create(door.area, c, Instant::now());
            redirect(door.home, Some(set_cookie(door.area, &s.id)))
        }
        Some(_) => page(
            door,
            StatusCode::FORBIDDEN,
            Some(&Bilingual::new(door.wrong_kind.0, door.wrong_kind.1)),
        ),
        None => page(
            door,
            StatusCode::UNAUTHORIZED,
            Some(&Bilingual::new("令牌无效", "Unknown or revoked token")),
        ),
    }
}

/// Ends the session, if there is one (its form's CSRF token was checked by the extractor),
/// and clears the cookie.
pub fn sign_out(door: &Door, web: &WebState, session: Option<&Session>) -> Response {
    if let Some(s) = session {
        web.sessions.remove(&s.id);
    }
    redirect(door.home, Some(clear_cookie(door.area)))
}
