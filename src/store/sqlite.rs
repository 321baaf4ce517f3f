//! Opening a SQLite database: a file, or one database in memory.
//!
//! A file serves one server process: the write queue and group commit live inside that process,
//! so a second server on the same file would race the first one's batches (measured: INTERNAL
//! answers when the other process deleted a row between a batch's INSERT and its SELECT). The
//! server therefore holds an exclusive `flock` on the database file itself while it runs, and a
//! second server refuses to start. The lock belongs to the file, not to a name: a hard link, a
//! symlink or a `dir/../` spelling reaches the same lock. (A lock on `<path>.lock`, keyed on the
//! name, let a second server start through a hard link, with a `-wal` of its own, since SQLite
//! names that after the path too: within 8 s, 524 calls failed "database disk image is
//! malformed".) The kernel releases the lock when the process ends however it ends, so a crash
//! leaves no stale lock; and there is no other file beside the database to be planted or
//! followed through a symlink.
//!
//! Why `flock` cannot disturb SQLite's own locking: SQLite's unix VFS locks the database with
//! POSIX `fcntl` byte ranges, and Linux keeps `flock` locks apart from those (`unix-flock`, the
//! one VFS that flocks, is built only for Apple platforms, where a URL naming it would meet this
//! lock; on NFS, where Linux emulates `flock` with `fcntl`, SQLite is unsafe anyway). What can
//! disturb it is closing a descriptor: closing
//! *any* descriptor of a file drops every POSIX lock the process holds on it, SQLite's included,
//! and another process could then checkpoint and delete the WAL under the server. So the claim's
//! descriptor is closed only after the server's last SQLite connection: by the composition root
//! once the store is closed (so a test can start a server on the same file again), or by the
//! process's exit.
//! `migrate` and `verify` take no such lock and run beside a server, as SQLite itself allows.
//!
//! `sqlite::memory:` is one database for the whole process, in one connection that readers and
//! the writer share (each connection to `:memory:` would open a database of its own); it lives
//! as long as the server.

use std::{
    fs::{File, TryLockError},
    mem::ManuallyDrop,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use sqlx::{
    Executor, SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

use super::{ConnectError, checkpoint, errors::is_read_only};

/// Where a SQLite URL points.
#[derive(Debug, Clone)]
pub(crate) enum Location {
    File(PathBuf),
    Memory,
}

/// Parses the URL once (each parse of `sqlite::memory:` names a new in-memory database).
pub(super) fn options(url: &str) -> Result<(SqliteConnectOptions, Location), ConnectError> {
    let options = SqliteConnectOptions::from_str(url)?;
    let location = if is_in_memory(url) {
        Location::Memory
    } else {
        Location::File(options.get_filename().to_path_buf())
    };
    Ok((options, location))
}

/// `sqlite::memory:`, `sqlite://:memory:` or `mode=memory` (sqlx keeps its own flag private).
fn is_in_memory(url: &str) -> bool {
    let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let database = rest.split_once('?').map_or(rest, |(database, _)| database);
    database == ":memory:" || params(url).any(|param| param == "mode=memory")
}

/// The `name=value` parameters after the `?` of a SQLite URL.
fn params(url: &str) -> impl Iterator<Item = &str> {
    url.split_once('?')
        .map(|(_, params)| params)
        .unwrap_or_default()
        .split('&')
}

/// Whether the URL chooses how SQLite reaches the file (`vfs=`, `immutable=`), which sqlx passes
/// on and the direct readers (`sqlite_direct`) would not: those URLs read through the pool only.
pub(super) fn names_a_vfs(url: &str) -> bool {
    params(url).any(|param| param.starts_with("vfs=") || param.starts_with("immutable="))
}

/// Whether the URL asks for the file to be created (`mode=rwc`, SQLite's own URI spelling).
pub(super) fn asks_to_create(url: &str) -> bool {
    params(url).any(|param| param == "mode=rwc")
}

/// Fails unless the database file exists (for `migrate` and `verify`, which must not create
/// one at a mistyped path).
pub(super) fn require_existing(location: &Location) -> Result<(), ConnectError> {
    match location {
        Location::File(path) if !path.exists() => Err(ConnectError::Missing(path.clone())),
        _ => Ok(()),
    }
}

pub(super) async fn open(
    options: SqliteConnectOptions,
    create: bool,
    max_connections: u32,
    acquire_timeout: Duration,
) -> Result<SqlitePool, sqlx::Error> {
    let options = options
        .create_if_missing(create)
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

/// The one connection of an in-memory database, never closed while the pool lives.
pub(super) async fn open_in_memory(
    options: SqliteConnectOptions,
    acquire_timeout: Duration,
) -> Result<SqlitePool, sqlx::Error> {
    SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .acquire_timeout(acquire_timeout)
        .test_before_acquire(false)
        .connect_with(options.foreign_keys(true))
        .await
}

/// Why a server may not serve this SQLite database.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error(
        "the SQLite database {0} is already served by another student-service process (it holds \
         the file's lock, reached through this path or another name of the same file: a hard \
         link, a symlink): a SQLite file serves one server process; run replicas on PostgreSQL \
         (DATABASE_URL=postgres://...), or stop the other server first"
    )]
    InUse(PathBuf),
    #[error("cannot lock the SQLite database {file}: {source}")]
    Lock {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the SQLite database {0} is read-only (file permissions, a read-only mount or mode=ro in \
         the URL): the server writes, so it will not start on it; `verify` can still check it"
    )]
    ReadOnly(PathBuf),
    #[error("cannot check that the database can be written: {0}")]
    Check(#[source] sqlx::Error),
}

