//! What a target receives: an alert as greenplate JSON or as an OASIS CAP 1.2 message, and
//! the signature over it.
//!
//! Signing is the scheme common webhook providers use: `X-Greenplate-Timestamp` is the
//! Unix time in seconds, and `X-Greenplate-Signature` is `v1=` and the hex HMAC-SHA256, under
//! the target's secret, of the timestamp, a `.` and the body. A receiver recomputes it,
//! compares in constant time, and refuses a timestamp far from its clock (a replay).
//! `Idempotency-Key` is the alert id: a receiver that sees one twice (delivery is at least
//! once) drops the second.

use greenplate_proto::v1::{Alert, AlertKind};
use greenplate_registry::clock::{CST, rfc3339};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

/// How a target wants its alerts written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// greenplate JSON ([`json`]).
    #[default]
    Json,
    /// OASIS Common Alerting Protocol 1.2, XML ([`cap`]).
    Cap,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Cap => "application/cap+xml",
        }
    }

    pub fn body(self, alert: &Alert, sender: &str) -> Vec<u8> {
        match self {
            Format::Json => json(alert),
            Format::Cap => cap(alert, sender).into_bytes(),
        }
    }
}

/// An alert kind's name in the contract, without its prefix (`STOLEN_SIGHTED`).
pub fn kind_name(kind: i32) -> String {
    AlertKind::try_from(kind)
        .map(|k| k.as_str_name().trim_start_matches("ALERT_KIND_").to_owned())
        .unwrap_or_else(|_| format!("KIND_{kind}"))
}

#[derive(Serialize)]
struct JsonCamera<'a> {
    camera_id: &'a str,
    name: &'a str,
    url: &'a str,
}

#[derive(Serialize)]
struct JsonAlert<'a> {
    /// The payload's version: fields are only ever added.
    version: u32,
    seq: u64,
    alert_id: &'a str,
    kind: String,
    priority: u32,
    escalation: u32,
    incident_id: &'a str,
    plate: &'a str,
    tag_id: &'a str,
    reader_id: &'a str,
    lat: f64,
    lon: f64,
    seen_at_ms: i64,
    seen_at: String,
    zone_id: &'a str,
    watch_entry_id: &'a str,
    reason: &'a str,
    case_number: &'a str,
    cameras: Vec<JsonCamera<'a>>,
}

