//! The registry's behaviour, run against SQLite and (ignored unless asked) PostgreSQL.

use std::sync::Arc;

use crate::seqs::StoredSeqs;
use crate::store::NewReader;
use crate::testing::PgTestDb;
use crate::{
    BikeKey, Caller, Db, NewBike, NewOwner, Registry, RegistryError, Role, SecretBox, TagId,
    TheftDetails,
};

/// A throwaway database: a SQLite file in a temp dir, or a fresh PostgreSQL database.
pub(crate) struct TestDb {
    pub db: Db,
    _dir: Option<tempfile::TempDir>,
    /// For PostgreSQL: the database to drop afterwards.
    pg: Option<PgTestDb>,
}

impl TestDb {
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&Db::sqlite_url(&dir.path().join("t.db")))
            .await
            .unwrap();
        Self {
            db,
            _dir: Some(dir),
            pg: None,
        }
    }

    /// A new database on the PostgreSQL server of `GREENPLATE_TEST_PG`
    /// (default `postgres://postgres@127.0.0.1:5432/test`).
    pub async fn postgres() -> Self {
        let pg = PgTestDb::create().await;
        Self {
            db: Db::connect(&pg.url).await.unwrap(),
            _dir: None,
            pg: Some(pg),
        }
    }

    /// Closes the pool and drops a PostgreSQL test database.
    pub async fn cleanup(self) {
        self.db.close().await;
        if let Some(pg) = self.pg {
            pg.drop_db().await;
        }
    }
}

fn kiosk() -> Caller {
    Caller {
        role: Role::Kiosk,
        id: "k1".into(),
    }
}

fn admin() -> Caller {
    Caller {
        role: Role::Admin,
        id: "admin".into(),
    }
}

const ID_A: &str = "11010519491231002X";
const ID_B: &str = "440513199001011230";

fn bike(tag: &str, plate: &str) -> NewBike {
    NewBike {
        tag_id: tag.into(),
        plate: plate.into(),
        owner: NewOwner {
            name: "陈伟".into(),
            id_number: ID_A.into(),
            phone: "13812345678".into(),
        },
        make: "Yadea".into(),
        model: "G5".into(),
        color: "green".into(),
        frame_number: "LYD1234567".into(),
        request_id: String::new(),
        pin: Some("2468".into()),
    }
}

/// What a commit acknowledges survives a power loss: every pooled SQLite connection syncs
/// the WAL at each commit (`synchronous = FULL`, 2), not only at checkpoints (NORMAL, 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_commits_are_synced_before_they_return() {
    use sqlx::Row;
    let t = TestDb::sqlite().await;
    // More connections than the pool keeps idle: each one ran the setup.
    let mut conns = Vec::new();
    for _ in 0..4 {
        let mut c = t.db.pool().acquire().await.unwrap();
        let row = sqlx::query("PRAGMA synchronous")
            .fetch_one(&mut *c)
            .await
            .unwrap();
        assert_eq!(
            row.try_get::<i64, _>(0).unwrap(),
            2,
            "synchronous is not FULL"
        );
        let row = sqlx::query("PRAGMA journal_mode")
            .fetch_one(&mut *c)
            .await
            .unwrap();
        assert_eq!(row.try_get::<String, _>(0).unwrap(), "wal");
        conns.push(c);
    }
    drop(conns);
    t.cleanup().await;
}

async fn open(db: Db) -> Arc<Registry> {
    Registry::open(db, SecretBox::new(&[9; 32]), "admin-token")
        .await
        .unwrap()
}

fn tag(s: &str) -> TagId {
    TagId::parse(s).unwrap()
}

