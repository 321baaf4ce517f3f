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
//! Connections are opened on demand up to the maximum. Each lives at most its lifetime and sits
//! idle at most its idle timeout (`--database-max-lifetime`, `--database-idle-timeout`; sqlx's
//! defaults, 30 and 10 minutes), so that a replica lets go of what a busy hour left open (each
//! backend holds PostgreSQL memory and a slot of `max_connections`), and so that, set below a
//! proxy's or a firewall's own limit, the pool closes its connections before those cut them
//! mid-call. Both are drawn per connection up to a tenth below
//! the setting ([`JITTER`]), so that connections opened together (a replica's start, or every
//! replica's after a failover) do not all close and reopen together again and again. A
//! connection is closed for its lifetime when it comes back, or when it would next be lent:
//! never while lent. A background task ([`reap`]) closes idle connections past either limit a
//! quarter of the shorter limit late at most; one about to be lent is checked as it is taken.
//! Each close is counted by its reason in [`CONNECTIONS_CLOSED`], with the connections dropped
//! as broken. A connection PostgreSQL closed meanwhile fails the next statement on it with
//! UNAVAILABLE, as with sqlx's pool, and is then dropped (`broken`); the other connections
//! opened before that failure are checked (one statement: does it answer, and take writes?)
//! before each is next lent, so a failover or a restart costs each pool one failed call, not one
//! per pooled connection. A connection whose server refused a write as read-only is dropped
//! at once (a standby behind an endpoint that moved early: a new connection may reach the
//! primary), with the same check of the others. The sessions of
//! [`Connections::detached`] (the sequencer's lock, the health probe) are not the pool's and have
//! neither limit.

use std::{
    ops::{Deref, DerefMut},
    sync::{
        Arc, Mutex, PoisonError, Weak,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use sqlx::{Connection, postgres::PgConnection};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    task::AbortHandle,
};

use super::{PoolSettings, pg_targets::Targets};

/// How long a connection returned unsettled may take to answer its ping (sqlx's pool gives a
/// closing connection as long), and a retired one to say goodbye.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Each connection's lifetime and idle timeout are drawn between this much below the setting
/// and the setting, so a setting matched to a proxy's limit is never exceeded.
const JITTER: f64 = 0.1;

/// The shortest wait between two looks for idle connections past their limits.
const MIN_REAP_PERIOD: Duration = Duration::from_millis(10);

/// Connections the pool closed (`reason`: `lifetime`, `idle`) or dropped (`broken`).
const CONNECTIONS_CLOSED: &str = crate::telemetry::catalogue::DB_POOL_CONNECTIONS_CLOSED.name;

/// What an operation left its connection fit for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Left {
    /// It ran to its end; any failure was the database's answer, with the connection fine.
    Clean,
    /// It may hold unsent or unread messages, or be broken: settle it (a ping) before reuse.
    Unsettled,
    /// It reaches a server that refuses writes: drop it.
    Unfit,
}

/// Why a connection left the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closed {
    /// It had lived its lifetime.
    Lifetime,
    /// It had sat idle its idle timeout.
    Idle,
    /// It failed, or could not be settled in time (or with no runtime to do it).
    Broken,
}

impl Closed {
    /// Its `reason`, as the catalogue lists them (registered at 0 by `telemetry::metrics`).
    const fn label(self) -> &'static str {
        let [lifetime, idle, broken] = crate::telemetry::catalogue::DB_POOL_CLOSE_REASONS;
        match self {
            Closed::Lifetime => lifetime,
            Closed::Idle => idle,
            Closed::Broken => broken,
        }
    }

    fn count(self) {
        metrics::counter!(CONNECTIONS_CLOSED, "reason" => self.label()).increment(1);
    }
}

/// The pool; cloning is cheap (a shared handle).
#[derive(Debug, Clone)]
pub(crate) struct Connections {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    targets: Targets,
    idle: Mutex<Vec<Idle>>,
    /// One per connection that may be lent at once.
    permits: Arc<Semaphore>,
    max: u32,
    acquire_timeout: Duration,
    max_lifetime: Option<Duration>,
    idle_timeout: Option<Duration>,
    /// Connections that exist, idle or lent.
    open: AtomicU32,
    /// Connection failures so far; a connection opened or checked before the latest is checked
    /// before it is lent again.
    failures: AtomicU64,
    /// The task that closes idle connections past their limits, if there are limits.
    reaper: Mutex<Option<AbortHandle>>,
}

