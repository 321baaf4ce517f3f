//! The enrollment event outbox as stored: the rows the migrations' triggers write, read in
//! pages, numbered, marked published and deleted. What runs over it (following the head, the
//! sequencer, leadership, retention, the relay) is `crate::outbox`'s.
//!
//! On SQLite the triggers number each event as they write it (one writer: commit order). On
//! PostgreSQL rows arrive unnumbered and are numbered later, on a [`Session`] of their own
//! (migrations/postgres/0005 says why).

use sha2::{Digest, Sha256};
use sqlx::PgConnection;

use super::{Backend, Store, with_reader, with_writer};
use crate::{domain::EventFilter, error::Result};

/// One stored event, numbered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub sequence: i64,
    /// A UUID; see `event_id`.
    pub id: String,
    /// 1 CREATED, 2 DELETED.
    pub kind: i32,
    /// 0 none, 1 UNASSIGNED, 2 STUDENT_DELETED, 3 COURSE_DELETED.
    pub cause: i32,
    pub student_id: i64,
    pub course_id: i64,
    pub enroll_time: i64,
    pub event_time: i64,
}

/// An event as stored: its id is derived, not kept.
#[derive(sqlx::FromRow)]
struct Row {
    sequence: i64,
    namespace: String,
    kind: i32,
    cause: i32,
    student_id: i64,
    course_id: i64,
    enroll_time: i64,
    event_time: i64,
}

impl From<Row> for Event {
    fn from(row: Row) -> Self {
        Event {
            id: event_id(&row.namespace, row.sequence),
            sequence: row.sequence,
            kind: row.kind,
            cause: row.cause,
            student_id: row.student_id,
            course_id: row.course_id,
            enroll_time: row.enroll_time,
            event_time: row.event_time,
        }
    }
}

