//! Texts to owners through an SMS gateway: "your armed bike moved", "your stolen bike was
//! seen", "your bike was recovered", in Chinese, from templates in the configuration.
//!
//! Providers' HTTP APIs differ, so greenplate speaks one small interface and a thin adapter
//! at the provider (or the provider itself, where it can be configured so) speaks the rest:
//!
//! ```text
//! POST {url}
//! Authorization: Bearer {token}
//! Idempotency-Key: {id}
//! Content-Type: application/json
//!
//! {"id": "sms-al-…", "to": "13712345678", "kind": "armed_moved", "text": "【绿牌防盗】…"}
//! ```
//!
//! Any 2xx means the gateway took it. Alert texts ride the forwarding worker as the target
//! [`OWNER_SMS`] (cursor, lease, retries and dead letters as for partners); recoveries,
//! which are not alerts, are sent by [`run_recoveries`] from the theft reports.
//!
//! The owner's phone is opened from its sealed form at the moment of sending, and is in
//! no log line and no metric. Each owner gets at most `max_per_owner_per_hour` texts;
//! the rest are counted (`rate_limited`) and dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use greenplate_proto::v1::{Alert, AlertKind};
use greenplate_registry::{OwnerContact, now_ms};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio_util::sync::CancellationToken;

use super::{Delivered, error_chain, outbox};
use crate::state::Alerting;

/// The forwarding target that carries owners' texts (a reserved name).
pub const OWNER_SMS: &str = "greenplate-owner-sms";
/// The lease of the recoveries' texts.
const RECOVERIES: &str = "greenplate-owner-sms-recovered";
/// How often recoveries are looked for.
const RECOVERIES_EVERY: Duration = Duration::from_secs(2);
/// A recovery older than this is not texted any more (also the give-up time).
const RECOVERY_WINDOW_MS: i64 = 24 * 3_600_000;

/// The owner page's sign-in text.
const SIGN_IN_CODE: &str =
    "【绿牌防盗】您的登录验证码是{code}，5分钟内有效。请勿告诉任何人，工作人员不会向您索要。";

/// The texts' templates: `{plate}`, `{time}` (China Standard Time, `MM-DD HH:MM`) and
/// `{reader}` (the reader's name) are filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Templates {
    pub armed_moved: String,
    pub stolen_seen: String,
    pub recovered: String,
}

impl Default for Templates {
    fn default() -> Self {
        Self {
            armed_moved: "【绿牌防盗】您已布防的摩托车{plate}于{time}经过{reader}。如非本人使用，请立即拨打110报警。".into(),
            stolen_seen: "【绿牌防盗】您被盗的摩托车{plate}于{time}在{reader}附近被发现，警方已收到告警。请勿自行追车。".into(),
            recovered: "【绿牌防盗】您的摩托车{plate}已于{time}找回，请携带身份证到派出所认领。".into(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SmsLabel {
    /// armed_moved, stolen_seen, recovered.
    pub kind: String,
    /// sent, failed (one attempt), rate_limited, no_owner.
    pub result: String,
}

/// The gateway and what it needs. `Debug` does not show the token.
pub struct Gateway {
    url: String,
    token: String,
    templates: Templates,
    max_per_owner_per_hour: u32,
    /// Per owner: when each text of the last hour was admitted, and its id (a retry of
    /// the same text does not count again).
    sent: Mutex<HashMap<i64, VecDeque<(Instant, String)>>>,
    /// `greenplate_owner_sms_total{kind, result}`.
    pub counts: Family<SmsLabel, Counter>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("url", &self.url)
            .field("token", &"<hidden>")
            .field("max_per_owner_per_hour", &self.max_per_owner_per_hour)
            .finish()
    }
}

fn cst_time(ms: i64) -> String {
    greenplate_registry::clock::at(ms, greenplate_registry::clock::CST)
        .map(|t| {
            format!(
                "{:02}-{:02} {:02}:{:02}",
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute()
            )
        })
        .unwrap_or_default()
}

/// One text to send: to whom, of which kind (the metrics' label), its idempotency key and
/// its words.
#[derive(Clone, Copy)]
struct Text<'a> {
    contact: &'a OwnerContact,
    kind: &'a str,
    id: &'a str,
    text: &'a str,
}

impl Gateway {
    pub fn new(
        url: String,
        token: String,
        templates: Templates,
        max_per_owner_per_hour: u32,
    ) -> Self {
        Self {
            url,
            token,
            templates,
            max_per_owner_per_hour,
            sent: Mutex::default(),
            counts: Family::default(),
        }
    }

    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "owner_sms",
            "Texts to owners by kind and result (sent, failed attempt, rate_limited, no_owner)",
            self.counts.clone(),
        );
    }

