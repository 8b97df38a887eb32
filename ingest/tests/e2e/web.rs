//! The web pages in a real browser: headless Chromium driven over WebDriver (fantoccini)
//! against the real service. A kiosk registers a bike through the form (a bad ID number is
//! refused at its field first) and reports it stolen; a reader publishes a sighting through
//! MQTT; the incident appears on the command-center page without a reload.
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
                    "--window-size=1280,800",
                    // Tests run as root in CI, where Chromium's sandbox cannot start.
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--disable-gpu",
                    "--lang=zh-CN",
                ],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .context("opening a WebDriver session")?;
        // A viewport of 1280x800: the window plus whatever the browser keeps around it.
        let frame = client
            .execute(
                "return [window.outerWidth - window.innerWidth, \
                         window.outerHeight - window.innerHeight];",
                vec![],
            )
            .await?;
        let extra = |i: usize| frame[i].as_u64().unwrap_or(0) as u32;
        client
            .set_window_size(1280 + extra(0), 800 + extra(1))
            .await?;
        Ok(Self { client, driver })
    }

    async fn stop(mut self) {
        let _ = self.client.close().await;
        let _ = self.driver.kill().await;
    }
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
    svc.admin()
        .await
        .add_zone(AddZoneRequest {
            zone_id: "z-town".into(),
            name: "Town".into(),
            geojson: ZONE.into(),
            ..Default::default()
        })
        .await?;
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

    // A reader sees the bike: the incident appears without a reload.
    let mut reader =
        ReaderClient::connect("127.0.0.1", svc.mqtt_port(), "rd-gate", &secret).await?;
    reader.publish(vec![sighting(TAG, 5, -48)]).await?;
    let row = wait_text(c, "#incident-rows tr", PLATE).await?;
    assert!(row.contains("rd-gate"), "{row}");
    assert!(row.contains("Stolen bike seen"), "{row}");
    wait_text(c, "#markers g.marker text", PLATE).await?;
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
