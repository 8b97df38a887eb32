//! The changes to a bike, as the signed-in kiosk: report stolen or recovered, arm or disarm,
//! replace the tag, transfer ownership. All but a theft report need the owner's PIN.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use greenplate_registry::{Caller, NewOwner, RegistryError, TheftDetails};
use serde::Deserialize;

use super::AREA;
use super::bike::{bike_page, bike_url};
use super::form::Problem;
use crate::error::{WebError, registry_status};
use crate::extract::{Csrf, KioskSession};
use crate::i18n::Bilingual;
use crate::page::redirect;
use crate::state::WebState;

/// The fields of every bike action (each uses some).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ActionForm {
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
    Path(action): Path<String>,
    Csrf(KioskSession(session), form): Csrf<KioskSession, ActionForm>,
) -> Result<Response, WebError> {
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
            .report_recovered(caller, plate, &form.pin)
            .await
            .map(|()| "recovered"),
        "arm" | "disarm" => registry
            .set_armed(caller, plate, &form.pin, action == "arm")
            .await
            .map(|armed| if armed { "armed" } else { "disarmed" }),
        "replace-tag" => registry
            .replace_tag(caller, plate, &form.new_tag_id, &form.pin)
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
            return Err(WebError::message(
                StatusCode::NOT_FOUND,
                Bilingual::new("没有这个操作", "No such action"),
                AREA,
            ));
        }
    };
    match result {
        Ok(done) => {
            tracing::info!(caller = %caller.audit_name(), action = %action, "Kiosk web change.");
            Ok(redirect(&bike_url(plate, done), None))
        }
        Err(e) => {
            let status = registry_status(&e);
            let problem = Problem::from(&e);
            let mut r = bike_page(&web, &session, plate, None, Some(&action), &problem).await;
            if r.status().is_success() || r.status() == StatusCode::UNPROCESSABLE_ENTITY {
                *r.status_mut() = status;
            }
            Ok(r)
        }
    }
}
