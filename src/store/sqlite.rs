//! Opening a SQLite database: a file, or one database in memory.
//!
//! A file serves one server process: the write queue and group commit live inside that process,
//! so a second server on the same file would race the first one's batches (measured: INTERNAL
//! answers when the other process deleted a row between a batch's INSERT and its SELECT). The
//! server therefore holds an exclusive lock on `<file>.lock` while it runs (an advisory `flock`,
//! released by the kernel when the process ends however it ends, so a crash leaves no stale
//! lock); a second server refuses to start. `migrate` and `verify` take no such lock and run
//! beside a server, as SQLite itself allows. The lock file is left in place: removing it while
//! another process opens it would let two processes hold "the" lock on two different files.
//!
//! `sqlite::memory:` is one database for the whole process, in one connection that readers and
//! the writer share (each connection to `:memory:` would open a database of its own); it lives
//! as long as the server.

use std::{
    fs::{File, OpenOptions, TryLockError},
    io::Write,
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
pub enum Location {
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
        "the SQLite database {file} is already served by another student-service process \
         (it holds {lock}): a SQLite file serves one server process; run replicas on PostgreSQL \
         (DATABASE_URL=postgres://...), or stop the other server first"
    )]
    InUse { file: PathBuf, lock: PathBuf },
    #[error("cannot lock the SQLite database {file} through {lock}: {source}")]
    Lock {
        file: PathBuf,
        lock: PathBuf,
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
/// PostgreSQL).
#[derive(Debug)]
pub struct ServingClaim {
    _lock: Option<File>,
}

impl ServingClaim {
    pub(super) fn none() -> ServingClaim {
        ServingClaim { _lock: None }
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
    let lock = lock_file(path)?;
    check_writable(path, writer).await?;
    Ok(ServingClaim { _lock: Some(lock) })
}

fn lock_file(path: &Path) -> Result<File, ClaimError> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let failed = |source| ClaimError::Lock {
        file: path.to_path_buf(),
        lock: lock_path.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(failed)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(ClaimError::InUse {
                file: path.to_path_buf(),
                lock: lock_path,
            });
        }
        Err(TryLockError::Error(err)) => return Err(failed(err)),
    }
    // For an operator wondering who holds it; the lock, not the text, is what counts.
    let pid = format!("{}\n", std::process::id());
    file.set_len(0)
        .and_then(|()| file.write_all(pid.as_bytes()))
        .map_err(failed)?;
    Ok(file)
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
