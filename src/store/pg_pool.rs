//! PostgreSQL connections, pooled without a round trip at every release.
//!
//! sqlx's pool pings each connection as it comes back (a Sync message and its ReadyForQuery, in
//! a task of its own), so that a connection left mid-statement by a cancelled call, or with a
//! dropped transaction's ROLLBACK still unsent, is settled before anyone else gets it, and a
//! broken one is dropped. That is a round trip to PostgreSQL per call, on every call. Here an
//! operation that ran to its end and left the connection clean (nothing unsent, no transaction
//! open, no failure on the wire: [`Lent::settle`]) puts it straight back; any other connection
//! gets sqlx's treatment, in a task, and is dropped if the ping fails.
//!
//! Connections are opened on demand up to the maximum and kept (no idle timeout or lifetime):
//! a connection PostgreSQL closed fails the next statement on it with UNAVAILABLE, as with
//! sqlx's pool, and is then dropped.

use std::{
    ops::{Deref, DerefMut},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use sqlx::{
    Connection,
    postgres::{PgConnectOptions, PgConnection},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a connection returned unsettled may take to answer its ping (sqlx's pool gives a
/// closing connection as long).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// The pool; cloning is cheap (a shared handle).
#[derive(Debug, Clone)]
pub(crate) struct Connections {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    options: PgConnectOptions,
    idle: Mutex<Vec<PgConnection>>,
    /// One per connection that may be lent at once.
    permits: Arc<Semaphore>,
    max: u32,
    acquire_timeout: Duration,
    /// Connections that exist, idle or lent.
    open: AtomicU32,
}

impl Connections {
    /// A pool of at most `max` connections, the first opened now so that a wrong URL or an
    /// unreachable server fails at start.
    pub(super) async fn open(
        options: PgConnectOptions,
        max: u32,
        acquire_timeout: Duration,
    ) -> Result<Connections, sqlx::Error> {
        let pool = Connections {
            shared: Arc::new(Shared {
                options,
                idle: Mutex::new(Vec::new()),
                permits: Arc::new(Semaphore::new(max as usize)),
                max,
                acquire_timeout,
                open: AtomicU32::new(0),
            }),
        };
        let mut first = pool.acquire().await?;
        first.settle(true);
        drop(first);
        Ok(pool)
    }

    /// A connection, waiting at most the acquire timeout for one to be free or to open.
    pub(crate) async fn acquire(&self) -> Result<Lent, sqlx::Error> {
        let shared = &self.shared;
        let started = tokio::time::Instant::now();
        let permit = match tokio::time::timeout(
            shared.acquire_timeout,
            shared.permits.clone().acquire_owned(),
        )
        .await
        {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(sqlx::Error::PoolClosed),
            Err(_) => return Err(sqlx::Error::PoolTimedOut),
        };
        let idle = shared.lock_idle().pop();
        let connection = match idle {
            Some(connection) => connection,
            None => {
                let left = shared.acquire_timeout.saturating_sub(started.elapsed());
                let connecting = PgConnection::connect_with(&shared.options);
                let connection = tokio::time::timeout(left, connecting)
                    .await
                    .map_err(|_| sqlx::Error::PoolTimedOut)??;
                shared.open.fetch_add(1, Ordering::Relaxed);
                connection
            }
        };
        Ok(Lent {
            connection: Some(connection),
            permit: Some(permit),
            shared: self.shared.clone(),
            clean: false,
        })
    }

    /// A connection of its own, outside the pool and its maximum (for a session that holds an
    /// advisory lock for as long as it lives), within the acquire timeout.
    pub(crate) async fn detached(&self) -> Result<PgConnection, sqlx::Error> {
        let connecting = PgConnection::connect_with(&self.shared.options);
        tokio::time::timeout(self.shared.acquire_timeout, connecting)
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
    }

    /// Waits for every lent connection to come back, then closes them all; later acquires
    /// fail with `PoolClosed`.
    pub(crate) async fn close(&self) {
        let shared = &self.shared;
        let all = shared.permits.acquire_many(shared.max).await;
        shared.permits.close();
        drop(all);
        let idle = std::mem::take(&mut *shared.lock_idle());
        for connection in idle {
            shared.open.fetch_sub(1, Ordering::Relaxed);
            let _ = connection.close().await;
        }
    }

    /// Connections open (idle or lent).
    pub(crate) fn size(&self) -> u32 {
        self.shared.open.load(Ordering::Relaxed)
    }

    pub(crate) fn num_idle(&self) -> usize {
        self.shared.lock_idle().len()
    }

    pub(crate) fn max_connections(&self) -> u32 {
        self.shared.max
    }
}

impl Shared {
    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<PgConnection>> {
        // Nothing panics while holding the lock; a poisoned one still holds valid connections.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn discard(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection lent by [`Connections`]; back to the pool when dropped.
#[derive(Debug)]
pub(crate) struct Lent {
    connection: Option<PgConnection>,
    permit: Option<OwnedSemaphorePermit>,
    shared: Arc<Shared>,
    clean: bool,
}

impl Lent {
    /// Says how the operation ended: `clean` when it ran to its end and failed, if at all, in
    /// the database (a constraint, a trigger's exception) rather than on the wire. Without it
    /// (a cancelled call) the connection is settled with a ping before it is lent again.
    pub(crate) fn settle(&mut self, clean: bool) {
        self.clean = clean;
    }
}

impl Deref for Lent {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        // Present from acquire until drop.
        self.connection.as_ref().expect("a lent connection")
    }
}

impl DerefMut for Lent {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.connection.as_mut().expect("a lent connection")
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let Some(mut connection) = self.connection.take() else {
            return;
        };
        // The permit goes after the connection is back, so the next caller finds it idle.
        let permit = self.permit.take();
        if self.clean && !connection.should_flush() && !connection.is_in_transaction() {
            self.shared.lock_idle().push(connection);
            drop(permit);
            return;
        }
        let shared = self.shared.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            shared.discard();
            return;
        };
        runtime.spawn(async move {
            // Sends what is queued (a dropped transaction's ROLLBACK), reads what a cancelled
            // statement left unread, and checks the connection answers; a connection that takes
            // longer (a long statement still running, a half-open socket) is not worth waiting
            // for, and would hold its permit, and shutdown, meanwhile.
            match tokio::time::timeout(SETTLE_TIMEOUT, connection.ping()).await {
                Ok(Ok(())) if !connection.is_in_transaction() => {
                    shared.lock_idle().push(connection);
                }
                _ => shared.discard(),
            }
            drop(permit);
        });
    }
}
