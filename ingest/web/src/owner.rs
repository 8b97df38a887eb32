//! The owner page (`/owner`), for a phone: an owner signs in with the plate and a code
//! texted to the phone registered with it, then sees their own bikes, arms and disarms them
//! (with the PIN), reports a theft (the same report, incident and look-back as at a kiosk),
//! sees a bike's passes of the last 7 days and the state of its theft case, and downloads
//! the signed claim record of a theft unresolved after `claims.after_days`.
//!
//! Everything goes through the registry and alerting functions as the owner
//! (`Role::Owner`, id the owner's), so it is validated and audited like the kiosk; every
//! bike is checked to be the signed-in owner's before anything is read or done, and a plate
//! that is not theirs is answered like one that does not exist. The code page says the same
//! whether or not the plate is registered.
//!
//! The one-time codes are `owner_codes`.

use std::net::IpAddr;
use std::time::Instant;

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use greenplate_registry::{
    Caller, Credential, OwnerBike, RegistryError, Role, TheftDetails, now_ms,
};
use maud::{Markup, html};
use serde::Deserialize;

use crate::error::{WebError, registry_status};
use crate::extract::{ClientIp, Csrf, OwnerSession};
use crate::i18n::{Bilingual, explain, is_internal};
use crate::page::{both, datetime, html_response, layout, parse_datetime, query_value, redirect};
use crate::session::{Area, Session, set_cookie};
use crate::state::WebState;

use crate::owner_codes as codes;

const HOME: &str = "/owner";
const AREA: Area = Area::Owner;
/// Passes shown per bike at most.
const MAX_PASSES: usize = 500;
const DAY_MS: i64 = 24 * 3_600_000;
const WEEK_MS: i64 = 7 * DAY_MS;
/// The owner id of the codes issued for a plate nobody owns.
const NOBODY: i64 = -1;

fn page(title: &str, status: StatusCode, body: Markup) -> Response {
    html_response(status, layout(title, None, body))
}

fn message(status: StatusCode, zh: &str, en: &str) -> Response {
    page(
        "Owner",
        status,
        html! {
            main.narrow.owner {
                h1 { "车主服务 / Owners" }
                p.error.banner role="alert" { (both(&Bilingual::new(zh, en))) }
                p { a href=(HOME) { "返回 / Back" } }
            }
        },
    )
}

fn sign_in_page(status: StatusCode, problem: Option<&Bilingual>) -> Response {
    page(
        "Owner sign-in",
        status,
        html! {
            main.narrow.owner {
                h1 { "车主服务 / Owners" }
                form.card #owner-plate method="post" action="/owner/code" {
                    label for="plate" { span.zh { "车牌号" } " " span.en { "Plate" } }
                    input #plate name="plate" required autocomplete="off" placeholder="潮阳A12345";
                    @if let Some(m) = problem { p.error role="alert" { (both(m)) } }
                    button.primary type="submit" { "发送验证码 / Text me a code" }
                }
                p.quiet { "验证码将发送到登记时的手机号。/ The code goes to the phone registered with the bike." }
            }
        },
    )
}

fn code_page(plate: &str, status: StatusCode, problem: Option<&Bilingual>) -> Response {
    page(
        "Owner sign-in",
        status,
        html! {
            main.narrow.owner {
                h1 { "车主服务 / Owners" }
                p.notice #code-sent {
                    "如果该车牌已登记，验证码已发送到车主手机。/ If this plate is registered, a code was texted to its owner."
                }
                form.card #owner-code method="post" action="/owner/login" {
                    input type="hidden" name="plate" value=(plate);
                    label for="code" { span.zh { "验证码" } " " span.en { "Code" } }
                    input #code name="code" required inputmode="numeric" autocomplete="one-time-code" maxlength="6";
                    @if let Some(m) = problem { p.error role="alert" { (both(m)) } }
                    button.primary type="submit" { "登录 / Sign in" }
                }
            }
        },
    )
}