/// A connection of the pool and its limits, drawn when it opened.
#[derive(Debug)]
struct Pooled {
    connection: PgConnection,
    /// When its lifetime ends.
    retire_at: Option<Instant>,
    idle_timeout: Option<Duration>,
    /// `failures` when it opened or was last checked.
    checked_at_failure: u64,
}

/// A connection waiting to be lent, since when.
#[derive(Debug)]
struct Idle {
    pooled: Pooled,
    since: Instant,
}

impl Idle {
    /// Why it must be closed rather than lent, if it must.
    fn expired(&self, now: Instant) -> Option<Closed> {
        let pooled = &self.pooled;
        if pooled.retire_at.is_some_and(|at| now >= at) {
            Some(Closed::Lifetime)
        } else if pooled
            .idle_timeout
            .is_some_and(|timeout| now.saturating_duration_since(self.since) >= timeout)
        {
            Some(Closed::Idle)
        } else {
            None
        }
    }
}

/// `limit` shortened by up to [`JITTER`] of it, at random.
fn jittered(limit: Duration) -> Duration {
    limit.mul_f64(1.0 - JITTER * fastrand::f64())
}

impl Connections {
    /// A pool of at most `settings.max_connections` connections, the first opened now so that a
    /// wrong URL or an unreachable server fails at start.
    pub(super) async fn open(
        targets: Targets,
        settings: &PoolSettings,
    ) -> Result<Connections, sqlx::Error> {
        let pool = Connections::lazy(targets, settings);
        let mut first = pool.acquire().await?;
        first.settle(Left::Clean);
        drop(first);
        Ok(pool)
    }

    /// A pool that opens its first connection when first asked for one.
    pub(crate) fn lazy(targets: Targets, settings: &PoolSettings) -> Connections {
        let max = settings.max_connections;
        let pool = Connections {
            shared: Arc::new(Shared {
                targets,
                idle: Mutex::new(Vec::new()),
                permits: Arc::new(Semaphore::new(max as usize)),
                max,
                acquire_timeout: settings.acquire_timeout,
                max_lifetime: settings.max_lifetime,
                idle_timeout: settings.idle_timeout,
                open: AtomicU32::new(0),
                failures: AtomicU64::new(0),
                reaper: Mutex::new(None),
            }),
        };
        *pool.shared.lock_reaper() = start_reaper(&pool.shared);
        pool
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
        let pooled = loop {
            let idle = shared.lock_idle().pop();
            match idle {
                Some(idle) => match idle.expired(Instant::now()) {
                    None if shared.suspects(&idle.pooled) => {
                        if let Some(pooled) = shared.check(idle.pooled).await {
                            break pooled;
                        }
                    }
                    None => break idle.pooled,
                    Some(reason) => shared.retire(idle.pooled, reason),
                },
                None => {
                    let left = shared.acquire_timeout.saturating_sub(started.elapsed());
                    break shared.connect(left).await?;
                }
            }
        };
        Ok(Lent {
            pooled: Some(pooled),
            permit: Some(permit),
            shared: self.shared.clone(),
            left: Left::Unsettled,
        })
    }

    /// A connection of its own, outside the pool and its maximum (for a session that holds an
    /// advisory lock for as long as it lives), within the acquire timeout.
    pub(crate) async fn detached(&self) -> Result<PgConnection, sqlx::Error> {
        let connecting = self.shared.targets.connect();
        tokio::time::timeout(self.shared.acquire_timeout, connecting)
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map_err(unreachable)
    }

    /// Waits for every lent connection to come back, then closes them all; later acquires
    /// fail with `PoolClosed`.
    pub(crate) async fn close(&self) {
        let shared = &self.shared;
        let all = shared.permits.acquire_many(shared.max).await;
        shared.permits.close();
        drop(all);
        if let Some(reaper) = shared.lock_reaper().take() {
            reaper.abort();
        }
        let idle = std::mem::take(&mut *shared.lock_idle());
        for idle in idle {
            shared.open.fetch_sub(1, Ordering::Relaxed);
            let _ = idle.pooled.connection.close().await;
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

/// A failure to connect, with a protocol error made what it is: the server unreachable. sqlx
/// reads a connection closed during its TLS request (a proxy with no server behind it, a
/// PostgreSQL shutting down) as the answer byte 0 and calls it a protocol error, which would
/// become INTERNAL.
fn unreachable(err: sqlx::Error) -> sqlx::Error {
    match err {
        sqlx::Error::Protocol(said) => sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            said,
        )),
        other => other,
    }
}

/// Starts the task that closes idle connections past their limits, when there are limits. It
/// holds the pool weakly, and is stopped when the pool closes or is dropped.
fn start_reaper(shared: &Arc<Shared>) -> Option<AbortHandle> {
    let shortest = [shared.max_lifetime, shared.idle_timeout]
        .into_iter()
        .flatten()
        .min()?;
    let period = (shortest / 4).max(MIN_REAP_PERIOD);
    let shared = Arc::downgrade(shared);
    let task = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            if !reap(&shared) {
                return;
            }
        }
    });
    Some(task.abort_handle())
}

