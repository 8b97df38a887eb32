//! Issue #15, point 5 (the rest) and the PIN part of point 8, through gRPC: kiosks prove the
//! owner for owner actions (ReportRecovered, ReplaceTag, TransferOwnership need the PIN; the
//! admin acts without it), wrong ID numbers at SetPin count against the same per-bike lockout
//! as wrong PINs, sixteen concurrent wrong attempts lock after exactly five (on SQLite and on
//! PostgreSQL), and every refusal is counted in /metrics by action and reason and audited.

use crate::support;

use greenplate_proto::v1::registry_client::RegistryClient;
use greenplate_proto::v1::{
    GetBikeRequest, Owner, ReplaceTagRequest, ReportRecoveredRequest, ReportStolenRequest,
    SetArmedRequest, SetPinRequest, TransferOwnershipRequest, get_bike_request,
};
use greenplate_simulator::clients::{self, Authed};
use support::{ADMIN_TOKEN, TestService, bike};
use tonic::{Code, Status};

/// The owner of every bike here (support::bike), and someone else.
const OWNER_ID: &str = "11010519491231002X";
const OTHER_ID: &str = "440513199001011230";

fn failures(action: &str, reason: &str) -> String {
    format!("greenplate_registry_pin_failures_total{{action=\"{action}\",reason=\"{reason}\"}}")
}

/// How a refused owner proof came out, from its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// Checked, and wrong.
    Wrong,
    /// Refused unchecked: the bike's PIN was locked.
    Locked,
}

fn refused(s: &Status) -> Refused {
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    let m = s.message();
    if m.starts_with("PIN locked") {
        Refused::Locked
    } else if m.starts_with("PIN does not match") || m.starts_with("owner_id_number is not") {
        Refused::Wrong
    } else {
        panic!("an unexpected refusal: {s:?}")
    }
}

/// Runs `call` sixteen times at once (each on its own clone of the client) and tells how
/// many were checked and wrong, and how many refused as locked; none may succeed.
async fn sixteen_at_once<F, Fut>(k: &RegistryClient<Authed>, call: F) -> (usize, usize)
where
    F: Fn(RegistryClient<Authed>) -> Fut,
    Fut: std::future::Future<Output = Result<(), Status>> + Send + 'static,
{
    let tasks: Vec<_> = (0..16).map(|_| tokio::spawn(call(k.clone()))).collect();
    let mut seen = Vec::new();
    for t in tasks {
        let status = t.await.unwrap().expect_err("a wrong proof was accepted");
        seen.push(refused(&status));
    }
    let n = |r| seen.iter().filter(|s| **s == r).count();
    (n(Refused::Wrong), n(Refused::Locked))
}

fn stolen(plate: &str) -> ReportStolenRequest {
    ReportStolenRequest {
        plate: plate.into(),
        ..Default::default()
    }
}

/// A bike registered without a PIN, as a bulk import leaves it: through the `greenplate
/// registry import` command on the running service's data directory and database.
async fn import_without_pin(svc: &TestService, tag: &str, plate: &str) {
    let csv = svc.dir.path().join("import.csv");
    std::fs::write(
        &csv,
        format!(
            "tag_id,plate,owner_name,owner_id_number,owner_phone,make,model,color,frame_number\n\
             {tag},{plate},王芳,{OWNER_ID},13800000001,Yadea,G5,green,FRAME00101\n"
        ),
    )
    .unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_greenplate"));
    cmd.args(["registry", "import"])
        .arg(&csv)
        .arg("--data-dir")
        .arg(svc.dir.path())
        .env_remove("GREENPLATE_DATABASE_URL")
        .env_remove("GREENPLATE_SECRET_KEY");
    if let Some(url) = &svc.database_url {
        cmd.arg("--database-url").arg(url);
    }
    let out = cmd.output().await.unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("1 imported"), "{text}");
}