    fn count(&self, kind: &str, result: &str) {
        self.counts
            .get_or_create(&SmsLabel {
                kind: kind.into(),
                result: result.into(),
            })
            .inc();
    }

    /// Whether the owner may get text `id` now (one admitted before may be sent again).
    fn admit(&self, owner_id: i64, id: &str) -> bool {
        let now = Instant::now();
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        let texts = sent.entry(owner_id).or_default();
        while texts
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(3600))
        {
            texts.pop_front();
        }
        if texts.iter().any(|(_, i)| i == id) {
            return true;
        }
        if texts.len() >= self.max_per_owner_per_hour as usize {
            return false;
        }
        texts.push_back((now, id.to_owned()));
        true
    }

    fn render(&self, kind: &str, plate: &str, at_ms: i64, reader: &str) -> String {
        let template = match kind {
            "armed_moved" => &self.templates.armed_moved,
            "stolen_seen" => &self.templates.stolen_seen,
            _ => &self.templates.recovered,
        };
        template
            .replace("{plate}", plate)
            .replace("{time}", &cst_time(at_ms))
            .replace("{reader}", reader)
    }

    /// One attempt at the text an alert calls for (armed bike moved, stolen bike seen).
    pub(crate) async fn send_alert(
        &self,
        alerting: &Alerting,
        client: &reqwest::Client,
        timeout: Duration,
        alert: &Alert,
    ) -> Result<Delivered, String> {
        let kind = match AlertKind::try_from(alert.kind) {
            Ok(AlertKind::ArmedMoved) => "armed_moved",
            Ok(AlertKind::StolenSighted | AlertKind::StolenSightedEarlier) => "stolen_seen",
            _ => return Ok(Delivered::Skipped("filtered")),
        };
        let contact = alerting
            .registry()
            .owner_contact_by_tag(&alert.tag_id)
            .await
            .map_err(|e| e.to_string())?;
        let Some(contact) = contact else {
            self.count(kind, "no_owner");
            return Ok(Delivered::Skipped("no_owner"));
        };
        let reader = alerting
            .registry()
            .readers()
            .get(&alert.reader_id)
            .map(|r| r.name.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| alert.reader_id.clone());
        let text = self.render(kind, &contact.plate, alert.seen_at_ms, &reader);
        let id = format!("sms-{}", alert.alert_id);
        let text = Text {
            contact: &contact,
            kind,
            id: &id,
            text: &text,
        };
        self.send(client, timeout, &text).await
    }

    /// One attempt at sending `text` to `contact`.
    async fn send(
        &self,
        client: &reqwest::Client,
        timeout: Duration,
        text: &Text<'_>,
    ) -> Result<Delivered, String> {
        let Text {
            contact, kind, id, ..
        } = *text;
        if !self.admit(contact.owner_id, id) {
            self.count(kind, "rate_limited");
            tracing::info!(
                owner = contact.owner_id,
                kind,
                "An owner's text was over the hourly limit and dropped."
            );
            return Ok(Delivered::Skipped("rate_limited"));
        }
        self.post(client, timeout, text).await
    }

    /// Texts an owner-page sign-in code (limited by the page, not by the hourly budget of
    /// notifications).
    pub async fn send_code(
        &self,
        client: &reqwest::Client,
        timeout: Duration,
        contact: &OwnerContact,
        code: &str,
    ) -> Result<(), String> {
        let text = SIGN_IN_CODE.replace("{code}", code);
        let id = format!("sms-code-{}", hex::encode(rand::random::<[u8; 8]>()));
        let text = Text {
            contact,
            kind: "sign_in_code",
            id: &id,
            text: &text,
        };
        self.post(client, timeout, &text).await.map(|_| ())
    }

    async fn post(
        &self,
        client: &reqwest::Client,
        timeout: Duration,
        text: &Text<'_>,
    ) -> Result<Delivered, String> {
        let Text {
            contact,
            kind,
            id,
            text,
        } = *text;
        let body = serde_json::json!({
            "id": id,
            "to": contact.phone,
            "kind": kind,
            "text": text,
        });
        let sent = client
            .post(&self.url)
            .timeout(timeout)
            .bearer_auth(&self.token)
            .header("Idempotency-Key", id)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => {
                self.count(kind, "sent");
                Ok(Delivered::Sent)
            }
            Ok(r) => {
                self.count(kind, "failed");
                Err(format!("SMS gateway answered HTTP {}", r.status()))
            }
            Err(e) => {
                self.count(kind, "failed");
                Err(error_chain(&e))
            }
        }
    }
}

