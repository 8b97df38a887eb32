//! A bike looked up by plate or tag: its record (masked) and the forms of what can be done
//! with it.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use greenplate_registry::{BikeKey, BikeRecord, TagId};
use maud::{Markup, html};
use serde::Deserialize;

use super::form::{EMPTY, Problem, field, general_error};
use super::{AREA, HOME, header, lookup_form};
use crate::error::{WebError, registry_status};
use crate::extract::KioskSession;
use crate::i18n::Bilingual;
use crate::page::{both, datetime, html_response, layout, query_value};
use crate::session::Session;
use crate::state::WebState;

pub(super) fn bike_url(plate: &str, done: &str) -> String {
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
            "已报案，车辆已列入布控名单",
            "Reported stolen: the bike is on the hotlist",
        ),
        "recovered" => Bilingual::new("已登记找回", "Recorded as recovered"),
        "armed" => Bilingual::new("已布防", "Armed"),
        "disarmed" => Bilingual::new("已撤防", "Disarmed"),
        "transferred" => Bilingual::new("过户成功", "Ownership transferred"),
        "retagged" => Bilingual::new(
            "电子标签已更换，旧标签已作废",
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
    Query(query): Query<LookupQuery>,
    session: Option<KioskSession>,
) -> Result<Response, WebError> {
    let KioskSession(session) = session.ok_or(WebError::SignInFirst(AREA))?;
    let notice = done_message(&query.done);
    Ok(bike_page(&web, &session, &query.q, notice, None, &Problem::default()).await)
}

pub(super) async fn bike_page(
    web: &WebState,
    session: &Session,
    q: &str,
    notice: Option<Bilingual>,
    failed_action: Option<&str>,
    problem: &Problem,
) -> Response {
    let found = web
        .alerting
        .registry()
        .get_bike(&session.caller, &key_of(q), "")
        .await;
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
            let p = Problem::from(&e);
            (
                registry_status(&e),
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
                (badge(b.stolen, "stolen", "被盗", "stolen"))
                (badge(b.armed, "armed", "已布防", "armed"))
                (badge(!b.registered, "gone", "已注销", "deregistered"))
            }
            dl {
                dt { "电子标签 / Tag" } dd.mono { (if b.tag_id.is_empty() { "-" } else { &b.tag_id }) }
                dt { "车主 / Owner" } dd { (b.owner_name) }
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
                        html! { (field("recovered", "pin", "", "password", p("recovered"), "车主密码 / owner's PIN")) },
                        "已找回 / Recovered"))
                } @else {
                    (action_form(session, plate, "stolen", ("被盗报案", "Report stolen"),
                        html! {
                            (field("stolen", "place", "", "text", p("stolen"), "被盗地点 / where"))
                            (field("stolen", "notes", "", "text", p("stolen"), ""))
                        }, "报案 / Report stolen"))
                }
                (action_form(session, plate, if b.armed { "disarm" } else { "arm" },
                    if b.armed { ("撤防", "Disarm") } else { ("布防", "Arm") },
                    html! { (field(if b.armed { "disarm" } else { "arm" }, "pin", "", "password", p(if b.armed { "disarm" } else { "arm" }), "车主密码 / owner's PIN")) },
                    if b.armed { "撤防 / Disarm" } else { "布防 / Arm" }))
                (action_form(session, plate, "replace-tag", ("更换电子标签", "Replace tag"),
                    html! {
                        (field("replace-tag", "new_tag_id", "", "text", p("replace-tag"), "输入或扫描 / type or scan"))
                        (field("replace-tag", "pin", "", "password", p("replace-tag"), "车主密码 / owner's PIN"))
                    },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_plates_are_told_apart() {
        assert!(matches!(
            key_of(" e28011606000020700000001 "),
            BikeKey::Tag(_)
        ));
        assert!(matches!(key_of("潮阳A10001"), BikeKey::Plate(_)));
    }
}
