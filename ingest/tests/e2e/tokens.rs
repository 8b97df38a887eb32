//! Issue #15, point 4: kiosk and patrol-unit tokens have a lifecycle. The admin revokes or
//! rotates them through gRPC; a revoked or expired token's calls fail, and what it opened
//! (alert streams, web sessions, the command center's live feed) ends within seconds, on
//! every node.

use crate::support;

use std::time::Duration;

use greenplate_proto::v1::{
    AddKioskRequest, GetBikeRequest, RevokeTokenRequest, RotateTokenRequest, TokenHolder,
    get_bike_request,
};
use greenplate_registry::testing::eventually;
use greenplate_simulator::clients;
use support::web::{request, sign_in};
use support::{SHARED_KEY, TestService, new_unit_token, stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

fn get_bike() -> GetBikeRequest {
    GetBikeRequest {
        key: Some(get_bike_request::Key::Plate("潮阳A00001".into())),
        ..Default::default()
    }
}

/// The code of a call's failure (NOT_FOUND means the token was taken and the bike is not
/// there; UNAUTHENTICATED that the token was refused).
async fn get_bike_code(svc: &TestService, token: &str) -> Code {
    match clients::registry(svc.channel().await, token)
        .unwrap()
        .get_bike(get_bike())
        .await
    {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

/// Opens the command center's live feed with a session cookie; returns the socket.
async fn open_feed(svc: &TestService, cookie: &str) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(svc.service.http_addr)
        .await
        .unwrap();
    s.write_all(
        format!("GET /command/events HTTP/1.0\r\nHost: test\r\nCookie: {cookie}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    s
}

/// Reads a live feed until `text` has come; returns what came.
async fn feed_until(s: &mut tokio::net::TcpStream, text: &str, within: Duration) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        while !String::from_utf8_lossy(&got).contains(text) {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "the live feed ended before {text:?}");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {text:?} on the live feed within {within:?}"));
    String::from_utf8_lossy(&got).into_owned()
}

/// Reads a live feed to its end; fails if it does not end within `within`.
async fn feed_ends(mut s: tokio::net::TcpStream, within: Duration) -> String {
    let mut got = Vec::new();
    tokio::time::timeout(within, s.read_to_end(&mut got))
        .await
        .expect("the live feed did not end")
        .unwrap();
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_unit_token_ends_its_calls_its_stream_and_its_web_session() {
    let svc = TestService::start().await;
    let hq_token = new_unit_token(svc.channel().await, "hq", &[], true).await;
    let other_token = new_unit_token(svc.channel().await, "hq-2", &[], true).await;
    let hq = clients::patrol(svc.channel().await, &hq_token).unwrap();
    let other = clients::patrol(svc.channel().await, &other_token).unwrap();
    let mut hq_stream = stream(&hq, 0).await;
    let mut other_stream = stream(&other, 0).await;
    let cookie = sign_in(svc.service.http_addr, "command", &hq_token).await;
    let mut feed = open_feed(&svc, &cookie).await;
    // The feed is live (its first status came) before the token is revoked.
    feed_until(&mut feed, "event: status", Duration::from_secs(10)).await;

    let revoked = svc
        .admin()
        .await
        .revoke_token(RevokeTokenRequest {
            holder: TokenHolder::PatrolUnit as i32,
            holder_id: "hq".into(),
            reason: "phone lost, case 2026-117".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.revoked, 1);

    // The open stream ends with UNAUTHENTICATED.
    let end = tokio::time::timeout(Duration::from_secs(5), hq_stream.message())
        .await
        .expect("the revoked unit's stream did not end within 5 s");
    assert_eq!(end.unwrap_err().code(), Code::Unauthenticated);
    // New calls are refused; the web session is gone and its live feed ended.
    let err = stream_alerts_code(&hq).await;
    assert_eq!(err, Code::Unauthenticated);
    // It ends (read to its end within the time), having been live before.
    feed_ends(feed, Duration::from_secs(10)).await;
    let page = request(svc.service.http_addr, "GET", "/command", Some(&cookie), &[]).await;
    assert!(page.body.contains("/command/login"), "{}", page.body);
    let again = request(
        svc.service.http_addr,
        "POST",
        "/command/login",
        None,
        &[("token", hq_token.as_str())],
    )
    .await;
    assert_eq!(again.status, 401);

    // Another unit's stream is untouched: still open, with nothing to say.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), other_stream.message())
            .await
            .is_err(),
        "the other unit's stream ended or failed"
    );
    // Audited, with the reason.
    let audit = svc.audit_log().await;
    assert!(
        audit.iter().any(|e| e.action == "revoke_token"
            && e.actor == "admin:admin"
            && e.subject == "unit:hq (phone lost, case 2026-117)"),
        "{audit:?}"
    );
    svc.stop().await;
}

async fn stream_alerts_code(
    unit: &greenplate_proto::v1::patrol_client::PatrolClient<clients::Authed>,
) -> Code {
    match unit
        .clone()
        .stream_alerts(greenplate_proto::v1::StreamAlertsRequest { resume_after: 0 })
        .await
    {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_a_kiosk_token_ends_the_old_one_and_an_expiring_token_ends_by_itself() {
    let svc = TestService::start().await;
    let old = svc
        .admin()
        .await
        .add_kiosk(AddKioskRequest {
            kiosk_id: "k-1".into(),
            name: "Kiosk 1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(old.expires_at_ms, 0);
    assert_eq!(get_bike_code(&svc, &old.token).await, Code::NotFound);
    let cookie = sign_in(svc.service.http_addr, "kiosk", &old.token).await;

    let rotated = svc
        .admin()
        .await
        .rotate_token(RotateTokenRequest {
            holder: TokenHolder::Kiosk as i32,
            holder_id: "k-1".into(),
            reason: String::new(),
            ttl_s: 2,
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(rotated.token, old.token);
    let now = greenplate_registry::now_ms();
    assert!(
        (now..=now + 2_000).contains(&rotated.expires_at_ms),
        "{}",
        rotated.expires_at_ms
    );
    assert_eq!(get_bike_code(&svc, &old.token).await, Code::Unauthenticated);
    assert_eq!(get_bike_code(&svc, &rotated.token).await, Code::NotFound);
    let page = request(svc.service.http_addr, "GET", "/kiosk", Some(&cookie), &[]).await;
    assert!(page.body.contains("/kiosk/login"), "{}", page.body);

    // The new token expires after its 2 s, by itself.
    eventually(
        "the rotated token expired",
        Duration::from_secs(10),
        || async {
            match get_bike_code(&svc, &rotated.token).await {
                Code::Unauthenticated => Ok(()),
                c => Err(c),
            }
        },
    )
    .await;

    // A holder that does not exist cannot be rotated; an unnamed holder is refused.
    let admin = svc.admin().await;
    let missing = admin
        .clone()
        .rotate_token(RotateTokenRequest {
            holder: TokenHolder::Kiosk as i32,
            holder_id: "k-nobody".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let unnamed = admin
        .clone()
        .revoke_token(RevokeTokenRequest {
            holder_id: "k-1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unnamed.code(), Code::InvalidArgument);
    // Only the admin may revoke.
    let token = support::new_kiosk_token(svc.channel().await, "k-3").await;
    let as_kiosk = clients::admin(svc.channel().await, &token)
        .unwrap()
        .revoke_token(RevokeTokenRequest {
            holder: TokenHolder::Kiosk as i32,
            holder_id: "k-1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(as_kiosk.code(), Code::PermissionDenied);
    svc.stop().await;
}

/// Two nodes on one PostgreSQL: a token revoked through node A is refused by node B within
/// a second, and the stream it holds on node B ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (GREENPLATE_TEST_PG)"]
async fn a_revocation_on_one_node_ends_the_token_on_the_other() {
    let a =
        TestService::start_postgres_configured(|c| c.secret_key = Some(SHARED_KEY.into())).await;
    let db = a.database_url.clone();
    let b = TestService::start_configured(move |c| {
        c.database_url = db.clone();
        c.secret_key = Some(SHARED_KEY.into());
    })
    .await;
    let token = new_unit_token(a.channel().await, "hq", &[], true).await;
    // Node B learns the new token from the change feed.
    let on_b = clients::patrol(b.channel().await, &token).unwrap();
    eventually(
        "node B takes the new token",
        Duration::from_secs(10),
        || async {
            match stream_alerts_code(&on_b).await {
                Code::Ok => Ok(()),
                c => Err(c),
            }
        },
    )
    .await;
    let mut b_stream = stream(&on_b, 0).await;

    a.admin()
        .await
        .revoke_token(RevokeTokenRequest {
            holder: TokenHolder::PatrolUnit as i32,
            holder_id: "hq".into(),
            reason: String::new(),
        })
        .await
        .unwrap();
    let revoked_at = std::time::Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(5), b_stream.message())
        .await
        .expect("node B's stream did not end within 5 s");
    assert_eq!(end.unwrap_err().code(), Code::Unauthenticated);
    eprintln!(
        "node B ended the revoked token's stream {:?} after the revocation on node A",
        revoked_at.elapsed()
    );
    assert_eq!(stream_alerts_code(&on_b).await, Code::Unauthenticated);
    b.stop().await;
    a.stop().await;
}
