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

mod batch;
mod checkpoint;
mod courses;
mod enrollments;
mod errors;
mod events;
mod group_commit;
mod migrate;
mod observe;
mod pg_pool;
mod pg_targets;
mod postgres;
mod probe;
mod redact;
pub mod refusals;
pub mod replica;
mod request_ids;
mod rows;
mod sqlite;
mod sqlite_direct;
mod students;
mod verify;

use std::{path::PathBuf, sync::Arc, time::Duration};

use sqlx::SqlitePool;

use checkpoint::Checkpointer;
pub use events::{Event, EventRange, Session};
use group_commit::Assigner;
pub use migrate::{Applied, MigrationError, SchemaError, Versions};
use pg_pool::{Connections, Left, Lent};
pub use probe::{Probe, Readiness};
pub use redact::redact;
use replica::Replica;
pub use replica::ReplicaSettings;
pub use request_ids::expire_request_ids;
use sqlite::Location;
pub use sqlite::{ClaimError, ServingClaim};
use sqlite_direct::DirectReaders;

use crate::error::Resource;
pub use verify::Violation;

/// Connection pool settings.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    /// How long a call waits for a free connection before it fails with UNAVAILABLE.
    pub acquire_timeout: Duration,
    /// On a SQLite file, whether the server reads ListCourses through read-only connections of
    /// its own (see `sqlite_direct`); when not, through the reader pool like every other read.
    pub sqlite_direct_reads: bool,
    /// On PostgreSQL, the longest a pooled connection lives (see `pg_pool`); `None` for ever.
    pub max_lifetime: Option<Duration>,
    /// On PostgreSQL, the longest a pooled connection sits idle; `None` for ever.
    pub idle_timeout: Option<Duration>,
    /// On PostgreSQL, a streaming replica for read RPCs (`--database-read-url`).
    pub replica: Option<ReplicaSettings>,
}

#[cfg(test)]
impl PoolSettings {
    /// Two connections, 5 s to get one, the direct readers on.
    pub(crate) fn for_tests() -> PoolSettings {
        PoolSettings {
            max_connections: 2,
            acquire_timeout: Duration::from_secs(5),
            sqlite_direct_reads: true,
            max_lifetime: None,
            idle_timeout: None,
            replica: None,
        }
    }
}

/// An open database of either kind. Cloning is cheap (pools are shared handles). What it holds
/// is private: every caller goes through its methods, which time, settle and release the
/// connections they use.
#[derive(Debug, Clone)]
pub struct Store(Backend);

#[derive(Debug, Clone)]
pub(crate) enum Backend {
    /// SQLite allows one writer at a time. Writers wait for the single `writer` connection in
    /// the pool's queue (in order, without spinning) instead of racing for the file lock, whose
    /// busy handler sleeps and retries; reads run in parallel on `readers` (WAL mode).
    Sqlite {
        readers: SqlitePool,
        writer: SqlitePool,
        /// AssignCourse calls, committed in groups on `writer` (see `group_commit`).
        assigner: Assigner,
        /// Checkpoints the WAL in the background (see `checkpoint`) for as long as a clone of
        /// the store holds it; none for `migrate` and `verify`, which leave that to the server,
        /// or in memory, where there is no WAL.
        _checkpointer: Option<Arc<Checkpointer>>,
        /// The file, or memory (see `sqlite`).
        location: sqlite::Location,
        /// ListCourses' reads on a file (see `sqlite_direct`); none in memory.
        direct: Option<Arc<DirectReaders>>,
    },
    /// Our own pool (see `pg_pool`): sqlx's pings every connection it takes back. And the
    /// replica that read RPCs may read from (`--database-read-url`, see `replica`).
    Postgres(Connections, Option<Arc<Replica>>),
}

/// Runs the same read-only expression against a connection from whichever pool the store reads
/// from, bound to `$pool`; the wait for the connection and the time of the expression are
/// recorded (see `observe`), the latter under `$operation`. The expression is compiled once per
/// backend, so it must type-check against both; it returns a `Result` whose error type converts
/// from `sqlx::Error`.
macro_rules! with_reader {
    ($store:expr, $operation:expr, $pool:ident => $body:expr) => {
        match &$store.0 {
            $crate::store::Backend::Sqlite { readers, .. } => {
                $crate::store::with_connection!(readers, SQLITE_READERS, SQLITE_SYSTEM, $operation, $pool => $body)
            }
            $crate::store::Backend::Postgres(pool, None) => {
                $crate::store::with_connection!(pool, POSTGRES, POSTGRESQL_SYSTEM, $operation, $pool => $body)
            }
            $crate::store::Backend::Postgres(pool, Some(replica)) => {
                match replica.choose().await {
                    $crate::store::replica::Target::Replica => {
                        let on_replica = $crate::store::with_connection!(replica.pool(), POSTGRES_REPLICA, POSTGRESQL_SYSTEM, $operation, $pool => $body);
                        // A replica that fails on the way (down, restarting) is the primary's
                        // to stand in for, without an error to the caller.
                        let left = $crate::store::observe::Outcome::leaves_connection(&on_replica);
                        match on_replica {
                            Err(err) if left != $crate::store::Left::Clean => {
                                replica.failed(&err);
                                $crate::store::with_connection!(pool, POSTGRES, POSTGRESQL_SYSTEM, $operation, $pool => $body)
                            }
                            done => done,
                        }
                    }
                    $crate::store::replica::Target::Primary(_) => {
                        $crate::store::with_connection!(pool, POSTGRES, POSTGRESQL_SYSTEM, $operation, $pool => $body)
                    }
                }
            }
        }
    };
}

