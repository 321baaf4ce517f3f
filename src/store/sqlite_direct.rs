//! ListCourses on a SQLite file, read through connections of our own on the calling thread.
//!
//! sqlx runs each SQLite connection on a thread of its own and hands every command and every row
//! across a channel to the task that asked; for the service's hottest read (a student's page of
//! courses, a few indexed rows) those hand-offs cost more than the query: with h2load, ListCourses
//! ran at 0.29 of Health/Check through sqlx, 0.45 on Tokio's blocking pool, 0.54 here (measured,
//! docs/performance.md). SQLite answers such a read from cached pages (its own, or the OS's once
//! a commit has invalidated its own) in microseconds, within what a task may take between two
//! awaits, so it runs where the call runs. Bounds keep it so:
//!
//! - pages of more than [`INLINE_ROWS`] rows are read on Tokio's blocking pool instead;
//! - the connections do not wait for locks: no busy timeout, and no waiting for a connection in
//!   use. When SQLite is busy (a WAL being recovered or restarted, or its read marks contended
//!   past SQLite's own short retries) or every connection is in use, a read answers `None` and
//!   the caller reads through the sqlx pool, which waits off the runtime;
//! - the connections are opened read-only, so nothing here can write.
//!
//! Each read is one statement in its own read transaction, ended when its rows have been taken
//! (rusqlite resets a statement when its rows are dropped and when it goes back to the cache), so
//! it sees every commit acknowledged before it began, like the pool's readers. The in-memory
//! database lives in sqlx's one connection, which these cannot share: it reads through the pool.
//!
//! `--sqlite-direct-reads off` opens none: ListCourses then reads through the pool.
//!
//! [`DirectReaders::close`] closes them before the pools at shutdown: SQLite folds the WAL back
//! into the database file when its last connection closes, which only a connection that can
//! write (the pool's) can do.

use std::{
    path::Path,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError, TryLockError,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use rusqlite::{Connection, ErrorCode, OpenFlags};

use crate::domain::Course;
use crate::error::Error;

/// The most rows read on the calling thread: a page of up to 100 (ListCourses' default is 50),
/// plus the one that tells whether there is a next page.
pub(super) const INLINE_ROWS: i64 = 101;

/// Read-only connections to one SQLite file.
pub(crate) struct DirectReaders {
    /// `None` once closed.
    connections: Box<[Mutex<Option<Connection>>]>,
    /// Where the next read starts looking for a free connection.
    next: AtomicUsize,
}

impl std::fmt::Debug for DirectReaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectReaders")
            .field("connections", &self.connections.len())
            .finish_non_exhaustive()
    }
}

impl DirectReaders {
    /// Opens `count` connections to the file, which must exist (the writer creates it).
    pub(super) fn open(path: &Path, count: usize) -> rusqlite::Result<DirectReaders> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let connections = (0..count.max(1))
            .map(|_| {
                let connection = Connection::open_with_flags(path, flags)?;
                // rusqlite's default is 5 s; these must never wait.
                connection.busy_timeout(Duration::ZERO)?;
                Ok(Mutex::new(Some(connection)))
            })
            .collect::<rusqlite::Result<_>>()?;
        Ok(DirectReaders {
            connections,
            next: AtomicUsize::new(0),
        })
    }

    /// Runs `read`, expected to take up to `rows` rows: on this thread if that is few, else on
    /// the blocking pool. `None` when it could not run without waiting (see the module comment).
    pub(super) async fn read<T, F>(self: &Arc<Self>, rows: i64, read: F) -> Result<Option<T>, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        if rows <= INLINE_ROWS {
            return busy_as_none(
                self.free()
                    .and_then(|connection| connection.as_ref().map(read)),
            );
        }
        let readers = Arc::clone(self);
        let blocking = tokio::task::spawn_blocking(move || {
            readers
                .free()
                .and_then(|connection| connection.as_ref().map(read))
        });
        match blocking.await {
            Ok(result) => busy_as_none(result),
            // The runtime is shutting down.
            Err(join) if join.is_cancelled() => Ok(None),
            Err(panicked) => Err(Error::Internal(Box::new(panicked))),
        }
    }

    /// Closes every connection once its read under way, if any, is done (a page at most: this
    /// blocks the calling thread that long); later reads answer `None`.
    pub(super) fn close(&self) {
        for connection in &self.connections {
            drop(
                connection
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take(),
            );
        }
    }

    /// A connection no one is using (`None` inside once closed), if there is one.
    fn free(&self) -> Option<MutexGuard<'_, Option<Connection>>> {
        let count = self.connections.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..count).find_map(|i| match self.connections[(start + i) % count].try_lock() {
            Ok(connection) => Some(connection),
            // A read that panicked left no statement open: its rows were dropped on unwind.
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        })
    }
}