/// greenplate JSON: the alert's fields as the contract names them, the kind by name, the
/// time also in RFC 3339 (UTC).
pub fn json(a: &Alert) -> Vec<u8> {
    let body = JsonAlert {
        version: 1,
        seq: a.seq,
        alert_id: &a.alert_id,
        kind: kind_name(a.kind),
        priority: a.priority,
        escalation: a.escalation,
        incident_id: &a.incident_id,
        plate: &a.plate,
        tag_id: &a.tag_id,
        reader_id: &a.reader_id,
        lat: a.lat,
        lon: a.lon,
        seen_at_ms: a.seen_at_ms,
        seen_at: rfc3339(a.seen_at_ms, time::UtcOffset::UTC),
        zone_id: &a.zone_id,
        watch_entry_id: &a.watch_entry_id,
        reason: &a.reason,
        case_number: &a.case_number,
        cameras: a
            .cameras
            .iter()
            .map(|c| JsonCamera {
                camera_id: &c.camera_id,
                name: &c.name,
                url: &c.url,
            })
            .collect(),
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

/// XML text and attribute escaping.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Not allowed in XML 1.0 at all.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}

fn event_name(kind: i32) -> &'static str {
    match AlertKind::try_from(kind) {
        Ok(AlertKind::StolenSighted) => "Stolen motorcycle seen",
        Ok(AlertKind::ArmedMoved) => "Armed motorcycle moving",
        Ok(AlertKind::RevokedTagSeen) => "Revoked tag seen",
        Ok(AlertKind::CloneSuspected) => "Suspected cloned tag",
        Ok(AlertKind::WatchZone) => "Flagged motorcycle in a watch zone",
        Ok(AlertKind::ReaderOffline) => "Roadside reader offline",
        Ok(AlertKind::StolenSightedEarlier) => "Stolen motorcycle seen before the report",
        Ok(AlertKind::WatchListHit) => "Watch list hit",
        Ok(AlertKind::HitRejected) => "Hit rejected by an officer",
        _ => "greenplate alert",
    }
}

/// OASIS CAP 1.2: one `info` block (category Security, certainty Observed), severity and
/// urgency by priority, the alert's fields as parameters, the reader's position as a
/// 0.1 km circle. Times in China Standard Time, as CAP wants an explicit offset.
pub fn cap(a: &Alert, sender: &str) -> String {
    let (urgency, severity) = match a.priority {
        3 => ("Immediate", "Extreme"),
        2 => ("Immediate", "Severe"),
        _ => ("Expected", "Moderate"),
    };
    let event = event_name(a.kind);
    let mut params = vec![
        ("greenplate_kind", kind_name(a.kind)),
        ("greenplate_seq", a.seq.to_string()),
        ("incident_id", a.incident_id.clone()),
        ("plate", a.plate.clone()),
        ("tag_id", a.tag_id.clone()),
        ("reader_id", a.reader_id.clone()),
        ("priority", a.priority.to_string()),
        ("escalation", a.escalation.to_string()),
    ];
    for (name, value) in [
        ("zone_id", &a.zone_id),
        ("watch_entry_id", &a.watch_entry_id),
        ("reason", &a.reason),
        ("case_number", &a.case_number),
    ] {
        if !value.is_empty() {
            params.push((name, value.clone()));
        }
    }
    let mut xml = String::with_capacity(2048);
    xml.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    xml.push_str("<alert xmlns=\"urn:oasis:names:tc:emergency:cap:1.2\">\n");
    xml.push_str(&format!(
        "  <identifier>greenplate-{}</identifier>\n",
        esc(&a.alert_id)
    ));
    xml.push_str(&format!("  <sender>{}</sender>\n", esc(sender)));
    xml.push_str(&format!("  <sent>{}</sent>\n", rfc3339(a.seen_at_ms, CST)));
    xml.push_str("  <status>Actual</status>\n  <msgType>Alert</msgType>\n");
    xml.push_str("  <scope>Restricted</scope>\n  <restriction>Police and public-safety partners only</restriction>\n");
    xml.push_str("  <info>\n    <language>en-US</language>\n    <category>Security</category>\n");
    xml.push_str(&format!("    <event>{}</event>\n", esc(event)));
    xml.push_str(&format!(
        "    <urgency>{urgency}</urgency>\n    <severity>{severity}</severity>\n    <certainty>Observed</certainty>\n"
    ));
    xml.push_str(&format!(
        "    <headline>{}</headline>\n",
        esc(&format!(
            "{event}: {} at reader {}",
            if a.plate.is_empty() {
                &a.tag_id
            } else {
                &a.plate
            },
            a.reader_id
        ))
    ));
    for (name, value) in &params {
        xml.push_str(&format!(
            "    <parameter><valueName>{}</valueName><value>{}</value></parameter>\n",
            esc(name),
            esc(value)
        ));
    }
    for c in &a.cameras {
        if !c.url.is_empty() {
            xml.push_str(&format!(
                "    <resource><resourceDesc>{}</resourceDesc><mimeType>video/*</mimeType><uri>{}</uri></resource>\n",
                esc(&format!("camera {} ({})", c.name, c.camera_id)),
                esc(&c.url)
            ));
        }
    }
    xml.push_str(&format!(
        "    <area><areaDesc>{}</areaDesc><circle>{:.6},{:.6} 0.1</circle></area>\n",
        esc(&format!("reader {}", a.reader_id)),
        a.lat,
        a.lon
    ));
    xml.push_str("  </info>\n</alert>\n");
    xml
}

/// `v1=` and the hex HMAC-SHA256 of `{timestamp}.{body}` under `secret`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use greenplate_proto::v1::CameraLink;

    fn alert() -> Alert {
        Alert {
            seq: 7,
            alert_id: "al-1".into(),
            kind: AlertKind::WatchListHit as i32,
            plate: "潮阳A<1>&".into(),
            tag_id: "E2801160600000000000AAAA".into(),
            reader_id: "rd-1".into(),
            lat: 23.26,
            lon: 116.6,
            seen_at_ms: 1_796_562_300_000,
            incident_id: "inc-1".into(),
            priority: 3,
            reason: "robbery \"suspect\"".into(),
            case_number: "2026-88".into(),
            cameras: vec![CameraLink {
                camera_id: "cam-1".into(),
                name: "西门".into(),
                url: "https://v.example/p?a=1&b=2".into(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn json_names_the_kind_and_carries_every_field() {
        let v: serde_json::Value = serde_json::from_slice(&json(&alert())).unwrap();
        assert_eq!(v["kind"], "WATCH_LIST_HIT");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["plate"], "潮阳A<1>&");
        assert_eq!(v["seen_at"], "2026-12-06T13:05:00Z");
        assert_eq!(v["cameras"][0]["url"], "https://v.example/p?a=1&b=2");
        assert_eq!(v["version"], 1);
    }

    #[test]
    fn cap_is_escaped_and_says_severity_by_priority() {
        let x = cap(&alert(), "greenplate@node-1");
        assert!(
            x.contains("<identifier>greenplate-al-1</identifier>"),
            "{x}"
        );
        assert!(x.contains("<sent>2026-12-06T21:05:00+08:00</sent>"), "{x}");
        assert!(x.contains("<severity>Extreme</severity>"), "{x}");
        assert!(x.contains("<value>潮阳A&lt;1&gt;&amp;</value>"), "{x}");
        assert!(
            x.contains("<value>robbery &quot;suspect&quot;</value>"),
            "{x}"
        );
        assert!(
            x.contains("<uri>https://v.example/p?a=1&amp;b=2</uri>"),
            "{x}"
        );
        assert!(
            x.contains("<circle>23.260000,116.600000 0.1</circle>"),
            "{x}"
        );
        assert!(!x.contains("<1>"));
    }

    #[test]
    fn the_signature_covers_timestamp_and_body() {
        // HMAC-SHA256("secret", "1700000000.{}"), computed independently (Python hmac).
        assert_eq!(
            signature(b"secret", 1_700_000_000, b"{}"),
            "v1=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"
        );
    }
}
