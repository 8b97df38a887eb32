//! Signing in and out, the same for both apps but for the words and who may enter.

use std::net::IpAddr;
use std::time::Instant;

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use greenplate_registry::{Caller, Credential};
use maud::html;
use serde::Deserialize;

use crate::i18n::Bilingual;
use crate::limits;
use crate::page::{both, html_response, layout, redirect};
use crate::session::{Area, Session, clear_cookie, set_cookie};
use crate::state::WebState;

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
/// takes. Attempts are limited per client address and per token (10 a minute each, 429
/// past it), and counted by outcome.
pub fn sign_in(
    door: &Door,
    web: &WebState,
    client: Option<IpAddr>,
    headers: &HeaderMap,
    form: &LoginForm,
    allowed: impl Fn(&Caller) -> bool,
) -> Response {
    let now = Instant::now();
    let limits = &web.sign_in_limits;
    let token = form.token.trim();
    let credential = Credential::of(token);
    let client_ok = client.is_none_or(|ip| limits.clients.take(&ip, now));
    if !client_ok || !limits.tokens.take(&credential, now) {
        web.metrics.sign_in(limits::RATE_LIMITED);
        tracing::warn!(client = ?client, "Refused a web sign-in: too many attempts.");
        return page(
            door,
            StatusCode::TOO_MANY_REQUESTS,
            Some(&Bilingual::new(
                "登录尝试过多，请稍后再试",
                "Too many sign-in attempts; try again in a minute",
            )),
        );
    }
    if !same_origin(headers) {
        web.metrics.sign_in(limits::OTHER_SITE);
        return page(
            door,
            StatusCode::FORBIDDEN,
            Some(&Bilingual::new(
                "请从本系统的登录页登录",
                "Sign in from this server's own sign-in page",
            )),
        );
    }
    match web.auth().authenticate_credential(credential) {
        Some((c, credential)) if allowed(&c) => {
            web.metrics.sign_in(limits::SIGNED_IN);
            tracing::info!(caller = %c.audit_name(), "{}", door.signed_in);
            let s = web
                .sessions
                .create(door.area, c, credential, Instant::now());
            redirect(door.home, Some(set_cookie(door.area, &s.id, web.secure)))
        }
        Some(_) => {
            web.metrics.sign_in(limits::WRONG_KIND);
            page(
                door,
                StatusCode::FORBIDDEN,
                Some(&Bilingual::new(door.wrong_kind.0, door.wrong_kind.1)),
            )
        }
        None => {
            web.metrics.sign_in(limits::UNKNOWN_TOKEN);
            page(
                door,
                StatusCode::UNAUTHORIZED,
                Some(&Bilingual::new(
                    "令牌无效",
                    "Unknown, revoked or expired token",
                )),
            )
        }
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

/// False when a browser says the request comes from a page of another site (`Origin`
/// naming another host than `Host`). Sign-in forms have no session yet, so no CSRF token:
/// this keeps another site from signing a browser in to a session of its choosing.
pub(crate) fn same_origin(headers: &axum::http::HeaderMap) -> bool {
    let Some(origin) = headers
        .get(axum::http::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
    else {
        return true;
    };
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin
        .split_once("://")
        .map_or(origin, |(_, rest)| rest)
        .trim_end_matches('/');
    !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue, header};

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
