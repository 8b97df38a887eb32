//! The registry's behaviour, run against SQLite and (ignored unless asked) PostgreSQL.

use std::sync::Arc;

use crate::{BikeKey, Caller, Db, NewBike, Registry, RegistryError, Role, SecretBox, TagId};

/// A throwaway database: a SQLite file in a temp dir, or a fresh PostgreSQL database.
pub(crate) struct TestDb {
    pub db: Db,
    _dir: Option<tempfile::TempDir>,
    /// For PostgreSQL: the server connection and the database to drop afterwards.
    pg: Option<(Db, String)>,
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
        let base = std::env::var("GREENPLATE_TEST_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let admin = Db::connect(&base).await.expect("PostgreSQL is reachable");
        let name = format!("gp_test_{}", hex::encode(rand::random::<[u8; 6]>()));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(admin.pool())
            .await
            .unwrap();
        let url = match base.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{name}"),
            None => unreachable!("a postgres URL has a path"),
        };
        Self {
            db: Db::connect(&url).await.unwrap(),
            _dir: None,
            pg: Some((admin, name)),
        }
    }

    /// Closes the pool and drops a PostgreSQL test database.
    pub async fn cleanup(self) {
        self.db.close().await;
        if let Some((admin, name)) = self.pg {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name}"
            )))
            .execute(admin.pool())
            .await
            .unwrap();
        }
    }
}

fn kiosk() -> Caller {
    Caller {
        role: Role::Kiosk,
        id: "k1".into(),
    }
}

fn bike(tag: &str, plate: &str) -> NewBike {
    NewBike {
        tag_id: tag.into(),
        plate: plate.into(),
        owner_name: "陈伟".into(),
        owner_id_number: "11010519491231002X".into(),
        owner_phone: "13812345678".into(),
        make: "Yadea".into(),
        model: "G5".into(),
        color: "green".into(),
    }
}

async fn open(db: Db) -> Arc<Registry> {
    Registry::open(db, SecretBox::new(&[9; 32]), "admin-token")
        .await
        .unwrap()
}

async fn registry_behaviour(t: &TestDb) {
    let db = t.db.clone();
    let reg = open(db.clone()).await;
    let tag = "e2801160600002070000abcd";
    let id = reg
        .register_bike(&kiosk(), bike(tag, "潮阳A12345"))
        .await
        .unwrap();
    let tag_id = TagId::parse(tag).unwrap();
    assert_eq!(reg.index().lookup(tag_id).unwrap().bike_id, id);

    // Taken tag or plate.
    let dup_tag = reg.register_bike(&kiosk(), bike(tag, "潮阳B12345")).await;
    assert!(matches!(dup_tag, Err(RegistryError::AlreadyExists(w)) if w.contains("tag")));
    let dup_plate = reg
        .register_bike(&kiosk(), bike("E2801160600002070000ABCE", "潮阳a 12345"))
        .await;
    assert!(matches!(dup_plate, Err(RegistryError::AlreadyExists(w)) if w.contains("plate")));

    // Bad input names the field.
    let mut bad = bike("E2801160600002070000ABCF", "潮阳C12345");
    bad.owner_id_number = "110105194912310021".into();
    let err = reg.register_bike(&kiosk(), bad).await.unwrap_err();
    assert!(err.to_string().starts_with("owner.id_number"), "{err}");

    // Lookup masks personal data.
    let rec = reg.get_bike(&BikeKey::Tag(tag.into())).await.unwrap();
    assert_eq!(rec.plate, "潮阳A12345");
    assert_eq!(rec.owner_id_number_masked, "110***********002X");
    assert_eq!(rec.owner_phone_masked, "138****5678");
    assert!(!rec.stolen);

    // Theft and recovery, idempotent theft report, hot index follows.
    let r1 = reg.report_stolen(&kiosk(), "潮阳A12345").await.unwrap();
    let r2 = reg.report_stolen(&kiosk(), "潮阳A12345").await.unwrap();
    assert_eq!(r1, r2);
    assert!(reg.index().lookup(tag_id).unwrap().stolen());
    assert!(
        reg.get_bike(&BikeKey::Plate("潮阳A12345".into()))
            .await
            .unwrap()
            .stolen
    );

    // A restart rebuilds the index from the database.
    let reopened = open(db.clone()).await;
    assert!(reopened.index().lookup(tag_id).unwrap().stolen());

    reg.report_recovered(&kiosk(), "潮阳A12345").await.unwrap();
    assert!(!reg.index().lookup(tag_id).unwrap().stolen());
    assert!(matches!(
        reg.report_recovered(&kiosk(), "潮阳A12345").await,
        Err(RegistryError::FailedPrecondition(_))
    ));
    assert!(matches!(
        reg.report_stolen(&kiosk(), "潮阳Z99999").await,
        Err(RegistryError::NotFound(_))
    ));

    // Personal data is not in the database in clear.
    let raw: Vec<(Vec<u8>, Vec<u8>)> =
        sqlx::query_as("SELECT id_number_sealed, phone_sealed FROM owners")
            .fetch_all(db.pool())
            .await
            .unwrap();
    for (id, phone) in raw {
        assert!(!id.windows(6).any(|w| w == b"110105"));
        assert!(!phone.windows(6).any(|w| w == b"138123"));
    }

    // Readers and kiosk tokens.
    let admin = Caller {
        role: Role::Admin,
        id: "admin".into(),
    };
    let secret = reg
        .add_reader(&admin, "rd-1", "Gate 1", 23.26, 116.6)
        .await
        .unwrap();
    assert!(reg.readers().authenticate("rd-1", "rd-1", &secret));
    assert!(matches!(
        reg.add_reader(&admin, "rd-1", "again", 23.0, 116.0).await,
        Err(RegistryError::AlreadyExists(_))
    ));
    let token = reg.add_kiosk(&admin, "k-1", "Kiosk 1").await.unwrap();
    assert_eq!(reg.auth().authenticate(&token).unwrap().id, "k-1");
    let reopened = open(db).await;
    assert!(reopened.readers().authenticate("rd-1", "rd-1", &secret));
    assert_eq!(
        reopened.auth().authenticate(&token).unwrap().role,
        Role::Kiosk
    );
    assert!(reopened.auth().authenticate("nope").is_none());
}

#[tokio::test]
async fn registry_on_sqlite() {
    let t = TestDb::sqlite().await;
    registry_behaviour(&t).await;
    t.cleanup().await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (GREENPLATE_TEST_PG, default postgres://postgres@127.0.0.1:5432/test)"]
async fn registry_on_postgres() {
    let t = TestDb::postgres().await;
    registry_behaviour(&t).await;
    t.cleanup().await;
}
