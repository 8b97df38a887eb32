//! `greenplate patrol`: the officers' command-line client. It follows a unit's alert stream
//! (resuming after the last alert it printed whenever the connection drops, so nothing is
//! missed), printing one readable line per alert, and acknowledges or resolves incidents.

use std::io::Write;
use std::time::Duration;

use greenplate_proto::auth::{Authed, Bearer};
use greenplate_proto::v1::patrol_client::PatrolClient;
use greenplate_proto::v1::{
    AcknowledgeIncidentRequest, Alert, AlertKind, Incident, Outcome, ResolveIncidentRequest,
    StreamAlertsRequest,
};
use tonic::transport::Endpoint;

#[derive(Debug, thiserror::Error)]
pub enum PatrolError {
    #[error("bad server URL: {0}")]
    Url(String),
    #[error(transparent)]
    Token(#[from] greenplate_proto::auth::BadToken),
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    #[error("cannot write: {0}")]
    Io(#[from] std::io::Error),
}

/// A patrol client for one server and token.
pub async fn connect(server: &str, token: &str) -> Result<PatrolClient<Authed>, PatrolError> {
    let endpoint = Endpoint::from_shared(server.to_owned())
        .map_err(|e| PatrolError::Url(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    // Connect lazily: the follow loop retries until the server is there.
    Ok(PatrolClient::with_interceptor(
        endpoint.connect_lazy(),
        Bearer::new(token)?,
    ))
}

/// How an alert line calls for attention on a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Alarm {
    /// Colour the line by priority (critical red, urgent yellow, normal cyan).
    pub colour: bool,
    /// Ring the terminal bell for every alert someone must act on (priority 1 and up).
    pub bell: bool,
}

impl Alarm {
    /// Both on when `out` is a terminal and `NO_COLOR` is not set (<https://no-color.org>).
    pub fn for_terminal(is_terminal: bool) -> Self {
        let on = is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        Self {
            colour: on,
            bell: on,
        }
    }

    /// `line` (an alert's [`format_alert`]) with the bell and the colour of its priority.
    pub fn dress(self, a: &Alert, line: &str) -> String {
        let bell = if self.bell && a.priority >= 1 {
            "\x07"
        } else {
            ""
        };
        if !self.colour {
            return format!("{bell}{line}");
        }
        let colour = match a.priority {
            p if p >= 3 => "\x1b[1;31m",
            2 => "\x1b[1;33m",
            1 => "\x1b[36m",
            _ => "\x1b[2m",
        };
        format!("{bell}{colour}{line}\x1b[0m")
    }
}

/// Prints alerts as they arrive, for ever (or until the server refuses the token), each
/// dressed by `alarm`. Returns the last seq printed if the stream ends for good.
pub async fn print_alerts(
    client: &mut PatrolClient<Authed>,
    mut resume_after: u64,
    out: &mut impl Write,
    alarm: Alarm,
) -> Result<u64, PatrolError> {
    let mut backoff = Duration::from_millis(200);
    loop {
        match client
            .stream_alerts(StreamAlertsRequest { resume_after })
            .await
        {
            Ok(stream) => {
                backoff = Duration::from_millis(200);
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(alert)) => {
                            writeln!(out, "{}", alarm.dress(&alert, &format_alert(&alert)))?;
                            out.flush()?;
                            resume_after = resume_after.max(alert.seq);
                        }
                        Ok(None) => break,
                        Err(status) => {
                            tracing::warn!(error = %status, "Alert stream broke; resuming.");
                            break;
                        }
                    }
                }
            }
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                ) =>
            {
                return Err(status.into());
            }
            Err(status) => {
                tracing::warn!(error = %status, "Cannot reach the server; retrying.");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// One readable line, e.g.
/// `#12 18:05:33 URGENT WATCH ZONE exit  潮阳A10001  tag E28...  at rd-exit (23.2100, 116.5100)  incident inc-...`
pub fn format_alert(a: &Alert) -> String {
    let what = match a.kind() {
        AlertKind::StolenSighted => "STOLEN BIKE SEEN",
        AlertKind::StolenSightedEarlier => "STOLEN BIKE SEEN BEFORE THE REPORT",
        AlertKind::WatchListHit => "WATCH LIST",
        AlertKind::HitRejected => "HIT REJECTED",
        AlertKind::ArmedMoved => "ARMED BIKE MOVING",
        AlertKind::RevokedTagSeen => "REVOKED TAG SEEN",
        AlertKind::CloneSuspected => "CLONED TAG SUSPECTED",
        AlertKind::WatchZone => "WATCH ZONE",
        AlertKind::ReaderOffline => "READER OFFLINE",
        AlertKind::CanarySeen => "CANARY SEEN",
        AlertKind::CanaryMissed => "CANARY MISSED",
        AlertKind::Unspecified => "ALERT",
    };
    let urgent = match (a.priority, a.escalation) {
        (p, 0) if p >= 3 => "CRITICAL ",
        (2, 0) => "URGENT ",
        (_, 0) => "",
        // Sent again: nobody acknowledged its incident in time.
        _ => "ESCALATED CRITICAL ",
    };
    let zone = if a.zone_id.is_empty() {
        String::new()
    } else {
        format!(" {}", a.zone_id)
    };
    let why = if !a.watch_entry_id.is_empty() {
        format!(
            "  {} (case {:?}, entry {})",
            a.reason, a.case_number, a.watch_entry_id
        )
    } else if !a.reason.is_empty() {
        format!("  {}", a.reason)
    } else {
        String::new()
    };
    format!(
        "#{} {} {urgent}{what}{zone}  {}  tag {}  at {} ({:.4}, {:.4})  incident {}{why}",
        a.seq,
        clock(a.seen_at_ms),
        a.plate,
        a.tag_id,
        a.reader_id,
        a.lat,
        a.lon,
        a.incident_id
    )
}

/// HH:MM:SS in China Standard Time (UTC+8), the district's clock.
fn clock(ms: i64) -> String {
    let s = (ms.div_euclid(1000) + 8 * 3600).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// Acknowledges an incident.
pub async fn acknowledge(
    client: &mut PatrolClient<Authed>,
    incident_id: &str,
    note: &str,
) -> Result<Incident, PatrolError> {
    Ok(client
        .acknowledge_incident(AcknowledgeIncidentRequest {
            incident_id: incident_id.to_owned(),
            note: note.to_owned(),
        })
        .await?
        .into_inner())
}

/// Resolves an incident.
pub async fn resolve(
    client: &mut PatrolClient<Authed>,
    incident_id: &str,
    outcome: Outcome,
    note: &str,
) -> Result<Incident, PatrolError> {
    Ok(client
        .resolve_incident(ResolveIncidentRequest {
            incident_id: incident_id.to_owned(),
            outcome: outcome as i32,
            note: note.to_owned(),
        })
        .await?
        .into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_an_officer_can_read() {
        let a = Alert {
            seq: 12,
            alert_id: "al-1".into(),
            kind: AlertKind::WatchZone as i32,
            plate: "潮阳A10001".into(),
            tag_id: "E28011606000020700000001".into(),
            reader_id: "rd-exit".into(),
            lat: 23.21,
            lon: 116.51,
            seen_at_ms: 1_764_064_533_000, // 2025-11-25 09:55:33 UTC
            incident_id: "inc-9".into(),
            priority: 2,
            zone_id: "exit".into(),
            ..Default::default()
        };
        assert_eq!(
            format_alert(&a),
            "#12 17:55:33 URGENT WATCH ZONE exit  潮阳A10001  tag E28011606000020700000001  at rd-exit (23.2100, 116.5100)  incident inc-9"
        );
    }

    #[test]
    fn the_alarm_rings_and_colours_by_priority() {
        let line = "#1 ...";
        let at = |priority| Alert {
            priority,
            ..Default::default()
        };
        let both = Alarm {
            colour: true,
            bell: true,
        };
        assert_eq!(both.dress(&at(3), line), "\x07\x1b[1;31m#1 ...\x1b[0m");
        assert_eq!(both.dress(&at(2), line), "\x07\x1b[1;33m#1 ...\x1b[0m");
        assert_eq!(both.dress(&at(1), line), "\x07\x1b[36m#1 ...\x1b[0m");
        // A canary is nobody's to act on: no bell.
        assert_eq!(both.dress(&at(0), line), "\x1b[2m#1 ...\x1b[0m");
        assert_eq!(Alarm::default().dress(&at(3), line), line);
        assert_eq!(Alarm::for_terminal(false), Alarm::default());
    }

    #[test]
    fn a_watch_list_hit_says_its_priority_reason_and_case() {
        let a = Alert {
            seq: 13,
            kind: AlertKind::WatchListHit as i32,
            plate: "潮阳A10002".into(),
            tag_id: "E28011606000020700000002".into(),
            reader_id: "rd-1".into(),
            lat: 23.2,
            lon: 116.5,
            seen_at_ms: 1_764_064_533_000,
            incident_id: "inc-10".into(),
            priority: 3,
            watch_entry_id: "PS-1".into(),
            reason: "robbery".into(),
            case_number: "2026-88".into(),
            ..Default::default()
        };
        assert_eq!(
            format_alert(&a),
            "#13 17:55:33 CRITICAL WATCH LIST  潮阳A10002  tag E28011606000020700000002  at rd-1 (23.2000, 116.5000)  incident inc-10  robbery (case \"2026-88\", entry PS-1)"
        );
    }
}
