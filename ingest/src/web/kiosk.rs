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

use std::time::Instant;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use greenplate_registry::{
    BikeKey, BikeRecord, Caller, NewBike, NewOwner, RegistryError, Role, TagId, TheftDetails,
};
use maud::{Markup, html};
use serde::Deserialize;

use super::WebState;
use super::i18n::{Bilingual, explain, field_name, is_internal};
use super::page::{
    both, csrf_refused, datetime, html_response, layout, mask_name, query_value, redirect,
    session_expired,
};
use super::session::{Area, Session};
use super::sign_in::{self, CsrfForm, Door, LoginForm};

const AREA: Area = Area::Kiosk;
const HOME: &str = "/kiosk";

/// What the page says went wrong: at a field (registry name), or for the whole form.
#[derive(Debug, Default)]
struct Problem {
    field: Option<&'static str>,
    message: Option<Bilingual>,
}

impl Problem {
    fn from(e: &RegistryError) -> Self {
        let (field, message) = explain(e);
        Self {
            field,
            message: Some(message),
        }
    }

    fn at(&self, field: &str) -> Option<&Bilingual> {
        (self.field == Some(field))
            .then_some(self.message.as_ref())
            .flatten()
    }

    /// The message, unless it is shown at a field.
    fn general(&self) -> Option<&Bilingual> {
        self.field
            .is_none()
            .then_some(self.message.as_ref())
            .flatten()
    }
}

/// An input with its bilingual label and, when it is at fault, the error beside it. Its id
/// is `form` + `-` + the name (dots as dashes), or the name alone for `form` "".
fn field(
    form: &str,
    name: &'static str,
    value: &str,
    kind: &str,
    problem: &Problem,
    hint: &str,
) -> Markup {
    let (zh, en) = field_name(name);
    let id = match form {
        "" => name.replace('.', "-"),
        f => format!("{f}-{}", name.replace('.', "-")),
    };
    let error = problem.at(name);
    html! {
        div.field.bad[error.is_some()] {
            label for=(id) { span.zh { (zh) } " " span.en { (en) } }
            input id=(id) name=(name) type=(kind) value=(value)
                autocomplete="off" aria-invalid=(if error.is_some() { "true" } else { "false" })
                placeholder=(hint)
                inputmode=[(kind == "password").then_some("numeric")]
                data-scan[name.ends_with("tag_id")];
            @if let Some(m) = error {
                p.error role="alert" data-field=(name) { (both(m)) }
            }
        }
    }
}

fn general_error(problem: &Problem) -> Markup {
    html! {
        @if let Some(m) = problem.general() {
            p.error.banner role="alert" { (both(m)) }
        }
    }
}

fn header(session: &Session) -> Markup {
    html! {
        header.top {
            span.brand { "greenplate 自行车登记 / Bike registration" }
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
                    placeholder="车牌号或标签号 / plate or tag id" data-scan;
                button type="submit" { "查询 / Look up" }
            }
        }
    }
}

const DOOR: Door = Door {
    area: AREA,
    home: HOME,
    title: "Kiosk sign-in",
    heading: "自行车登记终端 / Bike registration kiosk",
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
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    sign_in::sign_in(&DOOR, &web, &headers, &form, |c| {
        matches!(c.role, Role::Kiosk | Role::Admin)
    })
}

pub async fn logout(
    State(web): State<WebState>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    sign_in::sign_out(&DOOR, &web, &headers, &form)
}

/// The registration form's fields, named as the registry names them.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RegisterForm {
    csrf: String,
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

fn home_page(
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

/// The kiosk's start page: sign-in, or lookup and registration.
pub async fn home(State(web): State<WebState>, headers: HeaderMap) -> Response {
    match web.sessions.from_headers(AREA, &headers, Instant::now()) {
        Some(s) => home_page(
            StatusCode::OK,
            &s,
            &RegisterForm::default(),
            &Problem::default(),
        ),
        None => sign_in_page(StatusCode::OK, None),
    }
}

pub async fn register(
    State(web): State<WebState>,
    headers: HeaderMap,
    Form(form): Form<RegisterForm>,
) -> Response {
    let Some(session) = web.sessions.from_headers(AREA, &headers, Instant::now()) else {
        return session_expired(HOME);
    };
    if !session.csrf_ok(&form.csrf) {
        return csrf_refused(HOME);
    }
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
        Err(e) => {
            let status = status_of(&e);
            home_page(status, &session, &form, &Problem::from(&e))
        }
    }
}

