//! The web pages in a real browser: headless Chromium driven over WebDriver (fantoccini)
//! against the real service. A kiosk registers a bike through the form (a bad ID number is
//! refused at its field first) and reports it stolen; a reader publishes a sighting through
//! MQTT; the incident appears on the command-center page without a reload.
//!
//! The police workflow on the command center: a watch list kept through its page, alarms
//! of a distinct sound per priority, escalations and rejected hits in their panel, an
//! incident's history with its reader's cameras, stakeout and companion searches.
//!
//! Needs Debian's `chromium` and `chromium-driver` (override the paths with `CHROMEDRIVER`
//! and `CHROME`). Screenshots of both pages at 1280x800 go to `target/screenshots/`.

use crate::support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fantoccini::{Client, ClientBuilder, Locator};
use greenplate_proto::v1::{AddZoneRequest, Outcome, ResolveIncidentRequest};
use greenplate_simulator::reader::{ReaderClient, sighting};
use support::{TestService, new_kiosk_token, new_unit_token};
use tokio::process::{Child, Command};

const ZONE: &str = r#"{"type":"Polygon","coordinates":[[[116.50,23.20],[116.66,23.20],[116.66,23.32],[116.50,23.32],[116.50,23.20]]]}"#;
const TAG: &str = "E28011606000020700000031";
const PLATE: &str = "潮阳B30001";
/// How long any one thing may take to show in the browser.
const DEADLINE: Duration = Duration::from_secs(20);

/// chromedriver on a free port, and a headless Chromium session through it.
struct Browser {
    client: Client,
    driver: Child,
}

impl Browser {
    async fn start() -> anyhow::Result<Self> {
        Self::start_sized(1280, 800).await
    }

