//! Test helpers (feature `test-util`), for this crate's tests and every other crate's:
//! throwaway PostgreSQL databases for the tests that need a server (with a failure that says
//! what to do when there is none), and [`eventually`], the one polling helper.

use crate::Db;

/// The PostgreSQL server of the tests that need one: `GREENPLATE_TEST_PG`, by default
/// `postgres://postgres@127.0.0.1:5432/test`.
pub fn postgres_server_url() -> String {
    std::env::var("GREENPLATE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh database on the server of [`postgres_server_url`], dropped by [`PgTestDb::drop_db`].
pub struct PgTestDb {
    server: Db,
    name: String,
    /// The URL of the new database.
    pub url: String,
}

impl PgTestDb {
    /// Creates the database. Panics, naming the server and what to do, when the server cannot
    /// be reached: that is a missing service, not a failure of the code under test.
    pub async fn create() -> Self {
        let base = postgres_server_url();
        let server = match Db::connect(&base).await {
            Ok(db) => db,
            Err(e) => panic!(
                "PostgreSQL is not reachable at {base} ({e}). This test needs it: start it \
                 (.ci/test starts the machine's), point GREENPLATE_TEST_PG at another server, \
                 or leave these tests out (.ci/test --no-services, or cargo test without \
                 --include-ignored)."
            ),
        };
        let name = format!("gp_test_{}", hex::encode(rand::random::<[u8; 6]>()));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(server.pool())
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} on {base}: {e}"));
        let url = match base.rsplit_once('/') {
            Some((server, _)) if server.contains("://") => format!("{server}/{name}"),
            _ => panic!("GREENPLATE_TEST_PG={base} has no database path (…/DBNAME)"),
        };
        Self { server, name, url }
    }

    /// Drops the database (its pools must be closed first).
    pub async fn drop_db(self) {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {}",
            self.name
        )))
        .execute(self.server.pool())
        .await
        .unwrap_or_else(|e| panic!("DROP DATABASE {}: {e}", self.name));
        self.server.close().await;
    }
}

/// How often [`eventually`] polls.
pub const POLL_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

/// Polls `probe` until it gives `Ok`, every [`POLL_EVERY`], and returns its value. After
/// `within` it fails the test, naming `what` and the probe's last `Err` (what it saw). The one
/// polling helper of the tests: no sleeps to wait for readiness, no hand-written deadlines.
pub async fn eventually<T, E, F, Fut>(what: &str, within: std::time::Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Debug,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(last) if tokio::time::Instant::now() >= deadline => {
                panic!("{what}: not within {within:?}; last seen: {last:?}")
            }
            Err(_) => tokio::time::sleep(POLL_EVERY).await,
        }
    }
}
