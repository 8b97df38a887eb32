//! The `greenplate` binary's own commands: generate-config, registry import, bad config.

use crate::support;

use std::process::Command;

use greenplate_proto::v1::{
    AddPatrolUnitRequest, AlertKind, GetBikeRequest, ListAuditRequest, SetArmedRequest,
    SetPinRequest, get_bike_request,
};
use greenplate_registry::RegistryError;
use greenplate_simulator::clients;
use greenplate_simulator::reader::{ReaderClient, sighting};
use support::{ADMIN_TOKEN, TestService, new_unit_token, next_alert, stream};

fn greenplate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_greenplate"))
}

#[test]
fn generate_config_prints_a_config_that_serve_accepts() {
    let out = greenplate().arg("generate-config").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let parsed: greenplate_ingest::Config = toml::from_str(&text).unwrap();
    assert_eq!(parsed, greenplate_ingest::Config::default());
}

#[test]
fn a_typo_in_the_config_is_a_one_line_error_with_exit_code_64() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[mqtt]\nlisen = \"0.0.0.0:1883\"\n").unwrap();
    let out = greenplate()
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("lisen"), "{err}");
}

#[test]
fn a_missing_certificate_file_is_a_one_line_error_with_exit_code_64() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tls.toml");
    let missing = dir.path().join("no-such-cert.pem");
    std::fs::write(
        &path,
        format!(
            "data_dir = {data:?}\n\
             [mqtt]\nlisten = \"127.0.0.1:0\"\n\
             [grpc]\nlisten = \"127.0.0.1:0\"\n\
             [http]\nlisten = \"127.0.0.1:0\"\n\
             [tls]\ncert_file = {cert:?}\nkey_file = {cert:?}\n",
            data = dir.path().join("data"),
            cert = missing,
        ),
    )
    .unwrap();
    let out = greenplate()
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no-such-cert.pem"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_import_reports_rejects_is_idempotent_and_feeds_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("bikes.csv");
    std::fs::write(
        &csv,
        "\
tag_id,plate,owner_name,owner_id_number,owner_phone,make,model,color,frame_number
E28011600000000000000101,潮阳A00101,王芳,11010519491231002X,13800000001,Yadea,G5,green,FRAME00101
E28011600000000000000102,潮阳A00102,王芳,11010519491231002X,13800000001,Aima,A500,white,FRAME00102
E28011600000000000000103,潮阳A00103,张强,440513199001011231,13800000003,Aima,A500,white,FRAME00103
",
    )
    .unwrap();
    let data = dir.path().join("data");
    let import = || {
        let out = greenplate()
            .args(["registry", "import"])
            .arg(&csv)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let first = import();
    assert!(first.contains("line 4: owner.id_number"), "{first}");
    assert!(
        first.contains("2 imported, 0 already there, 1 rejected"),
        "{first}"
    );
    let second = import();
    assert!(
        second.contains("0 imported, 2 already there, 1 rejected"),
        "{second}"
    );

    // The service started on that data directory knows the imported bikes.
    let data_dir = tempfile::TempDir::with_prefix_in("svc", dir.path()).unwrap();
    std::fs::remove_dir(data_dir.path()).unwrap();
    std::fs::rename(&data, data_dir.path()).unwrap();
    let svc = TestService::start_in(data_dir).await;
    let channel = svc.channel().await;
    let bike = clients::registry(channel, ADMIN_TOKEN)
        .unwrap()
        .get_bike(GetBikeRequest {
            key: Some(get_bike_request::Key::Plate("潮阳A00102".into())),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bike.tag_id, "E28011600000000000000102");
    assert_eq!(bike.owner.unwrap().phone, "138****0001");

    // An imported bike has no PIN: it cannot be armed until its owner sets one at a kiosk.
    let mut kiosk = svc.add_kiosk("k-pin").await;
    let arm = SetArmedRequest {
        plate: "潮阳A00102".into(),
        pin: "1357".into(),
        armed: true,
    };
    let no_pin = kiosk.set_armed(arm.clone()).await.unwrap_err();
    assert_eq!(no_pin.code(), tonic::Code::FailedPrecondition, "{no_pin:?}");
    let set_pin = |owner: &str| SetPinRequest {
        plate: "潮阳A00102".into(),
        owner_id_number: owner.into(),
        new_pin: "1357".into(),
    };
    let not_owner = kiosk
        .set_pin(set_pin("440513199001011230"))
        .await
        .unwrap_err();
    assert_eq!(
        not_owner.code(),
        tonic::Code::PermissionDenied,
        "{not_owner:?}"
    );
    kiosk.set_pin(set_pin("11010519491231002X")).await.unwrap();
    assert!(kiosk.set_armed(arm).await.unwrap().into_inner().armed);

    // Both are in the audit log: the import's rows by line (the second run added none),
    // the PIN by the kiosk.
    let audit = svc
        .admin()
        .await
        .list_audit(ListAuditRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries;
    let importer = format!("admin:import:{}", csv.display());
    let imported: Vec<&str> = audit
        .iter()
        .filter(|e| e.actor == importer && e.action == "register_bike")
        .map(|e| e.subject.as_str())
        .collect();
    assert_eq!(imported.len(), 2, "{audit:?}");
    assert!(imported[0].ends_with("plate 潮阳A00101 tag E28011600000000000000101 (import line 2)"));
    assert!(imported[1].ends_with("plate 潮阳A00102 tag E28011600000000000000102 (import line 3)"));
    let kiosk_changes: Vec<(&str, &str)> = audit
        .iter()
        .filter(|e| e.actor == "kiosk:k-pin")
        .map(|e| (e.action.as_str(), e.subject.as_str()))
        .collect();
    let pin_subject = format!("bike {}", bike.bike_id);
    assert!(
        kiosk_changes.contains(&("set_pin", pin_subject.as_str())),
        "{kiosk_changes:?}"
    );
    assert!(
        audit.iter().all(|e| !e.subject.contains("1357")),
        "no PIN in the audit log"
    );
    svc.stop().await;
}

/// `greenplate patrol` prints a unit's alerts as they arrive, and acks and resolves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patrol_client_prints_alerts_and_closes_incidents() {
    use greenplate_proto::v1::{
        AddKioskRequest, AddReaderRequest, AddZoneRequest, BikeDetails, Owner, RegisterBikeRequest,
        ReportStolenRequest,
    };
    use tokio::io::{AsyncBufReadExt, BufReader};

    let svc = TestService::start().await;
    let channel = svc.channel().await;
    let mut admin = clients::admin(channel.clone(), ADMIN_TOKEN).unwrap();
    admin
        .add_zone(AddZoneRequest {
            zone_id: "all".into(),
            name: "All".into(),
            geojson: r#"{"type":"Polygon","coordinates":[[[116,23],[117,23],[117,24],[116,24],[116,23]]]}"#.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let token = admin
        .add_patrol_unit(AddPatrolUnitRequest {
            unit_id: "u-1".into(),
            name: "Unit 1".into(),
            zone_ids: vec!["all".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let secret = admin
        .add_reader(AddReaderRequest {
            reader_id: "rd-1".into(),
            name: "Gate".into(),
            lat: 23.3,
            lon: 116.6,
            format: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    let kiosk = admin
        .add_kiosk(AddKioskRequest {
            kiosk_id: "k".into(),
            name: "k".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let mut registry = clients::registry(channel, &kiosk).unwrap();
    registry
        .register_bike(RegisterBikeRequest {
            tag_id: "E28011606000000000000C01".into(),
            plate: "潮阳P00001".into(),
            owner: Some(Owner {
                name: "周杰".into(),
                id_number: "11010519491231002X".into(),
                phone: "13612345678".into(),
            }),
            bike: Some(BikeDetails {
                make: "Aima".into(),
                model: "A500".into(),
                color: "white".into(),
                frame_number: "AIMA000001".into(),
            }),
            request_id: String::new(),
            pin: "1357".into(),
        })
        .await
        .unwrap();
    registry
        .report_stolen(ReportStolenRequest {
            plate: "潮阳P00001".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    let mut follow = tokio::process::Command::new(env!("CARGO_BIN_EXE_greenplate"))
        .args(["patrol", "--server", &svc.grpc_url, "--token", &token])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let mut reader = ReaderClient::connect("127.0.0.1", svc.mqtt_port(), "rd-1", &secret)
        .await
        .unwrap();
    reader
        .publish(vec![sighting("E28011606000000000000C01", 3, -50)])
        .await
        .unwrap();
    let line = tokio::time::timeout(std::time::Duration::from_secs(15), lines.next_line())
        .await
        .expect("an alert line within 15 s")
        .unwrap()
        .unwrap();
    assert!(line.contains("STOLEN BIKE SEEN  潮阳P00001"), "{line}");
    assert!(line.contains("at rd-1 (23.3000, 116.6000)"), "{line}");
    let incident = line.rsplit(' ').next().unwrap().to_owned();
    assert!(incident.starts_with("inc-"), "{line}");
    // Piped, the line is plain; with --alarm always it rings and is coloured by priority
    // (a stolen bike is priority 1: cyan).
    let mut alarmed = tokio::process::Command::new(env!("CARGO_BIN_EXE_greenplate"))
        .args(["patrol", "--server", &svc.grpc_url, "--token", &token])
        .args(["--alarm", "always"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut alarmed_lines = BufReader::new(alarmed.stdout.take().unwrap()).lines();
    let rung = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        alarmed_lines.next_line(),
    )
    .await
    .expect("an alert line within 15 s")
    .unwrap()
    .unwrap();
    assert_eq!(rung, format!("\x07\x1b[36m{line}\x1b[0m"));
    alarmed.kill().await.unwrap();

    let run = |args: Vec<String>| {
        let out = greenplate()
            .args(["patrol", "--server", &svc.grpc_url, "--token", &token])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let acked = run(vec![
        "ack".into(),
        incident.clone(),
        "--note".into(),
        "on my way".into(),
    ]);
    assert_eq!(
        acked.trim(),
        format!("{incident} INCIDENT_STATE_ACKNOWLEDGED")
    );
    let resolved = run(vec![
        "resolve".into(),
        incident.clone(),
        "--outcome".into(),
        "recovered".into(),
    ]);
    assert_eq!(
        resolved.trim(),
        format!("{incident} INCIDENT_STATE_RESOLVED OUTCOME_RECOVERED")
    );
    let bad = greenplate()
        .args(["patrol", "--server", &svc.grpc_url, "--token", "wrong"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("unknown, revoked or expired token"),
        "{bad:?}"
    );

    follow.kill().await.unwrap();
    reader.disconnect().await;
    svc.stop().await;
}

/// A TCP proxy to `target` whose connections the test can cut, and refuse until reopened.
struct Proxy {
    addr: std::net::SocketAddr,
    /// (open, epoch): closing bumps the epoch, which ends every connection of the one before.
    state: std::sync::Arc<tokio::sync::watch::Sender<(bool, u64)>>,
    /// Connections forwarded so far.
    served: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Proxy {
    async fn start(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = std::sync::Arc::new(tokio::sync::watch::channel((true, 0)).0);
        let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (st, sv) = (state.clone(), served.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (open, epoch) = *st.borrow();
                if !open {
                    continue; // dropped: the client sees the connection closed
                }
                sv.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut cut = st.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.wait_for(|s| s.1 != epoch) => {}
                    }
                });
            }
        });
        Self {
            addr,
            state,
            served,
        }
    }

    /// Cuts every connection and refuses new ones.
    fn close(&self) {
        self.state.send_modify(|s| *s = (false, s.1 + 1));
    }

    fn open(&self) {
        self.state.send_modify(|s| s.0 = true);
    }

    fn served(&self) -> usize {
        self.served.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// `greenplate patrol` resumes after a dropped connection: what was alerted while it was
/// cut off is printed once it is back, each alert once, none again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patrol_client_resumes_after_a_dropped_connection() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let svc = TestService::start().await;
    svc.admin()
        .await
        .add_zone(greenplate_proto::v1::AddZoneRequest {
            zone_id: "all".into(),
            name: "All".into(),
            geojson: r#"{"type":"Polygon","coordinates":[[[116,23],[117,23],[117,24],[116,24],[116,23]]]}"#.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let token = new_unit_token(svc.channel().await, "u-1", &["all"], false).await;
    // The server's own view of the unit's alerts, not through the proxy.
    let mut direct = stream(&clients::patrol(svc.channel().await, &token).unwrap(), 0).await;
    let secret = svc.add_reader("rd-1", 23.3, 116.6).await;
    support::register_stolen(&svc, "E28011606000000000000C74", "粤D7C074").await;
    let proxy = Proxy::start(svc.service.grpc_addr).await;

    let mut follow = tokio::process::Command::new(env!("CARGO_BIN_EXE_greenplate"))
        .args(["patrol", "--server", &format!("http://{}", proxy.addr)])
        .args(["--token", &token])
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let mut next_seq = async || {
        let line = tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line())
            .await
            .expect("an alert line within 20 s")
            .unwrap()
            .expect("the patrol client is still running");
        let seq = line
            .strip_prefix('#')
            .and_then(|l| l.split(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("not an alert line: {line}"));
        (seq, line)
    };
    let mut reader = ReaderClient::connect("127.0.0.1", svc.mqtt_port(), "rd-1", &secret)
        .await
        .unwrap();
    let mut pass = 0;
    let mut alert = async |reader: &mut ReaderClient| {
        reader
            .publish(vec![support::later(
                sighting("E28011606000000000000C74", 1, -50),
                pass,
            )])
            .await
            .unwrap();
        pass += 1;
        next_alert(&mut direct).await.seq
    };

    let first = alert(&mut reader).await;
    let (seq, line) = next_seq().await;
    assert_eq!(seq, first, "{line}");
    assert!(line.contains("STOLEN BIKE SEEN  粤D7C074"), "{line}");
    let connections = proxy.served();

    // Cut off: two alerts are committed meanwhile.
    proxy.close();
    let missed = [alert(&mut reader).await, alert(&mut reader).await];
    proxy.open();
    assert_eq!(
        (next_seq().await.0, next_seq().await.0),
        (missed[0], missed[1])
    );
    assert!(
        proxy.served() > connections,
        "the client should have reconnected"
    );
    // And it goes on live, nothing printed twice.
    let live = alert(&mut reader).await;
    assert_eq!(next_seq().await.0, live);

    follow.kill().await.unwrap();
    reader.disconnect().await;
    svc.stop().await;
}

/// `greenplate zones import` adds a FeatureCollection's zones through Admin, reports bad
/// features, and a re-run changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zones_import_adds_reports_and_is_idempotent() {
    // The two readers below are 10 km apart: no clone alert between them.
    let svc = TestService::start_configured(|c| c.alerting.clone_speed_kmh = 1e9).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("zones.geojson");
    std::fs::write(
        &file,
        r#"{"type":"FeatureCollection","features":[
          {"type":"Feature","properties":{"id":"west","name":"West"},
           "geometry":{"type":"Polygon","coordinates":[[[116.50,23.20],[116.58,23.20],[116.58,23.32],[116.50,23.32],[116.50,23.20]]]}},
          {"type":"Feature","properties":{"id":"exit","kind":"watch"},
           "geometry":{"type":"Polygon","coordinates":[[[116.50,23.20],[116.52,23.20],[116.52,23.22],[116.50,23.22],[116.50,23.20]]]}},
          {"type":"Feature","properties":{"id":"bowtie"},
           "geometry":{"type":"Polygon","coordinates":[[[0,0],[1,1],[1,0],[0,1],[0,0]]]}},
          {"type":"Feature","properties":{},"geometry":null}
        ]}"#,
    )
    .unwrap();
    let run = || {
        greenplate()
            .args(["zones", "import"])
            .arg(&file)
            .args(["--server", &svc.grpc_url, "--admin-token", ADMIN_TOKEN])
            .output()
            .unwrap()
    };
    let first = run();
    let text = String::from_utf8(first.stdout).unwrap();
    assert!(!first.status.success(), "bad features make a non-zero exit");
    assert!(
        text.contains("added west") && text.contains("added exit"),
        "{text}"
    );
    assert!(
        text.contains("feature 2 rejected: bowtie: geojson polygon is not valid"),
        "{text}"
    );
    assert!(
        text.contains("feature 3 rejected: properties.id is missing"),
        "{text}"
    );
    let again = String::from_utf8(run().stdout).unwrap();
    assert!(
        again.contains("already there west") && again.contains("already there exit"),
        "{again}"
    );

    // The imported zones are live: a unit can be assigned to one (AddPatrolUnit refuses
    // unknown zones), and "exit" is a watch zone: a stolen bike seen in west is an ordinary
    // alert to west's unit, seen inside exit an urgent one naming the zone.
    let unit = svc.add_unit("u-west", &["west"], false).await;
    let mut alerts = stream(&unit, 0).await;
    let in_west = svc.add_reader("rd-west", 23.30, 116.55).await;
    let in_exit = svc.add_reader("rd-exit", 23.21, 116.51).await;
    support::register_stolen(&svc, "E28011606000000000000C73", "粤D7C073").await;
    for (reader, secret, kind, zone, priority) in [
        ("rd-west", &in_west, AlertKind::StolenSighted, "", 1),
        ("rd-exit", &in_exit, AlertKind::WatchZone, "exit", 2),
    ] {
        let mut r = ReaderClient::connect("127.0.0.1", svc.mqtt_port(), reader, secret)
            .await
            .unwrap();
        r.publish(vec![sighting("E28011606000000000000C73", 1, -50)])
            .await
            .unwrap();
        let a = next_alert(&mut alerts).await;
        assert_eq!(
            (
                a.kind(),
                a.reader_id.as_str(),
                a.zone_id.as_str(),
                a.priority
            ),
            (kind, reader, zone, priority),
            "{a:?}"
        );
        r.disconnect().await;
    }
    svc.stop().await;
}

/// `greenplate zones import` refuses a file that is not JSON or not a FeatureCollection
/// (one line naming the file, exit code 1, nothing added), and a feature whose `kind` is
/// neither `patrol` nor `watch` (reported, not added; the others are).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zones_import_reports_bad_files_and_bad_kinds() {
    let svc = TestService::start().await;
    let dir = tempfile::tempdir().unwrap();
    let square = r#"{"type":"Polygon","coordinates":[[[116.50,23.20],[116.58,23.20],[116.58,23.32],[116.50,23.32],[116.50,23.20]]]}"#;
    let run = |name: &str, text: &str| {
        let file = dir.path().join(name);
        std::fs::write(&file, text).unwrap();
        let out = greenplate()
            .args(["zones", "import"])
            .arg(&file)
            .args(["--server", &svc.grpc_url, "--admin-token", ADMIN_TOKEN])
            .output()
            .unwrap();
        (
            file,
            out.status.code(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let feature =
        format!(r#"{{"type":"Feature","properties":{{"id":"lone"}},"geometry":{square}}}"#);
    for (name, text, says) in [
        (
            "broken.geojson",
            "{\"type\": \"FeatureCollection\", ".to_owned(),
            "not JSON: ",
        ),
        (
            "feature.geojson",
            feature,
            "expected a GeoJSON FeatureCollection",
        ),
        (
            "no-features.geojson",
            r#"{"type":"FeatureCollection","features":{}}"#.to_owned(),
            "expected a GeoJSON FeatureCollection",
        ),
    ] {
        let (file, code, stdout, stderr) = run(name, &text);
        assert_eq!(code, Some(1), "{name}: {stderr}");
        assert!(stdout.is_empty(), "{name}: {stdout}");
        assert_eq!(stderr.trim().lines().count(), 1, "{name}: {stderr}");
        assert!(
            stderr.starts_with(&format!("greenplate: {}: {says}", file.display())),
            "{name}: {stderr}"
        );
    }

    let (_, code, stdout, _) = run(
        "kinds.geojson",
        &format!(
            r#"{{"type":"FeatureCollection","features":[
              {{"type":"Feature","properties":{{"id":"odd","kind":"exit"}},"geometry":{square}}},
              {{"type":"Feature","properties":{{"id":"fine","kind":"patrol"}},"geometry":{square}}}
            ]}}"#
        ),
    );
    assert_eq!(code, Some(1), "a rejected feature makes a non-zero exit");
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            r#"feature 0 rejected: properties.kind "exit" is not patrol or watch"#,
            "added fine",
        ]
    );
    // Nothing of the refused files or the rejected feature became a zone.
    let mut admin = svc.admin().await;
    for zone in ["lone", "odd"] {
        let refused = admin
            .add_patrol_unit(AddPatrolUnitRequest {
                unit_id: format!("u-{zone}"),
                name: zone.into(),
                zone_ids: vec![zone.into()],
                command_center: false,
                canary: false,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::NotFound, "{zone}: {refused:?}");
    }
    svc.add_unit("u-fine", &["fine"], false).await;
    svc.stop().await;
}

/// `greenplate registry rotate-key` re-seals a stopped node's data under a new key in its
/// data directory; the node starts on it and still opens its readers' secrets and owners'
/// data. A rotation interrupted before its rename keeps the node from starting until the
/// command runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_key_reseals_the_registry_and_the_node_starts_on_the_new_key() {
    let svc = TestService::start().await;
    let secret = svc.add_reader("rd-k", 23.3, 116.6).await;
    support::register_stolen(&svc, "E28011606000000000000C71", "粤D7C071").await;
    let claims_key = svc.http_get("/claims/public-key").await;
    let dir = svc.stop().await;
    let key_file = dir.path().join("secret.key");
    let old_key = std::fs::read_to_string(&key_file).unwrap();
    let rotate = || {
        let out = greenplate()
            .args(["registry", "rotate-key", "--data-dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let said = rotate();
    assert!(
        said.contains("Re-sealed 1 owners, 1 readers and 1 server keys"),
        "{said}"
    );
    assert_ne!(std::fs::read_to_string(&key_file).unwrap(), old_key);
    // The old key no longer opens it: a node given it refuses to start, failing to open
    // the first reader's sealed secret.
    let stale = greenplate_ingest::Config {
        data_dir: dir.path().to_owned(),
        secret_key: Some(old_key.trim().to_owned()),
        ..Default::default()
    };
    let refused = greenplate_ingest::app::open_registry(&stale).await;
    assert!(
        matches!(
            refused,
            Err(greenplate_ingest::StartError::Registry(
                greenplate_registry::Error::Registry(RegistryError::Crypto)
            ))
        ),
        "{:?}",
        refused.map(|_| ())
    );

    // A leftover next key: the service refuses to start; the command sees the database is
    // not under that key, drops it and rotates again.
    std::fs::write(dir.path().join("secret.key.next"), "ab".repeat(32)).unwrap();
    let config = greenplate_ingest::Config {
        data_dir: dir.path().to_owned(),
        ..Default::default()
    };
    let refused = greenplate_ingest::app::open_registry(&config).await;
    assert!(
        matches!(
            refused,
            Err(greenplate_ingest::StartError::InterruptedRotation(_))
        ),
        "{:?}",
        refused.map(|_| ())
    );
    let said = rotate();
    assert!(
        said.contains("Re-sealed 1 owners, 1 readers and 1 server keys"),
        "{said}"
    );
    assert!(!dir.path().join("secret.key.next").exists());

    // The node on the new key: the reader logs in with its secret, the owner's phone opens.
    let svc = TestService::start_in(dir).await;
    let reader = ReaderClient::connect("127.0.0.1", svc.mqtt_port(), "rd-k", &secret)
        .await
        .unwrap();
    let bike = clients::registry(svc.channel().await, ADMIN_TOKEN)
        .unwrap()
        .get_bike(GetBikeRequest {
            key: Some(get_bike_request::Key::Plate("粤D7C071".into())),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // support::bike's owner phone, 13712345678, opened under the new key and masked.
    assert_eq!(bike.owner.unwrap().phone, "137****5678");
    // The claim-signing key, re-sealed, is the same key.
    assert_eq!(svc.http_get("/claims/public-key").await, claims_key);
    reader.disconnect().await;
    svc.stop().await;
}

/// A node given another at-rest key than its database's refuses to start, even with no
/// reader yet (an owner's sealed phone tells).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_at_rest_key_is_refused_at_start() {
    let svc = TestService::start().await;
    support::register_stolen(&svc, "E28011606000000000000C72", "粤D7C072").await;
    let dir = svc.stop().await;
    let config = greenplate_ingest::Config {
        data_dir: dir.path().to_owned(),
        secret_key: Some("cd".repeat(32)),
        ..Default::default()
    };
    let refused = greenplate_ingest::app::open_registry(&config).await;
    assert!(
        matches!(refused, Err(greenplate_ingest::StartError::WrongKey)),
        "{:?}",
        refused.map(|_| ())
    );
}
