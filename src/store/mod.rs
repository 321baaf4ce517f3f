//! Storage: one seam over SQLite and PostgreSQL, chosen at start from the database URL.
//!
//! Both backends run the same SQL (`$1` placeholders, `RETURNING` and `ON CONFLICT` exist in
//! both); where the dialects differ, the difference lives in the migrations (`migrations/sqlite`,
//! `migrations/postgres`), which also hold the integrity rules: seat counting and the capacity
//! limit are triggers, so every write is a single atomic statement on either backend. The one
//! path that differs is how AssignCourse reaches SQLite's single writer: in groups, several
//! such statements to a transaction (`group_commit`); PostgreSQL takes each on its own.
//!
//! Statements with `RETURNING` are read with `fetch_all`, never `fetch_one`/`fetch_optional`:
//! SQLite runs its WAL auto-checkpoint only when a statement is stepped to completion, and
//! stopping after the first row skipped it on every write, so the WAL grew without bound (1 GB
//! after 60,000 AssignCourse calls, measured) and reads slowed with it. [`first_row`] takes the
//! one row.
//!
//! Page queries say `LIMIT CAST($n AS BIGINT)`, not `LIMIT $n`: SQLite's planner peeks at a bare
//! LIMIT parameter, which marks the cached statement stale whenever a value is bound, so every
//! call would parse and plan the query again (a fifth of the CPU of ListCourses, measured with
//! perf). The cast hides the parameter from the planner and the prepared plan is reused.

mod checkpoint;
mod courses;
mod enrollments;
mod errors;
mod group_commit;
mod migrate;
mod students;
mod verify;

use std::{str::FromStr, sync::Arc, time::Duration};

use sqlx::{
    PgPool, SqlitePool,
    postgres::{PgConnectOptions, PgPoolOptions},
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

pub use checkpoint::Checkpointer;
pub use group_commit::Assigner;
pub use migrate::Applied;

use crate::error::Resource;
pub use verify::Violation;

/// Connection pool settings.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    /// How long a call waits for a free connection before it fails with UNAVAILABLE.
    pub acquire_timeout: Duration,
}

/// An open database of either kind. Cloning is cheap (pools are shared handles).
#[derive(Debug, Clone)]
pub enum Store {
    /// SQLite allows one writer at a time. Writers wait for the single `writer` connection in
    /// the pool's queue (in order, without spinning) instead of racing for the file lock, whose
    /// busy handler sleeps and retries; reads run in parallel on `readers` (WAL mode).
    Sqlite {
        readers: SqlitePool,
        writer: SqlitePool,
        /// AssignCourse calls, committed in groups on `writer` (see `group_commit`).
        assigner: Assigner,
        /// Checkpoints the WAL in the background (see `checkpoint`).
        checkpointer: Arc<Checkpointer>,
    },
    Postgres(PgPool),
}

/// Runs the same read-only expression against whichever pool the store reads from. The
/// expression is compiled once per backend, so it must type-check against both.
macro_rules! with_reader {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            $crate::store::Store::Sqlite { readers: $pool, .. } => $body,
            $crate::store::Store::Postgres($pool) => $body,
        }
    };
}

/// Like `with_reader!`, for expressions that write.
macro_rules! with_writer {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            $crate::store::Store::Sqlite { writer: $pool, .. } => $body,
            $crate::store::Store::Postgres($pool) => $body,
        }
    };
}
pub(crate) use {with_reader, with_writer};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("unsupported database URL {0:?}: expected sqlite:PATH or postgres://...")]
    UnsupportedUrl(String),
    #[error("cannot open the database: {0}")]
    Open(#[from] sqlx::Error),
}

impl Store {
    /// Opens a pool for `url` (`sqlite:PATH`, created if missing, or `postgres://...`). Does not
    /// apply migrations: see [`Store::migrate`].
    pub async fn connect(url: &str, settings: &PoolSettings) -> Result<Store, ConnectError> {
        if url.starts_with("sqlite:") {
            let writer = open_sqlite(url, 1, settings.acquire_timeout).await?;
            let readers =
                open_sqlite(url, settings.max_connections, settings.acquire_timeout).await?;
            let checkpointer = Arc::new(Checkpointer::start(readers.clone()));
            let assigner = Assigner::start(writer.clone(), settings.acquire_timeout);
            Ok(Store::Sqlite {
                readers,
                writer,
                assigner,
                checkpointer,
            })
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Store::Postgres(open_postgres(url, settings).await?))
        } else {
            Err(ConnectError::UnsupportedUrl(crate::config::redact(url)))
        }
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        with_reader!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(drop))
    }

    /// Waits for every connection to be returned, then closes them all.
    pub async fn close(&self) {
        match self {
            Store::Sqlite {
                readers, writer, ..
            } => {
                tokio::join!(readers.close(), writer.close());
            }
            Store::Postgres(pool) => pool.close().await,
        }
    }
}

impl Store {
    /// Runs `delete` (`DELETE ... WHERE id = $1`, a write); NOT_FOUND when no row had that id.
    async fn delete_by_id(
        &self,
        delete: &'static str,
        resource: Resource,
        id: i64,
    ) -> crate::error::Result<()> {
        let deleted = with_writer!(self, pool => sqlx::query(delete)
            .bind(id)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))?;
        if deleted == 0 {
            return Err(crate::error::Error::NotFound(resource, id));
        }
        Ok(())
    }

    /// Whether `select` (`SELECT id ... WHERE id = $1`) finds a row.
    async fn id_exists(&self, select: &'static str, id: i64) -> crate::error::Result<bool> {
        let found: Option<i64> = with_reader!(self, pool => sqlx::query_scalar(select)
            .bind(id)
            .fetch_optional(pool)
            .await)?;
        Ok(found.is_some())
    }
}

/// The row a single-row `RETURNING` statement gave back (see the module comment for why such
/// statements are fetched whole).
fn first_row<T>(rows: Vec<T>) -> Option<T> {
    rows.into_iter().next()
}

async fn open_sqlite(
    url: &str,
    max_connections: u32,
    acquire_timeout: Duration,
) -> Result<SqlitePool, sqlx::Error> {
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .foreign_keys(true)
        // WAL lets readers run while one writer writes; NORMAL sync is durable across process
        // crashes in WAL mode (only an OS crash or power loss can lose the last commits).
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        // Our writes queue for the one writer connection; this covers other processes (a
        // `verify` or `migrate` run beside the server). Every write is a single statement, so
        // waiting can never deadlock.
        .busy_timeout(Duration::from_secs(5))
        // Checkpoints run in the background (see `checkpoint`); this is the backstop.
        .pragma("wal_autocheckpoint", checkpoint::BACKSTOP_PAGES);
    SqlitePoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        // A file database does not drop connections; checking each one costs a query per call.
        .test_before_acquire(false)
        .connect_with(options)
        .await
}

async fn open_postgres(url: &str, settings: &PoolSettings) -> Result<PgPool, sqlx::Error> {
    let mut options = PgConnectOptions::from_str(url)?.application_name("student-service");
    // PostgreSQL's NOTICEs (such as "relation _sqlx_migrations already exists, skipping" at
    // every start) would be logged as INFO lines; warnings still come through. A
    // `client_min_messages` in the URL's `options` wins.
    if options
        .get_options()
        .is_none_or(|set| !set.contains("client_min_messages"))
    {
        options = options.options([("client_min_messages", "warning")]);
    }
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        // A broken connection fails its query with an I/O error (UNAVAILABLE to that caller) and
        // is then discarded; pinging before every query would double the round trips.
        .test_before_acquire(false)
        .connect_with(options)
        .await
}
