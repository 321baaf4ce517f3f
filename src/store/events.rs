//! Enrollment events: reading the outbox the migrations' triggers fill, and, on PostgreSQL,
//! numbering it.
//!
//! On SQLite the triggers number each event as they write it (one writer: commit order). On
//! PostgreSQL rows arrive unnumbered and the sequencer numbers them (migrations/postgres/0005
//! says why): one replica at a time, the one holding a session advisory lock on a connection of
//! its own; when that replica dies its session ends, the lock is free, and another takes over at
//! its next tick.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;

use super::{Store, with_reader, with_writer};
use crate::{domain::EventFilter, error::Result};

/// One stored event, numbered.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Event {
    pub sequence: i64,
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

/// The numbered range the outbox holds: events `oldest..=head` (none when `oldest > head`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRange {
    pub oldest: i64,
    pub head: i64,
}

const EVENTS_AFTER: &str = "SELECT sequence, CAST(id AS TEXT) AS id, CAST(type AS INTEGER) AS kind, \
    CAST(cause AS INTEGER) AS cause, student_id, course_id, enroll_time, event_time \
    FROM enrollment_events \
    WHERE sequence > $1 AND sequence <= $2 AND ($3 = 0 OR student_id = $3) AND ($4 = 0 OR course_id = $4) \
    ORDER BY sequence LIMIT CAST($5 AS BIGINT)";
const OLDEST: &str = "SELECT MIN(sequence) FROM enrollment_events";
// The last number handed out, which retention never takes back.
const HEAD_SQLITE: &str =
    "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'enrollment_events'), 0)";
const HEAD_POSTGRES: &str = "SELECT last_sequence FROM enrollment_event_sequencer";

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
        UPDATE enrollment_event_sequencer SET last_sequence = last_sequence + (SELECT count(*) FROM ready) \
        RETURNING last_sequence - (SELECT count(*) FROM ready) AS base \
    ) \
    UPDATE enrollment_events e SET sequence = counter.base + ready.n \
    FROM ready, counter WHERE e.position = ready.position";

impl Store {
    /// Up to `limit` events with a sequence in `(after, up_to]` that pass `filter`, in order.
    pub async fn events_after(
        &self,
        after: i64,
        up_to: i64,
        filter: EventFilter,
        limit: i64,
    ) -> Result<Vec<Event>> {
        Ok(
            with_reader!(self, "watch_events", pool => sqlx::query_as(EVENTS_AFTER)
            .bind(after)
            .bind(up_to)
            .bind(filter.student_id)
            .bind(filter.course_id)
            .bind(limit)
            .fetch_all(pool)
            .await)?,
        )
    }

    /// The numbered events the outbox holds now.
    pub async fn event_range(&self) -> Result<EventRange> {
        let head = self.event_head().await?;
        let oldest: Option<i64> = with_reader!(self, "watch_events", pool => sqlx::query_scalar(OLDEST).fetch_one(pool).await)?;
        Ok(EventRange {
            oldest: oldest.unwrap_or(head + 1),
            head,
        })
    }

    /// The newest sequence handed out (0 before the first event).
    pub async fn event_head(&self) -> Result<i64> {
        let head = match self {
            Store::Sqlite { .. } => HEAD_SQLITE,
            Store::Postgres(_) => HEAD_POSTGRES,
        };
        Ok(
            with_reader!(self, "watch_events", pool => sqlx::query_scalar(head).fetch_one(pool).await)?,
        )
    }
}

const UNPUBLISHED: &str = "SELECT sequence, CAST(id AS TEXT) AS id, CAST(type AS INTEGER) AS kind, \
    CAST(cause AS INTEGER) AS cause, student_id, course_id, enroll_time, event_time \
    FROM enrollment_events WHERE published = FALSE AND sequence IS NOT NULL \
    ORDER BY sequence LIMIT CAST($1 AS BIGINT)";
const MARK_PUBLISHED: &str =
    "UPDATE enrollment_events SET published = TRUE WHERE sequence >= $1 AND sequence <= $2";

impl Store {
    /// Up to `limit` numbered events no broker has acknowledged yet, oldest first.
    pub async fn unpublished_events(&self, limit: i64) -> Result<Vec<Event>> {
        Ok(
            with_reader!(self, "relay_events", pool => sqlx::query_as(UNPUBLISHED)
            .bind(limit)
            .fetch_all(pool)
            .await)?,
        )
    }

    /// Records that the broker acknowledged the events `first..=last`.
    pub async fn mark_published(&self, first: i64, last: i64) -> Result<()> {
        with_writer!(self, "relay_events", pool => sqlx::query(MARK_PUBLISHED)
            .bind(first)
            .bind(last)
            .execute(pool)
            .await
            .map(drop))?;
        Ok(())
    }
}

/// Events deleted per statement by retention.
const RETENTION_BATCH: i64 = 1000;
const OLDEST_EVENTS: &str = "SELECT sequence, event_time, CAST(published AS INTEGER) \
    FROM enrollment_events WHERE sequence IS NOT NULL ORDER BY sequence LIMIT CAST($1 AS BIGINT)";
const DELETE_EVENTS: &str = "DELETE FROM enrollment_events WHERE sequence >= $1 AND sequence <= $2";

impl Store {
    /// Deletes up to `limit` of the oldest events that are older than `cutoff` (microseconds)
    /// and, when `published_only`, acknowledged by the broker. It stops at the first event that
    /// must stay, so the events kept are always one range with no hole a watcher could fall
    /// through. Returns how many it deleted.
    pub async fn delete_old_events(
        &self,
        cutoff: i64,
        published_only: bool,
        limit: i64,
    ) -> Result<u64> {
        let oldest: Vec<(i64, i64, i32)> = with_reader!(self, "retain_events", pool => sqlx::query_as(OLDEST_EVENTS)
            .bind(limit)
            .fetch_all(pool)
            .await)?;
        let expired = oldest
            .iter()
            .take_while(|(_, time, published)| {
                *time < cutoff && (!published_only || *published != 0)
            })
            .map(|(sequence, _, _)| *sequence);
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
        if matches!(store, Store::Postgres(_)) {
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
    /// The connection whose session holds the lock; none while another replica has it.
    holder: Option<PgConnection>,
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
            holder: None,
        }
    }

    /// Whether this replica holds the job now, claiming it if no replica does.
    pub async fn hold(&mut self, store: &Store) -> bool {
        let Store::Postgres(pool) = store else {
            return true;
        };
        if let Some(connection) = self.holder.as_mut() {
            // A session that died took the lock with it.
            if sqlx::query("SELECT 1")
                .execute(&mut *connection)
                .await
                .is_ok()
            {
                return true;
            }
            tracing::warn!(
                job = self.job,
                "lost the session holding the lock; claiming again"
            );
            self.holder = None;
        }
        self.holder = claim(pool, self.key).await;
        if self.holder.is_some() {
            tracing::info!("this replica {} (advisory lock taken)", self.job);
        }
        self.holder.is_some()
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
        let Some(connection) = self.leadership.holder.as_mut() else {
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

/// A connection whose session holds the advisory lock `key`, or none if another session does.
async fn claim(pool: &PgPool, key: i64) -> Option<PgConnection> {
    let mut connection = pool.acquire().await.ok()?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(&mut *connection)
        .await
        .ok()?;
    // Out of the pool for good (the pool opens another in its place, and closing the pool does
    // not wait for it): the lock lives as long as this session.
    locked.then(|| connection.detach())
}