/// Sixteen concurrent wrong PINs (SetArmed) lock the bike after exactly five: five are
/// checked, eleven refused unchecked. Then the right PIN is refused for every owner action of
/// that bike, while the admin can still act. Sixteen concurrent wrong ID numbers (SetPin, on
/// a bike without a PIN) do the same. All counted by action and reason, exported at 0 from
/// the start.
async fn concurrent_wrong_proofs_lock_after_five(svc: TestService) {
    // Every series is there before the first failure.
    for (action, reason) in [
        ("set_armed", "wrong_pin"),
        ("set_pin", "wrong_id_number"),
        ("report_recovered", "locked"),
        ("replace_tag", "wrong_pin"),
        ("transfer", "locked"),
    ] {
        assert_eq!(svc.metric(&failures(action, reason)).await, 0.0);
    }
    let k = svc.add_kiosk("k-race").await;
    let plate = "潮阳L00001";
    k.clone()
        .register_bike(bike("E28011606000020700000A01", plate))
        .await
        .unwrap();
    k.clone().report_stolen(stolen(plate)).await.unwrap();

    let arm = move |mut k: RegistryClient<Authed>| async move {
        k.set_armed(SetArmedRequest {
            plate: plate.into(),
            pin: "0000".into(),
            armed: true,
        })
        .await
        .map(|_| ())
    };
    assert_eq!(sixteen_at_once(&k, arm).await, (5, 11));
    assert_eq!(svc.metric(&failures("set_armed", "wrong_pin")).await, 5.0);
    assert_eq!(svc.metric(&failures("set_armed", "locked")).await, 11.0);

    // Locked: the right PIN is refused unchecked, whatever the action.
    let mut k1 = k.clone();
    let right = k1
        .set_armed(SetArmedRequest {
            plate: plate.into(),
            pin: "2468".into(),
            armed: true,
        })
        .await
        .unwrap_err();
    assert_eq!(refused(&right), Refused::Locked);
    let right = k1
        .report_recovered(ReportRecoveredRequest {
            plate: plate.into(),
            pin: "2468".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused(&right), Refused::Locked);
    let right = k1
        .replace_tag(ReplaceTagRequest {
            plate: plate.into(),
            new_tag_id: "E28011606000020700000A02".into(),
            pin: "2468".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused(&right), Refused::Locked);
    let right = k1
        .transfer_ownership(TransferOwnershipRequest {
            plate: plate.into(),
            new_owner: Some(Owner {
                name: "李娜".into(),
                id_number: OTHER_ID.into(),
                phone: "13900001111".into(),
            }),
            pin: "2468".into(),
            new_pin: "9753".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused(&right), Refused::Locked);
    for action in ["set_armed", "report_recovered", "replace_tag", "transfer"] {
        let expected = if action == "set_armed" { 12.0 } else { 1.0 };
        assert_eq!(
            svc.metric(&failures(action, "locked")).await,
            expected,
            "{action}"
        );
    }
    // Nothing changed: still stolen, not armed. The admin acts on its own authority.
    let by_plate = GetBikeRequest {
        key: Some(get_bike_request::Key::Plate(plate.into())),
        ..Default::default()
    };
    let b = k1.get_bike(by_plate.clone()).await.unwrap().into_inner();
    assert!(b.stolen && !b.armed);
    let mut admin = clients::registry(svc.channel().await, ADMIN_TOKEN).unwrap();
    admin
        .report_recovered(ReportRecoveredRequest {
            plate: plate.into(),
            pin: String::new(),
        })
        .await
        .unwrap();
    assert!(!k1.get_bike(by_plate).await.unwrap().into_inner().stolen);

    // SetPin on a bike without a PIN: sixteen wrong ID numbers at once, the same.
    let plate = "潮阳L00002";
    import_without_pin(&svc, "E28011606000020700000A03", plate).await;
    let set_pin = move |id: &'static str| {
        move |mut k: RegistryClient<Authed>| async move {
            k.set_pin(SetPinRequest {
                plate: plate.into(),
                owner_id_number: id.into(),
                new_pin: "1357".into(),
            })
            .await
            .map(|_| ())
        }
    };
    assert_eq!(sixteen_at_once(&k, set_pin(OTHER_ID)).await, (5, 11));
    let right = set_pin(OWNER_ID)(k.clone()).await.unwrap_err();
    assert_eq!(refused(&right), Refused::Locked);
    assert_eq!(
        svc.metric(&failures("set_pin", "wrong_id_number")).await,
        5.0
    );
    assert_eq!(svc.metric(&failures("set_pin", "locked")).await, 12.0);

    // The audit log has each failure, named by action; the 5th says it locked.
    let audit = svc.audit_log().await;
    let by_kiosk = |action: &str, subject_ends: &str| {
        audit
            .iter()
            .filter(|e| {
                e.actor == "kiosk:k-race" && e.action == action && e.subject.ends_with(subject_ends)
            })
            .count()
    };
    assert_eq!(by_kiosk("pin_failed", "(set_armed)"), 4);
    assert_eq!(by_kiosk("pin_failed", "(set_armed): PIN locked"), 1);
    assert_eq!(by_kiosk("pin_locked", "(set_armed)"), 12);
    assert_eq!(by_kiosk("owner_id_failed", "(set_pin)"), 4);
    assert_eq!(by_kiosk("owner_id_failed", "(set_pin): PIN locked"), 1);
    assert_eq!(by_kiosk("pin_locked", "(set_pin)"), 12);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_wrong_proofs_lock_after_five_sqlite() {
    concurrent_wrong_proofs_lock_after_five(TestService::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (GREENPLATE_TEST_PG)"]
async fn concurrent_wrong_proofs_lock_after_five_postgres() {
    concurrent_wrong_proofs_lock_after_five(TestService::start_postgres().await).await;
}

/// ReportRecovered, ReplaceTag and TransferOwnership need the owner's PIN from a kiosk: none
/// is INVALID_ARGUMENT naming `pin` (not counted), a wrong one PERMISSION_DENIED (counted,
/// and nothing changes). The admin token needs none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_actions_need_the_pin_from_a_kiosk_not_from_the_admin() {
    let svc = TestService::start().await;
    let mut k = svc.add_kiosk("k-proof").await;
    let mut admin = clients::registry(svc.channel().await, ADMIN_TOKEN).unwrap();
    let plate = "潮阳M00001";
    let old_tag = "E28011606000020700000B01";
    k.register_bike(bike(old_tag, plate)).await.unwrap();
    let by_plate = GetBikeRequest {
        key: Some(get_bike_request::Key::Plate(plate.into())),
        ..Default::default()
    };
    let recovered = |pin: &str| ReportRecoveredRequest {
        plate: plate.into(),
        pin: pin.into(),
    };
    let replace = |tag: &str, pin: &str| ReplaceTagRequest {
        plate: plate.into(),
        new_tag_id: tag.into(),
        pin: pin.into(),
    };
    let transfer = |pin: &str, new_pin: &str| TransferOwnershipRequest {
        plate: plate.into(),
        new_owner: Some(Owner {
            name: "李娜".into(),
            id_number: OTHER_ID.into(),
            phone: "13900001111".into(),
        }),
        pin: pin.into(),
        new_pin: new_pin.into(),
    };
    let no_pin = |s: Status| {
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        assert!(s.message().starts_with("pin "), "{s:?}");
    };

    // ReportRecovered.
    k.report_stolen(stolen(plate)).await.unwrap();
    no_pin(k.report_recovered(recovered("")).await.unwrap_err());
    let wrong = k.report_recovered(recovered("1111")).await.unwrap_err();
    assert_eq!(refused(&wrong), Refused::Wrong);
    assert!(
        k.get_bike(by_plate.clone())
            .await
            .unwrap()
            .into_inner()
            .stolen
    );
    k.report_recovered(recovered("2468")).await.unwrap();
    assert!(
        !k.get_bike(by_plate.clone())
            .await
            .unwrap()
            .into_inner()
            .stolen
    );
    k.report_stolen(stolen(plate)).await.unwrap();
    admin.report_recovered(recovered("")).await.unwrap();
    assert!(
        !k.get_bike(by_plate.clone())
            .await
            .unwrap()
            .into_inner()
            .stolen
    );

    // ReplaceTag.
    no_pin(
        k.replace_tag(replace("E28011606000020700000B02", ""))
            .await
            .unwrap_err(),
    );
    let wrong = k
        .replace_tag(replace("E28011606000020700000B02", "1111"))
        .await
        .unwrap_err();
    assert_eq!(refused(&wrong), Refused::Wrong);
    assert_eq!(
        k.get_bike(by_plate.clone())
            .await
            .unwrap()
            .into_inner()
            .tag_id,
        old_tag
    );
    k.replace_tag(replace("E28011606000020700000B02", "2468"))
        .await
        .unwrap();
    admin
        .replace_tag(replace("E28011606000020700000B03", ""))
        .await
        .unwrap();
    assert_eq!(
        k.get_bike(by_plate.clone())
            .await
            .unwrap()
            .into_inner()
            .tag_id,
        "E28011606000020700000B03"
    );

    // TransferOwnership: a kiosk gives the current PIN; the admin need not.
    no_pin(
        k.transfer_ownership(transfer("", "9753"))
            .await
            .unwrap_err(),
    );
    let wrong = k
        .transfer_ownership(transfer("1111", "9753"))
        .await
        .unwrap_err();
    assert_eq!(refused(&wrong), Refused::Wrong);
    admin
        .transfer_ownership(transfer("", "9753"))
        .await
        .unwrap();
    let b = k.get_bike(by_plate).await.unwrap().into_inner();
    assert_eq!(b.owner.unwrap().id_number, "440***************");
    // The new owner's PIN works.
    k.set_armed(SetArmedRequest {
        plate: plate.into(),
        pin: "9753".into(),
        armed: true,
    })
    .await
    .unwrap();

    for action in ["report_recovered", "replace_tag", "transfer"] {
        assert_eq!(
            svc.metric(&failures(action, "wrong_pin")).await,
            1.0,
            "{action}"
        );
        assert_eq!(
            svc.metric(&failures(action, "locked")).await,
            0.0,
            "{action}"
        );
    }
    svc.stop().await;
}
