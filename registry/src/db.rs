//! The database handle shared by every crate: one sqlx `Any` pool over SQLite or PostgreSQL,
//! chosen by URL, and per-crate migrations (each crate keeps its own migrations folder and its
//! own migrations table, so the schema a crate owns lives next to its code).
//!
//! SQL written against [`Db`] uses `$1`-style placeholders (SQLite accepts them too) and only
//! the types both backends map the same way through `Any`: `i64`, `f64`, text, blobs.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor};

/// Re-exported where it always was; it lives in [`crate::clock`].
pub use crate::clock::now_ms;

/// Which database the URL named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// Placeholder number `n`. Positional `$n` works on both backends, but SQLite resolves a
    /// named parameter by walking a list, which made binding thousands of them quadratic (70 %
    /// of an import's time in `sqlite3_bind_parameter_name`); its anonymous `?` is bound in
    /// order at no cost. Every generated statement must bind in placeholder order, so both
    /// forms agree.
    pub fn ph(self, n: usize) -> String {
        match self {
            Backend::Sqlite => "?".to_owned(),
            Backend::Postgres => format!("${n}"),
        }
    }

    /// `(p_first, .., p_first+n-1)`.
    pub fn placeholders(self, first: usize, n: usize) -> String {
        let list: Vec<String> = (first..first + n).map(|i| self.ph(i)).collect();
        format!("({})", list.join(", "))
    }

    /// `(p1, .., p_cols), (p_cols+1, ..), ...` for `rows` rows of a multi-row INSERT.
    pub fn values(self, rows: usize, cols: usize) -> String {
        values_with(rows, cols, |n| self.placeholders(n, cols))
    }
}

/// One tuple per row of a multi-row INSERT, from `tuple(first placeholder number)`.
pub fn values_with(rows: usize, cols: usize, tuple: impl Fn(usize) -> String) -> String {
    (0..rows)
        .map(|r| tuple(1 + r * cols))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
    #[error("cannot open database: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("migration of {owner} failed: {source}")]
    Migrate {
        owner: &'static str,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
}

/// A pooled connection to the service's database.
#[derive(Clone, Debug)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    /// SQLite has one writer at a time. Writers of this process queue here, in order, and
    /// are woken as soon as the one before commits, instead of meeting in SQLite's busy
    /// handler, which sleeps in steps of 1, 2, 5, 10 ... ms (the alert commit waited there
    /// behind the history writer). `None` on PostgreSQL.
    write_gate: Option<Arc<tokio::sync::Mutex<()>>>,
}

/// A write transaction ([`Db::begin_write`]): a `Transaction` that, on SQLite, holds the
/// process's write gate until it commits, rolls back or is dropped. Derefs to the
/// connection, so `&mut *tx` and `&mut tx` are used as with a `Transaction`.
#[derive(Debug)]
pub struct WriteTx {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    _gate: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl WriteTx {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }

    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.tx.rollback().await
    }
}

impl std::ops::Deref for WriteTx {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

/// A crate's migrations for each backend, applied under their own migrations table.
pub struct Migrations {
    /// Who owns these tables (used to name the migrations table and in errors).
    pub owner: &'static str,
    pub sqlite: Migrator,
    pub postgres: Migrator,
}

impl Db {
    /// Opens (and for SQLite creates) the database at `url`.
    pub async fn connect(url: &str) -> Result<Self, DbError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(DbError::UnsupportedUrl(url.to_owned()));
        };
        let options = AnyConnectOptions::from_str(url).map_err(DbError::Connect)?;
        let pool = match backend {
            Backend::Sqlite => {
                AnyPoolOptions::new()
                    .max_connections(4)
                    .after_connect(|conn, _meta| {
                        Box::pin(async move {
                            // synchronous = FULL: a commit is on disk (the WAL synced)
                            // before it returns, so what a kiosk was told is registered or
                            // reported stolen, and an alert streamed to a patrol, survives
                            // a power loss. NORMAL syncs only at checkpoints, which survives
                            // a crash of the process but not of the machine. Commits here
                            // are grouped (alerts, history), so the fsync is shared.
                            conn.execute(
                                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                                 PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
                            )
                            .await?;
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await
            }
            Backend::Postgres => {
                AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(options)
                    .await
            }
        }
        .map_err(DbError::Connect)?;
        let write_gate =
            (backend == Backend::Sqlite).then(|| Arc::new(tokio::sync::Mutex::new(())));
        Ok(Self {
            pool,
            backend,
            write_gate,
        })
    }

    /// The SQLite URL of a database file, created if missing.
    pub fn sqlite_url(path: &std::path::Path) -> String {
        format!("sqlite://{}?mode=rwc", path.display())
    }

    /// Begins a transaction that will write. On SQLite it first waits its turn at the
    /// process's write gate (in order, woken at once), then takes the write lock
    /// (`BEGIN IMMEDIATE`), so a writer never fails upgrading a read lock and only another
    /// process's writer can make it wait in SQLite's busy handler.
    pub async fn begin_write(&self) -> Result<WriteTx, sqlx::Error> {
        let gate = match &self.write_gate {
            Some(g) => Some(g.clone().lock_owned().await),
            None => None,
        };
        let tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        Ok(WriteTx { tx, _gate: gate })
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Applies a crate's migrations for this backend.
    pub async fn migrate(&self, migrations: Migrations) -> Result<(), DbError> {
        let Migrations {
            owner,
            sqlite,
            postgres,
        } = migrations;
        let mut migrator = match self.backend {
            Backend::Sqlite => sqlite,
            Backend::Postgres => postgres,
        };
        migrator.dangerous_set_table_name(format!("_migrations_{owner}"));
        migrator
            .run(&self.pool)
            .await
            .map_err(|source| DbError::Migrate { owner, source })
    }

    /// Whether the database answers a trivial query.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}