/// The HTTP status for a registry error, logging the server's own failures.
fn status_of(e: &RegistryError) -> StatusCode {
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
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

fn bike_url(plate: &str, done: &str) -> String {
    format!("/kiosk/bike?q={}&done={done}", query_value(plate))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct LookupQuery {
    q: String,
    done: String,
}

/// What a finished action says (a fixed message per action: nothing from the URL is shown).
fn done_message(done: &str) -> Option<Bilingual> {
    Some(match done {
        "registered" => Bilingual::new("登记成功", "Registered"),
        "stolen" => Bilingual::new(
            "已报失，车辆已列入布控名单",
            "Reported stolen: the bike is on the hotlist",
        ),
        "recovered" => Bilingual::new("已登记找回", "Recorded as recovered"),
        "armed" => Bilingual::new("已设防", "Armed"),
        "disarmed" => Bilingual::new("已撤防", "Disarmed"),
        "transferred" => Bilingual::new("过户成功", "Ownership transferred"),
        "retagged" => Bilingual::new(
            "标签已更换，旧标签已作废",
            "Tag replaced; the old tag is revoked",
        ),
        _ => return None,
    })
}

fn key_of(q: &str) -> BikeKey {
    if TagId::parse(q).is_some() {
        BikeKey::Tag(q.trim().to_owned())
    } else {
        BikeKey::Plate(q.trim().to_owned())
    }
}

/// A bike: its (masked) record and what can be done with it.
pub async fn bike(
    State(web): State<WebState>,
    headers: HeaderMap,
    Query(query): Query<LookupQuery>,
) -> Response {
    let Some(session) = web.sessions.from_headers(AREA, &headers, Instant::now()) else {
        return redirect(HOME, None);
    };
    let notice = done_message(&query.done);
    bike_page(&web, &session, &query.q, notice, None, &Problem::default()).await
}

async fn bike_page(
    web: &WebState,
    session: &Session,
    q: &str,
    notice: Option<Bilingual>,
    failed_action: Option<&str>,
    problem: &Problem,
) -> Response {
    let found = web.alerting.registry().get_bike(&key_of(q)).await;
    let (status, body) = match found {
        Ok(b) => {
            let status = if problem.message.is_some() {
                StatusCode::UNPROCESSABLE_ENTITY
            } else {
                StatusCode::OK
            };
            (
                status,
                bike_card(session, &b, notice.as_ref(), failed_action, problem),
            )
        }
        Err(e) => {
            let status = status_of(&e);
            let p = Problem::from(&e);
            (
                status,
                html! { p.error.banner role="alert" { (both(p.message.as_ref().unwrap_or(&Bilingual::new("未找到", "Not found")))) } },
            )
        }
    };
    html_response(
        status,
        layout(
            "Bike",
            Some("/web/kiosk.js"),
            html! {
                (header(session))
                main {
                    (lookup_form(q))
                    (body)
                    p { a href=(HOME) { "← 登记新车 / Register another bike" } }
                }
            },
        ),
    )
}

fn badge(on: bool, class: &str, zh: &str, en: &str) -> Markup {
    html! { @if on { span class=(format!("badge {class}")) { (zh) " / " (en) } } }
}

/// One action's form. Its fields show their own errors; a general message is at the top of
/// the page, since the failed action's form may not be drawn any more (e.g. "recovered" for
/// a bike no longer stolen).
fn action_form(
    session: &Session,
    plate: &str,
    action: &str,
    title: (&str, &str),
    fields: Markup,
    button: &str,
) -> Markup {
    html! {
        form.card.action method="post" action=(format!("/kiosk/bike/{action}")) id=(format!("action-{action}")) novalidate {
            h3 { (title.0) " / " (title.1) }
            input type="hidden" name="csrf" value=(session.csrf);
            input type="hidden" name="plate" value=(plate);
            (fields)
            button type="submit" { (button) }
        }
    }
}

fn bike_card(
    session: &Session,
    b: &BikeRecord,
    notice: Option<&Bilingual>,
    failed_action: Option<&str>,
    problem: &Problem,
) -> Markup {
    let p = |action: &str| {
        if failed_action == Some(action) {
            problem
        } else {
            &EMPTY
        }
    };
    let plate = b.plate.as_str();
    html! {
        @if let Some(n) = notice {
            p.notice role="status" { (both(n)) }
        }
        @if failed_action.is_some() {
            (general_error(problem))
        }
        section.card.bike id="bike" {
            h2 { (b.plate) " "
                (badge(b.stolen, "stolen", "已报失", "stolen"))
                (badge(b.armed, "armed", "已设防", "armed"))
                (badge(!b.registered, "gone", "已注销", "deregistered"))
            }
            dl {
                dt { "标签 / Tag" } dd.mono { (if b.tag_id.is_empty() { "-" } else { &b.tag_id }) }
                dt { "车主 / Owner" } dd { (mask_name(&b.owner_name)) }
                dt { "身份证 / ID number" } dd.mono { (b.owner_id_number_masked) }
                dt { "手机 / Phone" } dd.mono { (b.owner_phone_masked) }
                dt { "车辆 / Bike" } dd { (b.make) " " (b.model) ", " (b.color) }
                dt { "车架号 / Frame" } dd.mono { (b.frame_number) }
                dt { "登记时间 / Registered" } dd { (datetime(b.registered_at_ms)) }
            }
        }
        @if b.registered {
            div.actions {
                @if b.stolen {
                    (action_form(session, plate, "recovered", ("登记找回", "Report recovered"),
                        html! {}, "已找回 / Recovered"))
                } @else {
                    (action_form(session, plate, "stolen", ("报失", "Report stolen"),
                        html! {
                            (field("stolen", "place", "", "text", p("stolen"), "被盗地点 / where"))
                            (field("stolen", "notes", "", "text", p("stolen"), ""))
                        }, "报失 / Report stolen"))
                }
                (action_form(session, plate, if b.armed { "disarm" } else { "arm" },
                    if b.armed { ("撤防", "Disarm") } else { ("设防", "Arm") },
                    html! { (field(if b.armed { "disarm" } else { "arm" }, "pin", "", "password", p(if b.armed { "disarm" } else { "arm" }), "车主密码 / owner's PIN")) },
                    if b.armed { "撤防 / Disarm" } else { "设防 / Arm" }))
                (action_form(session, plate, "replace-tag", ("更换标签", "Replace tag"),
                    html! { (field("replace-tag", "new_tag_id", "", "text", p("replace-tag"), "输入或扫描 / type or scan")) },
                    "更换 / Replace"))
                (action_form(session, plate, "transfer", ("过户", "Transfer ownership"),
                    html! {
                        (field("transfer", "pin", "", "password", p("transfer"), "原车主密码 / current owner's PIN"))
                        (field("transfer", "new_owner.name", "", "text", p("transfer"), ""))
                        (field("transfer", "new_owner.id_number", "", "text", p("transfer"), ""))
                        (field("transfer", "new_owner.phone", "", "tel", p("transfer"), ""))
                        (field("transfer", "new_pin", "", "password", p("transfer"), "新车主密码 / new owner's PIN"))
                    }, "过户 / Transfer"))
            }
        }
    }
}

static EMPTY: Problem = Problem {
    field: None,
    message: None,
};

/// The fields of every bike action (each uses some).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ActionForm {
    csrf: String,
    plate: String,
    place: String,
    notes: String,
    pin: String,
    new_tag_id: String,
    #[serde(rename = "new_owner.name")]
    new_owner_name: String,
    #[serde(rename = "new_owner.id_number")]
    new_owner_id_number: String,
    #[serde(rename = "new_owner.phone")]
    new_owner_phone: String,
    new_pin: String,
}

/// One change to a bike, as the signed-in kiosk.
pub async fn action(
    State(web): State<WebState>,
    headers: HeaderMap,
    Path(action): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    let Some(session) = web.sessions.from_headers(AREA, &headers, Instant::now()) else {
        return session_expired(HOME);
    };
    if !session.csrf_ok(&form.csrf) {
        return csrf_refused(HOME);
    }
    let caller: &Caller = &session.caller;
    let registry = web.alerting.registry();
    let plate = form.plate.as_str();
    let result: Result<&str, RegistryError> = match action.as_str() {
        "stolen" => registry
            .report_stolen(
                caller,
                plate,
                &TheftDetails {
                    stolen_at_ms: 0,
                    place: form.place.clone(),
                    notes: form.notes.clone(),
                },
            )
            .await
            .map(|_| "stolen"),
        "recovered" => registry
            .report_recovered(caller, plate)
            .await
            .map(|()| "recovered"),
        "arm" | "disarm" => registry
            .set_armed(caller, plate, &form.pin, action == "arm")
            .await
            .map(|armed| if armed { "armed" } else { "disarmed" }),
        "replace-tag" => registry
            .replace_tag(caller, plate, &form.new_tag_id)
            .await
            .map(|()| "retagged"),
        "transfer" => registry
            .transfer_ownership(
                caller,
                plate,
                &NewOwner {
                    name: form.new_owner_name.clone(),
                    id_number: form.new_owner_id_number.clone(),
                    phone: form.new_owner_phone.clone(),
                },
                &form.pin,
                &form.new_pin,
            )
            .await
            .map(|()| "transferred"),
        _ => {
            return super::page::message(
                StatusCode::NOT_FOUND,
                &Bilingual::new("没有这个操作", "No such action"),
                HOME,
            );
        }
    };
    match result {
        Ok(done) => {
            tracing::info!(caller = %caller.audit_name(), action = %action, "Kiosk web change.");
            redirect(&bike_url(plate, done), None)
        }
        Err(e) => {
            let status = status_of(&e);
            let problem = Problem::from(&e);
            let mut r = bike_page(&web, &session, plate, None, Some(&action), &problem).await;
            if r.status().is_success() || r.status() == StatusCode::UNPROCESSABLE_ENTITY {
                *r.status_mut() = status;
            }
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(query_value("潮阳A1"), "%E6%BD%AE%E9%98%B3A1");
        assert_eq!(query_value("a&b=c"), "a%26b%3Dc");
    }

    #[test]
    fn tags_and_plates_are_told_apart() {
        assert!(matches!(
            key_of(" e28011606000020700000001 "),
            BikeKey::Tag(_)
        ));
        assert!(matches!(key_of("潮阳A10001"), BikeKey::Plate(_)));
    }
}
