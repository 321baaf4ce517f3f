//! How database errors become service errors. Driver text never leaves this process: it stays
//! inside the `Error` as its source and is logged where the error becomes a gRPC status.

use sqlx::error::{DatabaseError, ErrorKind};

use super::{pg_pool::Left, refusals};
use crate::error::Error;

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        match classify(&err) {
            Class::Unavailable => Error::Unavailable(Box::new(err)),
            Class::ReadOnly => Error::ReadOnly(Box::new(err)),
            Class::Conflict => Error::Conflict(Box::new(err)),
            Class::Internal => Error::Internal(Box::new(err)),
        }
    }
}

/// The error `err` would become, for one of several callers that share it (sqlx errors cannot
/// be cloned): the same kind, with the driver text as its source, logged and never sent.
pub(super) fn shared(err: &sqlx::Error) -> Error {
    let text = || err.to_string().into();
    match classify(err) {
        Class::Unavailable => Error::Unavailable(text()),
        Class::ReadOnly => Error::ReadOnly(text()),
        Class::Conflict => Error::Conflict(text()),
        Class::Internal => Error::Internal(text()),
    }
}

/// What a statement that failed with `err` left its connection fit for: clean when the
/// database refused it (a constraint, a trigger's exception, no row) and said so, with nothing
/// wrong on the connection itself; unfit when the server refuses writes (a standby behind an
/// endpoint that switched early, an old primary that rejoined as one: a new connection may
/// reach the writable one); to be settled otherwise.
pub(super) fn leaves_connection(err: &sqlx::Error) -> Left {
    match err {
        sqlx::Error::RowNotFound => Left::Clean,
        sqlx::Error::Database(db) => {
            // A FATAL error ends the session whatever its code (e.g. 40001 "terminating
            // connection due to conflict with recovery").
            let fatal = db
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .is_some_and(|pg| {
                    matches!(
                        pg.severity(),
                        sqlx::postgres::PgSeverity::Fatal | sqlx::postgres::PgSeverity::Panic
                    )
                });
            match classify(err) {
                _ if fatal => Left::Unsettled,
                Class::Unavailable => Left::Unsettled,
                Class::ReadOnly => Left::Unfit,
                Class::Conflict | Class::Internal => Left::Clean,
            }
        }
        _ => Left::Unsettled,
    }
}

enum Class {
    Unavailable,
    ReadOnly,
    Conflict,
    Internal,
}

fn classify(err: &sqlx::Error) -> Class {
    match err {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => Class::Unavailable,
        sqlx::Error::Database(db) if is_unavailable(db.as_ref()) => Class::Unavailable,
        sqlx::Error::Database(db) if refuses_writes(db.as_ref()) => Class::ReadOnly,
        sqlx::Error::Database(db) if is_conflict(db.as_ref()) => Class::Conflict,
        _ => Class::Internal,
    }
}

/// The database is there but cannot serve us now: SQLite busy or locked (which the busy timeout
/// should prevent), or PostgreSQL connection failures, resource limits, shutdown, and a
/// statement cancelled by the operator's `statement_timeout` (57014): nothing was written.
fn is_unavailable(db: &dyn DatabaseError) -> bool {
    let Some(code) = db.code() else { return false };
    if let Some(primary) = sqlite_primary_code(db) {
        // SQLITE_BUSY = 5, SQLITE_LOCKED = 6.
        return matches!(primary, 5 | 6);
    }
    ["08", "53", "57P", "57014"]
        .iter()
        .any(|class| code.starts_with(class))
}

/// The primary result code of a SQLite error (extended codes keep it in the low byte).
fn sqlite_primary_code(db: &dyn DatabaseError) -> Option<i32> {
    db.try_downcast_ref::<sqlx::sqlite::SqliteError>()?;
    Some(db.code()?.parse::<i32>().ok()? & 0xff)
}

/// PostgreSQL's read_only_sql_transaction (25006: a standby, or `default_transaction_read_only`)
/// or SQLITE_READONLY (8).
fn refuses_writes(db: &dyn DatabaseError) -> bool {
    match sqlite_primary_code(db) {
        Some(primary) => primary == 8,
        None => db.code().as_deref() == Some("25006"),
    }
}

/// [`refuses_writes`] for any sqlx error.
pub(super) fn refuses_writes_error(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if refuses_writes(db.as_ref()))
}

/// PostgreSQL's insufficient_privilege (42501): the role may not do this.
pub(super) fn is_permission_denied(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("42501"))
}

/// A table that does not exist: PostgreSQL's undefined_table (42P01), or SQLite's "no such
/// table" (SQLITE_ERROR, told apart by its message only).
pub(super) fn is_undefined_table(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db)
        if db.code().as_deref() == Some("42P01") || db.message().starts_with("no such table"))
}

/// SQLITE_READONLY (8): the file cannot be written.
pub(super) fn is_read_only(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if sqlite_primary_code(db.as_ref()) == Some(8))
}

/// PostgreSQL serialization failure or deadlock: nothing was written and a retry may succeed.
fn is_conflict(db: &dyn DatabaseError) -> bool {
    db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .is_some()
        && matches!(db.code().as_deref(), Some("40001" | "40P01"))
}

pub(super) fn is_unique_violation(err: &sqlx::Error) -> bool {
    kind(err) == Some(ErrorKind::UniqueViolation)
}

pub(super) fn is_foreign_key_violation(err: &sqlx::Error) -> bool {
    kind(err) == Some(ErrorKind::ForeignKeyViolation)
}

/// The seat trigger's refusal of a full course ([`refusals::COURSE_FULL`]): by its SQLSTATE on
/// PostgreSQL, by its message on SQLite, whose triggers cannot raise a code of their own.
pub(super) fn is_course_full(err: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = err else {
        return false;
    };
    if let Some(postgres) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        return postgres.code() == refusals::COURSE_FULL_SQLSTATE;
    }
    db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some()
        && db.message() == refusals::COURSE_FULL
}

/// The course a PostgreSQL COURSE_FULL names in its detail ([`refusals::COURSE_FULL_SQLSTATE`]).
pub(super) fn full_course(err: &sqlx::Error) -> Option<i64> {
    let sqlx::Error::Database(db) = err else {
        return None;
    };
    let postgres = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()?;
    if postgres.code() != refusals::COURSE_FULL_SQLSTATE {
        return None;
    }
    postgres.detail()?.parse().ok()
}

fn kind(err: &sqlx::Error) -> Option<ErrorKind> {
    match err {
        sqlx::Error::Database(db) => Some(db.kind()),
        _ => None,
    }
}
