//! The web pages over plain HTTP (no browser): sign-in by role, session cookies, CSRF
//! refusals, sign-out, field errors, masking and escaping. The browser tests are in
//! `web.rs`.

use crate::support;

use std::net::SocketAddr;

use support::web::{enc, request, sign_in};
use support::{TestService, new_kiosk_token, new_unit_token};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The CSRF token in a page's forms.
fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token");
    let rest = &page[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

fn registration<'a>(csrf: &'a str, id_number: &'a str, make: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("csrf", csrf),
        ("request_id", "web-test-1"),
        ("owner.name", "黄敏"),
        ("owner.id_number", id_number),
        ("owner.phone", "13712345678"),
        ("plate", "潮阳A20001"),
        ("tag_id", "E28011606000020700000021"),
        ("bike.make", make),
        ("bike.model", "G5"),
        ("bike.color", "green"),
        ("bike.frame_number", "LYDG5RULES1"),
        ("pin", "2468"),
        ("pin_again", "2468"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kiosk_sessions_csrf_field_errors_and_masking() {
    let svc = TestService::start().await;
    let addr = svc.service.http_addr;
    let kiosk = new_kiosk_token(svc.channel().await, "k-web").await;
    let patrol = new_unit_token(svc.channel().await, "u-1", &[], false).await;

    // Signed out: the sign-in page; wrong tokens are refused.
    let r = request(addr, "GET", "/kiosk", None, &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("/kiosk/login"), "{}", r.body);
    assert!(r.header("content-security-policy").is_some());
    let r = request(addr, "POST", "/kiosk/login", None, &[("token", "nope")]).await;
    assert_eq!(r.status, 401);
    assert!(r.header("set-cookie").is_none());
    let r = request(addr, "POST", "/kiosk/login", None, &[("token", &patrol)]).await;
    assert_eq!(r.status, 403);

    let cookie = sign_in(addr, "kiosk", &kiosk).await;
    let home = request(addr, "GET", "/kiosk", Some(&cookie), &[]).await;
    assert_eq!(home.status, 200);
    let csrf = csrf_of(&home.body);

    // Without the form's CSRF token, or with another, nothing happens.
    for bad in ["", "0123456789abcdef0123456789abcdef"] {
        let r = request(
            addr,
            "POST",
            "/kiosk/register",
            Some(&cookie),
            &registration(bad, "11010519491231002X", "Yadea"),
        )
        .await;
        assert_eq!(r.status, 403, "csrf {bad:?}: {}", r.body);
    }
    let r = request(
        addr,
        "GET",
        &format!("/kiosk/bike?q={}", enc("潮阳A20001")),
        Some(&cookie),
        &[],
    )
    .await;
    assert_eq!(r.status, 404, "registered without a CSRF token");

    // A bad ID number is named at its field, in both languages; the other values stay.
    let r = request(
        addr,
        "POST",
        "/kiosk/register",
        Some(&cookie),
        &registration(&csrf, "110105194912310021", "Yadea"),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(
        r.body.contains("data-field=\"owner.id_number\""),
        "{}",
        r.body
    );
    assert!(r.body.contains("身份证号码无效"), "{}", r.body);
    assert!(r.body.contains("Invalid ID number"), "{}", r.body);
    assert!(r.body.contains("value=\"潮阳A20001\""), "{}", r.body);

    // A good registration (with markup in a field) redirects to the bike, shown masked and
    // escaped.
    let r = request(
        addr,
        "POST",
        "/kiosk/register",
        Some(&cookie),
        &registration(&csrf, "11010519491231002X", "<b>Yadea</b>"),
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let to = r.header("location").unwrap().to_owned();
    assert!(to.starts_with("/kiosk/bike?q="), "{to}");
    let bike = request(addr, "GET", &to, Some(&cookie), &[]).await;
    assert_eq!(bike.status, 200, "{}", bike.body);
    assert!(bike.body.contains("110***************"), "{}", bike.body);
    assert!(bike.body.contains("137****5678"), "{}", bike.body);
    assert!(bike.body.contains("黄*"), "{}", bike.body);
    assert!(!bike.body.contains("11010519491231002X"));
    assert!(
        bike.body.contains("&lt;b&gt;Yadea&lt;/b&gt;"),
        "{}",
        bike.body
    );
    assert!(!bike.body.contains("<b>Yadea"));
    // The same form submitted twice (slow connection) registers the bike once.
    let again = request(
        addr,
        "POST",
        "/kiosk/register",
        Some(&cookie),
        &registration(&csrf, "11010519491231002X", "<b>Yadea</b>"),
    )
    .await;
    assert_eq!(again.status, 303, "{}", again.body);

    // A wrong PIN is refused at the PIN field.
    let r = request(
        addr,
        "POST",
        "/kiosk/bike/arm",
        Some(&cookie),
        &[("csrf", &csrf), ("plate", "潮阳A20001"), ("pin", "1111")],
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("data-field=\"pin\""), "{}", r.body);
    let r = request(
        addr,
        "POST",
        "/kiosk/bike/arm",
        Some(&cookie),
        &[("csrf", &csrf), ("plate", "潮阳A20001"), ("pin", "2468")],
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.body);

    // Replace the tag: a malformed one is named at its field; then the bike is found by its
    // new tag.
    let plate = [("csrf", csrf.as_str()), ("plate", "潮阳A20001")];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut f: Vec<(&str, &str)> = plate.to_vec();
        f.extend_from_slice(extra);
        f
    };
    let r = request(
        addr,
        "POST",
        "/kiosk/bike/replace-tag",
        Some(&cookie),
        &with(&[("new_tag_id", "E2801160")]),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("data-field=\"new_tag_id\""), "{}", r.body);
    assert!(r.body.contains("电子标签号无效"), "{}", r.body);
    // The owner's PIN is asked for (#15, point 5): a wrong one is refused at its field,
    // and the old tag stays.
    let r = request(
        addr,
        "POST",
        "/kiosk/bike/replace-tag",
        Some(&cookie),
        &with(&[("new_tag_id", "E28011606000020700000022"), ("pin", "1111")]),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("data-field=\"pin\""), "{}", r.body);
    assert!(r.body.contains("id=\"replace-tag-pin\""), "{}", r.body);
    let r = request(
        addr,
        "POST",
        "/kiosk/bike/replace-tag",
        Some(&cookie),
        &with(&[("new_tag_id", "E28011606000020700000022"), ("pin", "2468")]),
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let r = request(
        addr,
        "GET",
        "/kiosk/bike?q=E28011606000020700000022",
        Some(&cookie),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("潮阳A20001"), "{}", r.body);

    // Transfer: the current owner's PIN authorises it; the new owner shows, masked.
    let new_owner: [(&'static str, &'static str); 4] = [
        ("new_owner.name", "陈小华"),
        ("new_owner.id_number", "440513199001011230"),
        ("new_owner.phone", "13812345678"),
        ("new_pin", "97531"),
    ];
    let mut wrong = with(&new_owner);
    wrong.push(("pin", "0000"));
    let r = request(addr, "POST", "/kiosk/bike/transfer", Some(&cookie), &wrong).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("密码不对"), "{}", r.body);
    let mut right = with(&new_owner);
    right.push(("pin", "2468"));
    let r = request(addr, "POST", "/kiosk/bike/transfer", Some(&cookie), &right).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let r = request(
        addr,
        "GET",
        r.header("location").unwrap(),
        Some(&cookie),
        &[],
    )
    .await;
    assert!(r.body.contains("440***************"), "{}", r.body);
    assert!(r.body.contains("陈**"), "{}", r.body);
    assert!(r.body.contains("Ownership transferred"), "{}", r.body);

    // Stolen, then recovered: a recovery needs the (new) owner's PIN; the form asks for it,
    // and without it or with a wrong one the bike stays stolen.
    let r = request(
        addr,
        "POST",
        "/kiosk/bike/stolen",
        Some(&cookie),
        &with(&[]),
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let page = request(
        addr,
        "GET",
        r.header("location").unwrap(),
        Some(&cookie),
        &[],
    )
    .await;
    assert!(page.body.contains("id=\"recovered-pin\""), "{}", page.body);
    for (pin, status) in [("", 422), ("2468", 403)] {
        let r = request(
            addr,
            "POST",
            "/kiosk/bike/recovered",
            Some(&cookie),
            &with(&[("pin", pin)]),
        )
        .await;
        assert_eq!(r.status, status, "recovered with PIN {pin:?}: {}", r.body);
        assert!(r.body.contains("data-field=\"pin\""), "{}", r.body);
        assert!(r.body.contains("badge stolen"), "still stolen: {}", r.body);
    }
    for (action, shown) in [
        ("stolen", "Reported stolen"),
        ("recovered", "Recorded as recovered"),
    ] {
        let r = request(
            addr,
            "POST",
            &format!("/kiosk/bike/{action}"),
            Some(&cookie),
            &with(&[("pin", "97531")]),
        )
        .await;
        assert_eq!(r.status, 303, "{action}: {}", r.body);
        let r = request(
            addr,
            "GET",
            r.header("location").unwrap(),
            Some(&cookie),
            &[],
        )
        .await;
        assert!(r.body.contains(shown), "{}", r.body);
    }
    let r = request(
        addr,
        "POST",
        "/kiosk/bike/recovered",
        Some(&cookie),
        &with(&[("pin", "97531")]),
    )
    .await;
    assert_eq!(r.status, 409, "recovering a bike not stolen: {}", r.body);
    assert!(r.body.contains("该车没有被盗报案"), "{}", r.body);

    // Sign-out ends the session: the cookie no longer works.
    let r = request(
        addr,
        "POST",
        "/kiosk/logout",
        Some(&cookie),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(r.status, 303);
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
    let r = request(
        addr,
        "GET",
        &format!("/kiosk/bike?q={}", enc("潮阳A20001")),
        Some(&cookie),
        &[],
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let r = request(
        addr,
        "POST",
        "/kiosk/bike/stolen",
        Some(&cookie),
        &[("csrf", &csrf), ("plate", "潮阳A20001")],
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.body);

    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_center_takes_command_center_units_only() {
    let svc = TestService::start().await;
    let addr = svc.service.http_addr;
    let kiosk = new_kiosk_token(svc.channel().await, "k-web").await;
    let patrol = new_unit_token(svc.channel().await, "u-1", &[], false).await;
    let hq = new_unit_token(svc.channel().await, "hq", &[], true).await;

    for (token, status) in [("nope", 401), (kiosk.as_str(), 403), (patrol.as_str(), 403)] {
        let r = request(addr, "POST", "/command/login", None, &[("token", token)]).await;
        assert_eq!(r.status, status, "{}", r.body);
    }
    let r = request(addr, "GET", "/command/events", None, &[]).await;
    assert_eq!(r.status, 401);

    let cookie = sign_in(addr, "command", &hq).await;
    // A kiosk cookie is no use here, nor this one at the kiosk.
    let r = request(
        addr,
        "GET",
        "/kiosk/bike?q=x",
        Some(&cookie.replace("gp_command", "gp_kiosk")),
        &[],
    )
    .await;
    assert_eq!(r.status, 303);
    let page = request(addr, "GET", "/command", Some(&cookie), &[]).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("data-after=\"0\""), "{}", page.body);
    assert!(page.body.contains("<svg"), "{}", page.body);
    let csrf = csrf_of(&page.body);
    let r = request(
        addr,
        "POST",
        "/command/incident",
        Some(&cookie),
        &[("incident_id", "inc-1"), ("action", "ack")],
    )
    .await;
    assert_eq!(r.status, 403);
    let r = request(
        addr,
        "POST",
        "/command/incident",
        Some(&cookie),
        &[
            ("csrf", &csrf),
            ("incident_id", "inc-none"),
            ("action", "ack"),
        ],
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.body);
    // A track of a bike that does not exist is an answer on the page, not a failure.
    let r = request(
        addr,
        "GET",
        &format!("/command?track={}", enc("潮阳A99999")),
        Some(&cookie),
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("未找到"), "{}", r.body);

    svc.stop().await;
}

/// A stolen bike seen by a reader shows on the command-center page, with the live stream's
/// resume point after its alert, and leaves it once resolved.
async fn incident_list_shows_open_incidents(svc: TestService) {
    let addr = svc.service.http_addr;
    let hq = new_unit_token(svc.channel().await, "hq", &[], true).await;
    let hq_stream = svc.add_unit("hq-2", &[], true).await;
    let mut alerts = support::stream(&hq_stream, 0).await;
    let secret = svc.add_reader("rd-1", 23.26, 116.58).await;
    support::register_stolen(&svc, "E28011606000020700000041", "潮阳C40001").await;
    // Reported and not seen yet: no alert, so it waits in its own list (once the report's
    // look-back has opened its incident).
    let cookie = sign_in(addr, "command", &hq).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let waiting = loop {
        let page = request(addr, "GET", "/command", Some(&cookie), &[]).await;
        if let Some((_, w)) = page.body.split_once("id=\"waiting\"") {
            break w.split_once("</table>").unwrap().0.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no waiting list: {}",
            page.body
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(waiting.contains("潮阳C40001"), "{waiting}");
    let mut reader = greenplate_simulator::reader::ReaderClient::connect(
        "127.0.0.1",
        svc.mqtt_port(),
        "rd-1",
        &secret,
    )
    .await
    .unwrap();
    reader
        .publish(vec![greenplate_simulator::reader::sighting(
            "E28011606000020700000041",
            3,
            -50,
        )])
        .await
        .unwrap();
    let alert = support::next_alert(&mut alerts).await;

    let page = request(addr, "GET", "/command", Some(&cookie), &[]).await;
    assert_eq!(page.status, 200);
    // Seen: an incident row now, and nothing waits.
    assert!(!page.body.contains("id=\"waiting\""), "{}", page.body);
    assert!(
        page.body
            .contains(&format!("data-incident=\"{}\"", alert.incident_id)),
        "{}",
        page.body
    );
    assert!(page.body.contains("潮阳C40001"), "{}", page.body);
    assert!(
        page.body.contains(&format!("data-after=\"{}\"", alert.seq)),
        "{}",
        page.body
    );
    // The live stream resumes after the browser's Last-Event-ID (over the page's `after`):
    // after seq - 1 it sends the alert, with its seq as the event id.
    let events = first_alert_event(
        addr,
        &cookie,
        &format!("/command/events?after={}", alert.seq + 100),
        alert.seq - 1,
    )
    .await;
    assert!(events.contains(&format!("id: {}", alert.seq)), "{events}");
    assert!(events.contains(&alert.incident_id), "{events}");
    assert!(events.contains("潮阳C40001"), "{events}");

    let csrf = csrf_of(&page.body);
    let r = request(
        addr,
        "POST",
        "/command/incident",
        Some(&cookie),
        &[
            ("csrf", &csrf),
            ("incident_id", &alert.incident_id),
            ("action", "resolve"),
            ("outcome", "false_alarm"),
        ],
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let page = request(addr, "GET", "/command", Some(&cookie), &[]).await;
    assert!(
        !page
            .body
            .contains(&format!("data-incident=\"{}\"", alert.incident_id)),
        "resolved incident still listed"
    );
    // A page drawn before that learns it from the live stream's status.
    let resolved = format!(
        "{{\"id\":\"{}\",\"state\":\"resolved\"}}",
        alert.incident_id
    );
    read_events_until(addr, &cookie, "/command/events?after=0", 0, &resolved).await;
    reader.disconnect().await;
    svc.stop().await;
}

/// Opens the event stream with a Last-Event-ID and reads it up to the first alert event
/// (or fails after a deadline).
async fn first_alert_event(
    addr: SocketAddr,
    cookie: &str,
    path: &str,
    last_event_id: u64,
) -> String {
    read_events_until(addr, cookie, path, last_event_id, "event: alert").await
}

/// Opens the event stream with a Last-Event-ID and reads it up to the end of the first event
/// that contains `needle` (or fails after a deadline).
async fn read_events_until(
    addr: SocketAddr,
    cookie: &str,
    path: &str,
    last_event_id: u64,
    needle: &str,
) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "GET {path} HTTP/1.0\r\nHost: test\r\nCookie: {cookie}\r\n\
             Accept: text/event-stream\r\nLast-Event-ID: {last_event_id}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(at) = text.find(needle)
            && text[at..].contains("\n\n")
        {
            return text;
        }
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} within 10 s; got:\n{text}"))
            .unwrap();
        assert!(n > 0, "stream ended before {needle:?}; got:\n{text}");
        got.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incident_list_on_sqlite() {
    incident_list_shows_open_incidents(TestService::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (GREENPLATE_TEST_PG)"]
async fn incident_list_on_postgres() {
    incident_list_shows_open_incidents(TestService::start_postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_from_another_site_is_refused() {
    let svc = TestService::start().await;
    let addr = svc.service.http_addr;
    let kiosk = new_kiosk_token(svc.channel().await, "k-web").await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = format!("token={kiosk}");
    s.write_all(
        format!(
            "POST /kiosk/login HTTP/1.0\r\nHost: {addr}\r\nOrigin: http://evil.example\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    assert!(
        buf.starts_with("HTTP/1.0 403") || buf.starts_with("HTTP/1.1 403"),
        "{buf}"
    );
    assert!(!buf.to_ascii_lowercase().contains("set-cookie"), "{buf}");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_expires_and_its_live_stream_ends() {
    let svc = TestService::start_configured(|c| c.http.session_idle_s = 1).await;
    let addr = svc.service.http_addr;
    let hq = new_unit_token(svc.channel().await, "hq", &[], true).await;
    let cookie = sign_in(addr, "command", &hq).await;
    // The live stream does not count as use: it ends once the session has been idle for
    // its second (the server checks every 2 s), well within the deadline.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET /command/events HTTP/1.0\r\nHost: test\r\nCookie: {cookie}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(15), s.read_to_end(&mut got))
        .await
        .expect("the stream did not end within 15 s of an idle session")
        .unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.0 200"),
        "{text}"
    );
    assert!(text.contains("event: status"), "{text}");
    // The session is gone: the page asks to sign in again, a form post is refused.
    let page = request(addr, "GET", "/command", Some(&cookie), &[]).await;
    assert!(page.body.contains("/command/login"), "{}", page.body);
    let r = request(
        addr,
        "POST",
        "/command/incident",
        Some(&cookie),
        &[("csrf", "x"), ("incident_id", "i"), ("action", "ack")],
    )
    .await;
    assert_eq!(r.status, 401);
    let r = request(addr, "GET", "/command/events", Some(&cookie), &[]).await;
    assert_eq!(r.status, 401);
    svc.stop().await;
}

/// A kiosk signed in on the web, with one bike (潮阳A20001) registered through its form;
/// returns its session cookie and the session's CSRF token.
async fn kiosk_with_a_bike(svc: &TestService, kiosk_id: &str) -> (String, String) {
    let addr = svc.service.http_addr;
    let kiosk = new_kiosk_token(svc.channel().await, kiosk_id).await;
    let cookie = sign_in(addr, "kiosk", &kiosk).await;
    let csrf = csrf_of(
        &request(addr, "GET", "/kiosk", Some(&cookie), &[])
            .await
            .body,
    );
    let r = request(
        addr,
        "POST",
        "/kiosk/register",
        Some(&cookie),
        &registration(&csrf, "11010519491231002X", "Yadea"),
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.body);
    (cookie, csrf)
}

/// Every POST of both apps needs the session's CSRF token, the bike actions and sign-out too,
/// not only registration and incidents; a refused post changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_post_needs_the_sessions_csrf_token() {
    let svc = TestService::start().await;
    let addr = svc.service.http_addr;
    let (cookie, csrf) = kiosk_with_a_bike(&svc, "k-csrf").await;

    let plate = "潮阳A20001";
    for action in [
        "stolen",
        "recovered",
        "arm",
        "disarm",
        "transfer",
        "replace-tag",
    ] {
        for bad in ["", "0123456789abcdef0123456789abcdef"] {
            let r = request(
                addr,
                "POST",
                &format!("/kiosk/bike/{action}"),
                Some(&cookie),
                &[("csrf", bad), ("plate", plate), ("pin", "2468")],
            )
            .await;
            assert_eq!(r.status, 403, "{action} with csrf {bad:?}: {}", r.body);
        }
    }
    // None of them went through: the bike was not reported stolen...
    let r = request(
        addr,
        "POST",
        "/kiosk/bike/recovered",
        Some(&cookie),
        &[("csrf", &csrf), ("plate", plate), ("pin", "2468")],
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("该车没有被盗报案"), "{}", r.body);
    // ...and the right token does work (the positive control).
    let r = request(
        addr,
        "POST",
        "/kiosk/bike/stolen",
        Some(&cookie),
        &[("csrf", &csrf), ("plate", plate)],
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.body);

    // Sign-out without the token: refused, and still signed in.
    for area in ["kiosk", "command"] {
        let cookie = match area {
            "kiosk" => cookie.clone(),
            _ => {
                let unit = new_unit_token(svc.channel().await, "cc-csrf", &[], true).await;
                sign_in(addr, "command", &unit).await
            }
        };
        let r = request(
            addr,
            "POST",
            &format!("/{area}/logout"),
            Some(&cookie),
            &[("csrf", "0123456789abcdef0123456789abcdef")],
        )
        .await;
        assert_eq!(r.status, 403, "{area} sign-out: {}", r.body);
        let page = request(addr, "GET", &format!("/{area}"), Some(&cookie), &[]).await;
        assert!(
            !page.body.contains(&format!("/{area}/login")),
            "{area}: signed out by a post without the token"
        );
    }
    svc.stop().await;
}

/// "Every change is in the audit log": the web kiosk's too, under the kiosk's name, as gRPC's
/// Admin/ListAudit shows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_kiosks_changes_are_in_the_audit_log() {
    let svc = TestService::start().await;
    let addr = svc.service.http_addr;
    let (cookie, csrf) = kiosk_with_a_bike(&svc, "k-web-audit").await;
    let plate = [("csrf", csrf.as_str()), ("plate", "潮阳A20001")];
    for (action, extra) in [
        ("stolen", None),
        ("recovered", Some(("pin", "2468"))),
        ("arm", Some(("pin", "2468"))),
        ("disarm", Some(("pin", "2468"))),
    ] {
        let mut form = plate.to_vec();
        form.extend(extra);
        let r = request(
            addr,
            "POST",
            &format!("/kiosk/bike/{action}"),
            Some(&cookie),
            &form,
        )
        .await;
        assert_eq!(r.status, 303, "{action}: {}", r.body);
    }
    let entries = svc
        .admin()
        .await
        .list_audit(greenplate_proto::v1::ListAuditRequest {
            after_id: 0,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    // The changes, in order (a page that shows a bike is audited too, as `get_bike`; the
    // lookup audit is tested in registry_api.rs).
    let by_kiosk: Vec<&str> = entries
        .iter()
        .filter(|e| e.actor == "kiosk:k-web-audit" && e.action != "get_bike")
        .map(|e| e.action.as_str())
        .collect();

    assert_eq!(
        by_kiosk,
        [
            "register_bike",
            "report_stolen",
            "report_recovered",
            "arm",
            "disarm"
        ],
        "{entries:#?}"
    );
    svc.stop().await;
}
