//! `greenplate zones import FILE.geojson`: loads patrol and watch zones from a GeoJSON
//! FeatureCollection through the running service's Admin API, so the service routes with
//! them at once. Each feature needs `properties.id` (or `zone_id`); `name` defaults to the
//! id; `kind` is `patrol` (default) or `watch`. The server validates every geometry.

use greenplate_proto::auth::Authed;
use greenplate_proto::v1::admin_client::AdminClient;
use greenplate_proto::v1::{AddZoneRequest, ZoneKind};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ZonesImportError {
    #[error("not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("expected a GeoJSON FeatureCollection")]
    NotFeatureCollection,
}

/// What happened to one feature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Added(String),
    AlreadyThere(String),
    Rejected { feature: usize, reason: String },
}

/// Adds every feature of a FeatureCollection as a zone; one outcome per feature.
pub async fn import(
    admin: &mut AdminClient<Authed>,
    text: &str,
) -> Result<Vec<Outcome>, ZonesImportError> {
    let doc: Value = serde_json::from_str(text)?;
    let features = match (doc.get("type").and_then(Value::as_str), doc.get("features")) {
        (Some("FeatureCollection"), Some(Value::Array(f))) => f,
        _ => return Err(ZonesImportError::NotFeatureCollection),
    };
    let mut out = Vec::with_capacity(features.len());
    for (i, feature) in features.iter().enumerate() {
        let props = feature.get("properties").cloned().unwrap_or(Value::Null);
        let text_prop = |k: &str| props.get(k).and_then(Value::as_str).map(str::to_owned);
        let Some(id) = text_prop("id").or_else(|| text_prop("zone_id")) else {
            out.push(Outcome::Rejected {
                feature: i,
                reason: "properties.id is missing".into(),
            });
            continue;
        };
        let kind = match text_prop("kind").as_deref() {
            None | Some("patrol") => ZoneKind::Patrol,
            Some("watch") => ZoneKind::Watch,
            Some(other) => {
                out.push(Outcome::Rejected {
                    feature: i,
                    reason: format!("properties.kind {other:?} is not patrol or watch"),
                });
                continue;
            }
        };
        let geometry = feature.get("geometry").cloned().unwrap_or(Value::Null);
        let request = AddZoneRequest {
            name: text_prop("name").unwrap_or_else(|| id.clone()),
            zone_id: id.clone(),
            geojson: geometry.to_string(),
            kind: kind as i32,
        };
        out.push(match admin.add_zone(request).await {
            Ok(_) => Outcome::Added(id),
            Err(s) if s.code() == tonic::Code::AlreadyExists => Outcome::AlreadyThere(id),
            Err(s) => Outcome::Rejected {
                feature: i,
                reason: format!("{id}: {}", s.message()),
            },
        });
    }
    Ok(out)
}
