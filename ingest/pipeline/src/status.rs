//! Reader status: what readers say about themselves on `greenplate/readers/{id}/status`
//! (sealed, see `ReaderStatus` in the contract), and the watch that turns a silent reader
//! or a reader's last will into `ALERT_KIND_READER_OFFLINE` for command centers.
//!
//! - ONLINE (reader clock newer than the last one taken) names the reader's current
//!   session; an older one is a replay.
//! - OFFLINE (the last will) is taken only for the current session, once: a will captured
//!   off the wire cannot be replayed later, and a will of an earlier connection that the
//!   broker publishes late is ignored.
//! - [`watch`] marks a reader offline after `offline_after` with no accepted batch and no
//!   status (counted from the service's start for readers never heard from), and back
//!   online when anything authentic arrives again.

use std::sync::Arc;
use std::time::Duration;

use greenplate_alerting::{EngineHandle, ReaderOffline};
use greenplate_proto::topics;
use greenplate_proto::v1::{ReaderState, ReaderStatus, SealedSightingBatch};
use greenplate_registry::{Reader, Readers, now_ms};
use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::rejection::Rejection;

/// Longest firmware text kept.
const FIRMWARE_MAX: usize = 64;
/// Shortest and longest session id accepted.
const SESSION_LEN: std::ops::RangeInclusive<usize> = 16..=128;

/// What a status message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusChange {
    Online,
    /// The reader's last will: it went offline now.
    WentOffline,
}

/// Opens a status message from a status topic.
pub fn open(
    readers: &Readers,
    topic: &str,
    payload: &[u8],
) -> Result<(Arc<Reader>, ReaderStatus), Rejection> {
    let reader_id = topics::reader_of_status_topic(topic).ok_or(Rejection::Topic)?;
    let reader = crate::admit::enabled_reader(readers, reader_id)?;
    let status = open_status(&reader, payload)?;
    Ok((reader, status))
}

/// Opens a status payload of a reader already found from its topic.
pub fn open_status(reader: &Reader, payload: &[u8]) -> Result<ReaderStatus, Rejection> {
    let sealed =
        SealedSightingBatch::decode(payload).map_err(|e| Rejection::Malformed(e.to_string()))?;
    if sealed.reader_id != reader.id {
        return Err(Rejection::ReaderMismatch);
    }
    let status = reader.open_status(&sealed)?;
    if status.reader_id != reader.id {
        return Err(Rejection::ReaderMismatch);
    }
    Ok(status)
}

/// Applies an opened status at server time `now_ms`.
pub fn apply(
    reader: &Reader,
    status: &ReaderStatus,
    now_ms: i64,
    skew: impl Into<crate::decode::Skew>,
) -> Result<StatusChange, Rejection> {
    let skew = skew.into();
    if !SESSION_LEN.contains(&status.session.len()) {
        return Err(Rejection::Malformed(
            "status session must be 16 to 128 characters".into(),
        ));
    }
    let mut l = reader.liveness.lock().unwrap_or_else(|p| p.into_inner());
    match status.state() {
        ReaderState::Online => {
            if !skew.contains(now_ms, status.at_ms) {
                return Err(Rejection::StatusTime);
            }
            if status.at_ms <= l.status_at_ms {
                return Err(Rejection::StaleStatus);
            }
            l.session.clone_from(&status.session);
            l.status_at_ms = status.at_ms;
            l.firmware = status.firmware.chars().take(FIRMWARE_MAX).collect();
            reader
                .last_status_ms
                .store(now_ms, std::sync::atomic::Ordering::Relaxed);
            Ok(StatusChange::Online)
        }
        ReaderState::Offline => {
            if l.session.is_empty() || l.session != status.session {
                return Err(Rejection::StaleStatus);
            }
            l.session.clear();
            l.offline_since_ms = Some(now_ms);
            Ok(StatusChange::WentOffline)
        }
        ReaderState::Unspecified => Err(Rejection::Malformed(
            "status state must be ONLINE or OFFLINE".into(),
        )),
    }
}

/// Watches for silent readers until `shutdown`: every `period`, a reader with nothing
/// authentic for `offline_after` is marked offline and reported to the engine once; one
/// heard from again is marked online.
pub async fn watch(
    readers: Arc<Readers>,
    engine: EngineHandle,
    offline_after: Duration,
    shutdown: CancellationToken,
) {
    let started_ms = now_ms();
    let after_ms = i64::try_from(offline_after.as_millis()).unwrap_or(i64::MAX);
    let period = (offline_after / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let now = now_ms();
        for reader in readers.all() {
            if !reader.enabled() {
                continue;
            }
            let activity = reader.last_activity_ms();
            let went_silent = {
                let mut l = reader.liveness.lock().unwrap_or_else(|p| p.into_inner());
                match l.offline_since_ms {
                    Some(since) if activity > since => {
                        l.offline_since_ms = None;
                        tracing::info!(reader = %reader.id, "Reader back online.");
                        false
                    }
                    Some(_) => false,
                    None if now - activity.max(started_ms) > after_ms => {
                        l.offline_since_ms = Some(now);
                        true
                    }
                    None => false,
                }
            };
            if went_silent {
                report_offline(&engine, &reader, "silent").await;
            }
        }
    }
}