/// Closes the idle connections past their limits; `false` once the pool is closed or gone.
fn reap(shared: &Weak<Shared>) -> bool {
    let Some(shared) = shared.upgrade() else {
        return false;
    };
    if shared.permits.is_closed() {
        return false;
    }
    let now = Instant::now();
    let expired: Vec<Idle> = shared
        .lock_idle()
        .extract_if(.., |idle| idle.expired(now).is_some())
        .collect();
    for idle in expired {
        let reason = idle.expired(now).unwrap_or(Closed::Idle);
        shared.retire(idle.pooled, reason);
    }
    true
}

impl Shared {
    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        // Nothing panics while holding the lock; a poisoned one still holds valid connections.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_reaper(&self) -> std::sync::MutexGuard<'_, Option<AbortHandle>> {
        self.reaper.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new connection, within `timeout`, with its limits drawn.
    async fn connect(&self, timeout: Duration) -> Result<Pooled, sqlx::Error> {
        let connecting = self.targets.connect();
        let connection = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map_err(unreachable)?;
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(Pooled {
            connection,
            retire_at: self
                .max_lifetime
                .map(|lifetime| Instant::now() + jittered(lifetime)),
            idle_timeout: self.idle_timeout.map(jittered),
            checked_at_failure: self.failures.load(Ordering::Relaxed),
        })
    }

    /// Whether a connection failed since `pooled` opened or was last checked.
    fn suspects(&self, pooled: &Pooled) -> bool {
        pooled.checked_at_failure < self.failures.load(Ordering::Relaxed)
    }

    /// `pooled` if it still answers and takes writes; else it is dropped as broken.
    async fn check(&self, mut pooled: Pooled) -> Option<Pooled> {
        let failures = self.failures.load(Ordering::Relaxed);
        let asked = sqlx::query_scalar("SELECT current_setting('transaction_read_only') = 'off'")
            .fetch_one(&mut pooled.connection);
        match tokio::time::timeout(SETTLE_TIMEOUT, asked).await {
            Ok(Ok(true)) => {
                pooled.checked_at_failure = failures;
                Some(pooled)
            }
            _ => {
                self.discard();
                None
            }
        }
    }

    /// A connection failed: those opened before are checked before their next use.
    fn failed(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Back among the idle, unless its lifetime is over.
    fn put_back(&self, pooled: Pooled) {
        let now = Instant::now();
        if pooled.retire_at.is_some_and(|at| now >= at) {
            self.retire(pooled, Closed::Lifetime);
        } else {
            self.lock_idle().push(Idle { pooled, since: now });
        }
    }

    /// Closes a connection that is neither lent nor idle, politely (a Terminate message) in a
    /// task of its own, so no caller waits for it.
    fn retire(&self, pooled: Pooled, reason: Closed) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        reason.count();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = tokio::time::timeout(SETTLE_TIMEOUT, pooled.connection.close()).await;
            });
        }
    }

    /// Drops a connection that failed, or could not be settled.
    fn discard(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        Closed::Broken.count();
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(reaper) = self.lock_reaper().take() {
            reaper.abort();
        }
    }
}

/// A connection lent by [`Connections`]; back to the pool when dropped.
#[derive(Debug)]
pub(crate) struct Lent {
    pooled: Option<Pooled>,
    permit: Option<OwnedSemaphorePermit>,
    shared: Arc<Shared>,
    left: Left,
}

impl Lent {
    /// Says how the operation ended: `clean` when it ran to its end and failed, if at all, in
    /// the database (a constraint, a trigger's exception) rather than on the wire. Without it
    /// (a cancelled call) the connection is settled with a ping before it is lent again.
    pub(crate) fn settle(&mut self, left: Left) {
        self.left = left;
    }
}

impl Deref for Lent {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        // Present from acquire until drop.
        &self.pooled.as_ref().expect("a lent connection").connection
    }
}