async fn registry_behaviour(t: &TestDb) {
    let db = t.db.clone();
    let reg = open(db.clone()).await;
    let tag_a = "e2801160600002070000abcd";
    let id = reg
        .register_bike(&kiosk(), bike(tag_a, "潮阳A12345"))
        .await
        .unwrap()
        .bike_id;
    assert_eq!(reg.index().lookup(tag(tag_a)).unwrap().bike_id, id);

    // Taken tag or plate.
    let dup_tag = reg.register_bike(&kiosk(), bike(tag_a, "潮阳B12345")).await;
    assert!(matches!(dup_tag, Err(RegistryError::AlreadyExists(w)) if w.contains("tag")));
    let dup_plate = reg
        .register_bike(&kiosk(), bike("E2801160600002070000ABCE", "潮阳a 12345"))
        .await;
    assert!(matches!(dup_plate, Err(RegistryError::AlreadyExists(w)) if w.contains("plate")));

    // Bad input names the field.
    let mut bad = bike("E2801160600002070000ABCF", "潮阳C12345");
    bad.owner.id_number = "110105194912310021".into();
    let err = reg.register_bike(&kiosk(), bad).await.unwrap_err();
    assert!(err.to_string().starts_with("owner.id_number"), "{err}");

    // Idempotent with a request id: a retry returns the same bike.
    let mut with_rid = bike("E2801160600002070000AB01", "潮阳D12345");
    with_rid.request_id = "kiosk-1-0001".into();
    let first = reg.register_bike(&kiosk(), with_rid.clone()).await.unwrap();
    let retry = reg.register_bike(&kiosk(), with_rid.clone()).await.unwrap();
    assert!(first.created && !retry.created);
    assert_eq!(first.bike_id, retry.bike_id);
    with_rid.plate = "潮阳D99999".into();
    assert!(matches!(
        reg.register_bike(&kiosk(), with_rid).await,
        Err(RegistryError::AlreadyExists(w)) if w.contains("request_id")
    ));

    // Lookup masks personal data; one owner, several bikes.
    let rec = reg
        .get_bike(&kiosk(), &BikeKey::Tag(tag_a.into()), "")
        .await
        .unwrap();
    assert_eq!(rec.plate, "潮阳A12345");
    assert_eq!(rec.owner_id_number_masked, "110***************");
    assert_eq!(rec.owner_phone_masked, "138****5678");
    assert_eq!(rec.frame_number, "LYD1234567");
    assert!(!rec.stolen && !rec.armed && rec.registered);
    let owned = reg.list_owner_bikes(&kiosk(), ID_A, "").await.unwrap();
    assert_eq!(owned.len(), 2);

    // Theft and recovery, idempotent theft report, hot index follows.
    let details = TheftDetails {
        stolen_at_ms: 0,
        place: "Mianbei Rd".into(),
        notes: "taken from outside the market".into(),
    };
    let r1 = reg
        .report_stolen(&kiosk(), "潮阳A12345", &details)
        .await
        .unwrap();
    let r2 = reg
        .report_stolen(&kiosk(), "潮阳A12345", &details)
        .await
        .unwrap();
    assert!(!r1.already_open && r2.already_open);
    assert_eq!(r1.report_id, r2.report_id);
    assert!(reg.index().lookup(tag(tag_a)).unwrap().stolen());
    assert!(
        reg.get_bike(&kiosk(), &BikeKey::Plate("潮阳A12345".into()), "")
            .await
            .unwrap()
            .stolen
    );
    // A stolen bike cannot be deregistered.
    assert!(matches!(
        reg.deregister_bike(&kiosk(), "潮阳A12345", "scrapped")
            .await,
        Err(RegistryError::FailedPrecondition(_))
    ));

    // A restart rebuilds the index from the database.
    let reopened = open(db.clone()).await;
    assert!(reopened.index().lookup(tag(tag_a)).unwrap().stolen());

    reg.report_recovered(&kiosk(), "潮阳A12345", "2468")
        .await
        .unwrap();
    assert!(!reg.index().lookup(tag(tag_a)).unwrap().stolen());
    assert!(matches!(
        reg.report_recovered(&kiosk(), "潮阳A12345", "2468").await,
        Err(RegistryError::FailedPrecondition(_))
    ));
    assert!(matches!(
        reg.report_stolen(&kiosk(), "潮阳Z99999", &details).await,
        Err(RegistryError::NotFound(_))
    ));

    // Arming needs the PIN; wrong PINs lock it after five tries.
    assert!(
        reg.set_armed(&kiosk(), "潮阳A12345", "2468", true)
            .await
            .unwrap()
    );
    assert!(reg.index().lookup(tag(tag_a)).unwrap().armed());
    assert!(matches!(
        reg.set_armed(&kiosk(), "潮阳A12345", "0000", false).await,
        Err(RegistryError::PermissionDenied(_))
    ));
    assert!(reg.index().lookup(tag(tag_a)).unwrap().armed());
    assert!(
        !reg.set_armed(&kiosk(), "潮阳A12345", "2468", false)
            .await
            .unwrap()
    );

    // Replace the tag: the old one is revoked and can never be bound again.
    let tag_new = "E2801160600002070000BBBB";
    reg.replace_tag(&kiosk(), "潮阳A12345", tag_new, "2468")
        .await
        .unwrap();
    assert!(reg.index().lookup(tag(tag_a)).unwrap().revoked());
    let new_state = reg.index().lookup(tag(tag_new)).unwrap();
    assert!(!new_state.revoked() && new_state.bike_id == id);
    assert_eq!(
        reg.get_bike(&kiosk(), &BikeKey::Tag(tag_a.into()), "")
            .await
            .unwrap()
            .tag_id,
        tag_new
    );
    let rebind = reg.register_bike(&kiosk(), bike(tag_a, "潮阳E12345")).await;
    assert!(matches!(rebind, Err(RegistryError::AlreadyExists(w)) if w.contains("revoked")));
    assert!(matches!(
        reg.replace_tag(&kiosk(), "潮阳D12345", tag_new, "2468")
            .await,
        Err(RegistryError::AlreadyExists(_))
    ));

    // Transfer: the current PIN authorises; the new owner's PIN then works, the old does not.
    let new_owner = NewOwner {
        name: "李娜".into(),
        id_number: ID_B.into(),
        phone: "13900001111".into(),
    };
    assert!(matches!(
        reg.transfer_ownership(&kiosk(), "潮阳A12345", &new_owner, "1111", "9753")
            .await,
        Err(RegistryError::PermissionDenied(_))
    ));
    reg.transfer_ownership(&kiosk(), "潮阳A12345", &new_owner, "2468", "9753")
        .await
        .unwrap();
    assert_eq!(
        reg.list_owner_bikes(&kiosk(), ID_B, "")
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        reg.list_owner_bikes(&kiosk(), ID_A, "")
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        reg.set_armed(&kiosk(), "潮阳A12345", "9753", true)
            .await
            .unwrap()
    );
    assert!(
        reg.set_armed(&kiosk(), "潮阳A12345", "2468", true)
            .await
            .is_err()
    );

    // Deregister: tag revoked, plate free for another bike.
    reg.deregister_bike(&kiosk(), "潮阳A12345", "scrapped")
        .await
        .unwrap();
    assert!(reg.index().lookup(tag(tag_new)).unwrap().revoked());
    assert!(!reg.index().lookup(tag(tag_new)).unwrap().armed());
    assert!(matches!(
        reg.get_bike(&kiosk(), &BikeKey::Plate("潮阳A12345".into()), "")
            .await,
        Err(RegistryError::NotFound(_))
    ));
    assert!(
        !reg.get_bike(&kiosk(), &BikeKey::Tag(tag_new.into()), "")
            .await
            .unwrap()
            .registered
    );
    reg.register_bike(&kiosk(), bike("E2801160600002070000CCCC", "潮阳A12345"))
        .await
        .unwrap();
    let reopened = open(db.clone()).await;
    assert!(reopened.index().lookup(tag(tag_new)).unwrap().revoked());
    assert!(reopened.index().lookup(tag(tag_a)).unwrap().revoked());

    // PIN lockout after five wrong PINs, counted across calls.
    for _ in 0..5 {
        assert!(matches!(
            reg.set_armed(&kiosk(), "潮阳D12345", "0000", true).await,
            Err(RegistryError::PermissionDenied(m)) if m.contains("does not match")
        ));
    }
    assert!(matches!(
        reg.set_armed(&kiosk(), "潮阳D12345", "2468", true).await,
        Err(RegistryError::PermissionDenied(m)) if m.contains("locked")
    ));

    // Personal data is not in the database in clear.
    let raw: Vec<(Vec<u8>, Vec<u8>)> =
        sqlx::query_as("SELECT id_number_sealed, phone_sealed FROM owners")
            .fetch_all(db.pool())
            .await
            .unwrap();
    assert!(!raw.is_empty());
    for (id, phone) in raw {
        assert!(!id.windows(6).any(|w| w == b"110105" || w == b"440513"));
        assert!(!phone.windows(6).any(|w| w == b"138123" || w == b"139000"));
    }

    // The audit log says who did what.
    let log = reg.list_audit(0, 1000).await.unwrap();
    let actions: Vec<&str> = log.iter().map(|e| e.action.as_str()).collect();
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
        assert!(actions.contains(&a), "audit log lacks {a}: {actions:?}");
    }
    assert!(log.iter().all(|e| e.actor == "kiosk:k1" && e.at_ms > 0));
    assert!(log.windows(2).all(|w| w[0].audit_id < w[1].audit_id));
    let later = reg.list_audit(log[2].audit_id, 2).await.unwrap();
    assert_eq!(later[0].audit_id, log[3].audit_id);
    assert_eq!(later.len(), 2);

    // Readers and kiosk tokens.
    let secret = reg
        .add_reader(
            &admin(),
            NewReader {
                reader_id: "rd-1",
                name: "Gate 1",
                lat: 23.26,
                lon: 116.6,
                format: "",
                key_version: 0,
                cameras: Vec::new(),
            },
        )
        .await
        .unwrap();
    // A v2 secret (the default): the broker login takes the password derived from it, not
    // the secret itself; a legacy v1 secret is its own password.
    let password = greenplate_proto::seal::login_password(&secret);
    assert!(secret.starts_with("gp2_"));
    assert!(reg.readers().authenticate("rd-1", "rd-1", &password));
    assert!(!reg.readers().authenticate("rd-1", "rd-1", &secret));
    let legacy = reg
        .add_reader(
            &admin(),
            NewReader {
                reader_id: "rd-v1",
                name: "Old gate",
                lat: 23.26,
                lon: 116.6,
                format: "",
                key_version: 1,
                cameras: Vec::new(),
            },
        )
        .await
        .unwrap();
    assert_eq!(greenplate_proto::seal::key_version(&legacy), 1);
    assert!(reg.readers().authenticate("rd-v1", "rd-v1", &legacy));
    assert_eq!(reg.readers().get("rd-v1").unwrap().key_version(), 1);
    assert!(matches!(
        reg.add_reader(
            &admin(),
            NewReader {
                reader_id: "rd-1",
                name: "again",
                lat: 23.0,
                lon: 116.0,
                format: "",
                key_version: 0,
                cameras: Vec::new(),
            },
        )
        .await,
        Err(RegistryError::AlreadyExists(_))
    ));
    let token = reg
        .add_kiosk(&admin(), "k-1", "Kiosk 1", None)
        .await
        .unwrap()
        .token;
    assert_eq!(reg.auth().authenticate(&token).unwrap().id, "k-1");
    let reopened = open(db).await;
    assert!(reopened.readers().authenticate("rd-1", "rd-1", &password));
    assert!(reopened.readers().authenticate("rd-v1", "rd-v1", &legacy));
    assert_eq!(reopened.readers().get("rd-1").unwrap().key_version(), 2);
    assert_eq!(
        reopened.auth().authenticate(&token).unwrap().role,
        Role::Kiosk
    );
    assert!(reopened.auth().authenticate("nope").is_none());
}