/// Like `with_reader!`, for expressions that write.
macro_rules! with_writer {
    ($store:expr, $operation:expr, $pool:ident => $body:expr) => {
        match &$store.0 {
            $crate::store::Backend::Sqlite { writer, .. } => {
                $crate::store::with_connection!(writer, SQLITE_WRITER, SQLITE_SYSTEM, $operation, $pool => $body)
            }
            $crate::store::Backend::Postgres(pool, _) => {
                $crate::store::with_connection!(pool, POSTGRES, POSTGRESQL_SYSTEM, $operation, $pool => $body)
            }
        }
    };
}

/// `$body` with a connection from `$from` bound to `$pool`, observed.
macro_rules! with_connection {
    ($from:expr, $name:ident, $system:ident, $operation:expr, $pool:ident => $body:expr) => {
        match $crate::store::observe::acquire($from, $crate::store::observe::$name).await {
            Ok(mut connection) => {
                let result = {
                    let $pool = &mut *connection;
                    let system = $crate::store::observe::$system;
                    $crate::store::observe::statement(system, $operation, async { $body }).await
                };
                $crate::store::observe::settle(&mut connection, &result);
                result
            }
            Err(err) => Err(err.into()),
        }
    };
}
pub(crate) use {with_connection, with_reader, with_writer};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("unsupported database URL {0:?}: expected sqlite:PATH or postgres://...")]
    UnsupportedUrl(String),
    #[error(
        "the SQLite database {0} does not exist: check the path (the server creates the file at \
         its first start; migrate and verify do only when the URL ends in ?mode=rwc)"
    )]
    Missing(PathBuf),
    #[error("cannot open the database: {0}")]
    Open(#[from] sqlx::Error),
    #[error(
        "--database-read-url needs PostgreSQL: a SQLite database has no replicas (leave it unset)"
    )]
    ReadUrlOnSqlite,
    #[error("cannot open the database for reading: {0}")]
    Direct(#[source] rusqlite::Error),
}

/// One direct reader per runtime thread, which read inline, and two for the blocking pool.
fn direct_connections() -> usize {
    tokio::runtime::Handle::try_current().map_or(1, |runtime| runtime.metrics().num_workers()) + 2
}

/// Who opens the database, which decides what may happen to a SQLite file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opener {
    /// The server: creates the file at its first start, checkpoints the WAL.
    Server,
    /// `migrate` and `verify`: the file must exist; the server beside them checkpoints.
    Maintenance,
}

impl Store {
    /// Opens the server's pool for `url` (`sqlite:PATH`, created if missing, `sqlite::memory:`,
    /// or `postgres://...`). Does not apply migrations ([`Store::migrate`]) or claim the
    /// database ([`Store::claim_for_serving`]).
    pub async fn connect(url: &str, settings: &PoolSettings) -> Result<Store, ConnectError> {
        Store::open(url, settings, Opener::Server).await
    }

    /// Like [`Store::connect`] for `migrate` and `verify`: a SQLite file that does not exist is
    /// an error, never created.
    pub async fn connect_existing(
        url: &str,
        settings: &PoolSettings,
    ) -> Result<Store, ConnectError> {
        Store::open(url, settings, Opener::Maintenance).await
    }

    async fn open(
        url: &str,
        settings: &PoolSettings,
        opener: Opener,
    ) -> Result<Store, ConnectError> {
        if url.starts_with("sqlite:") {
            if settings.replica.is_some() {
                return Err(ConnectError::ReadUrlOnSqlite);
            }
            Store::open_sqlite(url, settings, opener).await
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let primary = postgres::open(url, settings).await?;
            let replica = match &settings.replica {
                Some(replica) => {
                    let pool = postgres::open_lazy(&replica.url, settings)?;
                    Some(Arc::new(Replica::start(
                        pool,
                        primary.clone(),
                        replica.clone(),
                    )))
                }
                None => None,
            };
            Ok(Store(Backend::Postgres(primary, replica)))
        } else {
            Err(ConnectError::UnsupportedUrl(redact(url)))
        }
    }