/// Held while the server runs: the exclusive lock on the database file (none in memory or on
/// PostgreSQL). Dropping it does not release the lock: the descriptor stays open until the
/// process exits (see the module comment) or [`ServingClaim::release`] closes it.
#[derive(Debug)]
pub struct ServingClaim {
    _lock: Option<ManuallyDrop<File>>,
}

impl ServingClaim {
    pub(super) fn none() -> ServingClaim {
        ServingClaim { _lock: None }
    }

    /// Gives the file up, for another server to take: call only once every connection this
    /// server had to it is closed (closing the descriptor drops this process's POSIX locks on
    /// the file, which SQLite's connections rely on while they are open).
    pub fn release(self) {
        if let Some(lock) = self._lock {
            drop(ManuallyDrop::into_inner(lock));
        }
    }
}

/// Locks `path` for this process and checks that `writer` can write to it.
pub(super) async fn claim(
    location: &Location,
    writer: &SqlitePool,
) -> Result<ServingClaim, ClaimError> {
    let Location::File(path) = location else {
        tracing::warn!("the database is in memory: everything in it is lost when the server stops");
        return Ok(ServingClaim::none());
    };
    let lock = lock_database(path)?;
    check_writable(path, writer).await?;
    Ok(ServingClaim {
        _lock: Some(ManuallyDrop::new(lock)),
    })
}

/// Takes the exclusive `flock` on the database file, which every name of the file shares.
fn lock_database(path: &Path) -> Result<File, ClaimError> {
    let failed = |source| ClaimError::Lock {
        file: path.to_path_buf(),
        source,
    };
    // Read-only is enough to lock, and a read-only file gets the clearer refusal of
    // `check_writable`.
    let file = File::open(path).map_err(failed)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(ClaimError::InUse(path.to_path_buf())),
        Err(TryLockError::Error(err)) => Err(failed(err)),
    }
}

/// Writes the header's `user_version` back unchanged inside a transaction that is rolled back:
/// a write that changes nothing, refused with SQLITE_READONLY when the file cannot be written.
/// (Reads, `BEGIN IMMEDIATE` and the migrations' `CREATE TABLE IF NOT EXISTS` all succeed on a
/// read-only file, so only a write tells.)
async fn check_writable(path: &Path, writer: &SqlitePool) -> Result<(), ClaimError> {
    let mut connection = writer.acquire().await.map_err(ClaimError::Check)?;
    connection
        .execute("BEGIN IMMEDIATE")
        .await
        .map_err(ClaimError::Check)?;
    let written = async {
        let version: i64 = sqlx::query_scalar("PRAGMA user_version")
            .fetch_one(&mut *connection)
            .await?;
        // PRAGMA takes no bound parameters; the value is an integer we just read.
        let pragma = format!("PRAGMA user_version = {version}");
        connection.execute(sqlx::AssertSqlSafe(pragma)).await
    }
    .await;
    connection
        .execute("ROLLBACK")
        .await
        .map_err(ClaimError::Check)?;
    match written {
        Ok(_) => Ok(()),
        Err(err) if is_read_only(&err) => Err(ClaimError::ReadOnly(path.to_path_buf())),
        Err(err) => Err(ClaimError::Check(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_memory_urls_are_recognised() {
        for url in [
            "sqlite::memory:",
            "sqlite://:memory:",
            "sqlite://?mode=memory",
            "sqlite:school?mode=memory&cache=shared",
        ] {
            assert!(is_in_memory(url), "{url}");
        }
        for url in [
            "sqlite:school.db",
            "sqlite:///tmp/memory.db",
            "sqlite:x?mode=ro",
        ] {
            assert!(!is_in_memory(url), "{url}");
        }
    }
}