/// A read's result, busy as `None` (to be read through the pool instead); each fallback is
/// counted by its reason.
fn busy_as_none<T>(result: Option<rusqlite::Result<T>>) -> Result<Option<T>, Error> {
    let fallback = |reason| {
        metrics::counter!(FALLBACKS, "reason" => reason).increment(1);
        Ok(None)
    };
    match result {
        None => fallback("in_use"),
        Some(Ok(value)) => Ok(Some(value)),
        Some(Err(err)) if is_busy(&err) => fallback("busy"),
        Some(Err(err)) => Err(Error::Internal(Box::new(err))),
    }
}

/// Reads that went to the pool instead (by reason: `in_use`, every direct connection was or they
/// are closed; `busy`, SQLite said so).
const FALLBACKS: &str = crate::telemetry::catalogue::SQLITE_DIRECT_FALLBACKS.name;

/// Busy, locked, or SQLITE_PROTOCOL: a WAL read mark still contended after SQLite's retries.
fn is_busy(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error_code(),
        Some(
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::FileLockingProtocolFailed
        )
    )
}

/// The rows of `sql` (the store's own statement, `$1`.. bound in order) as courses, each field
/// read from the column of its name, as sqlx's `FromRow` reads them.
pub(super) fn courses(
    connection: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<Vec<Course>> {
    let mut statement = connection.prepare_cached(sql)?;
    let columns = CourseColumns::of(&statement)?;
    let rows = statement.query_map(params, |row| columns.course(row))?;
    rows.collect()
}

/// Where each field of a course is among a statement's columns. Found by name once per read,
/// not once per row (a name is found by comparing it with each column's in turn): by name, a
/// select list in another order cannot swap two fields of one type (capacity and enrolled,
/// create_time and revision), and a missing column fails the read instead of shifting the rest.
#[derive(Debug)]
struct CourseColumns {
    id: usize,
    code: usize,
    title: usize,
    capacity: usize,
    enrolled: usize,
    create_time: usize,
    revision: usize,
}

impl CourseColumns {
    fn of(statement: &rusqlite::Statement<'_>) -> rusqlite::Result<CourseColumns> {
        let at = |name| statement.column_index(name);
        Ok(CourseColumns {
            id: at("id")?,
            code: at("code")?,
            title: at("title")?,
            capacity: at("capacity")?,
            enrolled: at("enrolled")?,
            create_time: at("create_time")?,
            revision: at("revision")?,
        })
    }

    fn course(&self, row: &rusqlite::Row<'_>) -> rusqlite::Result<Course> {
        Ok(Course {
            id: row.get(self.id)?,
            code: row.get(self.code)?,
            title: row.get(self.title)?,
            capacity: row.get(self.capacity)?,
            enrolled: row.get(self.enrolled)?,
            create_time: row.get(self.create_time)?,
            revision: row.get(self.revision)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future as _;

    use super::*;

    /// A WAL database with rows 1 and 2, and the connection that made it.
    fn database() -> (tempfile::TempDir, DirectReaders, Connection) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("school.db");
        let writer = Connection::open(&path).expect("the database opens");
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL; CREATE TABLE t (id INTEGER PRIMARY KEY); \
                 INSERT INTO t VALUES (1), (2);",
            )
            .expect("the table is made");
        let readers = DirectReaders::open(&path, 1).expect("the readers open");
        (dir, readers, writer)
    }

    fn ids(connection: &Connection) -> rusqlite::Result<Vec<i64>> {
        let mut statement = connection.prepare_cached("SELECT id FROM t ORDER BY id")?;
        let rows = statement.query_map([], |row| row.get(0))?;
        rows.collect()
    }

    #[tokio::test]
    async fn reads_every_commit_made_before_it_inline_or_on_the_blocking_pool() {
        let (_dir, readers, writer) = database();
        let readers = Arc::new(readers);
        let read = readers.read(2, ids).await.expect("read inline");
        assert_eq!(read, Some(vec![1, 2]));
        writer
            .execute("INSERT INTO t VALUES (3)", [])
            .expect("a commit");
        let read = readers.read(1000, ids).await.expect("read on the pool");
        assert_eq!(read, Some(vec![1, 2, 3]));
        writer
            .execute("INSERT INTO t VALUES (4)", [])
            .expect("a commit");
        let read = readers.read(2, ids).await.expect("read inline again");
        assert_eq!(read, Some(vec![1, 2, 3, 4]), "no read is left open");
    }

    #[tokio::test]
    async fn a_busy_database_is_left_to_the_pool_without_waiting() {
        let (_dir, readers, writer) = database();
        let readers = Arc::new(readers);
        let timeout = readers.read(2, |c| c.query_row("PRAGMA busy_timeout", [], |r| r.get(0)));
        assert_eq!(timeout.await.expect("no error"), Some(0_i64), "never waits");
        // In WAL mode, EXCLUSIVE locking keeps the file locked against every other connection
        // from the next write on.
        writer
            .execute_batch("PRAGMA locking_mode = EXCLUSIVE; INSERT INTO t VALUES (3);")
            .expect("the lock is taken");
        let read = readers.read(2, ids).await.expect("no error");
        assert_eq!(read, None);
    }

    #[tokio::test]
    #[expect(
        clippy::await_holding_lock,
        reason = "the connection is held in use on purpose"
    )]
    async fn no_free_connection_is_left_to_the_pool() {
        let (_dir, readers, _writer) = database();
        let readers = Arc::new(readers);
        let _in_use = readers.free().expect("the one connection is free");
        assert_eq!(readers.read(2, ids).await.expect("no error"), None);
        assert_eq!(readers.read(1000, ids).await.expect("no error"), None);
    }

    #[tokio::test]
    async fn closed_readers_leave_every_read_to_the_pool() {
        let (_dir, readers, _writer) = database();
        let readers = Arc::new(readers);
        readers.close();
        assert_eq!(readers.read(2, ids).await.expect("no error"), None);
        assert_eq!(readers.read(1000, ids).await.expect("no error"), None);
    }

    #[tokio::test]
    async fn a_closed_store_folds_the_wal_back_into_the_file() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("school.db");
        let settings = crate::store::PoolSettings::for_tests();
        let url = format!("sqlite:{}", path.display());
        let store = crate::store::Store::connect(&url, &settings)
            .await
            .expect("the store opens");
        store.migrate().await.expect("migrations apply");
        let page = crate::domain::PageRequest::default();
        let listed = store.list_courses_of(1, &page).await;
        assert!(matches!(listed, Err(Error::NotFound(..))), "{listed:?}");
        assert!(dir.path().join("school.db-wal").exists(), "in WAL mode");

        store.close().await;
        drop(store);
        // A connection sqlx was still opening when the pool closed is closed by its own thread
        // once dropped: allow it a moment. Left open, a direct reader keeps the WAL for good.
        let wal = dir.path().join("school.db-wal");
        for _ in 0..50 {
            if !wal.exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(!wal.exists(), "the WAL is left behind");
    }

    #[test]
    fn fallbacks_are_counted_by_reason() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let metrics = recorder.handle();
        let (_dir, readers, writer) = database();
        let readers = Arc::new(readers);
        // Inline reads finish in their first poll.
        let read_once = || {
            let mut context = std::task::Context::from_waker(std::task::Waker::noop());
            let read = std::pin::pin!(readers.read(2, ids)).poll(&mut context);
            assert!(matches!(read, std::task::Poll::Ready(Ok(None))), "{read:?}");
        };
        metrics::with_local_recorder(&recorder, || {
            let in_use = readers.free();
            read_once();
            drop(in_use);
            writer
                .execute_batch("PRAGMA locking_mode = EXCLUSIVE; INSERT INTO t VALUES (3);")
                .expect("the lock is taken");
            read_once();
            read_once();
        });
        let text = metrics.render();
        assert!(
            text.contains(&format!("{FALLBACKS}{{reason=\"in_use\"}} 1\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("{FALLBACKS}{{reason=\"busy\"}} 2\n")),
            "{text}"
        );
    }

    #[tokio::test]
    async fn other_failures_are_internal_errors_and_nothing_is_written() {
        let (_dir, readers, writer) = database();
        let readers = Arc::new(readers);
        let missing = readers
            .read(2, |c| {
                c.query_row("SELECT x FROM missing", [], |r| r.get::<_, i64>(0))
            })
            .await;
        assert!(matches!(missing, Err(Error::Internal(_))), "{missing:?}");
        let write = readers
            .read(2, |c| c.execute("INSERT INTO t VALUES (5)", []))
            .await;
        assert!(matches!(write, Err(Error::Internal(_))), "{write:?}");
        assert_eq!(ids(&writer).expect("read"), [1, 2]);
    }
}