impl DerefMut for Lent {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.pooled.as_mut().expect("a lent connection").connection
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let Some(mut pooled) = self.pooled.take() else {
            return;
        };
        // The permit goes after the connection is back, so the next caller finds it idle.
        let permit = self.permit.take();
        let connection = &pooled.connection;
        let clean = !connection.should_flush() && !connection.is_in_transaction();
        match self.left {
            Left::Clean if clean => {
                self.shared.put_back(pooled);
                drop(permit);
                return;
            }
            Left::Unfit => {
                self.shared.failed();
                self.shared.discard();
                return;
            }
            Left::Clean | Left::Unsettled => {}
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
            let connection = &mut pooled.connection;
            match tokio::time::timeout(SETTLE_TIMEOUT, connection.ping()).await {
                Ok(Ok(())) if !connection.is_in_transaction() => shared.put_back(pooled),
                _ => {
                    shared.failed();
                    shared.discard();
                }
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use sqlx::postgres::PgConnectOptions;

    use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

    use super::*;

    /// A pool of two connections to `TEST_DATABASE_URL`'s server with these limits.
    async fn open(max_lifetime: Option<Duration>, idle_timeout: Option<Duration>) -> Connections {
        open_sized(2, max_lifetime, idle_timeout).await
    }

    async fn open_sized(
        max_connections: u32,
        max_lifetime: Option<Duration>,
        idle_timeout: Option<Duration>,
    ) -> Connections {
        let settings = PoolSettings {
            max_connections,
            max_lifetime,
            idle_timeout,
            ..PoolSettings::for_tests()
        };
        Connections::open(Targets::single(options()), &settings)
            .await
            .expect("PostgreSQL answers")
    }

    fn options() -> PgConnectOptions {
        let url = std::env::var("TEST_DATABASE_URL").expect("TEST_DATABASE_URL names a server");
        PgConnectOptions::from_str(&url).expect("a PostgreSQL URL")
    }

    async fn backend_pid(connection: &mut PgConnection) -> i32 {
        sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(connection)
            .await
            .expect("the connection answers")
    }

    /// The backend pid of a connection the pool lends, which goes back to it clean.
    async fn lend_once(pool: &Connections) -> i32 {
        let mut lent = pool.acquire().await.expect("a connection");
        let pid = backend_pid(&mut lent).await;
        lent.settle(Left::Clean);
        pid
    }

    /// Waits up to 2 s for PostgreSQL to have none of these backends left.
    async fn assert_gone(pids: &[i32]) {
        let mut admin = PgConnection::connect_with(&options())
            .await
            .expect("connect");
        for _ in 0..40 {
            let alive: i64 =
                sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)")
                    .bind(pids)
                    .fetch_one(&mut admin)
                    .await
                    .expect("pg_stat_activity");
            if alive == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("PostgreSQL still has some of the backends {pids:?}");
    }

    /// A recorder for this thread (tests run on a current-thread runtime, so the pool's tasks
    /// record into it too).
    fn recorder() -> (PrometheusRecorder, PrometheusHandle) {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        (recorder, handle)
    }

    fn closed(metrics: &PrometheusHandle, reason: &str) -> u64 {
        let line = format!("{CONNECTIONS_CLOSED}{{reason=\"{reason}\"}} ");
        metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(&line)?.parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn limits_are_drawn_up_to_a_tenth_below_the_setting() {
        let limit = Duration::from_secs(100);
        let drawn: Vec<Duration> = (0..1000).map(|_| jittered(limit)).collect();
        assert!(drawn.iter().all(|d| *d <= limit && *d >= limit * 9 / 10));
        let (shortest, longest) = (drawn.iter().min(), drawn.iter().max());
        assert!(longest > shortest, "no jitter: {shortest:?}");
    }

    #[tokio::test]
    #[cfg_attr(
        not(test_postgres),
        ignore = "needs PostgreSQL: set TEST_DATABASE_URL (README)"
    )]
    async fn connections_past_their_lifetime_are_replaced_when_returned_never_while_lent() {
        let (recorder, metrics) = recorder();
        let _local = metrics::set_default_local_recorder(&recorder);
        let pool = open(Some(Duration::from_millis(300)), None).await;

        let mut lent = pool.acquire().await.expect("a connection");
        let first = backend_pid(&mut lent).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(backend_pid(&mut lent).await, first, "closed while lent");
        lent.settle(Left::Clean);
        drop(lent);
        assert_eq!(
            (pool.size(), pool.num_idle()),
            (0, 0),
            "kept past its lifetime"
        );
        assert_gone(&[first]).await;

        let mut seen = vec![];
        let until = Instant::now() + Duration::from_millis(1000);
        while Instant::now() < until {
            let pid = lend_once(&pool).await;
            if !seen.contains(&pid) {
                seen.push(pid);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(seen.len() >= 3, "connections in 1 s of 300 ms: {seen:?}");
        assert!(!seen.contains(&first));
        assert!(closed(&metrics, "lifetime") >= 3, "{}", metrics.render());
        assert_eq!(closed(&metrics, "idle"), 0);
        pool.close().await;
    }

    #[tokio::test]
    #[cfg_attr(
        not(test_postgres),
        ignore = "needs PostgreSQL: set TEST_DATABASE_URL (README)"
    )]
    async fn idle_connections_are_closed_after_the_idle_timeout() {
        let (recorder, metrics) = recorder();
        let _local = metrics::set_default_local_recorder(&recorder);
        let pool = open(None, Some(Duration::from_millis(300))).await;
        let mut a = pool.acquire().await.expect("a connection");
        let mut b = pool.acquire().await.expect("another");
        let pids = [backend_pid(&mut a).await, backend_pid(&mut b).await];
        a.settle(Left::Clean);
        b.settle(Left::Clean);
        let returned = Instant::now();
        drop((a, b));
        assert_eq!((pool.size(), pool.num_idle()), (2, 2));

        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(pool.size(), 2, "closed before the idle timeout");
        while pool.size() > 0 && returned.elapsed() < Duration::from_secs(2) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A quarter of the timeout late at most (the sweep's period), with room for a loaded
        // machine; without the sweep they would stay.
        assert!(returned.elapsed() < Duration::from_secs(1), "{returned:?}");
        assert_eq!((pool.size(), pool.num_idle()), (0, 0));
        assert_gone(&pids).await;
        assert_eq!(closed(&metrics, "idle"), 2, "{}", metrics.render());
        pool.close().await;
    }

    #[tokio::test]
    #[cfg_attr(
        not(test_postgres),
        ignore = "needs PostgreSQL: set TEST_DATABASE_URL (README)"
    )]
    async fn a_connection_postgres_ended_is_dropped_as_broken() {
        let (recorder, metrics) = recorder();
        let _local = metrics::set_default_local_recorder(&recorder);
        let pool = open(None, None).await;
        let mut lent = pool.acquire().await.expect("a connection");
        let pid = backend_pid(&mut lent).await;
        let mut admin = PgConnection::connect_with(&options())
            .await
            .expect("connect");
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .execute(&mut admin)
            .await
            .expect("terminate");
        let failed = sqlx::query("SELECT 1").execute(&mut *lent).await;
        assert!(failed.is_err(), "{failed:?}");
        lent.settle(Left::Unsettled);
        drop(lent);
        for _ in 0..100 {
            if pool.size() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(pool.size(), 0);
        assert_eq!(closed(&metrics, "broken"), 1, "{}", metrics.render());
        assert_ne!(lend_once(&pool).await, pid, "a new connection");
        pool.close().await;
    }

    #[tokio::test]
    #[cfg_attr(
        not(test_postgres),
        ignore = "needs PostgreSQL: set TEST_DATABASE_URL (README)"
    )]
    async fn after_one_connection_fails_the_others_are_checked_so_one_call_fails_not_one_each() {
        let pool = open_sized(4, None, None).await;
        let mut lent = Vec::new();
        for _ in 0..4 {
            lent.push(pool.acquire().await.expect("a connection"));
        }
        let mut pids = Vec::new();
        for connection in &mut lent {
            pids.push(backend_pid(connection).await);
            connection.settle(Left::Clean);
        }
        drop(lent);
        assert_eq!(pool.num_idle(), 4);
        // What a restart or a failover of PostgreSQL does to every connection at once.
        let mut admin = PgConnection::connect_with(&options())
            .await
            .expect("connect");
        sqlx::query("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid")
            .bind(&pids)
            .execute(&mut admin)
            .await
            .expect("terminate");
        assert_gone(&pids).await;

        let mut failed = 0;
        for _ in 0..8 {
            let mut connection = pool.acquire().await.expect("a connection");
            let answer = sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()")
                .fetch_one(&mut *connection)
                .await;
            match answer {
                Ok(pid) => {
                    assert!(!pids.contains(&pid), "lent a terminated connection");
                    connection.settle(Left::Clean);
                }
                Err(_) => {
                    failed += 1;
                    connection.settle(Left::Unsettled);
                }
            }
            drop(connection);
            // The failed connection is settled (and found broken) in a task of its own.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            failed, 1,
            "one call pays for the failover, not one per connection"
        );
        pool.close().await;
    }
}
