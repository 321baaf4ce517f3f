//! Enrollment events: reading the outbox the migrations' triggers fill, numbering it on
//! PostgreSQL, and retention.
//!
//! On SQLite the triggers number each event as they write it (one writer: commit order). On
//! PostgreSQL rows arrive unnumbered and the sequencer numbers them (migrations/postgres/0005
//! says why): one replica at a time, the one holding a session advisory lock on a connection of
//! its own; when that replica dies its session ends, the lock is free, and another takes over at
//! its next tick.

use super::Backend;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use tokio::sync::watch;

use super::{Store, with_reader, with_writer};
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

/// Any number that names this lock among the database's advisory locks.
const SEQUENCER_LOCK: i64 = 0x5343_484f_4f4c_5631; // "SCHOOLV1"
/// The relay's lock (see `Leadership`).
const RELAY_LOCK: i64 = 0x5343_484f_4f4c_5632; // "SCHOOLV2"
/// Rows numbered per statement; the sequencer loops until fewer are left.
const SEQUENCER_BATCH: i64 = 1000;
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

/// Events deleted per statement by retention.
const RETENTION_BATCH: i64 = 1000;
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
            Backend::Postgres(_) => HEAD_POSTGRES,
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

/// Deletes events older than `retention` (and, when `published_only`, published), a batch at a
/// time, checking every tenth of the retention (at most a minute apart).
pub async fn retain_events(store: Store, retention: Duration, published_only: bool) {
    let every = (retention / 10).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let retention = i64::try_from(retention.as_micros()).unwrap_or(i64::MAX);
        let cutoff = crate::domain::now_micros().saturating_sub(retention);
        loop {
            match store
                .delete_old_events(cutoff, published_only, RETENTION_BATCH)
                .await
            {
                Ok(deleted) if deleted as i64 == RETENTION_BATCH => {}
                Ok(_) => break,
                Err(err) => {
                    tracing::warn!(error = %err, "event retention failed; trying again later");
                    break;
                }
            }
        }
    }
}

/// Keeps `head` at the newest sequence, polling every `interval`; on PostgreSQL it also
/// numbers new events while this replica holds the sequencer lock. Runs until `head` has no
/// receivers left and the store is closed.
pub async fn follow_head(store: Store, head: watch::Sender<i64>, interval: Duration) {
    let mut sequencer = Sequencer::default();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if matches!(store.0, Backend::Postgres(_)) {
            sequencer.run(&store).await;
        }
        match store.event_head().await {
            Ok(sequence) => {
                head.send_if_modified(|current| {
                    let newer = sequence > *current;
                    if newer {
                        *current = sequence;
                    }
                    newer
                });
            }
            Err(err) => tracing::debug!(error = %err, "cannot read the event head"),
        }
    }
}

/// A job only one replica may do at a time on PostgreSQL (numbering events, relaying them):
/// held by a session advisory lock on a connection of its own, so that when the replica dies
/// its session ends, the lock is free, and another replica takes the job at its next try. On
/// SQLite there is one server per file, so it always holds.
pub struct Leadership {
    key: i64,
    job: &'static str,
    /// The session that holds the lock, or tries for it at each call while another replica
    /// has it (one session kept, not one opened per try).
    session: Option<PgConnection>,
    holds: bool,
}

impl Leadership {
    /// The relay's: one replica publishes to the broker, in order.
    pub fn relay() -> Self {
        Leadership::of(RELAY_LOCK, "relays enrollment events")
    }

    fn of(key: i64, job: &'static str) -> Self {
        Leadership {
            key,
            job,
            session: None,
            holds: false,
        }
    }

    /// Whether this replica holds the job now, claiming it if no replica does.
    pub async fn hold(&mut self, store: &Store) -> bool {
        let Backend::Postgres(pool) = &store.0 else {
            return true;
        };
        if self.holds {
            // A session that died took the lock with it.
            if let Some(session) = self.session.as_mut()
                && sqlx::query("SELECT 1").execute(session).await.is_ok()
            {
                return true;
            }
            tracing::warn!(
                job = self.job,
                "lost the session holding the lock; claiming again"
            );
            self.holds = false;
            self.session = None;
        }
        if self.session.is_none() {
            self.session = pool.detached().await.ok();
        }
        let Some(session) = self.session.as_mut() else {
            return false;
        };
        match sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(self.key)
            .fetch_one(session)
            .await
        {
            Ok(true) => {
                self.holds = true;
                tracing::info!("this replica {} (advisory lock taken)", self.job);
            }
            Ok(false) => {}
            Err(_) => self.session = None,
        }
        self.holds
    }
}

/// This replica's claim on numbering PostgreSQL's events.
struct Sequencer {
    leadership: Leadership,
}

impl Default for Sequencer {
    fn default() -> Self {
        Sequencer {
            leadership: Leadership::of(SEQUENCER_LOCK, "numbers enrollment events"),
        }
    }
}

impl Sequencer {
    /// Numbers what is ready, taking the lock first if no replica holds it.
    async fn run(&mut self, store: &Store) {
        if !self.leadership.hold(store).await {
            return;
        }
        let Some(connection) = self.leadership.session.as_mut() else {
            return;
        };
        loop {
            let numbered = sqlx::query(NUMBER_READY)
                .bind(SEQUENCER_BATCH)
                .execute(&mut *connection)
                .await;
            match numbered {
                Ok(done) if (done.rows_affected() as i64) < SEQUENCER_BATCH => return,
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "numbering enrollment events failed; trying again");
                    return;
                }
            }
        }
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
