//! What the store reports to the metrics recorder (a no-op unless the server serves metrics):
//! the time each call waits for a connection, by pool; the time its statements take, by
//! operation; and, at each scrape, how full each pool is. Each operation of a call is also a
//! CLIENT span of its trace when traces are exported (`telemetry::traces::client_span`), with
//! status Error when it failed in or on the way to the database; a connection the call could
//! not have is a span of its own (`acquire connection`), so that a call that fails because the
//! database is gone still shows where.

use super::Backend;
use std::time::Instant;

use sqlx::{Database, Pool, pool::PoolConnection};

use super::{Connections, Left, Lent, Store, errors};
use crate::error::Error;
use crate::telemetry::{
    metrics::labelled_histogram,
    traces::{self, DbFailure},
};

pub(super) const POSTGRES: &str = "postgres";
/// The replica's pool (`--database-read-url`).
pub(super) const POSTGRES_REPLICA: &str = "postgres_replica";
/// `db.system` of each backend, as the semantic conventions name them.
pub(super) const POSTGRESQL_SYSTEM: &str = "postgresql";
pub(super) const SQLITE_SYSTEM: &str = "sqlite";
pub(super) const SQLITE_READERS: &str = "sqlite_readers";
pub(super) const SQLITE_WRITER: &str = "sqlite_writer";

/// A pool of either kind: sqlx's (SQLite) or ours (PostgreSQL, `pg_pool`).
pub(super) trait Lend {
    type Lent: Settle;

    fn lend(&self) -> impl Future<Output = Result<Self::Lent, sqlx::Error>> + Send;
}

impl<DB: Database> Lend for Pool<DB> {
    type Lent = PoolConnection<DB>;

    fn lend(&self) -> impl Future<Output = Result<Self::Lent, sqlx::Error>> + Send {
        self.acquire()
    }
}

impl Lend for Connections {
    type Lent = Lent;

    fn lend(&self) -> impl Future<Output = Result<Lent, sqlx::Error>> + Send {
        self.acquire()
    }
}

/// A lent connection, told how the operation on it ended (see `pg_pool::Lent::settle`).
pub(super) trait Settle {
    fn settle(&mut self, left: Left);
}

impl<DB: Database> Settle for PoolConnection<DB> {
    /// sqlx's pool settles every connection itself.
    fn settle(&mut self, _left: Left) {}
}

impl Settle for Lent {
    fn settle(&mut self, left: Left) {
        Lent::settle(self, left);
    }
}

/// The end of an operation: did it leave its connection clean (it ran to its end and failed,
/// if at all, in the database rather than on the wire)? Did it fail?
pub(super) trait Outcome {
    fn leaves_connection(&self) -> Left;

    /// How the operation failed, in or on the way to the database, as its span's status says
    /// it; `None` for success and for the answers the schema is designed to give (no row, a
    /// unique or foreign key violation, a full course), which are results, as a NOT_FOUND is
    /// for the call.
    fn failure(&self) -> Option<DbFailure>;
}

// `error.type` names a class of failure in few values, as the database semantic conventions
// ask; the description says it in words. Neither quotes the driver.
const UNAVAILABLE: DbFailure = DbFailure {
    error_type: "unavailable",
    description: "the database is unavailable",
};
const CONFLICT: DbFailure = DbFailure {
    error_type: "conflict",
    description: "the operation conflicted with a concurrent change",
};
const FAILED: DbFailure = DbFailure {
    error_type: "_OTHER",
    description: "the database operation failed",
};

impl<T> Outcome for Result<T, sqlx::Error> {
    fn leaves_connection(&self) -> Left {
        self.as_ref()
            .err()
            .map_or(Left::Clean, errors::leaves_connection)
    }

    fn failure(&self) -> Option<DbFailure> {
        let err = self.as_ref().err()?;
        let designed = matches!(err, sqlx::Error::RowNotFound)
            || errors::is_unique_violation(err)
            || errors::is_foreign_key_violation(err)
            || errors::is_course_full(err);
        if designed {
            return None;
        }
        failure_of(&errors::shared(err))
    }
}

/// Migrations run once at start; a failed one is settled with a ping whatever it was.
impl<T> Outcome for Result<T, sqlx::migrate::MigrateError> {
    fn leaves_connection(&self) -> Left {
        if self.is_ok() {
            Left::Clean
        } else {
            Left::Unsettled
        }
    }

    fn failure(&self) -> Option<DbFailure> {
        self.is_err().then_some(FAILED)
    }
}

