//! What the store reports to the metrics recorder (a no-op unless the server serves metrics):
//! the time each call waits for a connection, by pool; the time its statements take, by
//! operation; and, at each scrape, how full each pool is. Each operation of a call is also a
//! CLIENT span of its trace when traces are exported (`telemetry::traces::client_span`).

use std::time::Instant;

use sqlx::{Database, Pool, pool::PoolConnection};

use super::Store;
use crate::telemetry::traces;

pub(super) const POSTGRES: &str = "postgres";
/// `db.system` of each backend, as the semantic conventions name them.
pub(super) const POSTGRESQL_SYSTEM: &str = "postgresql";
pub(super) const SQLITE_SYSTEM: &str = "sqlite";
pub(super) const SQLITE_READERS: &str = "sqlite_readers";
pub(super) const SQLITE_WRITER: &str = "sqlite_writer";

/// A connection from `pool`, the wait recorded under `name`.
pub(super) async fn acquire<DB: Database>(
    pool: &Pool<DB>,
    name: &'static str,
) -> Result<PoolConnection<DB>, sqlx::Error> {
    let started = Instant::now();
    let connection = pool.acquire().await;
    metrics::histogram!("student_service_db_pool_acquire_seconds", "pool" => name)
        .record(started.elapsed().as_secs_f64());
    connection
}

/// Runs `work` (the statements of one operation, connection in hand) in its span and records
/// how long it took.
pub(super) async fn statement<T>(
    system: &'static str,
    operation: &'static str,
    work: impl Future<Output = T>,
) -> T {
    let _span = traces::client_span(operation, system, operation);
    time(operation, work).await
}

/// Records how long `work` took, without a span (for work done on behalf of several calls).
pub(super) async fn time<T>(operation: &'static str, work: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let done = work.await;
    metrics::histogram!("student_service_db_statement_seconds", "operation" => operation)
        .record(started.elapsed().as_secs_f64());
    done
}

impl Store {
    /// Sets the pool gauges to the pools' state now (called at each scrape).
    pub fn record_pool_gauges(&self) {
        match self {
            Store::Sqlite {
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
            Store::Postgres(pool) => record_pool(pool, POSTGRES),
        }
    }
}

fn record_pool<DB: Database>(pool: &Pool<DB>, name: &'static str) {
    let size = f64::from(pool.size());
    let idle = pool.num_idle() as f64;
    let connections = "student_service_db_pool_connections";
    metrics::gauge!(connections, "pool" => name, "state" => "in_use").set(size - idle);
    metrics::gauge!(connections, "pool" => name, "state" => "idle").set(idle);
    metrics::gauge!("student_service_db_pool_max_connections", "pool" => name)
        .set(f64::from(pool.options().get_max_connections()));
}