/// Texts owners whose bike was recovered, until `shutdown`: every few seconds, on the node
/// holding the recoveries' lease. A text that fails is tried again at the next look, until
/// the recovery is a day old.
pub async fn run_recoveries(
    alerting: Arc<Alerting>,
    gateway: Arc<Gateway>,
    client: reqwest::Client,
    timeout: Duration,
    node: String,
    shutdown: CancellationToken,
) {
    let db = alerting.db().clone();
    let mut registered = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(RECOVERIES_EVERY) => {}
        }
        let now = now_ms();
        if !registered {
            registered = outbox::register(&db, RECOVERIES, now).await.is_ok();
        }
        match outbox::lease(&db, RECOVERIES, &node, now).await {
            Ok(Some(_)) => {}
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "Taking the recoveries' lease failed.");
                continue;
            }
        }
        let due = match alerting
            .registry()
            .recoveries_to_notify(now - RECOVERY_WINDOW_MS, 50)
            .await
        {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "Reading recoveries to text failed.");
                continue;
            }
        };
        for r in due {
            let sent = match alerting.registry().owner_contact_by_bike(r.bike_id).await {
                Ok(Some(contact)) => {
                    let text = gateway.render("recovered", &contact.plate, r.recovered_at_ms, "");
                    let id = format!("sms-recovered-{}", r.report_id);
                    let text = Text {
                        contact: &contact,
                        kind: "recovered",
                        id: &id,
                        text: &text,
                    };
                    gateway.send(&client, timeout, &text).await
                }
                Ok(None) => {
                    gateway.count("recovered", "no_owner");
                    Ok(Delivered::Skipped("no_owner"))
                }
                Err(e) => Err(e.to_string()),
            };
            let done = match sent {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!(report = r.report_id, error = %e, "Texting a recovery failed; trying again.");
                    // Tried until the recovery is a day old, then given up.
                    now - r.recovered_at_ms
                        >= RECOVERY_WINDOW_MS - RECOVERIES_EVERY.as_millis() as i64
                }
            };
            if done && let Err(e) = alerting.registry().recovery_notified(r.report_id).await {
                tracing::warn!(report = r.report_id, error = %e, "Marking a recovery texted failed.");
            }
        }
    }
    let _ = outbox::release(&db, RECOVERIES, &node).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(max: u32) -> Gateway {
        Gateway::new("http://x".into(), "t".into(), Templates::default(), max)
    }

    #[test]
    fn texts_are_filled_in_china_standard_time() {
        let g = gateway(5);
        // 2026-12-06 13:05 UTC is 21:05 in Shantou.
        let t = g.render("armed_moved", "粤D7F001", 1_796_562_300_000, "西门路口");
        assert_eq!(
            t,
            "【绿牌防盗】您已布防的摩托车粤D7F001于12-06 21:05经过西门路口。如非本人使用，请立即拨打110报警。"
        );
        assert!(
            g.render("recovered", "P", 0, "")
                .contains("P已于01-01 08:00找回")
        );
    }

    #[test]
    fn each_owner_has_an_hourly_budget_and_retries_do_not_spend_it() {
        let g = gateway(2);
        assert!(g.admit(1, "a"));
        assert!(g.admit(1, "a"), "the same text again");
        assert!(g.admit(1, "b"));
        assert!(!g.admit(1, "c"), "over the limit");
        assert!(g.admit(2, "c"), "another owner");
    }
}