    /// A browser whose viewport is `width` x `height` CSS pixels (a phone: 390 x 844).
    async fn start_sized(width: u32, height: u32) -> anyhow::Result<Self> {
        let chromedriver =
            std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        let chrome = std::env::var("CHROME").unwrap_or_else(|_| "/usr/bin/chromium".into());
        // A missing program is a missing install, not a failure of the pages: say what to do.
        for program in [&chromedriver, &chrome] {
            if !std::path::Path::new(program).is_file() {
                bail!(
                    "{program} is not installed. This test needs Debian's Chromium and \
                     chromedriver: apt-get install chromium chromium-driver (.ci/test installs \
                     them), or set CHROME and CHROMEDRIVER, or leave the browser tests out \
                     (.ci/test --no-browser)."
                );
            }
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {chromedriver}"))?;
        // Ready when it accepts connections.
        let deadline = Instant::now() + DEADLINE;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if let Some(status) = driver.try_wait()? {
                bail!("{chromedriver} exited: {status}");
            }
            if Instant::now() > deadline {
                bail!("{chromedriver} did not listen on port {port} within {DEADLINE:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": chrome,
                "args": [
                    "--headless=new",
                    format!("--window-size={width},{height}"),
                    // Tests run as root in CI, where Chromium's sandbox cannot start.
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--disable-gpu",
                    "--lang=zh-CN",
                    // The alarms play without a click first (a duty officer's browser is
                    // set up so; the page offers a button otherwise), and silently here.
                    "--autoplay-policy=no-user-gesture-required",
                    "--mute-audio",
                ],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .context("opening a WebDriver session")?;
        // A viewport of width x height: the window plus whatever the browser keeps around it.
        let frame = client
            .execute(
                "return [window.outerWidth - window.innerWidth, \
                         window.outerHeight - window.innerHeight];",
                vec![],
            )
            .await?;
        let extra = |i: usize| frame[i].as_u64().unwrap_or(0) as u32;
        client
            .set_window_size(width + extra(0), height + extra(1))
            .await?;
        Ok(Self { client, driver })
    }

    async fn stop(mut self) {
        let _ = self.client.close().await;
        let _ = self.driver.kill().await;
    }
}

/// The patrol zone "z-town" around the readers of these tests.
async fn add_town(svc: &TestService) -> anyhow::Result<()> {
    svc.admin()
        .await
        .add_zone(AddZoneRequest {
            zone_id: "z-town".into(),
            name: "Town".into(),
            geojson: ZONE.into(),
            ..Default::default()
        })
        .await?;
    Ok(())
}

/// Waits until an element matching `css` has text containing `text`; returns that text.
async fn wait_text(c: &Client, css: &str, text: &str) -> anyhow::Result<String> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        for e in c.find_all(Locator::Css(css)).await? {
            if let Ok(t) = e.text().await
                && t.contains(text)
            {
                return Ok(t);
            }
        }
        if Instant::now() > deadline {
            let url = c.current_url().await?;
            let source = c.source().await.unwrap_or_default();
            bail!(
                "no {css:?} with text {text:?} at {url} within {DEADLINE:?}; page:\n{}",
                &source[..source.len().min(4000)]
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Types into the input `#id`, replacing what it held.
async fn fill(c: &Client, id: &str, value: &str) -> anyhow::Result<()> {
    let e = c
        .find(Locator::Css(&format!("#{id}")))
        .await
        .with_context(|| format!("input #{id}"))?;
    e.clear().await?;
    e.send_keys(value).await?;
    Ok(())
}

async fn click(c: &Client, css: &str) -> anyhow::Result<()> {
    c.find(Locator::Css(css))
        .await
        .with_context(|| format!("element {css}"))?
        .click()
        .await?;
    Ok(())
}

/// Saves a screenshot under `target/screenshots/`.
async fn screenshot(c: &Client, name: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("screenshots");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(name);
    std::fs::write(&path, c.screenshot().await?)?;
    eprintln!("screenshot: {}", path.display());
    Ok(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium (chromium, chromium-driver)"]
async fn kiosk_registration_to_a_live_incident_in_a_real_browser() -> anyhow::Result<()> {
    // Passes close 300 ms after their last read, so the track shows within the test.
    let svc = TestService::start_configured(|c| c.ingest.pass_gap_ms = 300).await;
    let base = format!("http://{}", svc.service.http_addr);
    add_town(&svc).await?;
    let kiosk_token = new_kiosk_token(svc.channel().await, "k-town-hall").await;
    let hq_token = new_unit_token(svc.channel().await, "hq", &[], true).await;
    let secret = svc.add_reader("rd-gate", 23.26, 116.58).await;
    svc.add_reader("rd-bridge", 23.23, 116.53).await;

    let browser = Browser::start().await?;
    let c = &browser.client;

    // The kiosk: sign in, then register with a wrong ID number check digit.
    c.goto(&format!("{base}/kiosk")).await?;
    fill(c, "token", &kiosk_token).await?;
    click(c, "form button[type=submit]").await?;
    wait_text(c, "form.register h2", "Register a bike").await?;
    for (id, value) in [
        ("owner-name", "黄敏"),
        ("owner-id_number", "110105194912310021"),
        ("owner-phone", "13712345678"),
        ("plate", PLATE),
        ("tag_id", TAG),
        ("bike-make", "Yadea"),
        ("bike-model", "G5"),
        ("bike-color", "绿 green"),
        ("bike-frame_number", "LYDG5RULES1"),
        ("pin", "2468"),
        ("pin_again", "2468"),
    ] {
        fill(c, id, value).await?;
    }
    click(c, "form.register button.primary").await?;
    let error = wait_text(
        c,
        "p.error[data-field=\"owner.id_number\"]",
        "身份证号码无效",
    )
    .await?;
    assert!(error.contains("Invalid ID number"), "{error}");
    assert_eq!(
        c.find_all(Locator::Css("p.error")).await?.len(),
        1,
        "only the ID number is at fault"
    );
    screenshot(c, "kiosk.png").await?;

    // Corrected (the PINs are typed again: they are never sent back), it registers.
    fill(c, "owner-id_number", "11010519491231002X").await?;
    fill(c, "pin", "2468").await?;
    fill(c, "pin_again", "2468").await?;
    click(c, "form.register button.primary").await?;
    wait_text(c, "p.notice", "Registered").await?;
    let card = wait_text(c, "#bike", "110***************").await?;
    assert!(!card.contains("11010519491231002X"), "{card}");

    // Report it stolen.
    fill(c, "stolen-place", "西门市场 / West market").await?;
    click(c, "#action-stolen button[type=submit]").await?;
    wait_text(c, "p.notice", "Reported stolen").await?;
    wait_text(c, "#bike .badge.stolen", "stolen").await?;
    screenshot(c, "kiosk-bike.png").await?;

    // The command center, live before anything is seen.
    c.goto(&format!("{base}/command")).await?;
    fill(c, "token", &hq_token).await?;
    click(c, "form button[type=submit]").await?;
    wait_text(c, "#live", "live").await?;
    wait_text(c, "#no-incidents", "No open incidents").await?;
    // Reported, not seen yet: the bike waits in its own list (once the report's look-back
    // has opened the incident; the list is as of the page's load).
    let deadline = Instant::now() + DEADLINE;
    while c
        .find_all(Locator::Css("#waiting tr[data-incident]"))
        .await?
        .is_empty()
    {
        anyhow::ensure!(Instant::now() < deadline, "the reported bike never waited");
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.goto(&format!("{base}/command")).await?;
    }
    wait_text(c, "#waiting td.plate", PLATE).await?;
    wait_text(c, "#live", "live").await?;

    // A reader sees the bike: the incident appears without a reload.
    let mut reader =
        ReaderClient::connect("127.0.0.1", svc.mqtt_port(), "rd-gate", &secret).await?;
    reader.publish(vec![sighting(TAG, 5, -48)]).await?;
    let row = wait_text(c, "#incident-rows tr", PLATE).await?;
    assert!(row.contains("rd-gate"), "{row}");
    assert!(row.contains("Stolen bike seen"), "{row}");
    wait_text(c, "#markers g.marker text", PLATE).await?;
    // ... and leaves the waiting list, live too.
    let deadline = Instant::now() + DEADLINE;
    while !c
        .find_all(Locator::Css("#waiting tr[data-incident]"))
        .await?
        .is_empty()
    {
        anyhow::ensure!(Instant::now() < deadline, "the seen bike is still waiting");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        c.find_all(Locator::Css("#no-incidents")).await?.is_empty(),
        "the empty-list note is gone"
    );
    // Still the same page: the live stream did it, not a reload.
    assert_eq!(c.current_url().await?.path(), "/command");
    wait_text(c, "#rate-batches", "/s").await?;
    // Readers' health follows the live stream too: the gate has been heard from.
    wait_text(c, "#readers tr.online td.state", "online").await?;
    screenshot(c, "command.png").await?;

    // Acknowledge it from the list.
    click(c, "#incident-rows tr button[type=submit]").await?;
    wait_text(c, "#incident-rows td.state", "acknowledged").await?;

    // Resolved elsewhere (a patrol client, here with the admin token), it leaves the list
    // and the map without a reload.
    let incident_id = c
        .find(Locator::Css("#incident-rows tr"))
        .await?
        .attr("data-incident")
        .await?
        .context("a row names its incident")?;
    greenplate_simulator::clients::patrol(svc.channel().await, support::ADMIN_TOKEN)?
        .resolve_incident(ResolveIncidentRequest {
            incident_id: incident_id.clone(),
            outcome: Outcome::FalseAlarm as i32,
            note: "seen on camera: the owner".into(),
        })
        .await?;
    let deadline = Instant::now() + DEADLINE;
    while !c
        .find_all(Locator::Css("#incident-rows tr"))
        .await?
        .is_empty()
        || !c
            .find_all(Locator::Css("#markers g.marker"))
            .await?
            .is_empty()
    {
        if Instant::now() > deadline {
            bail!("incident {incident_id} still shown {DEADLINE:?} after it was resolved");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(c.current_url().await?.path(), "/command");

    // Its track: the pass history, once the pass has closed and been written.
    let deadline = Instant::now() + DEADLINE;
    loop {
        c.goto(&format!("{base}/command?track={PLATE}")).await?;
        let shown = wait_text(c, "#track-result", PLATE).await?;
        if !shown.contains(": 0 ") {
            break;
        }
        if Instant::now() > deadline {
            bail!("the track stayed empty: {shown}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        !c.find_all(Locator::Css("#map .track polyline"))
            .await?
            .is_empty()
    );

    browser.stop().await;
    reader.disconnect().await;
    svc.stop().await;
    Ok(())
}

/// How many times the command center's alarm of `priority` has played.
async fn played(c: &Client, priority: u32) -> anyhow::Result<u64> {
    let v = c
        .execute(
            "var a = document.getElementById('alarm-' + arguments[0]); \
             return a ? parseInt(a.dataset.played || '0', 10) : -1;",
            vec![serde_json::json!(priority)],
        )
        .await?;
    Ok(v.as_u64().unwrap_or(0))
}

/// Waits until the alarm of `priority` has played at least once.
async fn wait_played(c: &Client, priority: u32) -> anyhow::Result<()> {
    let deadline = Instant::now() + DEADLINE;
    while played(c, priority).await? == 0 {
        if Instant::now() > deadline {
            let off = c
                .execute(
                    "return document.getElementById('sound-off').hidden;",
                    vec![],
                )
                .await?;
            bail!("alarm {priority} did not play within {DEADLINE:?} (sound-off hidden: {off})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

const STOLEN_TAG: &str = "E28011606000020700000041";
const STOLEN_PLATE: &str = "潮阳B40001";
const WATCHED_TAG: &str = "E28011606000020700000042";
const WATCHED_PLATE: &str = "潮阳B40002";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium (chromium, chromium-driver)"]
async fn the_command_center_keeps_watch_lists_rings_by_priority_and_investigates_in_a_real_browser()
-> anyhow::Result<()> {
    use greenplate_proto::v1::{AddReaderRequest, Camera, RejectHitRequest, RejectReason};

    let svc = TestService::start_configured(|c| {
        c.ingest.pass_gap_ms = 300;
        c.alerting.clone_speed_kmh = 1e9;
        c.alerting.escalation = vec![greenplate_ingest::config::EscalationConfig {
            kinds: vec!["STOLEN_SIGHTED".into()],
            min_priority: 1,
            after_s: 1,
        }];
    })
    .await;
    let base = format!("http://{}", svc.service.http_addr);
    add_town(&svc).await?;
    let hq_token = new_unit_token(svc.channel().await, "hq", &[], true).await;
    let secret = svc
        .admin()
        .await
        .add_reader(AddReaderRequest {
            reader_id: "rd-gate".into(),
            name: "Gate".into(),
            lat: 23.26,
            lon: 116.58,
            cameras: vec![Camera {
                camera_id: "cam-1".into(),
                name: "西门路口".into(),
                url_template: "https://video.example/play?c={camera_id}&from={from_s}&to={to_s}"
                    .into(),
            }],
            ..Default::default()
        })
        .await?
        .into_inner()
        .secret;
    let mut kiosk = svc.add_kiosk("k-town-hall").await;
    kiosk
        .register_bike(support::bike(WATCHED_TAG, WATCHED_PLATE))
        .await?;
    support::register_stolen(&svc, STOLEN_TAG, STOLEN_PLATE).await;
    let bridge_secret = svc.add_reader("rd-bridge", 23.23, 116.53).await;

    let browser = Browser::start().await?;
    let c = &browser.client;
    c.goto(&format!("{base}/command")).await?;
    fill(c, "token", &hq_token).await?;
    click(c, "form button[type=submit]").await?;
    wait_text(c, "#live", "live").await?;

    // The watch list: a bad plate is refused at the form; a good one is listed, critical.
    click(c, "nav.pages a[href='/command/watch']").await?;
    wait_text(c, "#no-entries", "Nothing on the watch list").await?;
    fill(c, "watch-subject", "no plate!").await?;
    fill(c, "watch-reason", "抢劫案嫌疑车 / robbery suspect").await?;
    click(c, "form.watch-add button.primary").await?;
    wait_text(c, "p.error.banner[data-field=plate]", "").await?;
    fill(c, "watch-subject", WATCHED_PLATE).await?;
    c.find(Locator::Css("#watch-priority"))
        .await?
        .select_by_value("3")
        .await?;
    fill(c, "watch-reason", "抢劫案嫌疑车 / robbery suspect").await?;
    fill(c, "watch-case", "2026-88").await?;
    click(c, "form.watch-add button.primary").await?;
    wait_text(c, "p.notice", "Added to the watch list").await?;
    let entry = wait_text(c, "#watch-entries tr.priority-3", WATCHED_PLATE).await?;
    assert!(
        entry.contains("critical") && entry.contains("2026-88"),
        "{entry}"
    );
    screenshot(c, "command-watch.png").await?;

    // The map: a stolen bike seen rings the normal alarm; nobody acknowledges it, so a
    // second later it is escalated (urgent alarm, and the panel). The watched bike seen
    // rings the critical one.
    click(c, "nav.pages a[href='/command']").await?;
    wait_text(c, "#live", "live").await?;
    let mut reader =
        ReaderClient::connect("127.0.0.1", svc.mqtt_port(), "rd-gate", &secret).await?;
    reader.publish(vec![sighting(STOLEN_TAG, 5, -48)]).await?;
    wait_text(c, "#incident-rows tr", STOLEN_PLATE).await?;
    wait_played(c, 1).await?;
    let escalated = wait_text(c, "#notable-rows tr.escalated", STOLEN_PLATE).await?;
    assert!(escalated.contains("escalated"), "{escalated}");
    wait_played(c, 2).await?;
    assert_eq!(played(c, 3).await?, 0, "nothing critical yet");
    reader.publish(vec![sighting(WATCHED_TAG, 5, -50)]).await?;
    let hit = wait_text(c, "#incident-rows tr", WATCHED_PLATE).await?;
    assert!(hit.contains("Watch list hit"), "{hit}");
    wait_played(c, 3).await?;

    // An officer rejects the watch hit as a misread: it shows in the panel.
    let hit_incident = c
        .find(Locator::XPath(&format!(
            "//tbody[@id='incident-rows']/tr[td[contains(., '{WATCHED_PLATE}')]]"
        )))
        .await?
        .attr("data-incident")
        .await?
        .context("a row names its incident")?;
    greenplate_simulator::clients::patrol(svc.channel().await, &hq_token)?
        .reject_hit(RejectHitRequest {
            incident_id: hit_incident,
            reason: RejectReason::Misread as i32,
            note: "plate reads 潮阳B40003 on camera".into(),
            ..Default::default()
        })
        .await?;
    let rejected = wait_text(c, "#notable-rows tr.rejected", WATCHED_PLATE).await?;
    assert!(rejected.contains("misread"), "{rejected}");
    assert!(
        c.execute(
            "return document.getElementById('sound-off').hidden;",
            vec![]
        )
        .await?
        .as_bool()
        .unwrap_or(false),
        "the alarms played: no sound-off notice"
    );
    screenshot(c, "command-police.png").await?;

    // The stolen bike's incident: its alerts with the gate's camera for that moment, and
    // its steps, the escalation among them.
    let details = c
        .find(Locator::XPath(&format!(
            "//tbody[@id='incident-rows']/tr[td[contains(., '{STOLEN_PLATE}')]]//a[@class='details']"
        )))
        .await?;
    details.click().await?;
    let camera = wait_text(c, "#incident-alerts a.camera", "西门路口").await?;
    assert!(camera.contains("Video"), "{camera}");
    let href = c
        .find(Locator::Css("#incident-alerts a.camera"))
        .await?
        .attr("href")
        .await?
        .unwrap_or_default();
    assert!(
        href.starts_with("https://video.example/play?c=cam-1&from=") && !href.contains('{'),
        "{href}"
    );
    wait_text(c, "#incident-events td", "escalate").await?;
    screenshot(c, "command-incident.png").await?;

    // Both bikes pass the bridge too, together: companions on two readers.
    let mut bridge =
        ReaderClient::connect("127.0.0.1", svc.mqtt_port(), "rd-bridge", &bridge_secret).await?;
    bridge
        .publish(vec![
            sighting(STOLEN_TAG, 3, -52),
            sighting(WATCHED_TAG, 3, -55),
        ])
        .await?;

    // Investigations: who passed the gate (once the passes have closed and been written),
    // and who rode with the stolen bike; each with its reason, audited.
    let deadline = Instant::now() + DEADLINE;
    loop {
        click(c, "nav.pages a[href='/command/investigate']").await?;
        fill(c, "stakeout-readers", "rd-gate").await?;
        fill(c, "stakeout-reason", "案件 2026-88").await?;
        click(c, "#stakeout-form button.primary").await?;
        let found = wait_text(c, "#stakeout-count", "").await?;
        if found.trim() == "2" && c.find_all(Locator::Css("#stakeout-results")).await?.len() == 1 {
            break;
        }
        if Instant::now() > deadline {
            bail!("the stakeout found {found} passes, not 2");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let passes = wait_text(c, "#stakeout-results", STOLEN_PLATE).await?;
    assert!(passes.contains(WATCHED_PLATE), "{passes}");
    // Refused at the form with the reason in both languages: a window over 7 days.
    fill(c, "companions-subject", STOLEN_PLATE).await?;
    fill(c, "companions-from", "2026-01-01 00:00").await?;
    fill(c, "companions-reason", "案件 2026-88").await?;
    click(c, "#companions-form button.primary").await?;
    let refused = wait_text(c, "p.error.banner", "时间窗无效：不能超过7天").await?;
    assert!(
        refused.contains("Invalid window: is more than 7 days"),
        "{refused}"
    );
    // On both readers (once the bridge's passes are written).
    let deadline = Instant::now() + DEADLINE;
    let companions = loop {
        click(c, "nav.pages a[href='/command/investigate']").await?;
        fill(c, "companions-subject", STOLEN_PLATE).await?;
        fill(c, "companions-min", "2").await?;
        fill(c, "companions-reason", "案件 2026-88").await?;
        click(c, "#companions-form button.primary").await?;
        let found = wait_text(c, "#companion-count", "").await?;
        if found.trim() == "1" {
            break wait_text(c, "#companion-results", WATCHED_PLATE).await?;
        }
        if Instant::now() > deadline {
            bail!("the companion search found {found}, not 1");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(!companions.contains(STOLEN_PLATE), "{companions}");
    screenshot(c, "command-investigate.png").await?;
    let audit = svc.audit_log().await;
    for action in ["stakeout", "companions", "get_incident", "add_watch_entry"] {
        assert!(
            audit
                .iter()
                .any(|e| e.action == action && e.actor == "patrol:hq"),
            "{action} not audited as the signed-in unit"
        );
    }
    assert!(
        audit
            .iter()
            .any(|e| e.action == "stakeout" && e.subject.ends_with("; reason: 案件 2026-88"))
    );

    // The entry removed from the page ends the watch.
    click(c, "nav.pages a[href='/command/watch']").await?;
    click(c, "#watch-entries button.remove").await?;
    wait_text(c, "p.notice", "Removed").await?;
    wait_text(c, "#no-entries", "Nothing on the watch list").await?;

    browser.stop().await;
    reader.disconnect().await;
    bridge.disconnect().await;
    svc.stop().await;
    Ok(())
}

const OWNER_TAG: &str = "E28011606000020700000051";
const OWNER_PLATE: &str = "潮阳B50001";
const OTHER_TAG: &str = "E28011606000020700000052";
const OTHER_PLATE: &str = "潮阳B50002";

/// The owner page on a phone-sized screen: sign in with the plate and a texted code (a
/// wrong code counted), see one's own bike and not another owner's, arm it with the PIN,
/// see its passes, report it stolen and see the case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium (chromium, chromium-driver)"]
async fn an_owner_signs_in_by_text_arms_and_reports_a_theft_on_a_phone_in_a_real_browser()
-> anyhow::Result<()> {
    let sms = support::sms::SmsGateway::start().await;
    let sms_url = sms.url.clone();
    let svc = TestService::start_configured(move |c| {
        c.ingest.pass_gap_ms = 300;
        c.sms.url = Some(sms_url.clone());
        c.sms.token = Some("t".into());
    })
    .await;
    let base = format!("http://{}", svc.service.http_addr);
    let mut kiosk = svc.add_kiosk("k-owner").await;
    kiosk
        .register_bike(support::bike(OWNER_TAG, OWNER_PLATE))
        .await?;
    let mut other = support::bike(OTHER_TAG, OTHER_PLATE);
    other.owner = Some(greenplate_proto::v1::Owner {
        name: "陈伟".into(),
        id_number: "440513198001011236".into(),
        phone: "13800138000".into(),
    });
    kiosk.register_bike(other).await?;
    let secret = svc.add_reader("rd-gate", 23.26, 116.58).await;
    let mut reader =
        ReaderClient::connect("127.0.0.1", svc.mqtt_port(), "rd-gate", &secret).await?;
    reader.publish(vec![sighting(OWNER_TAG, 3, -50)]).await?;

    let browser = Browser::start_sized(390, 844).await?;
    let c = &browser.client;
    // A plate nobody registered looks the same: a code page, and a wrong code counted.
    c.goto(&format!("{base}/owner")).await?;
    fill(c, "plate", "潮阳B59999").await?;
    click(c, "#owner-plate button[type=submit]").await?;
    wait_text(c, "#code-sent", "a code was texted").await?;
    fill(c, "code", "123456").await?;
    click(c, "#owner-code button[type=submit]").await?;
    wait_text(c, "#owner-code p.error", "4 tries left").await?;
    c.goto(&format!("{base}/owner")).await?;
    fill(c, "plate", OWNER_PLATE).await?;
    click(c, "#owner-plate button[type=submit]").await?;
    wait_text(c, "#code-sent", "a code was texted").await?;
    let code = sms.code_for("13712345678").await;
    let wrong = if code == "000000" { "000001" } else { "000000" };
    fill(c, "code", wrong).await?;
    click(c, "#owner-code button[type=submit]").await?;
    wait_text(c, "#owner-code p.error", "4 tries left").await?;
    fill(c, "code", &code).await?;
    click(c, "#owner-code button[type=submit]").await?;

    // Their bike, not the other owner's.
    let card = wait_text(c, "section.bike", OWNER_PLATE).await?;
    assert!(card.contains("Yadea"), "{card}");
    assert!(
        c.find_all(Locator::Css(&format!(
            "section.bike[data-plate=\"{OTHER_PLATE}\"]"
        )))
        .await?
        .is_empty()
    );
    // Arm it with the PIN.
    c.find(Locator::Css("section.bike form.arm input[name=pin]"))
        .await?
        .send_keys("2468")
        .await?;
    click(c, "section.bike form.arm button[type=submit]").await?;
    wait_text(c, "p.notice", "Armed").await?;
    wait_text(c, "section.bike .badge.armed", "armed").await?;
    screenshot(c, "owner.png").await?;

    // Its passes (once the pass is written), and nothing of another owner's bike.
    let deadline = Instant::now() + DEADLINE;
    loop {
        c.goto(&format!("{base}/owner/bike?plate={OWNER_PLATE}"))
            .await?;
        let n = wait_text(c, "#pass-count", "").await?;
        if n.trim() != "0" {
            break;
        }
        if Instant::now() > deadline {
            bail!("no passes shown");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    wait_text(c, "#passes td", "rd-gate").await?;
    c.goto(&format!("{base}/owner/bike?plate={OTHER_PLATE}"))
        .await?;
    wait_text(c, "p.error", "No such bike of yours").await?;

    // Report it stolen from the phone: the same report and case as at a kiosk.
    c.goto(&format!("{base}/owner")).await?;
    click(c, "section.bike details.report summary").await?;
    c.find(Locator::Css("form.stolen input[name=place]"))
        .await?
        .send_keys("菜市场门口 / market gate")
        .await?;
    click(c, "form.stolen button[type=submit]").await?;
    wait_text(c, "p.notice", "Theft reported").await?;
    wait_text(c, "section.bike .badge.stolen", "stolen").await?;
    c.goto(&format!("{base}/owner/bike?plate={OWNER_PLATE}"))
        .await?;
    wait_text(c, "#case-state", "").await?;
    screenshot(c, "owner-bike.png").await?;

    let audit = svc.audit_log().await;
    for action in ["arm", "report_stolen", "owner_passes"] {
        assert!(
            audit
                .iter()
                .any(|e| e.action.starts_with(action) && e.actor.starts_with("owner:")),
            "{action} not audited as the owner: {:?}",
            audit
                .iter()
                .map(|e| (&e.action, &e.actor))
                .collect::<Vec<_>>()
        );
    }
    browser.stop().await;
    reader.disconnect().await;
    svc.stop().await;
    Ok(())
}
