//! Video linkage (雪亮工程): the city's cameras nearest each reader, so an officer can check
//! a hit on video. A reader names up to [`MAX_CAMERAS`] cameras: an id, a name and an
//! optional URL template for a stream or a snapshot at a time. Alerts and incident views
//! carry each camera with its URL filled in for the moment of the sighting ([`Camera::link`]).
//!
//! A template may use these placeholders, and no others (a typo is refused when the camera
//! is set, not found when an officer clicks):
//! - `{t_ms}`, `{t_s}`: the sighting's time, Unix milliseconds or seconds;
//! - `{from_s}`, `{to_s}`: [`CLIP_BEFORE_S`] before and [`CLIP_AFTER_S`] after it, Unix
//!   seconds, for platforms that play a clip;
//! - `{iso}`: the time in UTC, RFC 3339 (`2026-12-06T13:05:00Z`);
//! - `{reader_id}`, `{camera_id}`.
//!
//! The cameras are stored with the reader (`readers.cameras`, JSON) and travel with it to
//! other nodes like its other settings.

use serde::{Deserialize, Serialize};

use crate::error::RegistryError;
use crate::validate;

/// Cameras one reader may name.
pub const MAX_CAMERAS: usize = 8;
/// A URL template's length, at most.
pub const MAX_URL: usize = 1000;
/// How far before a sighting `{from_s}` is, seconds.
pub const CLIP_BEFORE_S: i64 = 30;
/// How far after a sighting `{to_s}` is, seconds.
pub const CLIP_AFTER_S: i64 = 30;

const PLACEHOLDERS: [&str; 7] = [
    "t_ms",
    "t_s",
    "from_s",
    "to_s",
    "iso",
    "reader_id",
    "camera_id",
];

/// A camera near a reader, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Camera {
    pub id: String,
    pub name: String,
    /// A stream or snapshot URL with placeholders; empty: the platform has none to give.
    #[serde(default)]
    pub url_template: String,
}

/// A camera with its URL filled in for one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CameraLink {
    pub id: String,
    pub name: String,
    /// Empty when the camera has no URL template.
    pub url: String,
}

impl Camera {
    /// The camera's link for a sighting by `reader_id` at `at_ms`.
    pub fn link(&self, reader_id: &str, at_ms: i64) -> CameraLink {
        CameraLink {
            id: self.id.clone(),
            name: self.name.clone(),
            url: expand(&self.url_template, reader_id, &self.id, at_ms),
        }
    }
}

fn iso(at_ms: i64) -> String {
    crate::clock::rfc3339(at_ms, time::UtcOffset::UTC)
}

/// Fills the placeholders of a template that [`validate`] accepted (values are URL-safe:
/// digits, `-`, `:`, and identifiers of `[A-Za-z0-9_.-]`).
fn expand(template: &str, reader_id: &str, camera_id: &str, at_ms: i64) -> String {
    if template.is_empty() {
        return String::new();
    }
    let t_s = at_ms.div_euclid(1000);
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[open..]);
            return out;
        };
        match &after[..close] {
            "t_ms" => out.push_str(&at_ms.to_string()),
            "t_s" => out.push_str(&t_s.to_string()),
            "from_s" => out.push_str(&(t_s - CLIP_BEFORE_S).to_string()),
            "to_s" => out.push_str(&(t_s + CLIP_AFTER_S).to_string()),
            "iso" => out.push_str(&iso(at_ms)),
            "reader_id" => out.push_str(reader_id),
            "camera_id" => out.push_str(camera_id),
            other => {
                out.push('{');
                out.push_str(other);
                out.push('}');
            }
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

/// Checks a reader's cameras: at most [`MAX_CAMERAS`], ids unique identifiers, a name each,
/// templates `http`, `https` or `rtsp` URLs with known placeholders only.
pub fn validate(cameras: Vec<Camera>) -> Result<Vec<Camera>, RegistryError> {
    if cameras.len() > MAX_CAMERAS {
        return Err(RegistryError::invalid(
            "cameras",
            "at most 8 cameras per reader",
        ));
    }
    let mut out: Vec<Camera> = Vec::with_capacity(cameras.len());
    for c in cameras {
        let id = validate::ident("cameras.camera_id", &c.id)?;
        if out.iter().any(|o| o.id == id) {
            return Err(RegistryError::invalid(
                "cameras.camera_id",
                "names two cameras of this reader",
            ));
        }
        let name = validate::text("cameras.name", &c.name, 200)?;
        let url_template = c.url_template.trim().to_owned();
        check_template(&url_template)?;
        out.push(Camera {
            id,
            name,
            url_template,
        });
    }
    Ok(out)
}

fn check_template(t: &str) -> Result<(), RegistryError> {
    const FIELD: &str = "cameras.url_template";
    if t.is_empty() {
        return Ok(());
    }
    if t.len() > MAX_URL {
        return Err(RegistryError::invalid(FIELD, "at most 1000 characters"));
    }
    let lower = t.to_ascii_lowercase();
    if !["http://", "https://", "rtsp://"]
        .iter()
        .any(|s| lower.starts_with(s))
    {
        return Err(RegistryError::invalid(
            FIELD,
            "must be an http, https or rtsp URL",
        ));
    }
    if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(RegistryError::invalid(FIELD, "must not contain spaces"));
    }
    let mut rest = t;
    while let Some(open) = rest.find(['{', '}']) {
        if rest[open..].starts_with('}') {
            return Err(RegistryError::invalid(FIELD, "has a '}' with no '{'"));
        }
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            return Err(RegistryError::invalid(FIELD, "has a '{' with no '}'"));
        };
        let name = &after[..close];
        if !PLACEHOLDERS.contains(&name) {
            return Err(RegistryError::InvalidValue {
                field: FIELD,
                reason: format!(
                    "unknown placeholder {{{name}}}: use {{t_ms}}, {{t_s}}, {{from_s}}, \
                     {{to_s}}, {{iso}}, {{reader_id}} or {{camera_id}}"
                ),
            });
        }
        rest = &after[close + 1..];
    }
    Ok(())
}