/// `GET /owner`: the owner's bikes, or the sign-in.
pub async fn home(
    State(web): State<WebState>,
    Query(q): Query<HomeQuery>,
    session: Option<OwnerSession>,
) -> Result<Response, WebError> {
    let Some(OwnerSession(session)) = session else {
        return Ok(sign_in_page(StatusCode::OK, None));
    };
    let bikes = own_bikes(&web, &session).await?;
    let notice = match q.done.as_str() {
        "armed" => Some("已布防 / Armed"),
        "disarmed" => Some("已撤防 / Disarmed"),
        "reported" => Some("已报案，警方已收到 / Theft reported; the police have it"),
        _ => None,
    };
    Ok(home_page(&session, &bikes, StatusCode::OK, notice, None))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct HomeQuery {
    done: String,
}

fn home_page(
    session: &Session,
    bikes: &[OwnerBike],
    status: StatusCode,
    notice: Option<&str>,
    problem: Option<(Option<&'static str>, Bilingual)>,
) -> Response {
    page(
        "My bikes",
        status,
        html! {
            header.top {
                span.brand { "我的摩托车 / My bikes" }
                form method="post" action="/owner/logout" {
                    input type="hidden" name="csrf" value=(session.csrf);
                    button.secondary type="submit" { "退出 / Sign out" }
                }
            }
            main.narrow.owner #owner {
                @if let Some(n) = notice { p.notice { (n) } }
                @if let Some((field, p)) = &problem {
                    p.error.banner role="alert" data-field=[field] { (both(p)) }
                }
                @if bikes.is_empty() { p.quiet { "没有登记的摩托车 / No registered bikes" } }
                @for b in bikes { (bike_card(session, b)) }
            }
        },
    )
}

fn bike_card(session: &Session, b: &OwnerBike) -> Markup {
    html! {
        section.card.bike data-plate=(b.plate) {
            h2 {
                (b.plate)
                @if b.theft.is_some() { " " span.badge.stolen { "被盗 / stolen" } }
                @if b.armed { " " span.badge.armed { "已布防 / armed" } }
            }
            p.quiet { (b.make) " " (b.model) " · " (b.color) }
            @if let Some(t) = &b.theft {
                p.case { "报案时间 / Reported: " (datetime(t.reported_at_ms)) }
            }
            p { a.passes href=(format!("/owner/bike?plate={}", query_value(&b.plate))) { "行驶记录与案件 / Passes and case" } }
            form.arm method="post" action="/owner/arm" {
                input type="hidden" name="csrf" value=(session.csrf);
                input type="hidden" name="plate" value=(b.plate);
                input type="hidden" name="armed" value=(if b.armed { "0" } else { "1" });
                label { span.zh { "密码" } " " span.en { "PIN" }
                    input name="pin" type="password" inputmode="numeric" required autocomplete="off";
                }
                button type="submit" { @if b.armed { "撤防 / Disarm" } @else { "布防 / Arm" } }
            }
            @if b.theft.is_none() {
                details.report {
                    summary { "报告被盗 / Report it stolen" }
                    form.stolen method="post" action="/owner/stolen" {
                        input type="hidden" name="csrf" value=(session.csrf);
                        input type="hidden" name="plate" value=(b.plate);
                        label { "被盗时间 / When (YYYY-MM-DD HH:MM, 空为现在 / empty: now)"
                            input name="when" autocomplete="off";
                        }
                        label { "地点 / Where" input name="place" autocomplete="off"; }
                        label { "备注 / Notes" input name="notes" autocomplete="off"; }
                        button.primary type="submit" { "报案 / Report" }
                    }
                }
            }
        }
    }
}

/// The signed-in owner's bikes.
async fn own_bikes(web: &WebState, session: &Session) -> Result<Vec<OwnerBike>, WebError> {
    let owner_id: i64 = session.caller.id.parse().unwrap_or(-1);
    web.alerting
        .registry()
        .owner_bikes(owner_id)
        .await
        .map_err(|e| WebError::Alerting(AREA, e.into()))
}

/// The owner's bike with `plate`, or NOT_FOUND as for a plate that does not exist.
async fn own_bike(
    web: &WebState,
    session: &Session,
    plate: &str,
) -> Result<OwnerBike, RegistryError> {
    let owner_id: i64 = session.caller.id.parse().unwrap_or(-1);
    let plate = greenplate_registry::validate::plate("plate", plate)?;
    web.alerting
        .registry()
        .owner_bikes(owner_id)
        .await?
        .into_iter()
        .find(|b| b.plate == plate)
        .ok_or_else(|| RegistryError::NotFound(format!("bike {plate}")))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PlateForm {
    plate: String,
    code: String,
}

/// The form's plate, checked for shape and taken from the request budgets (per client
/// address and per plate); or the status and reason to answer with.
fn admitted_plate(
    web: &WebState,
    client: Option<IpAddr>,
    raw: &str,
) -> Result<String, (StatusCode, Bilingual)> {
    let plate = greenplate_registry::validate::plate("plate", raw)
        .map_err(|e| (StatusCode::BAD_REQUEST, explain(&e).1))?;
    let now = Instant::now();
    let limits = &web.sign_in_limits;
    let client_ok = client.is_none_or(|ip| limits.clients.take(&ip, now));
    let plate_ok = limits
        .tokens
        .take(&Credential::of(&format!("owner-plate:{plate}")), now);
    if !client_ok || !plate_ok {
        return Err((
            StatusCode::TOO_MANY_REQUESTS,
            Bilingual::new("请求过多，请稍后再试", "Too many requests; try again later"),
        ));
    }
    Ok(plate)
}

/// The sign-in page of a plate locked after too many wrong codes.
fn locked() -> Response {
    sign_in_page(
        StatusCode::TOO_MANY_REQUESTS,
        Some(&Bilingual::new(
            "错误次数过多，请15分钟后再试",
            "Too many wrong codes; try again in 15 minutes",
        )),
    )
}

/// `POST /owner/code`: texts a code to the plate's owner (if it has one).
pub async fn code(
    State(web): State<WebState>,
    ClientIp(client): ClientIp,
    Form(form): Form<PlateForm>,
) -> Response {
    let Some(sms) = web.owner_sms.clone() else {
        return message(
            StatusCode::SERVICE_UNAVAILABLE,
            "短信服务未开通，请到登记点办理",
            "Texting is not set up here; please go to a kiosk",
        );
    };
    let plate = match admitted_plate(&web, client, &form.plate) {
        Ok(p) => p,
        Err((status, why)) => return sign_in_page(status, Some(&why)),
    };
    let contact = match web.alerting.registry().owner_contact_by_plate(&plate).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "Owner sign-in lookup failed.");
            return message(
                StatusCode::INTERNAL_SERVER_ERROR,
                "系统错误，请稍后再试",
                "Internal error; please try again",
            );
        }
    };
    // A plate with no owner gets a code too (never sent), so asking for codes and guessing
    // them behaves the same whether or not the plate is registered.
    let owner_id = contact.as_ref().map_or(NOBODY, |c| c.owner_id);
    match web.owner_codes.issue(&plate, owner_id, Instant::now()) {
        Ok(code) => {
            if let Some(contact) = contact {
                // Sent beside the answer, so the page looks the same and takes the same
                // time for a plate that is not registered; a failure is logged.
                tokio::spawn(async move {
                    match sms
                        .gateway
                        .send_code(&sms.client, sms.timeout, &contact, &code)
                        .await
                    {
                        Ok(()) => tracing::info!(
                            owner = contact.owner_id,
                            "Texted an owner a sign-in code."
                        ),
                        Err(e) => tracing::warn!(
                            owner = contact.owner_id,
                            error = %e,
                            "Texting an owner's sign-in code failed."
                        ),
                    }
                });
            }
        }
        Err(codes::Refused::Locked) => return locked(),
        // A code sent a moment ago still works.
        Err(_) => {}
    }
    code_page(&plate, StatusCode::OK, None)
}

