//! Insurance claim evidence (issue #18): an insurer's token gets the signed record of an
//! unresolved theft (the report, every pass since, the outcome), which checks against the
//! public key the server publishes and fails on any change; nothing for anyone else, for
//! a recovered bike, or for a plate with no theft.

use crate::support;

use std::time::Duration;

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use greenplate_proto::v1::{AddInsurerRequest, ReportRecoveredRequest};
use greenplate_simulator::reader::{ReaderClient, sighting};
use support::{TestService, register_stolen};

const TAG: &str = "E28011606000000000000D01";
const PLATE: &str = "粤D7D001";

async fn get(url: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json_or_null().await)
}

/// Reports the bike of [`PLATE`] recovered, through a new kiosk `kiosk_id`.
async fn recover(svc: &TestService, kiosk_id: &str) {
    svc.add_kiosk(kiosk_id)
        .await
        .report_recovered(ReportRecoveredRequest {
            plate: PLATE.into(),
            pin: "2468".into(),
        })
        .await
        .unwrap();
}

/// Whether `claim`'s signature is `public_key`'s (hex) over `text`, checked with Ed25519
/// code of the test's own.
fn signed_by(public_key: &str, text: &str, claim: &serde_json::Value) -> bool {
    let key: [u8; 32] = hex::decode(public_key).unwrap().try_into().unwrap();
    let sig = hex::decode(claim["signature"].as_str().unwrap()).unwrap();
    VerifyingKey::from_bytes(&key)
        .unwrap()
        .verify(text.as_bytes(), &Signature::from_slice(&sig).unwrap())
        .is_ok()
}

trait JsonOrNull {
    async fn json_or_null(self) -> serde_json::Value;
}

