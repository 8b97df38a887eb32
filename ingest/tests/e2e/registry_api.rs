//! The Registry and Admin APIs through gRPC: every operation, every validation rule, masking,
//! the audit log, and concurrent kiosks. Runs on SQLite, and on PostgreSQL when asked.

use crate::support;

use greenplate_proto::v1::registry_client::RegistryClient;
use greenplate_proto::v1::{
    AddKioskRequest, AddZoneRequest, BikeDetails, DeregisterBikeRequest, GetBikeRequest,
    ListAuditRequest, ListOwnerBikesRequest, Owner, RegisterBikeRequest, ReplaceTagRequest,
    ReportRecoveredRequest, ReportStolenRequest, SetArmedRequest, SetPinRequest,
    TransferOwnershipRequest, ZoneKind, get_bike_request,
};
use greenplate_proto::v1::{GetTrackRequest, get_track_request};
use greenplate_simulator::clients::{self, Authed};
use support::{ADMIN_TOKEN, TestService, new_kiosk_token, new_unit_token};
use tonic::Code;

const ID_A: &str = "11010519491231002X";
const ID_B: &str = "440513199001011230";

fn request(tag: &str, plate: &str) -> RegisterBikeRequest {
    RegisterBikeRequest {
        tag_id: tag.into(),
        plate: plate.into(),
        owner: Some(Owner {
            name: "陈伟".into(),
            id_number: ID_A.into(),
            phone: "13812345678".into(),
        }),
        bike: Some(BikeDetails {
            make: "Yadea".into(),
            model: "G5".into(),
            color: "green".into(),
            frame_number: "LYDG5000001".into(),
        }),
        request_id: String::new(),
        pin: "2468".into(),
    }
}

fn by_plate(p: &str) -> GetBikeRequest {
    GetBikeRequest {
        key: Some(get_bike_request::Key::Plate(p.into())),
        ..Default::default()
    }
}