/// The id of event `sequence` of the feed whose namespace (random, made when the database was
/// created) is `namespace`: a UUID (version 8, RFC 9562) from SHA-256 of the two. Unique forever,
/// as no sequence is reused and no two databases share a namespace; the same every time it is
/// read, which is what lets a consumer deduplicate a re-published event. Storing nothing for it
/// keeps each event one small row with one index entry (measured: a stored random UUID with its
/// unique index, and the filter indexes, cost SQLite's AssignCourse about 45%).
fn event_id(namespace: &str, sequence: i64) -> String {
    let digest = Sha256::digest(format!("{namespace}:{sequence}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x80; // version 8
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // the RFC 9562 variant
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// The numbered range the outbox holds: events `oldest..=head` (none when `oldest > head`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRange {
    pub oldest: i64,
    pub head: i64,
}

/// The columns of `Row`, for a statement on `enrollment_events`.
macro_rules! select_events {
    ($rest:literal) => {
        concat!(
            "SELECT sequence, (SELECT namespace FROM event_feed) AS namespace, ",
            "CAST(type AS INTEGER) AS kind, CAST(cause AS INTEGER) AS cause, student_id, ",
            "course_id, enroll_time, event_time FROM enrollment_events ",
            $rest
        )
    };
}

const EVENTS_AFTER: &str = select_events!(
    "WHERE sequence > $1 AND sequence <= $2 AND ($3 = 0 OR student_id = $3) \
     AND ($4 = 0 OR course_id = $4) ORDER BY sequence LIMIT CAST($5 AS BIGINT)"
);
const OLDEST: &str = "SELECT MIN(sequence) FROM enrollment_events";
// The last number handed out. On SQLite, the newest row: retention never deletes it.
const HEAD_SQLITE: &str = "SELECT COALESCE(MAX(sequence), 0) FROM enrollment_events";
const HEAD_POSTGRES: &str = "SELECT last_sequence FROM event_feed";

const UNPUBLISHED: &str = select_events!(
    "WHERE sequence > (SELECT last_published FROM event_feed) \
     ORDER BY sequence LIMIT CAST($1 AS BIGINT)"
);
// The relay publishes in order: one number says how far it got.
const MARK_PUBLISHED: &str = "UPDATE event_feed SET last_published = $1 WHERE last_published < $1";
const LAST_PUBLISHED: &str = "SELECT last_published FROM event_feed";

// Numbers, in (xid, position) order, the rows of transactions older than every one still
// running (see the migration), and moves the counter past them, in one statement.
const NUMBER_READY: &str = "WITH ready AS ( \
        SELECT position, row_number() OVER (ORDER BY xid, position) AS n FROM enrollment_events \
        WHERE sequence IS NULL AND xid < pg_snapshot_xmin(pg_current_snapshot()) \
        ORDER BY xid, position LIMIT $1 \
    ), counter AS ( \
        UPDATE event_feed SET last_sequence = last_sequence + (SELECT count(*) FROM ready) \
        RETURNING last_sequence - (SELECT count(*) FROM ready) AS base \
    ) \
    UPDATE enrollment_events e SET sequence = counter.base + ready.n \
    FROM ready, counter WHERE e.position = ready.position";

const OLDEST_EVENTS: &str = "SELECT sequence, event_time FROM enrollment_events \
    WHERE sequence IS NOT NULL ORDER BY sequence LIMIT CAST($1 AS BIGINT)";
const DELETE_EVENTS: &str = "DELETE FROM enrollment_events WHERE sequence >= $1 AND sequence <= $2";

impl Store {
    /// Up to `limit` events with a sequence in `(after, up_to]` that pass `filter`, in order.
    pub async fn events_after(
        &self,
        after: i64,
        up_to: i64,
        filter: EventFilter,
        limit: i64,
    ) -> Result<Vec<Event>> {
        let rows: Vec<Row> = with_reader!(self, "watch_events", pool => sqlx::query_as(EVENTS_AFTER)
            .bind(after)
            .bind(up_to)
            .bind(filter.student_id)
            .bind(filter.course_id)
            .bind(limit)
            .fetch_all(pool)
            .await)?;
        Ok(rows.into_iter().map(Event::from).collect())
    }

    /// The numbered events the outbox holds now.
    pub async fn event_range(&self) -> Result<EventRange> {
        let head = self.event_head().await?;
        Ok(EventRange {
            oldest: self.oldest_event().await?.unwrap_or(head + 1),
            head,
        })
    }

    /// The oldest numbered event kept; none when retention (or nothing yet) left none.
    pub async fn oldest_event(&self) -> Result<Option<i64>> {
        Ok(
            with_reader!(self, "watch_events", pool => sqlx::query_scalar(OLDEST).fetch_one(pool).await)?,
        )
    }

    /// The newest sequence handed out (0 before the first event).
    pub async fn event_head(&self) -> Result<i64> {
        let head = match &self.0 {
            Backend::Sqlite { .. } => HEAD_SQLITE,
            Backend::Postgres(..) => HEAD_POSTGRES,
        };
        Ok(
            with_reader!(self, "watch_events", pool => sqlx::query_scalar(head).fetch_one(pool).await)?,
        )
    }

    /// Up to `limit` numbered events no broker has acknowledged yet, oldest first.
    pub async fn unpublished_events(&self, limit: i64) -> Result<Vec<Event>> {
        let rows: Vec<Row> = with_reader!(self, "relay_events", pool => sqlx::query_as(UNPUBLISHED)
            .bind(limit)
            .fetch_all(pool)
            .await)?;
        Ok(rows.into_iter().map(Event::from).collect())
    }

    /// Records that the broker acknowledged every event up to `last`.
    pub async fn mark_published(&self, last: i64) -> Result<()> {
        with_writer!(self, "relay_events", pool => sqlx::query(MARK_PUBLISHED)
            .bind(last)
            .execute(pool)
            .await
            .map(drop))?;
        Ok(())
    }

    /// Deletes up to `limit` of the oldest events that are older than `cutoff` (microseconds)
    /// and, when `published_only`, acknowledged by the broker. It stops at the first event that
    /// must stay, so the events kept are always one range with no hole a watcher could fall
    /// through, and it never deletes the newest event, whose sequence SQLite counts on (see the
    /// migration). Returns how many it deleted.
    pub async fn delete_old_events(
        &self,
        cutoff: i64,
        published_only: bool,
        limit: i64,
    ) -> Result<u64> {
        let head = self.event_head().await?;
        let published: i64 = if published_only {
            with_reader!(self, "retain_events", pool => sqlx::query_scalar(LAST_PUBLISHED).fetch_one(pool).await)?
        } else {
            head
        };
        let oldest: Vec<(i64, i64)> = with_reader!(self, "retain_events", pool => sqlx::query_as(OLDEST_EVENTS)
            .bind(limit)
            .fetch_all(pool)
            .await)?;
        let expired = oldest
            .iter()
            .take_while(|(sequence, time)| {
                *time < cutoff && *sequence <= published && *sequence < head
            })
            .map(|(sequence, _)| *sequence);
        let (Some(first), Some(last)) = (oldest.first().map(|o| o.0), expired.last()) else {
            return Ok(0);
        };
        Ok(
            with_writer!(self, "retain_events", pool => sqlx::query(DELETE_EVENTS)
            .bind(first)
            .bind(last)
            .execute(pool)
            .await
            .map(|done| done.rows_affected()))?,
        )
    }
}

impl Store {
    /// Whether several servers may share this database (PostgreSQL), so that a job only one of
    /// them may do needs a leader; a SQLite file has one server.
    pub fn is_shared(&self) -> bool {
        matches!(self.0, Backend::Postgres(..))
    }

    /// A PostgreSQL session of its own, outside the pool and its maximum, within the acquire
    /// timeout: for a job that holds a session advisory lock for as long as it lives. None on
    /// SQLite.
    pub async fn session(&self) -> Option<Result<Session>> {
        let Backend::Postgres(pool, _) = &self.0 else {
            return None;
        };
        Some(pool.detached().await.map(Session).map_err(Into::into))
    }
}

/// A PostgreSQL session outside the pool (see [`Store::session`]); its advisory locks end with it.
#[derive(Debug)]
pub struct Session(PgConnection);

impl Session {
    /// Whether the session still answers (a session that died took its locks with it).
    pub async fn is_alive(&mut self) -> bool {
        sqlx::query("SELECT 1").execute(&mut self.0).await.is_ok()
    }

    /// Takes the session advisory lock `key` if no session holds it.
    pub async fn try_lock(&mut self, key: i64) -> Result<bool> {
        Ok(sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut self.0)
            .await?)
    }

    /// Numbers up to `limit` of the events ready for it (those of transactions older than every
    /// one still running), in commit order; returns how many it numbered.
    pub async fn number_ready_events(&mut self, limit: i64) -> Result<u64> {
        let numbered = sqlx::query(NUMBER_READY)
            .bind(limit)
            .execute(&mut self.0)
            .await?;
        Ok(numbered.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_version_8_uuids_fixed_by_namespace_and_sequence() {
        let id = event_id("0123abcd", 42);
        assert_eq!(id, event_id("0123abcd", 42), "the same every time");
        assert_ne!(id, event_id("0123abcd", 43));
        assert_ne!(id, event_id("0123abce", 42));
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('8'), "version 8: {id}");
        assert!(
            matches!(&parts[3][..1], "8" | "9" | "a" | "b"),
            "RFC 9562 variant: {id}"
        );
    }
}