/// Sixteen kiosks register the same tag at once: exactly one wins, the rest are told the
/// tag is taken, and nothing is half-written.
async fn concurrent_registration(t: &TestDb) {
    let reg = open(t.db.clone()).await;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let reg = reg.clone();
        tasks.push(tokio::spawn(async move {
            let mut b = bike("E28011606000020700000FFF", &format!("潮阳K{:05}", i));
            b.pin = None;
            reg.register_bike(&kiosk(), b).await
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => won += 1,
            Err(RegistryError::AlreadyExists(_)) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(won, 1);
    let (bikes,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM bikes")
        .fetch_one(t.db.pool())
        .await
        .unwrap();
    assert_eq!(bikes, 1);
}

async fn import_behaviour(t: &TestDb) {
    let reg = open(t.db.clone()).await;
    let csv = "\
plate,tag_id,owner_name,owner_id_number,owner_phone,make,model,color,frame_number
潮阳A00001,E28011600000000000000001,王芳,11010519491231002X,13800000001,Yadea,G5,green,FRAME00001
潮阳A00002,E28011600000000000000002,王芳,11010519491231002X,13800000001,Aima,A500,white,FRAME00002
潮阳A00003,NOT-A-TAG,张强,440513199001011230,13800000003,Aima,A500,white,FRAME00003
潮阳A00004,E28011600000000000000004,张强,440513199001011231,13800000004,Aima,A500,white,FRAME00004
潮阳A00001,E28011600000000000000005,张强,440513199001011230,13800000005,Aima,A500,white,FRAME00005
潮阳A00006,E28011600000000000000006,张强,440513199001011230,13800000006,Aima,A500,white,FRAME00006
";
    let mut seen = 0;
    let report = reg
        .import_csv(&admin(), csv.as_bytes(), |n| seen = n)
        .await
        .unwrap();
    assert_eq!(seen, 6);
    assert_eq!((report.rows, report.accepted, report.unchanged), (6, 3, 0));
    let lines: Vec<u64> = report.rejected.iter().map(|r| r.line).collect();
    assert_eq!(lines, vec![4, 5, 6], "{:?}", report.rejected);
    assert!(report.rejected[0].reason.starts_with("tag_id"));
    assert!(
        report.rejected[1].reason.starts_with("owner_id_number")
            || report.rejected[1].reason.starts_with("owner.id_number")
    );
    assert!(report.rejected[2].reason.contains("plate"));
    assert!(
        reg.index()
            .lookup(tag("E28011600000000000000006"))
            .is_some()
    );
    // Imported bikes have no PIN until the owner sets one.
    assert!(matches!(
        reg.set_armed(&kiosk(), "潮阳A00001", "1234", true).await,
        Err(RegistryError::FailedPrecondition(_))
    ));
    assert!(matches!(
        reg.set_pin(&kiosk(), "潮阳A00001", ID_B, "1234").await,
        Err(RegistryError::PermissionDenied(_))
    ));
    reg.set_pin(&kiosk(), "潮阳A00001", ID_A, "1234")
        .await
        .unwrap();
    assert!(
        reg.set_armed(&kiosk(), "潮阳A00001", "1234", true)
            .await
            .unwrap()
    );

    // A re-run changes nothing.
    let again = reg
        .import_csv(&admin(), csv.as_bytes(), |_| {})
        .await
        .unwrap();
    assert_eq!((again.accepted, again.unchanged), (0, 3));
    assert_eq!(again.rejected.len(), 3);
    let (bikes,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM bikes")
        .fetch_one(t.db.pool())
        .await
        .unwrap();
    assert_eq!(bikes, 3);

    // The same tag twice in one file: a repeat is unchanged, a clash is rejected.
    let dupes = "\
tag_id,plate,owner_name,owner_id_number,owner_phone,make,model,color,frame_number
E28011600000000000000007,潮阳A00007,王芳,11010519491231002X,13800000001,Yadea,G5,green,FRAME00007
E28011600000000000000007,潮阳A00007,王芳,11010519491231002X,13800000001,Yadea,G5,green,FRAME00007
E28011600000000000000007,潮阳A00008,王芳,11010519491231002X,13800000001,Yadea,G5,green,FRAME00008
";
    let r = reg
        .import_csv(&admin(), dupes.as_bytes(), |_| {})
        .await
        .unwrap();
    assert_eq!((r.accepted, r.unchanged), (1, 1), "{r:?}");
    assert_eq!(r.rejected.len(), 1);
    assert_eq!(r.rejected[0].line, 4);

    // A file without the documented header is refused whole.
    assert!(matches!(
        reg.import_csv(&admin(), "tag,plate\n".as_bytes(), |_| {})
            .await,
        Err(crate::import::ImportError::Header { .. })
    ));
}

fn patrol() -> Caller {
    Caller {
        role: Role::Patrol,
        id: "u1".into(),
    }
}

/// How an owner proof came out, by the message (a test's view of PERMISSION_DENIED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Done,
    /// Checked, and wrong.
    Wrong,
    /// Refused unchecked: the PIN was locked.
    Locked,
}

fn outcome<T>(r: Result<T, RegistryError>) -> Outcome {
    match r {
        Ok(_) => Outcome::Done,
        Err(RegistryError::PermissionDenied(m)) if m.starts_with("PIN locked") => Outcome::Locked,
        Err(RegistryError::PermissionDenied(m))
            if m.starts_with("PIN does not match") || m.starts_with("owner_id_number is not") =>
        {
            Outcome::Wrong
        }
        Err(e) => panic!("unexpected: {e:?}"),
    }
}

fn counts(outcomes: &[Outcome]) -> (usize, usize, usize) {
    let n = |o| outcomes.iter().filter(|x| **x == o).count();
    (n(Outcome::Done), n(Outcome::Wrong), n(Outcome::Locked))
}

/// Issue #15, point 5: kiosks prove the owner (PIN) for recovery, tag replacement and
/// transfer, the admin and the police act without it; wrong ID numbers at SetPin count
/// against the same lockout as wrong PINs; every refusal is counted and audited.
async fn owner_proof_behaviour(t: &TestDb) {
    use crate::pin::{Action, Refusal};
    let reg = open(t.db.clone()).await;
    let first = reg
        .register_bike(&kiosk(), bike("E28011606000020700000101", "潮阳P00001"))
        .await
        .unwrap()
        .bike_id;
    let stolen = TheftDetails::default();

    // ReportRecovered: a kiosk needs the PIN (missing or malformed: INVALID_ARGUMENT, not
    // counted; wrong: refused and counted, the bike still stolen).
    reg.report_stolen(&kiosk(), "潮阳P00001", &stolen)
        .await
        .unwrap();
    for missing in ["", "12"] {
        assert!(matches!(
            reg.report_recovered(&kiosk(), "潮阳P00001", missing).await,
            Err(RegistryError::Invalid { field: "pin", .. })
        ));
    }
    assert_eq!(
        outcome(reg.report_recovered(&kiosk(), "潮阳P00001", "1111").await),
        Outcome::Wrong
    );
    assert!(reg.open_theft_report(first).await.unwrap().is_some());
    assert_eq!(
        reg.pin_failures()
            .get(Action::ReportRecovered, Refusal::WrongPin),
        1
    );
    reg.report_recovered(&kiosk(), "潮阳P00001", "2468")
        .await
        .unwrap();
    // The admin, and an officer resolving the incident (a patrol caller), need no PIN.
    for official in [admin(), patrol()] {
        reg.report_stolen(&kiosk(), "潮阳P00001", &stolen)
            .await
            .unwrap();
        reg.report_recovered(&official, "潮阳P00001", "")
            .await
            .unwrap();
    }

    // ReplaceTag: the same; a wrong PIN leaves the old tag bound.
    let old_tag = tag("E28011606000020700000101");
    assert_eq!(
        outcome(
            reg.replace_tag(&kiosk(), "潮阳P00001", "E28011606000020700000102", "1111")
                .await
        ),
        Outcome::Wrong
    );
    assert!(!reg.index().lookup(old_tag).unwrap().revoked());
    assert!(
        reg.index()
            .lookup(tag("E28011606000020700000102"))
            .is_none()
    );
    assert!(matches!(
        reg.replace_tag(&kiosk(), "潮阳P00001", "E28011606000020700000102", "")
            .await,
        Err(RegistryError::Invalid { field: "pin", .. })
    ));
    reg.replace_tag(&admin(), "潮阳P00001", "E28011606000020700000102", "")
        .await
        .unwrap();
    assert!(reg.index().lookup(old_tag).unwrap().revoked());

    // TransferOwnership: the admin needs no PIN either; SetArmed needs it from everyone.
    let new_owner = NewOwner {
        name: "李娜".into(),
        id_number: ID_B.into(),
        phone: "13900001111".into(),
    };
    reg.transfer_ownership(&admin(), "潮阳P00001", &new_owner, "", "1357")
        .await
        .unwrap();
    assert!(matches!(
        reg.set_armed(&admin(), "潮阳P00001", "", true).await,
        Err(RegistryError::Invalid { field: "pin", .. })
    ));
    // The new owner's PIN: four wrong ones, then the right one resets the count, so four
    // more still do not lock (nine would, without the reset).
    for armed in [true, false] {
        for _ in 0..4 {
            assert_eq!(
                outcome(reg.set_armed(&kiosk(), "潮阳P00001", "2468", armed).await),
                Outcome::Wrong
            );
        }
        assert_eq!(
            reg.set_armed(&kiosk(), "潮阳P00001", "1357", armed)
                .await
                .unwrap(),
            armed
        );
    }

    // SetPin on a bike without a PIN: wrong ID numbers count and lock like wrong PINs; the
    // 5th says so; then even the right ID number is refused unchecked.
    let mut imported = bike("E28011606000020700000201", "潮阳P00002");
    imported.pin = None;
    let second = reg.register_bike(&admin(), imported).await.unwrap().bike_id;
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(reg.set_pin(&kiosk(), "潮阳P00002", ID_B, "9753").await);
    }
    assert!(seen.iter().all(|r| matches!(r,
        Err(RegistryError::PermissionDenied(m)) if m.starts_with("owner_id_number is not"))));
    assert!(
        matches!(&seen[4], Err(RegistryError::PermissionDenied(m)) if m.contains("locked")),
        "the 5th says the PIN is now locked: {:?}",
        seen[4]
    );
    assert_eq!(
        outcome(reg.set_pin(&kiosk(), "潮阳P00002", ID_A, "9753").await),
        Outcome::Locked
    );
    assert_eq!(
        reg.pin_failures()
            .get(Action::SetPin, Refusal::WrongIdNumber),
        5
    );
    assert_eq!(reg.pin_failures().get(Action::SetPin, Refusal::Locked), 1);
    assert_eq!(
        reg.pin_failures().get(Action::SetArmed, Refusal::WrongPin),
        8
    );
    assert_eq!(
        reg.pin_failures()
            .get(Action::ReplaceTag, Refusal::WrongPin),
        1
    );
    assert_eq!(
        reg.pin_failures().get(Action::Transfer, Refusal::WrongPin),
        0
    );
    // The lock expires: then the right ID number sets the PIN.
    sqlx::query("UPDATE bikes SET pin_locked_until_ms = 1 WHERE plate = '潮阳P00002'")
        .execute(t.db.pool())
        .await
        .unwrap();
    reg.set_pin(&kiosk(), "潮阳P00002", ID_A, "9753")
        .await
        .unwrap();

    // The audit log has each failure, named by action, and no PIN or ID number.
    let log = reg.list_audit(0, 1000).await.unwrap();
    let failures: Vec<(&str, &str)> = log
        .iter()
        .filter(|e| e.action.contains("failed") || e.action == "pin_locked")
        .map(|e| (e.action.as_str(), e.subject.as_str()))
        .collect();
    assert_eq!(failures.len(), 2 + 8 + 5 + 1, "{failures:?}");
    let on = |bike: i64, what: &str| format!("bike {bike} ({what})");
    for (action, subject) in [
        ("pin_failed", on(first, "report_recovered")),
        ("pin_failed", on(first, "replace_tag")),
        ("pin_failed", on(first, "set_armed")),
        ("owner_id_failed", on(second, "set_pin")),
        ("owner_id_failed", on(second, "set_pin") + ": PIN locked"),
        ("pin_locked", on(second, "set_pin")),
    ] {
        assert!(
            failures.contains(&(action, subject.as_str())),
            "{action} {subject}: {failures:?}"
        );
    }
    assert!(
        log.iter()
            .all(|e| !e.subject.contains("2468") && !e.subject.contains("440513")),
        "no PIN or ID number in the audit log"
    );
}

/// Sixteen wrong PINs at once lock after exactly five: the rest are refused unchecked. Then a
/// right PIN is refused too. And a right PIN racing fifteen wrong ones: the attempts go one
/// at a time, so either it came before the lock (and succeeded) or after (and was refused);
/// never more than 5 wrong ones checked in a row.
async fn concurrent_wrong_pins(t: &TestDb) {
    let reg = open(t.db.clone()).await;
    for (tag_id, plate) in [
        ("E28011606000020700000301", "潮阳Q00001"),
        ("E28011606000020700000302", "潮阳Q00002"),
    ] {
        reg.register_bike(&kiosk(), bike(tag_id, plate))
            .await
            .unwrap();
    }
    let race = |plate: &'static str, right_at: Option<usize>| {
        let reg = reg.clone();
        async move {
            let tasks: Vec<_> = (0..16)
                .map(|i| {
                    let reg = reg.clone();
                    let pin = if Some(i) == right_at { "2468" } else { "0000" };
                    tokio::spawn(async move { reg.set_armed(&kiosk(), plate, pin, true).await })
                })
                .collect();
            let mut seen = Vec::new();
            for t in tasks {
                seen.push(outcome(t.await.unwrap()));
            }
            seen
        }
    };
    let seen = race("潮阳Q00001", None).await;
    assert_eq!(counts(&seen), (0, 5, 11), "{seen:?}");
    // Locked for every owner action of the bike, the right PIN too: one lockout per bike.
    assert_eq!(
        outcome(reg.set_armed(&kiosk(), "潮阳Q00001", "2468", true).await),
        Outcome::Locked
    );
    assert_eq!(
        outcome(
            reg.replace_tag(&kiosk(), "潮阳Q00001", "E28011606000020700000309", "2468")
                .await
        ),
        Outcome::Locked
    );
    use crate::pin::{Action, Refusal};
    assert_eq!(
        reg.pin_failures().get(Action::SetArmed, Refusal::WrongPin),
        5
    );
    assert_eq!(
        reg.pin_failures().get(Action::SetArmed, Refusal::Locked),
        12
    );

    let seen = race("潮阳Q00002", Some(7)).await;
    let (done, wrong, locked) = counts(&seen);
    if seen[7] == Outcome::Done {
        // Before the lock: up to 4 wrong ones before it, and 5 after it lock again.
        assert!(
            (5..=9).contains(&wrong) && done + wrong + locked == 16,
            "{seen:?}"
        );
    } else {
        assert_eq!((done, wrong, locked), (0, 5, 11), "{seen:?}");
    }
    assert_eq!(
        outcome(reg.set_armed(&kiosk(), "潮阳Q00002", "2468", true).await),
        Outcome::Locked,
        "locked at the end either way: {seen:?}"
    );
}

async fn rekey_behaviour(t: &TestDb) {
    use crate::rekey::{Rekeyed, opens_with, rekey};
    let (old, new) = (SecretBox::new(&[9; 32]), SecretBox::new(&[10; 32]));
    let reg = open(t.db.clone()).await;
    let tag_a = "E2801160600002070000AC01";
    reg.register_bike(&kiosk(), bike(tag_a, "潮阳E12345"))
        .await
        .unwrap();
    let secret = reg
        .add_reader(
            &admin(),
            NewReader {
                reader_id: "rd-k",
                name: "K",
                lat: 23.3,
                lon: 116.6,
                format: "",
                key_version: 0,
                cameras: Vec::new(),
            },
        )
        .await
        .unwrap();
    // A shared server key: made once, the same for every later caller.
    let key = reg.shared_key("claims", || "k1".into()).await.unwrap();
    assert_eq!(key, "k1");
    assert_eq!(
        reg.shared_key("claims", || "k2".into()).await.unwrap(),
        "k1"
    );
    drop(reg);
    assert_eq!(opens_with(&t.db, &old).await.unwrap(), Some(true));
    assert_eq!(opens_with(&t.db, &new).await.unwrap(), Some(false));
    // The wrong old key changes nothing.
    assert!(matches!(
        rekey(&t.db, &new, &old, "operator").await,
        Err(RegistryError::Crypto)
    ));
    assert_eq!(opens_with(&t.db, &old).await.unwrap(), Some(true));

    let done = rekey(&t.db, &old, &new, "operator").await.unwrap();
    assert_eq!(
        done,
        Rekeyed {
            owners: 1,
            readers: 1,
            keys: 1
        }
    );
    assert_eq!(opens_with(&t.db, &new).await.unwrap(), Some(true));
    // Under the new key: the reader's secret opens, the owner is found by ID number (the
    // keyed hash was recomputed) and the phone opens.
    let reg = Registry::open(t.db.clone(), new, "admin-token")
        .await
        .unwrap();
    assert!(
        reg.readers()
            .get("rd-k")
            .unwrap()
            .check_secret_current(&secret)
    );
    let owned = reg.list_owner_bikes(&kiosk(), ID_A, "").await.unwrap();
    assert_eq!(owned.len(), 1);
    assert_eq!(
        reg.shared_key("claims", || "k3".into()).await.unwrap(),
        "k1"
    );
    let audit = reg.list_audit(0, 100).await.unwrap();
    assert!(audit.iter().any(|e| e.action == "rotate_key"), "{audit:?}");
    drop(reg);
    // The old key no longer opens the registry.
    assert!(
        Registry::open(t.db.clone(), old, "admin-token")
            .await
            .is_err()
    );
}

/// Readers' seqs (the highest and the window) are stored and read back, and a stored row is
/// never replaced by one with a lower highest seq.
async fn seqs_behaviour(t: &TestDb) {
    let r = open(t.db.clone()).await;
    assert!(r.reader_seqs().await.unwrap().is_empty());
    let seqs = |id: &str, highest: u64, window: Option<&[u8]>| StoredSeqs {
        reader_id: id.into(),
        highest,
        window: window.map(<[u8]>::to_vec),
    };
    r.store_reader_seqs(&[seqs("rd-1", 10, Some(&[1, 2, 3])), seqs("rd-2", 5, None)])
        .await
        .unwrap();
    r.store_reader_seqs(&[seqs("rd-1", 7, Some(&[9])), seqs("rd-2", 9, Some(&[4, 5]))])
        .await
        .unwrap();
    // The same highest again replaces the window (late seqs below it were processed).
    r.store_reader_seqs(&[seqs("rd-1", 10, Some(&[1, 2, 3, 4]))])
        .await
        .unwrap();
    let mut got = r.reader_seqs().await.unwrap();
    got.sort();
    assert_eq!(
        got,
        [
            seqs("rd-1", 10, Some(&[1, 2, 3, 4])),
            seqs("rd-2", 9, Some(&[4, 5]))
        ]
    );
}

macro_rules! on_both_backends {
    ($($name:ident),*) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let t = super::TestDb::sqlite().await;
                    super::$name(&t).await;
                    t.cleanup().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[ignore = "needs PostgreSQL (GREENPLATE_TEST_PG, default postgres://postgres@127.0.0.1:5432/test)"]
                async fn $name() {
                    let t = super::TestDb::postgres().await;
                    super::$name(&t).await;
                    t.cleanup().await;
                }
            )*
        }
    };
}

on_both_backends!(
    registry_behaviour,
    owner_proof_behaviour,
    concurrent_wrong_pins,
    concurrent_registration,
    import_behaviour,
    rekey_behaviour,
    seqs_behaviour
);
