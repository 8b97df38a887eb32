//! The alerting tables: their migrations, and the row mapping of `alerts` shared by the log,
//! the follower and the incident queries.

use greenplate_proto::v1::Alert;
use greenplate_registry::db::Migrations;
use sqlx::Row;
use sqlx::any::AnyRow;

/// The alerting crate's schema, for [`Db::migrate`].
pub fn migrations() -> Migrations {
    Migrations {
        owner: "alerting",
        sqlite: sqlx::migrate!("./migrations/sqlite"),
        postgres: sqlx::migrate!("./migrations/postgres"),
    }
}

/// The columns [`alert_from_row`] reads, of `alerts a`.
pub(crate) const ALERT_COLUMNS: &str = "a.seq, a.alert_id, a.kind, a.priority, a.plate, \
     a.tag_id, a.reader_id, a.lat, a.lon, a.seen_at_ms, a.incident_id, a.zone_id, \
     a.watch_entry_id, a.reason, a.case_number, a.escalation";

pub(crate) fn alert_from_row(row: &AnyRow) -> Result<Alert, sqlx::Error> {
    Ok(Alert {
        seq: row.try_get::<i64, _>("seq")? as u64,
        alert_id: row.try_get("alert_id")?,
        kind: row.try_get::<i64, _>("kind")? as i32,
        plate: row.try_get("plate")?,
        tag_id: row.try_get("tag_id")?,
        reader_id: row.try_get("reader_id")?,
        lat: row.try_get("lat")?,
        lon: row.try_get("lon")?,
        seen_at_ms: row.try_get("seen_at_ms")?,
        incident_id: row.try_get("incident_id")?,
        priority: row.try_get::<i64, _>("priority")? as u32,
        zone_id: row.try_get("zone_id")?,
        watch_entry_id: row.try_get("watch_entry_id")?,
        reason: row.try_get("reason")?,
        case_number: row.try_get("case_number")?,
        escalation: u32::try_from(row.try_get::<i64, _>("escalation")?).unwrap_or(0),
        // Filled in when delivered (`Alerting::with_cameras`), from the reader's settings.
        cameras: Vec::new(),
    })
}
