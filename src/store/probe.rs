//! What the health probe asks the database, on a connection of its own.
//!
//! Readiness must mean "the database answers", not "the pool has a free connection": with the
//! probe queued behind callers, a registration rush (ten calls waiting on one row lock) or a
//! crowd of catching-up event watchers turned health NOT_SERVING while the database was fine,
//! which would take every replica out of its load balancer at once. So the probe keeps one
//! connection outside the pools: a PostgreSQL session, or a read-only connection to the SQLite
//! file (an in-memory database has no file to reach: there the probe uses the pool). A probe
//! that fails, takes too long or finds the database read-only drops its connection and opens a
//! new one next time.
//!
//! PostgreSQL is also asked whether it takes writes: an endpoint that moved to a standby (or a
//! database set `default_transaction_read_only`) answers reads but refuses every write, and a
//! replica in front of it should leave the load balancer until it is writable again.

use super::Backend;
use std::{
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use sqlx::postgres::PgConnection;

use super::{Location, Store};

/// What the database said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// It answers and takes writes.
    Ready,
    /// It answers but refuses writes (a PostgreSQL standby, or read-only transactions).
    ReadOnly,
    /// It did not answer in time, or failed.
    Unreachable,
}

/// The health probe's own connection (see the module comment).
#[derive(Debug)]
pub struct Probe {
    store: Store,
    own: Option<Own>,
}

#[derive(Debug)]
enum Own {
    Postgres(PgConnection),
    Sqlite(Arc<Mutex<rusqlite::Connection>>),
}

type Failure = Box<dyn std::error::Error + Send + Sync>;

impl Store {
    /// A probe for the health service; it connects at its first check.
    pub fn probe(&self) -> Probe {
        Probe {
            store: self.clone(),
            own: None,
        }
    }
}

impl Probe {
    /// Asks the database, waiting at most `timeout` (connecting included).
    pub async fn check(&mut self, timeout: Duration) -> Readiness {
        match tokio::time::timeout(timeout, self.ask()).await {
            Ok(Ok(Readiness::ReadOnly)) => {
                // The next check connects anew: the endpoint may lead to the primary by then
                // (a DNS name or a Service that moves), while this connection stays where it is.
                self.own = None;
                Readiness::ReadOnly
            }
            Ok(Ok(readiness)) => readiness,
            Ok(Err(err)) => {
                tracing::debug!("health probe failed: {err}");
                self.own = None;
                Readiness::Unreachable
            }
            Err(_) => {
                self.own = None;
                Readiness::Unreachable
            }
        }
    }

    async fn ask(&mut self) -> Result<Readiness, Failure> {
        if self.own.is_none() {
            self.own = self.connect().await?;
        }
        match &mut self.own {
            Some(Own::Postgres(connection)) => {
                let read_only: bool =
                    sqlx::query_scalar("SELECT current_setting('transaction_read_only') = 'on'")
                        .fetch_one(&mut *connection)
                        .await?;
                Ok(if read_only {
                    Readiness::ReadOnly
                } else {
                    Readiness::Ready
                })
            }
            Some(Own::Sqlite(connection)) => {
                let connection = connection.clone();
                // Reads the schema page: the file is there and readable.
                tokio::task::spawn_blocking(move || {
                    let connection = connection.lock().unwrap_or_else(PoisonError::into_inner);
                    connection.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
                })
                .await??;
                Ok(Readiness::Ready)
            }
            None => {
                self.store.ping().await?;
                Ok(Readiness::Ready)
            }
        }
    }

    /// A connection of the probe's own; none for an in-memory SQLite database.
    async fn connect(&self) -> Result<Option<Own>, Failure> {
        match &self.store.0 {
            Backend::Postgres(pool, _) => Ok(Some(Own::Postgres(pool.detached().await?))),
            Backend::Sqlite {
                location: Location::File(path),
                ..
            } => {
                let path: PathBuf = path.clone();
                let connection = tokio::task::spawn_blocking(move || {
                    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
                    rusqlite::Connection::open_with_flags(path, flags)
                })
                .await??;
                Ok(Some(Own::Sqlite(Arc::new(Mutex::new(connection)))))
            }
            Backend::Sqlite { .. } => Ok(None),
        }
    }
}