/// Cameras as stored (`readers.cameras`); what cannot be read is logged and taken as none,
/// so a bad row never keeps a reader from working.
pub(crate) fn from_json(reader_id: &str, json: &str) -> Vec<Camera> {
    if json.is_empty() {
        return Vec::new();
    }
    serde_json::from_str(json).unwrap_or_else(|e| {
        tracing::error!(reader = %reader_id, error = %e, "Stored cameras unreadable; taking none.");
        Vec::new()
    })
}

pub(crate) fn to_json(cameras: &[Camera]) -> String {
    serde_json::to_string(cameras).unwrap_or_else(|_| "[]".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cam(id: &str, url: &str) -> Camera {
        Camera {
            id: id.into(),
            name: format!("Camera {id}"),
            url_template: url.into(),
        }
    }

    #[test]
    fn a_template_is_filled_for_the_moment_of_the_sighting() {
        let c = cam(
            "cam-7",
            "https://video.example/play?cam={camera_id}&rd={reader_id}&from={from_s}&to={to_s}&t={t_ms}&s={t_s}&at={iso}",
        );
        let link = c.link("rd-gate", 1_796_562_300_250);
        assert_eq!(
            link.url,
            "https://video.example/play?cam=cam-7&rd=rd-gate&from=1796562270&to=1796562330\
             &t=1796562300250&s=1796562300&at=2026-12-06T13:05:00Z"
        );
        assert_eq!(link.name, "Camera cam-7");
        assert_eq!(cam("c", "").link("r", 5).url, "");
    }

    #[test]
    fn bad_cameras_are_refused_at_their_field() {
        let field = |r: Result<Vec<Camera>, RegistryError>| match r {
            Err(RegistryError::Invalid { field, .. })
            | Err(RegistryError::InvalidValue { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            field(validate(vec![cam("a", "https://x/{t}")])),
            "cameras.url_template"
        );
        assert_eq!(
            field(validate(vec![cam("a", "javascript:alert(1)")])),
            "cameras.url_template"
        );
        assert_eq!(
            field(validate(vec![cam("a", "https://x/{t_s")])),
            "cameras.url_template"
        );
        assert_eq!(
            field(validate(vec![cam("a", "https://x"), cam("a", "")])),
            "cameras.camera_id"
        );
        assert_eq!(field(validate(vec![cam("a b", "")])), "cameras.camera_id");
        assert_eq!(
            field(validate(
                (0..9).map(|i| cam(&format!("c{i}"), "")).collect()
            )),
            "cameras"
        );
        let ok = validate(vec![
            cam("a", " rtsp://10.1.2.3/live/{camera_id} "),
            cam("b", ""),
        ])
        .unwrap();
        assert_eq!(ok[0].url_template, "rtsp://10.1.2.3/live/{camera_id}");
    }

    #[test]
    fn stored_cameras_round_trip_and_bad_json_is_none() {
        let cams = vec![cam("a", "https://x/{t_s}")];
        assert_eq!(from_json("r", &to_json(&cams)), cams);
        assert!(from_json("r", "{not json").is_empty());
        assert!(from_json("r", "").is_empty());
    }
}
