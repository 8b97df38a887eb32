//! The start page's registration form, and registering a bike with it (free, and once only
//! however often the form is submitted).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use greenplate_registry::{NewBike, NewOwner};
use maud::{Markup, html};
use serde::Deserialize;

use super::bike::bike_url;
use super::form::{Problem, field, general_error};
use super::{header, lookup_form};
use crate::error::registry_status;
use crate::extract::{Csrf, KioskSession};
use crate::i18n::Bilingual;
use crate::page::{html_response, layout, redirect};
use crate::session::Session;
use crate::state::WebState;

/// The registration form's fields, named as the registry names them.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RegisterForm {
    request_id: String,
    #[serde(rename = "owner.name")]
    owner_name: String,
    #[serde(rename = "owner.id_number")]
    owner_id_number: String,
    #[serde(rename = "owner.phone")]
    owner_phone: String,
    plate: String,
    tag_id: String,
    #[serde(rename = "bike.make")]
    make: String,
    #[serde(rename = "bike.model")]
    model: String,
    #[serde(rename = "bike.color")]
    color: String,
    #[serde(rename = "bike.frame_number")]
    frame_number: String,
    pin: String,
    pin_again: String,
}

fn new_request_id() -> String {
    format!("web-{}", hex::encode(rand::random::<[u8; 12]>()))
}

fn register_form(session: &Session, f: &RegisterForm, problem: &Problem) -> Markup {
    let request_id = if f.request_id.is_empty() {
        new_request_id()
    } else {
        f.request_id.clone()
    };
    html! {
        form.card.register method="post" action="/kiosk/register" novalidate {
            h2 { "登记新车（免费）" " / " "Register a bike (free)" }
            input type="hidden" name="csrf" value=(session.csrf);
            input type="hidden" name="request_id" value=(request_id);
            (general_error(problem))
            fieldset {
                legend { "车主 / Owner" }
                (field("", "owner.name", &f.owner_name, "text", problem, "黄敏"))
                (field("", "owner.id_number", &f.owner_id_number, "text", problem, "18位 / 18 characters"))
                (field("", "owner.phone", &f.owner_phone, "tel", problem, "13712345678"))
            }
            fieldset {
                legend { "车辆 / Bike" }
                (field("", "plate", &f.plate, "text", problem, "潮阳A12345"))
                (field("", "tag_id", &f.tag_id, "text", problem, "输入或扫描 / type or scan"))
                (field("", "bike.make", &f.make, "text", problem, "Yadea"))
                (field("", "bike.model", &f.model, "text", problem, "G5"))
                (field("", "bike.color", &f.color, "text", problem, "绿 / green"))
                (field("", "bike.frame_number", &f.frame_number, "text", problem, "LYDG5RULES1"))
            }
            fieldset {
                legend { "车主设置密码 / PIN chosen by the owner" }
                (field("", "pin", "", "password", problem, "4-8位数字 / 4-8 digits"))
                (field("", "pin_again", "", "password", problem, ""))
            }
            button.primary type="submit" { "登记 / Register" }
        }
    }
}

pub(super) fn home_page(
    status: StatusCode,
    session: &Session,
    form: &RegisterForm,
    problem: &Problem,
) -> Response {
    html_response(
        status,
        layout(
            "Kiosk",
            Some("/web/kiosk.js"),
            html! {
                (header(session))
                main {
                    (lookup_form(""))
                    (register_form(session, form, problem))
                }
            },
        ),
    )
}

/// Registers a bike, as the signed-in kiosk; the form again, with the problem at its field,
/// if the registry refuses it.
pub async fn register(
    State(web): State<WebState>,
    Csrf(KioskSession(session), form): Csrf<KioskSession, RegisterForm>,
) -> Response {
    if form.pin != form.pin_again {
        let problem = Problem {
            field: Some("pin_again"),
            message: Some(Bilingual::new(
                "两次输入的密码不一致",
                "The two PINs are not the same",
            )),
        };
        return home_page(StatusCode::UNPROCESSABLE_ENTITY, &session, &form, &problem);
    }
    let registry = web.alerting.registry();
    let result = registry
        .register_bike(
            &session.caller,
            NewBike {
                tag_id: form.tag_id.clone(),
                plate: form.plate.clone(),
                owner: NewOwner {
                    name: form.owner_name.clone(),
                    id_number: form.owner_id_number.clone(),
                    phone: form.owner_phone.clone(),
                },
                make: form.make.clone(),
                model: form.model.clone(),
                color: form.color.clone(),
                frame_number: form.frame_number.clone(),
                request_id: form.request_id.clone(),
                pin: Some(form.pin.clone()),
            },
        )
        .await;
    match result {
        Ok(done) => {
            tracing::info!(
                caller = %session.caller.audit_name(),
                bike_id = done.bike_id,
                created = done.created,
                "Registered a bike (web)."
            );
            // The plate as the registry stored it (normalised), to look it up again.
            let plate = match greenplate_registry::validate::plate("plate", &form.plate) {
                Ok(p) => p,
                Err(_) => form.plate.clone(),
            };
            redirect(&bike_url(&plate, "registered"), None)
        }
        Err(e) => home_page(registry_status(&e), &session, &form, &Problem::from(&e)),
    }
}
