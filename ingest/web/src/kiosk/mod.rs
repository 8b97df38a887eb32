//! The kiosk: operators sign in with a kiosk token, register bikes (free), look bikes up by
//! plate or tag, and transfer, re-tag, report stolen or recovered, arm or disarm them. Every
//! change calls the same [`Registry`] functions as the gRPC Registry service, as the
//! signed-in kiosk, so validation, authorization and the audit log are the same.
//!
//! Pages are server-rendered forms (they work without JavaScript); `kiosk.js` only keeps a
//! tag scanner's Enter from submitting the form early. After a change the browser is
//! redirected (POST, then 303, then GET), so a reload does not repeat it; a registration
//! also carries a request id chosen when the form was drawn, so a double submission on a
//! slow connection registers the bike once.
//!
//! [`Registry`]: greenplate_registry::Registry
//!
//! Layout:
//! - `form`: form fields, with the problem shown at the field at fault.
//! - `register`: the start page's registration form.
//! - `bike`: a bike looked up: its record and the forms of what can be done with it.
//! - `actions`: the changes to a bike (stolen, recovered, arm, disarm, re-tag, transfer).

use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use greenplate_registry::Role;
use maud::{Markup, html};

use super::extract::{ClientIp, Csrf, KioskSession};
use super::i18n::Bilingual;
use super::session::{Area, Session};
use super::sign_in::{self, Door, LoginForm};
use crate::state::WebState;
use form::Problem;
use register::{RegisterForm, home_page};

mod actions;
mod bike;
mod form;
mod register;

pub use actions::action;
pub use bike::bike;
pub use register::register;

const AREA: Area = Area::Kiosk;
const HOME: &str = "/kiosk";

fn header(session: &Session) -> Markup {
    html! {
        header.top {
            span.brand { "greenplate 摩托车登记 / Bike registration" }
            span.who { "终端 / Kiosk: " (session.caller.id) }
            form method="post" action="/kiosk/logout" {
                input type="hidden" name="csrf" value=(session.csrf);
                button.secondary type="submit" { "退出 / Sign out" }
            }
        }
    }
}

fn lookup_form(q: &str) -> Markup {
    html! {
        form.lookup method="get" action="/kiosk/bike" {
            label for="q" { span.zh { "查询车辆" } " " span.en { "Look up a bike" } }
            div.row {
                input id="q" name="q" type="search" value=(q) required
                    placeholder="车牌号或电子标签号 / plate or tag id" data-scan;
                button type="submit" { "查询 / Look up" }
            }
        }
    }
}

const DOOR: Door = Door {
    area: AREA,
    home: HOME,
    title: "Kiosk sign-in",
    heading: "摩托车登记终端 / Bike registration kiosk",
    token_zh: "终端令牌",
    token_en: "Kiosk token",
    wrong_kind: ("这不是终端令牌", "This is not a kiosk token"),
    signed_in: "Kiosk web sign-in.",
};

fn sign_in_page(status: StatusCode, problem: Option<&Bilingual>) -> Response {
    sign_in::page(&DOOR, status, problem)
}

/// Signs a kiosk in (or the admin, as in gRPC Registry).
pub async fn login(
    State(web): State<WebState>,
    ClientIp(client): ClientIp,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    sign_in::sign_in(&DOOR, &web, client, &headers, &form, |c| {
        matches!(c.role, Role::Kiosk | Role::Admin)
    })
}

pub async fn logout(
    State(web): State<WebState>,
    Csrf(session, _): Csrf<Option<KioskSession>>,
) -> Response {
    sign_in::sign_out(&DOOR, &web, session.as_ref().map(|s| &s.0))
}

/// The kiosk's start page: sign-in, or lookup and registration.
pub async fn home(session: Option<KioskSession>) -> Response {
    match session {
        Some(KioskSession(s)) => home_page(
            StatusCode::OK,
            &s,
            &RegisterForm::default(),
            &Problem::default(),
        ),
        None => sign_in_page(StatusCode::OK, None),
    }
}