/// Hands a reader-offline alert to the engine.
pub async fn report_offline(engine: &EngineHandle, reader: &Arc<Reader>, why: &'static str) {
    let o = ReaderOffline {
        reader: reader.clone(),
        last_seen_ms: reader.last_activity_ms(),
        why,
        detected_at: std::time::Instant::now(),
    };
    if engine.reader_offline(o).await.is_err() {
        tracing::error!(reader = %reader.id, "Alerting engine has stopped; reader-offline not alerted.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use greenplate_proto::seal::ReaderKey;

    const NOW: i64 = 1_700_000_000_000;
    const SKEW: i64 = 60_000;

    fn status(state: ReaderState, session: &str, at_ms: i64) -> ReaderStatus {
        ReaderStatus {
            reader_id: "r1".into(),
            state: state as i32,
            session: session.into(),
            at_ms,
            firmware: "fw 1.2".into(),
        }
    }

    fn readers() -> Readers {
        let r = Readers::default();
        r.insert(Reader::new(
            "r1".into(),
            "R1".into(),
            23.3,
            116.6,
            "secret-1",
        ));
        r
    }

    const S1: &str = "session-one-0001";
    const S2: &str = "session-two-0002";

    #[test]
    fn online_then_will_of_the_same_session() {
        let rs = readers();
        let r = rs.get("r1").unwrap();
        let on = status(ReaderState::Online, S1, NOW);
        assert_eq!(apply(&r, &on, NOW, SKEW), Ok(StatusChange::Online));
        assert_eq!(r.liveness().firmware, "fw 1.2");
        // Replayed ONLINE: not newer.
        assert_eq!(apply(&r, &on, NOW + 5, SKEW), Err(Rejection::StaleStatus));
        let will = status(ReaderState::Offline, S1, NOW - 10);
        assert_eq!(
            apply(&r, &will, NOW + 9, SKEW),
            Ok(StatusChange::WentOffline)
        );
        assert_eq!(r.liveness().offline_since_ms, Some(NOW + 9));
        // The same will again is not taken twice.
        assert_eq!(
            apply(&r, &will, NOW + 10, SKEW),
            Err(Rejection::StaleStatus)
        );
    }

    #[test]
    fn a_will_of_an_earlier_session_is_ignored() {
        let rs = readers();
        let r = rs.get("r1").unwrap();
        apply(&r, &status(ReaderState::Online, S1, NOW), NOW, SKEW).unwrap();
        apply(&r, &status(ReaderState::Online, S2, NOW + 1), NOW + 1, SKEW).unwrap();
        assert_eq!(
            apply(&r, &status(ReaderState::Offline, S1, NOW), NOW + 2, SKEW),
            Err(Rejection::StaleStatus)
        );
        assert_eq!(r.liveness().offline_since_ms, None);
    }

    #[test]
    fn bad_statuses_are_rejected() {
        let rs = readers();
        let r = rs.get("r1").unwrap();
        let far = status(ReaderState::Online, S1, NOW + SKEW + 1);
        assert_eq!(apply(&r, &far, NOW, SKEW), Err(Rejection::StatusTime));
        let short = status(ReaderState::Online, "short", NOW);
        assert!(matches!(
            apply(&r, &short, NOW, SKEW),
            Err(Rejection::Malformed(_))
        ));
        let none = status(ReaderState::Unspecified, S1, NOW);
        assert!(matches!(
            apply(&r, &none, NOW, SKEW),
            Err(Rejection::Malformed(_))
        ));
    }

    #[test]
    fn open_checks_topic_key_and_domain() {
        let rs = readers();
        let key = ReaderKey::derive("secret-1");
        let s = status(ReaderState::Online, S1, NOW);
        let payload = key.seal_status(&s).encode_to_vec();
        let (r, opened) = open(&rs, "greenplate/readers/r1/status", &payload).unwrap();
        assert_eq!((r.id.as_str(), opened), ("r1", s.clone()));
        assert_eq!(
            open(&rs, "greenplate/readers/r2/status", &payload).unwrap_err(),
            Rejection::UnknownReader
        );
        let forged = ReaderKey::derive("wrong").seal_status(&s).encode_to_vec();
        assert!(matches!(
            open(&rs, "greenplate/readers/r1/status", &forged),
            Err(Rejection::Unsealed(_))
        ));
        // A batch sealed by the reader is not a status.
        let batch = key
            .seal(&greenplate_proto::v1::SightingBatch {
                reader_id: "r1".into(),
                ..Default::default()
            })
            .encode_to_vec();
        assert!(matches!(
            open(&rs, "greenplate/readers/r1/status", &batch),
            Err(Rejection::Unsealed(_))
        ));
    }
}