    async fn open_sqlite(
        url: &str,
        settings: &PoolSettings,
        opener: Opener,
    ) -> Result<Store, ConnectError> {
        let (options, location) = sqlite::options(url)?;
        let timeout = settings.acquire_timeout;
        let (readers, writer) = match &location {
            sqlite::Location::Memory => {
                let pool = sqlite::open_in_memory(options, timeout).await?;
                (pool.clone(), pool)
            }
            sqlite::Location::File(_) => {
                let create = opener == Opener::Server || sqlite::asks_to_create(url);
                if !create {
                    sqlite::require_existing(&location)?;
                }
                let writer = sqlite::open(options.clone(), create, 1, timeout).await?;
                let readers =
                    sqlite::open(options, false, settings.max_connections, timeout).await?;
                (readers, writer)
            }
        };
        let checkpointer = (opener == Opener::Server
            && matches!(location, sqlite::Location::File(_)))
        .then(|| Arc::new(Checkpointer::start(readers.clone())));
        let direct = match &location {
            sqlite::Location::File(path)
                if settings.sqlite_direct_reads
                    && opener == Opener::Server
                    && !sqlite::names_a_vfs(url) =>
            {
                let readers = DirectReaders::open(path, direct_connections());
                Some(Arc::new(readers.map_err(ConnectError::Direct)?))
            }
            _ => None,
        };
        Ok(Store(Backend::Sqlite {
            direct,
            assigner: Assigner::start(writer.clone(), timeout),
            readers,
            writer,
            _checkpointer: checkpointer,
            location,
        }))
    }

    /// Makes sure this server may serve the database: on a SQLite file, takes the exclusive
    /// lock that keeps a second server off it and checks that the file can be written. Hold the
    /// claim while serving.
    pub async fn claim_for_serving(&self) -> Result<ServingClaim, ClaimError> {
        match &self.0 {
            Backend::Sqlite {
                writer, location, ..
            } => sqlite::claim(location, writer).await,
            Backend::Postgres(..) => Ok(ServingClaim::none()),
        }
    }

    /// The most connections calls share: the pool's size (on SQLite, the readers').
    pub fn max_connections(&self) -> u32 {
        match &self.0 {
            Backend::Sqlite { readers, .. } => readers.options().get_max_connections(),
            Backend::Postgres(pool, _) => pool.max_connections(),
        }
    }

    /// How often the server looks for new events to wake its watchers: within the 100 ms an
    /// event may take to reach a watcher on SQLite; on PostgreSQL this also paces the sequencer.
    pub fn head_poll_interval(&self) -> Duration {
        match &self.0 {
            Backend::Sqlite { .. } => Duration::from_millis(20),
            Backend::Postgres(..) => Duration::from_millis(100),
        }
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        with_reader!(self, "ping", pool => sqlx::query("SELECT 1").execute(pool).await.map(drop))
    }

    /// Waits for every connection to be returned, then closes them all.
    pub async fn close(&self) {
        match &self.0 {
            Backend::Sqlite {
                readers,
                writer,
                direct,
                ..
            } => {
                // One after the other, the writer last and alone: SQLite folds the WAL back into
                // the file only in the connection that closes last and can write, and two
                // closing at once can each find the other still open.
                if let Some(direct) = direct {
                    direct.close();
                }
                readers.close().await;
                writer.close().await;
            }
            Backend::Postgres(pool, replica) => {
                if let Some(replica) = replica {
                    replica.close().await;
                }
                pool.close().await
            }
        }
    }
}

impl Store {
    /// Runs `delete` (`DELETE ... WHERE id = $1 AND <revision is $2 unless $2 is NULL>`, a
    /// write); NOT_FOUND or ETAG_MISMATCH when it deleted no row.
    async fn delete_by_id(
        &self,
        delete: &'static str,
        resource: Resource,
        target: crate::domain::Delete,
    ) -> crate::error::Result<()> {
        let operation = match resource {
            Resource::Student => "delete_student",
            Resource::Course => "delete_course",
        };
        let deleted = with_writer!(self, operation, pool => sqlx::query(delete)
            .bind(target.id)
            .bind(target.expected_revision)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))?;
        if deleted == 0 {
            return Err(self.gone_or_changed(resource, target.id).await);
        }
        Ok(())
    }

    /// Why a write guarded by id and revision touched no row: the resource does not exist, or
    /// (ids are never reused) it exists at another revision than the client's etag named.
    async fn gone_or_changed(&self, resource: Resource, id: i64) -> crate::error::Error {
        let exists = match resource {
            Resource::Student => self.student_exists(id).await,
            Resource::Course => self.course_exists(id).await,
        };
        match exists {
            Ok(true) => crate::error::Error::EtagMismatch(resource, id),
            Ok(false) => crate::error::Error::NotFound(resource, id),
            Err(err) => err,
        }
    }

    /// Whether `select` (`SELECT id ... WHERE id = $1`) finds a row.
    async fn id_exists(&self, select: &'static str, id: i64) -> crate::error::Result<bool> {
        let found: Option<i64> = with_reader!(self, "exists", pool => sqlx::query_scalar(select)
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
