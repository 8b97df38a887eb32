//! Issue #15, point 7: bounded resources on the HTTP and gRPC ports. Each limit is hit
//! through the real interface, and counted.

use crate::support;

use std::net::SocketAddr;
use std::time::Duration;

use greenplate_proto::v1::StreamAlertsRequest;
use greenplate_simulator::clients;
use support::web::{enc, sign_in};
use support::{TestService, new_unit_token};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A sign-in POST from client address `from` (any 127.x.y.z is this machine); the status.
async fn sign_in_from(from: &str, addr: SocketAddr, area: &str, token: &str) -> u16 {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    let body = format!("token={}", enc(token));
    s.write_all(
        format!(
            "POST /{area}/login HTTP/1.0\r\nHost: test\r\nContent-Type: \
             application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    String::from_utf8_lossy(&got)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_or_idle_http_connection_is_closed_and_counted() {
    let svc = TestService::start_configured(|c| c.http.header_timeout_s = 1).await;
    let addr = svc.service.http_addr;
    let closed = "greenplate_http_connections_closed_total{reason=\"header_timeout\"}";
    assert_eq!(svc.metric(closed).await, 0.0);
    // Half a request's headers, then nothing.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut got))
        .await
        .expect("a client that never finished its headers kept its connection")
        .ok();
    svc.wait_metric(closed, 1.0).await;
    // A whole request on a keep-alive connection, answered, then silence.
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut got))
        .await
        .expect("an idle keep-alive connection was kept")
        .ok();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("ok\n"), "{text}");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ins_are_limited_per_client_and_per_token_and_cannot_evict_others() {
    let svc = TestService::start().await;
    let addr = svc.service.http_addr;
    let hq = new_unit_token(svc.channel().await, "hq", &[], true).await;
    let other = new_unit_token(svc.channel().await, "hq-2", &[], true).await;
    let outcome = |o: &str| format!("greenplate_web_sign_ins_total{{outcome=\"{o}\"}}");
    assert_eq!(svc.metric(&outcome("rate_limited")).await, 0.0);

    // One client guessing: 10 wrong tokens a minute, then 429 even for a good one.
    for k in 0..10 {
        let status = sign_in_from("127.0.0.2", addr, "command", &format!("guess-{k}")).await;
        assert_eq!(status, 401);
    }
    assert_eq!(sign_in_from("127.0.0.2", addr, "command", &hq).await, 429);
    assert_eq!(svc.metric(&outcome("unknown_token")).await, 10.0);
    assert_eq!(svc.metric(&outcome("rate_limited")).await, 1.0);
    // One token guessed from many clients: 10 a minute, then 429 from a fresh client too.
    for k in 0..10 {
        let from = format!("127.0.1.{}", k + 1);
        assert_eq!(sign_in_from(&from, addr, "command", "guessed").await, 401);
    }
    assert_eq!(
        sign_in_from("127.0.2.1", addr, "command", "guessed").await,
        429
    );
    // ...while that client may still sign in with another token.
    assert_eq!(
        sign_in_from("127.0.2.1", addr, "command", &other).await,
        303
    );

    // A token's repeated sign-ins end its own oldest sessions, never another token's.
    let others = sign_in(addr, "command", &other).await;
    let first = sign_in(addr, "command", &hq).await;
    for _ in 0..8 {
        sign_in(addr, "command", &hq).await;
    }
    let page = |cookie: String| async move {
        support::web::request(addr, "GET", "/command", Some(&cookie), &[])
            .await
            .body
    };
    assert!(!page(others).await.contains("/command/login"));
    assert!(page(first).await.contains("/command/login"));
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_holds_at_most_four_live_feeds() {
    let svc = TestService::start().await;
    let addr = svc.service.http_addr;
    let hq = new_unit_token(svc.channel().await, "hq", &[], true).await;
    let cookie = sign_in(addr, "command", &hq).await;
    let open = || async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET /command/events HTTP/1.0\r\nHost: test\r\nCookie: {cookie}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.unwrap();
        (String::from_utf8_lossy(&head).into_owned(), s)
    };
    let mut feeds = Vec::new();
    for _ in 0..4 {
        let (head, s) = open().await;
        assert!(head.ends_with(" 200"), "{head}");
        feeds.push(s);
    }
    let (head, _) = open().await;
    assert!(head.ends_with(" 429"), "{head}");
    assert_eq!(
        svc.metric("greenplate_web_live_feeds_refused_total").await,
        1.0
    );
    // Closing one gives its place back.
    drop(feeds.pop());
    greenplate_registry::testing::eventually(
        "a feed's place back",
        Duration::from_secs(10),
        || {
            let open = &open;
            async move {
                match open().await {
                    (h, s) if h.ends_with(" 200") => {
                        drop(s);
                        Ok(())
                    }
                    (h, _) => Err(h),
                }
            }
        },
    )
    .await;
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_grpc_connection_holds_a_bounded_number_of_calls() {
    let svc = TestService::start_configured(|c| {
        c.grpc.max_concurrent_streams = 2;
    })
    .await;
    let token = new_unit_token(svc.channel().await, "hq", &[], true).await;
    // One connection, three clients on it.
    let channel = svc.channel().await;
    let unit = clients::patrol(channel, &token).unwrap();
    let req = || StreamAlertsRequest { resume_after: 0 };
    let a = unit.clone().stream_alerts(req()).await.unwrap();
    let b = unit.clone().stream_alerts(req()).await.unwrap();
    // The third waits for one of the two to end (HTTP/2 flow control, not an error).
    let mut third_client = unit.clone();
    let mut third = Box::pin(third_client.stream_alerts(req()));
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut third)
            .await
            .is_err(),
        "a third concurrent call on one connection went through"
    );
    drop(a);
    let c = tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("the third call did not start once one ended");
    assert!(c.is_ok());
    drop(b);
    svc.stop().await;
}