impl JsonOrNull for reqwest::Response {
    async fn json_or_null(self) -> serde_json::Value {
        let bytes = self.bytes().await.unwrap_or_default();
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insurer_gets_a_signed_record_of_an_unresolved_theft() {
    let svc = TestService::start_configured(|c| {
        c.alerting.clone_speed_kmh = 1e9;
        c.ingest.pass_gap_ms = 300;
        c.claims.after_days = 0;
    })
    .await;
    let base = format!("http://{}", svc.service.http_addr);
    let insurer = svc
        .admin()
        .await
        .add_insurer(AddInsurerRequest {
            insurer_id: "picc-shantou".into(),
            name: "PICC Shantou".into(),
            token_ttl_s: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    register_stolen(&svc, TAG, PLATE).await;
    let mut secrets = Vec::new();
    for (id, lat) in [("rd-1", 23.30), ("rd-2", 23.36)] {
        secrets.push(svc.add_reader(id, lat, 116.60).await);
    }
    for (i, id) in ["rd-1", "rd-2"].into_iter().enumerate() {
        let mut rd = ReaderClient::connect("127.0.0.1", svc.mqtt_port(), id, &secrets[i])
            .await
            .unwrap();
        rd.publish(vec![sighting(TAG, 3, -50)]).await.unwrap();
        rd.disconnect().await;
    }

    // Once both passes are in the history, the record lists them.
    let url = format!("{base}/claims/{PLATE}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let claim = loop {
        let (status, body) = get(&url, Some(&insurer)).await;
        let record: serde_json::Value =
            serde_json::from_str(body["record"].as_str().unwrap_or("null")).unwrap_or_default();
        let n = record["sightings"].as_array().map_or(0, Vec::len);
        if status == 200 && n == 2 {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the record did not list both passes: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // It checks against the published key; changed, it does not.
    let (status, key) = get(&format!("{base}/claims/public-key"), None).await;
    assert_eq!(status, 200);
    assert_eq!(key["algorithm"], "Ed25519");
    let key = key["public_key"].as_str().unwrap();
    let text = claim["record"].as_str().unwrap();
    assert!(signed_by(key, text, &claim));
    assert!(!signed_by(key, &text.replace("rd-2", "rd-9"), &claim));
    let record: serde_json::Value = serde_json::from_str(text).unwrap();
    assert_eq!(record["kind"], "greenplate.theft_claim");
    assert_eq!(record["bike"]["plate"], PLATE);
    assert_eq!(record["bike"]["frame_number"], "LYDG5RULES1");
    assert_eq!(record["outcome"]["state"], "unresolved");
    assert_eq!(record["issued_by"], "insurer:picc-shantou");
    let readers: Vec<&str> = record["sightings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["reader_id"].as_str().unwrap())
        .collect();
    assert_eq!(readers, ["rd-1", "rd-2"]);
    // No owner in it.
    assert!(
        !text.contains("黄敏") && !text.contains("13712345678"),
        "{text}"
    );

    // Nobody else; no theft; a recovered bike.
    assert_eq!(get(&url, None).await.0, 401);
    let kiosk = support::new_kiosk_token(svc.channel().await, "k-claims").await;
    assert_eq!(get(&url, Some(&kiosk)).await.0, 403);
    assert_eq!(
        get(&format!("{base}/claims/粤D7D999"), Some(&insurer))
            .await
            .0,
        404
    );
    recover(&svc, "k-2").await;
    let (status, body) = get(&url, Some(&insurer)).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("recovered"),
        "{body}"
    );
    let audit = svc.audit_log().await;
    assert!(audit.iter().any(|e| e.action == "add_insurer"));
    assert!(
        audit
            .iter()
            .filter(|e| e.action == "claim_record" && e.actor == "insurer:picc-shantou")
            .count()
            >= 2
    );
    svc.stop().await;
}

/// The owner gets the same signed record from the owner page (`/owner/claim`), for their
/// own bike only: another owner's plate reads as absent, a recovered bike gets none, and
/// each is audited under the owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_downloads_the_signed_record_of_their_own_bike() {
    use support::web::{enc, request};

    let sms = support::sms::SmsGateway::start().await;
    let sms_url = sms.url.clone();
    let svc = TestService::start_configured(move |c| {
        c.alerting.clone_speed_kmh = 1e9;
        c.ingest.pass_gap_ms = 300;
        c.claims.after_days = 0;
        c.sms.url = Some(sms_url.clone());
        c.sms.token = Some("t".into());
    })
    .await;
    let addr = svc.service.http_addr;
    register_stolen(&svc, TAG, PLATE).await;
    // Another owner's stolen bike.
    let mut other = support::bike("E28011606000000000000D02", "粤D7D002");
    other.owner.as_mut().unwrap().id_number = "440513198001011236".into();
    other.owner.as_mut().unwrap().phone = "13800000002".into();
    let mut kiosk = svc.add_kiosk("k-other").await;
    kiosk.register_bike(other).await.unwrap();
    kiosk
        .report_stolen(greenplate_proto::v1::ReportStolenRequest {
            plate: "粤D7D002".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let secret = svc.add_reader("rd-o", 23.30, 116.60).await;
    let mut rd = ReaderClient::connect("127.0.0.1", svc.mqtt_port(), "rd-o", &secret)
        .await
        .unwrap();
    rd.publish(vec![sighting(TAG, 3, -50)]).await.unwrap();
    svc.wait_metric("greenplate_history_passes_stored_total", 1.0)
        .await;

    // Sign in as the owner with the texted code.
    let r = request(addr, "POST", "/owner/code", None, &[("plate", PLATE)]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let code = sms.code_for("13712345678").await;
    let r = request(
        addr,
        "POST",
        "/owner/login",
        None,
        &[("plate", PLATE), ("code", &code)],
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let cookie = r
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();

    // The bike's page links the record; the record checks against the published key.
    let page = request(
        addr,
        "GET",
        &format!("/owner/bike?plate={}", enc(PLATE)),
        Some(&cookie),
        &[],
    )
    .await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("id=\"claim-link\""), "{}", page.body);
    let claim_path = format!("/owner/claim?plate={}", enc(PLATE));
    let r = request(addr, "GET", &claim_path, Some(&cookie), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.header("content-disposition")
            .unwrap()
            .starts_with("attachment"),
        "{}",
        r.head
    );
    let claim: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let (_, key) = get(&format!("http://{addr}/claims/public-key"), None).await;
    assert_eq!(claim["public_key"], key["public_key"]);
    let text = claim["record"].as_str().unwrap();
    assert!(signed_by(key["public_key"].as_str().unwrap(), text, &claim));
    let record: serde_json::Value = serde_json::from_str(text).unwrap();
    assert_eq!(record["bike"]["plate"], PLATE);
    assert!(
        record["issued_by"].as_str().unwrap().starts_with("owner:"),
        "{record}"
    );
    assert_eq!(record["sightings"].as_array().unwrap().len(), 1);

    // Another owner's stolen bike reads as absent; no session, no record.
    let r = request(
        addr,
        "GET",
        &format!("/owner/claim?plate={}", enc("粤D7D002")),
        Some(&cookie),
        &[],
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(!r.body.contains("粤D7D002\""), "{}", r.body);
    let r = request(addr, "GET", &claim_path, None, &[]).await;
    assert_ne!(r.status, 200);
    assert!(!r.body.contains("signature"), "{}", r.body);

    // Recovered: no record.
    recover(&svc, "k-rec").await;
    let r = request(addr, "GET", &claim_path, Some(&cookie), &[]).await;
    assert_eq!(r.status, 409, "{}", r.body);

    let audit = svc.audit_log().await;
    let owner_claims: Vec<bool> = audit
        .iter()
        .filter(|e| e.action.starts_with("claim_record") && e.actor.starts_with("owner:"))
        .map(|e| e.subject.contains("粤D7D002"))
        .collect();
    assert_eq!(owner_claims.len(), 3, "{audit:?}");
    assert_eq!(owner_claims.iter().filter(|o| **o).count(), 1);
    svc.stop().await;
}

/// The public key of a service's claim records.
async fn public_key(svc: &TestService) -> String {
    let (status, key) = get(
        &format!("http://{}/claims/public-key", svc.service.http_addr),
        None,
    )
    .await;
    assert_eq!(status, 200);
    key["public_key"].as_str().unwrap().to_owned()
}

/// A data directory that an earlier version left a `claims.key` in: its key is taken into
/// the database and kept across restarts, so insurers' copies of the public key stay good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_claims_key_file_is_taken_over_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let secret = [7u8; 32];
    std::fs::write(dir.path().join("claims.key"), hex::encode(secret)).unwrap();
    let expected = hex::encode(
        ed25519_dalek::SigningKey::from_bytes(&secret)
            .verifying_key()
            .to_bytes(),
    );
    let svc = TestService::start_in(dir).await;
    assert_eq!(public_key(&svc).await, expected);
    let dir = svc.stop().await;
    // The file is not needed any more: the database holds the key.
    std::fs::remove_file(dir.path().join("claims.key")).unwrap();
    let svc = TestService::start_in(dir).await;
    assert_eq!(public_key(&svc).await, expected);
    svc.stop().await;
}

/// Two nodes on one PostgreSQL, neither configured with a key, sign with the same one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (GREENPLATE_TEST_PG)"]
async fn nodes_on_one_database_sign_with_one_key_on_postgres() {
    let a = TestService::start_postgres_configured(|c| {
        c.secret_key = Some(support::SHARED_KEY.into());
    })
    .await;
    let db = a.database_url.clone();
    let b = TestService::start_configured(move |c| {
        c.secret_key = Some(support::SHARED_KEY.into());
        c.database_url = db.clone();
    })
    .await;
    let key = public_key(&a).await;
    assert_eq!(key.len(), 64);
    assert_eq!(public_key(&b).await, key);
    b.stop().await;
    a.stop().await;
}
