//! A bike's track: its passes of the last day, as the signed-in unit may see them.

use greenplate_alerting::{AlertingError, Pass};
use greenplate_registry::{BikeKey, TagId, now_ms};

use super::MAX_TRACK_POINTS;
use crate::error::alerting_status;
use crate::i18n::{Bilingual, explain_alerting};
use crate::session::Session;
use crate::state::WebState;

/// What a track request found.
pub(super) struct Track {
    pub(super) subject: String,
    pub(super) points: Vec<(f64, f64)>,
    pub(super) passes: Vec<Pass>,
    pub(super) truncated: bool,
}

pub(super) async fn load_track(
    web: &WebState,
    session: &Session,
    q: &str,
) -> Result<Track, AlertingError> {
    let q = q.trim();
    let key = if TagId::parse(q).is_some() {
        BikeKey::Tag(q.to_owned())
    } else {
        BikeKey::Plate(q.to_owned())
    };
    let to = now_ms();
    let from = to - greenplate_alerting::service::DEFAULT_TRACK_WINDOW_MS;
    let (subject, passes, truncated) = web
        .alerting
        .track(&session.caller, &key, from, to, MAX_TRACK_POINTS, "")
        .await?;
    let readers = web.alerting.registry().readers();
    let points = passes
        .iter()
        .filter_map(|p| readers.get(&p.reader_id).map(|r| (r.lat, r.lon)))
        .collect();
    Ok(Track {
        subject: if subject.plate.is_empty() {
            q.to_owned()
        } else {
            subject.plate
        },
        points,
        passes,
        truncated,
    })
}

/// What a failed track says on the page, logging the server's own failures.
pub(super) fn track_error(e: &AlertingError) -> Bilingual {
    if alerting_status(e).is_server_error() {
        tracing::error!(error = %e, "Track failed.");
    }
    explain_alerting(e)
}