async fn kiosk(svc: &TestService) -> RegistryClient<Authed> {
    let channel = svc.channel().await;
    let token = clients::admin(channel.clone(), ADMIN_TOKEN)
        .unwrap()
        .add_kiosk(AddKioskRequest {
            kiosk_id: "k-1".into(),
            name: "Kiosk".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    clients::registry(channel, &token).unwrap()
}

async fn every_operation(svc: TestService) {
    let mut k = kiosk(&svc).await;

    // Register (free: one call) and look up, masked.
    let id = k
        .register_bike(request("E28011606000000000000001", "潮阳A00001"))
        .await
        .unwrap()
        .into_inner()
        .bike_id;
    let bike = k
        .get_bike(by_plate("潮阳 a0000-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bike.bike_id, id);
    let owner = bike.owner.unwrap();
    // Masked over gRPC as on the web page (#15, point 5): the family name, the province of
    // the ID number (no check digit, nothing to enumerate the birth date against), and the
    // phone's first 3 and last 4.
    assert_eq!(
        (
            owner.name.as_str(),
            owner.id_number.as_str(),
            owner.phone.as_str()
        ),
        ("陈*", "110***************", "138****5678")
    );
    assert_eq!(bike.bike.unwrap().frame_number, "LYDG5000001");

    // Idempotent retry.
    let mut r = request("E28011606000000000000002", "潮阳A00002");
    r.request_id = "k-1/42".into();
    let a = k
        .register_bike(r.clone())
        .await
        .unwrap()
        .into_inner()
        .bike_id;
    let b = k.register_bike(r).await.unwrap().into_inner().bike_id;
    assert_eq!(a, b);
    let owned = k
        .list_owner_bikes(ListOwnerBikesRequest {
            id_number: ID_A.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .bikes;
    assert_eq!(owned.len(), 2);
    assert!(
        owned
            .iter()
            .all(|b| b.owner.as_ref().unwrap().phone == "138****5678")
    );

    // SetPin is for bikes with no PIN yet (imported ones: cli.rs sets one); this one has
    // its registration's.
    let set_pin = |pin: &str| SetPinRequest {
        plate: "潮阳A00001".into(),
        owner_id_number: ID_A.into(),
        new_pin: pin.into(),
    };
    let bad_pin = k.set_pin(set_pin("12")).await.unwrap_err();
    assert_eq!(bad_pin.code(), Code::InvalidArgument, "{bad_pin:?}");
    assert!(bad_pin.message().contains("new_pin"), "{bad_pin:?}");
    let has_one = k.set_pin(set_pin("1357")).await.unwrap_err();
    assert_eq!(has_one.code(), Code::FailedPrecondition, "{has_one:?}");

    // Theft report with details; a second report returns the open one.
    let stolen = ReportStolenRequest {
        plate: "潮阳A00001".into(),
        stolen_at_ms: 0,
        place: "Mianbei Rd market".into(),
        notes: "black top case".into(),
    };
    let first = k.report_stolen(stolen.clone()).await.unwrap().into_inner();
    let again = k.report_stolen(stolen).await.unwrap().into_inner();
    assert!(!first.already_open && again.already_open);
    assert_eq!(first.report_id, again.report_id);
    assert!(
        k.get_bike(by_plate("潮阳A00001"))
            .await
            .unwrap()
            .into_inner()
            .stolen
    );
    let err = k
        .deregister_bike(DeregisterBikeRequest {
            plate: "潮阳A00001".into(),
            reason: "scrapped".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    k.report_recovered(ReportRecoveredRequest {
        plate: "潮阳A00001".into(),
        pin: "2468".into(),
    })
    .await
    .unwrap();
    assert!(
        !k.get_bike(by_plate("潮阳A00001"))
            .await
            .unwrap()
            .into_inner()
            .stolen
    );

    // Arm and disarm with the PIN; a wrong PIN is PERMISSION_DENIED.
    let arm = |pin: &str, armed: bool| SetArmedRequest {
        plate: "潮阳A00001".into(),
        pin: pin.into(),
        armed,
    };
    assert!(
        k.set_armed(arm("2468", true))
            .await
            .unwrap()
            .into_inner()
            .armed
    );
    assert!(
        k.get_bike(by_plate("潮阳A00001"))
            .await
            .unwrap()
            .into_inner()
            .armed
    );
    assert_eq!(
        k.set_armed(arm("1111", false)).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    assert!(
        !k.set_armed(arm("2468", false))
            .await
            .unwrap()
            .into_inner()
            .armed
    );

    // Replace the tag; the old one can never be bound again.
    k.replace_tag(ReplaceTagRequest {
        plate: "潮阳A00001".into(),
        new_tag_id: "E28011606000000000000003".into(),
        pin: "2468".into(),
    })
    .await
    .unwrap();
    let via_old = k
        .get_bike(GetBikeRequest {
            key: Some(get_bike_request::Key::TagId(
                "E28011606000000000000001".into(),
            )),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(via_old.tag_id, "E28011606000000000000003");
    let err = k
        .register_bike(request("E28011606000000000000001", "潮阳A00009"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains("revoked"), "{}", err.message());

    // Transfer to a new owner with the current PIN.
    k.transfer_ownership(TransferOwnershipRequest {
        plate: "潮阳A00001".into(),
        new_owner: Some(Owner {
            name: "李娜".into(),
            id_number: ID_B.into(),
            phone: "13900001111".into(),
        }),
        pin: "2468".into(),
        new_pin: "9753".into(),
    })
    .await
    .unwrap();
    let b = k
        .get_bike(by_plate("潮阳A00001"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(b.owner.unwrap().id_number, "440***************");

    // Deregister: plate freed, bike gone from plate lookups.
    k.deregister_bike(DeregisterBikeRequest {
        plate: "潮阳A00001".into(),
        reason: "scrapped".into(),
    })
    .await
    .unwrap();
    assert_eq!(
        k.get_bike(by_plate("潮阳A00001")).await.unwrap_err().code(),
        Code::NotFound
    );
    k.register_bike(request("E28011606000000000000004", "潮阳A00001"))
        .await
        .unwrap();

    // Admin's provisioning, and a kiosk's and a command center's tokens for below.
    let mut admin = clients::admin(svc.channel().await, ADMIN_TOKEN).unwrap();
    clients::add_reader(&mut admin, "rd-audit", "Gate".into(), 23.3, 116.6)
        .await
        .unwrap();
    admin
        .add_zone(AddZoneRequest {
            zone_id: "z-audit".into(),
            name: "Audit".into(),
            geojson: r#"{"type":"Polygon","coordinates":[[[116,23],[117,23],[117,24],[116,24],[116,23]]]}"#.into(),
            kind: ZoneKind::Patrol as i32,
        })
        .await
        .unwrap();
    let kiosk_token = new_kiosk_token(svc.channel().await, "k-audit").await;
    let unit_token = new_unit_token(svc.channel().await, "u-audit", &["z-audit"], true).await;

    // The audit log, through Admin.
    let entries = admin
        .list_audit(ListAuditRequest {
            after_id: 0,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let kiosk_actions: Vec<&str> = entries
        .iter()
        .filter(|e| e.actor == "kiosk:k-1")
        .map(|e| e.action.as_str())
        .collect();
    for a in [
        "register_bike",
        "report_stolen",
        "report_recovered",
        "arm",
        "disarm",
        "pin_failed",
        "replace_tag",
        "transfer_ownership",
        "deregister_bike",
    ] {
        assert!(kiosk_actions.contains(&a), "audit lacks {a}");
    }
    let admin_changes: Vec<(&str, &str)> = entries
        .iter()
        .filter(|e| e.actor == "admin:admin")
        .map(|e| (e.action.as_str(), e.subject.as_str()))
        .collect();
    for change in [
        ("add_kiosk", "k-1"),
        ("add_reader", "rd-audit (sealed)"),
        ("add_zone", "z-audit"),
        ("add_kiosk", "k-audit"),
        ("add_patrol_unit", "u-audit"),
    ] {
        assert!(
            admin_changes.contains(&change),
            "audit lacks {change:?}: {admin_changes:?}"
        );
    }
    // No personal data in the audit log.
    assert!(
        entries
            .iter()
            .all(|e| !e.subject.contains("1381234") && !e.subject.contains("110105"))
    );
    // Kiosks and patrol units cannot read it (a token that is no one's is not even
    // authenticated).
    for (who, token, code) in [
        ("a kiosk", kiosk_token.as_str(), Code::PermissionDenied),
        (
            "a command center",
            unit_token.as_str(),
            Code::PermissionDenied,
        ),
        ("a wrong token", "wrong", Code::Unauthenticated),
    ] {
        let refused = clients::admin(svc.channel().await, token)
            .unwrap()
            .list_audit(ListAuditRequest::default())
            .await
            .unwrap_err();
        assert_eq!(refused.code(), code, "ListAudit by {who}: {refused:?}");
    }
    svc.stop().await;
}

async fn validation(svc: TestService) {
    let mut k = kiosk(&svc).await;
    type Edit = fn(&mut RegisterBikeRequest);
    let cases: Vec<(&str, Edit)> = vec![
        ("tag_id", |r| r.tag_id = "E2801160600000000000001".into()),
        ("tag_id", |r| r.tag_id = "E2801160600000000000000G".into()),
        ("plate", |r| r.plate = "".into()),
        ("plate", |r| r.plate = "A12345".into()),
        ("plate", |r| r.plate = "潮阳A1".into()),
        ("plate", |r| r.plate = "潮阳A12$45".into()),
        ("owner.name", |r| {
            r.owner.as_mut().unwrap().name = " ".into()
        }),
        ("owner.id_number", |r| {
            r.owner.as_mut().unwrap().id_number = "1101051949123100".into()
        }),
        ("owner.id_number", |r| {
            r.owner.as_mut().unwrap().id_number = "110105194912310021".into()
        }),
        ("owner.id_number", |r| {
            r.owner.as_mut().unwrap().id_number = "110105194902300028".into()
        }),
        ("owner.phone", |r| {
            r.owner.as_mut().unwrap().phone = "1381234567".into()
        }),
        ("owner.phone", |r| {
            r.owner.as_mut().unwrap().phone = "12812345678".into()
        }),
        ("bike.make", |r| r.bike.as_mut().unwrap().make = "".into()),
        ("bike.model", |r| r.bike.as_mut().unwrap().model = "".into()),
        ("bike.color", |r| r.bike.as_mut().unwrap().color = "".into()),
        ("bike.frame_number", |r| {
            r.bike.as_mut().unwrap().frame_number = "AB1".into()
        }),
        ("pin", |r| r.pin = "123".into()),
        ("pin", |r| r.pin = "12a4".into()),
    ];
    for (field, edit) in cases {
        let mut r = request("E28011606000000000000011", "潮阳B00001");
        edit(&mut r);
        let err = k.register_bike(r).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(
            err.message().starts_with(field),
            "{field}: {}",
            err.message()
        );
    }
    // Nothing was half-written by the refusals.
    k.register_bike(request("E28011606000000000000011", "潮阳B00001"))
        .await
        .unwrap();
    svc.stop().await;
}

/// Sixteen kiosks race to register the same tag through gRPC: exactly one wins.
async fn concurrent_kiosks(svc: TestService) {
    let k = kiosk(&svc).await;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let mut k = k.clone();
        tasks.push(tokio::spawn(async move {
            k.register_bike(request("E280116060000000000000AA", &format!("潮阳C{i:05}")))
                .await
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap().map(|_| ()).map_err(|s| s.code()));
    }
    assert_eq!(codes.iter().filter(|c| c.is_ok()).count(), 1, "{codes:?}");
    assert!(
        codes
            .iter()
            .all(|c| matches!(c, Ok(()) | Err(Code::AlreadyExists))),
        "{codes:?}"
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_sqlite() {
    every_operation(TestService::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_sqlite() {
    validation(TestService::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_kiosks_sqlite() {
    concurrent_kiosks(TestService::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (GREENPLATE_TEST_PG)"]
async fn every_operation_postgres() {
    every_operation(TestService::start_postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (GREENPLATE_TEST_PG)"]
async fn concurrent_kiosks_postgres() {
    concurrent_kiosks(TestService::start_postgres().await).await;
}

/// Issue #15, point 8: every lookup of personal data is in the audit log (who, what, and a
/// reason when given; the ID number masked), lookups that find nothing too; and the SQLite
/// database and its WAL are the service user's alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_are_audited_and_the_database_is_private() {
    let svc = TestService::start().await;
    let mut k = kiosk(&svc).await;
    k.register_bike(request("E28011606000000000000A77", "潮阳A07777"))
        .await
        .unwrap();
    k.get_bike(GetBikeRequest {
        key: Some(get_bike_request::Key::Plate("潮阳A07777".into())),
        reason: "case 2026-118".into(),
    })
    .await
    .unwrap();
    assert_eq!(
        k.get_bike(by_plate("潮阳A09999")).await.unwrap_err().code(),
        Code::NotFound
    );
    k.list_owner_bikes(ListOwnerBikesRequest {
        id_number: ID_A.into(),
        reason: String::new(),
    })
    .await
    .unwrap();
    let cc = new_unit_token(svc.channel().await, "cc", &[], true).await;
    clients::patrol(svc.channel().await, &cc)
        .unwrap()
        .get_track(GetTrackRequest {
            subject: Some(get_track_request::Subject::Plate("潮阳A07777".into())),
            reason: "case 2026-118".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let entries = clients::admin(svc.channel().await, ADMIN_TOKEN)
        .unwrap()
        .list_audit(ListAuditRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries;
    let lookups: Vec<(String, String, String)> = entries
        .into_iter()
        .filter(|e| ["get_bike", "list_owner_bikes", "get_track"].contains(&e.action.as_str()))
        .map(|e| (e.actor, e.action, e.subject))
        .collect();
    assert_eq!(lookups.len(), 4, "{lookups:?}");
    assert_eq!(
        lookups[3],
        (
            "patrol:cc".into(),
            "get_track".into(),
            "track of plate 潮阳A07777; reason: case 2026-118".into()
        )
    );
    assert_eq!(
        lookups[0],
        (
            "kiosk:k-1".into(),
            "get_bike".into(),
            "plate 潮阳A07777; reason: case 2026-118".into()
        )
    );
    assert_eq!(lookups[1].2, "plate 潮阳A09999 (not found)");
    assert_eq!(lookups[2].1, "list_owner_bikes");
    assert!(lookups[2].2.starts_with("owner "), "{:?}", lookups[2]);
    assert!(lookups[2].2.ends_with("(1 bikes)"), "{:?}", lookups[2]);
    assert!(
        !lookups[2].2.contains(ID_A),
        "the audit log holds the full ID number: {:?}",
        lookups[2]
    );

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = svc.dir.path();
        let db = dir.join("greenplate.db");
        assert_eq!(mode(&db), 0o600, "the database");
        let wal = dir.join("greenplate.db-wal");
        assert!(wal.exists(), "WAL mode makes a -wal file");
        assert_eq!(mode(&wal), 0o600, "the WAL");
    }
    svc.stop().await;
}

/// Issue #15, point 5 (in part): owner lookups by full ID number are rate-limited per kiosk
/// (30 a minute), so guessing an ID number through ListOwnerBikes is slow; a refusal is
/// RESOURCE_EXHAUSTED, counted and audited, and another kiosk is not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_lookups_are_rate_limited_per_kiosk() {
    let svc = TestService::start().await;
    let mut k = kiosk(&svc).await;
    let lookup = |id: &str| ListOwnerBikesRequest {
        id_number: id.into(),
        reason: String::new(),
    };
    for _ in 0..30 {
        k.list_owner_bikes(lookup(ID_A)).await.unwrap();
    }
    let refused = k.list_owner_bikes(lookup(ID_B)).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(
        svc.metric("greenplate_registry_owner_lookups_refused_total")
            .await,
        1.0
    );
    let token = new_kiosk_token(svc.channel().await, "k-2").await;
    clients::registry(svc.channel().await, &token)
        .unwrap()
        .list_owner_bikes(lookup(ID_B))
        .await
        .unwrap();
    let audit = clients::admin(svc.channel().await, ADMIN_TOKEN)
        .unwrap()
        .list_audit(ListAuditRequest {
            after_id: 0,
            limit: 1000,
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert!(
        audit
            .iter()
            .any(|e| e.actor == "kiosk:k-1" && e.action == "list_owner_bikes_refused"),
        "the refusal is audited"
    );
    svc.stop().await;
}