impl<T> Outcome for Result<T, Error> {
    fn leaves_connection(&self) -> Left {
        match self {
            Err(Error::Unavailable(_) | Error::Internal(_)) => Left::Unsettled,
            Err(Error::ReadOnly(_)) => Left::Unfit,
            _ => Left::Clean,
        }
    }

    fn failure(&self) -> Option<DbFailure> {
        failure_of(self.as_ref().err()?)
    }
}

/// The failures among the service's errors: the others are the answers of the domain.
fn failure_of(err: &Error) -> Option<DbFailure> {
    match err {
        Error::Unavailable(_) => Some(UNAVAILABLE),
        Error::Conflict(_) => Some(CONFLICT),
        Error::Internal(_) => Some(FAILED),
        _ => None,
    }
}

/// Tells `connection` how the operation on it ended.
pub(super) fn settle(connection: &mut impl Settle, outcome: &impl Outcome) {
    connection.settle(outcome.leaves_connection());
}

/// A connection from `pool`, the wait recorded under `name`; a failed wait is a span of the
/// call's trace.
pub(super) async fn acquire<P: Lend>(pool: &P, name: &'static str) -> Result<P::Lent, sqlx::Error> {
    let started = Instant::now();
    let span_start = traces::exported().then(traces::now);
    let connection = pool.lend().await;
    labelled_histogram(
        crate::telemetry::catalogue::DB_POOL_ACQUIRE_SECONDS.name,
        "pool",
        name,
    )
    .record(started.elapsed().as_secs_f64());
    if let (Some(failure), Some(start)) = (connection.failure(), span_start) {
        let system = if name == POSTGRES || name == POSTGRES_REPLICA {
            POSTGRESQL_SYSTEM
        } else {
            SQLITE_SYSTEM
        };
        if let Some(mut span) = traces::connection_span(system, name, start) {
            span.fail(failure);
        }
    }
    connection
}

/// Runs `work` (the statements of one operation, connection in hand) in its span and records
/// how long it took.
pub(super) async fn statement<T: Outcome>(
    system: &'static str,
    operation: &'static str,
    work: impl Future<Output = T>,
) -> T {
    in_span(operation, system, operation, time(operation, work)).await
}

/// Runs `work` in a CLIENT span of the current call named `name`, which fails if it does.
pub(super) async fn in_span<T: Outcome>(
    name: &'static str,
    system: &'static str,
    operation: &'static str,
    work: impl Future<Output = T>,
) -> T {
    let mut span = traces::client_span(name, system, operation);
    let done = work.await;
    if let (Some(span), Some(failure)) = (&mut span, done.failure()) {
        span.fail(failure);
    }
    done
}

/// Records how long `work` took, without a span (for work done on behalf of several calls).
pub(super) async fn time<T>(operation: &'static str, work: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let done = work.await;
    labelled_histogram(
        crate::telemetry::catalogue::DB_STATEMENT_SECONDS.name,
        "operation",
        operation,
    )
    .record(started.elapsed().as_secs_f64());
    done
}

impl Store {
    /// Sets the pool gauges to the pools' state now (called at each scrape).
    pub fn record_pool_gauges(&self) {
        match &self.0 {
            Backend::Sqlite {
                readers,
                writer,
                location,
                ..
            } => {
                record_pool(readers, SQLITE_READERS);
                // In memory, readers and writer are one pool: count it once.
                if matches!(location, super::Location::File(_)) {
                    record_pool(writer, SQLITE_WRITER);
                }
            }
            Backend::Postgres(pool, _) => record_gauges(
                POSTGRES,
                pool.size(),
                pool.num_idle(),
                pool.max_connections(),
            ),
        }
    }
}

fn record_pool<DB: Database>(pool: &Pool<DB>, name: &'static str) {
    let max = pool.options().get_max_connections();
    record_gauges(name, pool.size(), pool.num_idle(), max);
}

fn record_gauges(name: &'static str, size: u32, idle: usize, max: u32) {
    let size = f64::from(size);
    let idle = idle as f64;
    let connections = crate::telemetry::catalogue::DB_POOL_CONNECTIONS.name;
    metrics::gauge!(connections, "pool" => name, "state" => "in_use").set((size - idle).max(0.0));
    metrics::gauge!(connections, "pool" => name, "state" => "idle").set(idle);
    metrics::gauge!(crate::telemetry::catalogue::DB_POOL_MAX_CONNECTIONS.name, "pool" => name)
        .set(f64::from(max));
}