/// `POST /owner/login`: the code opens a session as the plate's owner.
pub async fn login(
    State(web): State<WebState>,
    ClientIp(client): ClientIp,
    headers: HeaderMap,
    Form(form): Form<PlateForm>,
) -> Response {
    if !crate::sign_in::same_origin(&headers) {
        return sign_in_page(
            StatusCode::FORBIDDEN,
            Some(&Bilingual::new(
                "请从本系统的登录页登录",
                "Sign in from this server's own sign-in page",
            )),
        );
    }
    let plate = match admitted_plate(&web, client, &form.plate) {
        Ok(p) => p,
        // Over the budget, the code page stays (the code still works a minute later).
        Err((StatusCode::TOO_MANY_REQUESTS, why)) => {
            return code_page(form.plate.trim(), StatusCode::TOO_MANY_REQUESTS, Some(&why));
        }
        Err((status, why)) => return sign_in_page(status, Some(&why)),
    };
    match web.owner_codes.check(&plate, &form.code, Instant::now()) {
        Ok(owner_id) if owner_id != NOBODY => {
            let caller = Caller {
                role: Role::Owner,
                id: owner_id.to_string(),
            };
            // No token: the session's own random credential.
            let credential = Credential::of(&hex::encode(rand::random::<[u8; 16]>()));
            let s = web
                .sessions
                .create(AREA, caller.clone(), credential, Instant::now());
            tracing::info!(caller = %caller.audit_name(), "Owner web sign-in.");
            redirect(HOME, Some(set_cookie(AREA, &s.id, web.secure)))
        }
        Err(codes::Refused::Wrong(left)) => code_page(
            &plate,
            StatusCode::UNAUTHORIZED,
            Some(&Bilingual::new(
                format!("验证码不对，还可以试{left}次"),
                format!("Wrong code; {left} tries left"),
            )),
        ),
        Err(codes::Refused::Locked) => locked(),
        // No code, an expired one, or one of a plate nobody owns.
        _ => sign_in_page(
            StatusCode::UNAUTHORIZED,
            Some(&Bilingual::new(
                "验证码已失效，请重新获取",
                "The code expired; ask for a new one",
            )),
        ),
    }
}

pub async fn logout(
    State(web): State<WebState>,
    Csrf(session, _): Csrf<Option<OwnerSession>>,
) -> Response {
    if let Some(OwnerSession(s)) = &session {
        web.sessions.remove(&s.id);
    }
    redirect(HOME, Some(crate::session::clear_cookie(AREA)))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ArmForm {
    plate: String,
    pin: String,
    armed: String,
}

/// What an owner's action answers when the registry refuses it: the page again with the
/// reason (at its field), or a server error.
async fn refused(
    web: &WebState,
    session: &Session,
    e: RegistryError,
) -> Result<Response, WebError> {
    if is_internal(&e) {
        return Err(WebError::Alerting(AREA, e.into()));
    }
    let bikes = own_bikes(web, session).await?;
    Ok(home_page(
        session,
        &bikes,
        registry_status(&e),
        None,
        Some(explain(&e)),
    ))
}

/// `POST /owner/arm`: arms or disarms one of the owner's bikes, with its PIN.
pub async fn arm(
    State(web): State<WebState>,
    Csrf(OwnerSession(session), form): Csrf<OwnerSession, ArmForm>,
) -> Result<Response, WebError> {
    let armed = form.armed == "1";
    let done = async {
        let bike = own_bike(&web, &session, &form.plate).await?;
        web.alerting
            .registry()
            .set_armed(&session.caller, &bike.plate, &form.pin, armed)
            .await
    }
    .await;
    match done {
        Ok(_) => Ok(redirect(
            if armed {
                "/owner?done=armed"
            } else {
                "/owner?done=disarmed"
            },
            None,
        )),
        Err(e) => refused(&web, &session, e).await,
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct StolenForm {
    plate: String,
    when: String,
    place: String,
    notes: String,
}

/// `POST /owner/stolen`: reports one of the owner's bikes stolen.
pub async fn stolen(
    State(web): State<WebState>,
    Csrf(OwnerSession(session), form): Csrf<OwnerSession, StolenForm>,
) -> Result<Response, WebError> {
    let done = async {
        let bike = own_bike(&web, &session, &form.plate).await?;
        let stolen_at_ms = if form.when.trim().is_empty() {
            0
        } else {
            parse_datetime(&form.when)
                .ok_or_else(|| RegistryError::invalid("stolen_at_ms", "write YYYY-MM-DD HH:MM"))?
        };
        web.alerting
            .registry()
            .report_stolen(
                &session.caller,
                &bike.plate,
                &TheftDetails {
                    stolen_at_ms,
                    place: form.place.clone(),
                    notes: form.notes.clone(),
                },
            )
            .await
    }
    .await;
    match done {
        Ok(_) => Ok(redirect("/owner?done=reported", None)),
        Err(e) => refused(&web, &session, e).await,
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct BikeQuery {
    plate: String,
}

/// `GET /owner/bike?plate=`: one of the owner's bikes: its passes of the last 7 days and
/// its theft case. Audited.
pub async fn bike(
    State(web): State<WebState>,
    Query(q): Query<BikeQuery>,
    OwnerSession(session): OwnerSession,
) -> Result<Response, WebError> {
    let found = own_bike(&web, &session, &q.plate).await;
    let registry = web.alerting.registry();
    registry
        .audit_lookup(
            &session.caller,
            "owner_passes",
            &format!("plate {}", q.plate.trim()),
            found.is_ok(),
            "",
        )
        .await
        .map_err(|e| WebError::Alerting(AREA, e.into()))?;
    let bike = match found {
        Ok(b) => b,
        Err(RegistryError::NotFound(_) | RegistryError::Invalid { .. }) => {
            return Ok(message(
                StatusCode::NOT_FOUND,
                "未找到您的这辆车",
                "No such bike of yours",
            ));
        }
        Err(e) => return Err(WebError::Alerting(AREA, e.into())),
    };
    let now = now_ms();
    let passes = match greenplate_registry::TagId::parse(&bike.tag_id) {
        Some(tag) => web
            .alerting
            .history()
            .track_newest(&[tag], now - WEEK_MS, now, MAX_PASSES)
            .await
            .map_err(|e| WebError::Alerting(AREA, e.into()))?,
        None => Vec::new(),
    };
    let case = match &bike.theft {
        Some(t) => web
            .alerting
            .theft_case(t.report_id)
            .await
            .map_err(|e| WebError::Alerting(AREA, e))?,
        None => None,
    };
    let readers = registry.readers();
    Ok(page(
        "My bike",
        StatusCode::OK,
        html! {
            header.top { span.brand { (bike.plate) } a href=(HOME) { "返回 / Back" } }
            main.narrow.owner #owner-bike {
                @if let Some(t) = &bike.theft {
                    section.card #case {
                        h2 { "案件 / Theft case" }
                        dl {
                            dt { "被盗时间 / Stolen" } dd { (datetime(t.stolen_at_ms)) }
                            dt { "报案时间 / Reported" } dd { (datetime(t.reported_at_ms)) }
                            dt { "状态 / State" } dd #case-state {
                                @match &case {
                                    Some((state, _)) if state == "acknowledged" => "民警已受理 / an officer is on it",
                                    Some(_) => "已立案，等待发现 / open, waiting for a sighting",
                                    None => "已报案 / reported",
                                }
                            }
                            dt { "最近发现 / Last seen" } dd #case-seen {
                                @match &case {
                                    Some((_, Some(at))) => (datetime(*at)),
                                    _ => "-",
                                }
                            }
                        }
                        @if let Some(claims) = &web.claims {
                            @if now - t.reported_at_ms >= i64::from(claims.after_days) * DAY_MS {
                                p { a #claim-link href=(format!("/owner/claim?plate={}", query_value(&bike.plate))) download { "下载理赔记录（服务器签名）/ Claim record, signed by the server" } }
                            } @else {
                                p.quiet #claim-later { "报案满" (claims.after_days) "天仍未找回，可在此下载理赔记录。/ If the bike is not found " (claims.after_days) " days after the report, a claim record for the insurer is here." }
                            }
                        }
                    }
                }
                h2 { "近7天行驶记录 / Passes, last 7 days " span.count #pass-count { (passes.len()) } }
                @if passes.is_empty() { p.quiet { "没有记录 / None" } }
                table #passes {
                    tbody {
                        @for p in &passes {
                            tr {
                                td.time { (datetime(p.first_seen_ms)) }
                                td { (readers.get(&p.reader_id).map(|r| r.name.clone()).filter(|n| !n.is_empty()).unwrap_or_else(|| p.reader_id.to_string())) }
                            }
                        }
                    }
                }
            }
        },
    ))
}

/// `GET /owner/claim?plate=`: the signed claim record of the owner's own unresolved theft
/// (the record an insurer gets at `/claims/PLATE`), as a JSON download. Audited as
/// `claim_record`, refusals too; another owner's plate reads as absent.
pub async fn claim(
    State(web): State<WebState>,
    Query(q): Query<BikeQuery>,
    OwnerSession(session): OwnerSession,
) -> Result<Response, WebError> {
    let Some(claims) = web.claims.clone() else {
        return Ok(message(
            StatusCode::SERVICE_UNAVAILABLE,
            "此处不提供理赔记录",
            "Claim records are not offered here",
        ));
    };
    let bike = match own_bike(&web, &session, &q.plate).await {
        Ok(b) => b,
        Err(RegistryError::NotFound(_) | RegistryError::Invalid { .. }) => {
            web.alerting
                .registry()
                .audit_lookup(
                    &session.caller,
                    "claim_record",
                    &format!("plate {}", q.plate.trim()),
                    false,
                    "",
                )
                .await
                .map_err(|e| WebError::Alerting(AREA, e.into()))?;
            return Ok(message(
                StatusCode::NOT_FOUND,
                "未找到您的这辆车",
                "No such bike of yours",
            ));
        }
        Err(e) => return Err(WebError::Alerting(AREA, e.into())),
    };
    let signed = web
        .alerting
        .claim_record(
            &session.caller,
            &claims.signer,
            &bike.plate,
            claims.after_days,
        )
        .await;
    match signed {
        Ok(record) => {
            let body = serde_json::to_string(&record).map_err(|e| {
                tracing::error!(error = %e, "A claim record did not encode.");
                WebError::message(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Bilingual::new("系统错误，请稍后再试", "Internal error; please try again"),
                    AREA,
                )
            })?;
            Ok((
                [
                    (header::CONTENT_TYPE, "application/json"),
                    (header::CACHE_CONTROL, "no-store"),
                    (
                        header::CONTENT_DISPOSITION,
                        "attachment; filename=\"greenplate-claim.json\"",
                    ),
                ],
                body,
            )
                .into_response())
        }
        Err(greenplate_alerting::AlertingError::Registry(
            RegistryError::FailedPrecondition(_) | RegistryError::NotFound(_),
        )) => Ok(message(
            StatusCode::CONFLICT,
            &format!(
                "报案满{}天仍未找回的车辆才能出具理赔记录",
                claims.after_days
            ),
            &format!(
                "A claim record is given for a theft still unresolved {} days after its report",
                claims.after_days
            ),
        )),
        Err(e) => Err(WebError::Alerting(AREA, e)),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn owner_callers_are_audited_as_owners() {
        let c = greenplate_registry::Caller {
            role: greenplate_registry::Role::Owner,
            id: "42".into(),
        };
        assert_eq!(c.audit_name(), "owner:42");
    }
}
