//! WAL checkpoints off the write path, on SQLite.
//!
//! A checkpoint copies the WAL's pages into the database file and syncs both. SQLite runs one
//! inside the commit that takes the WAL past `wal_autocheckpoint` pages, and with one writer
//! every enrollment queued behind that commit waits for the copy and the two `fsync`s: with the
//! default of 1,000 pages that was AssignCourse's p99 (8 ms), with 10,000 its p99.9 (32 ms).
//! Here a background task checkpoints every [`INTERVAL`] from a reader connection in PASSIVE
//! mode, which takes no lock a writer needs, so commits go on meanwhile. The writer's own
//! auto-checkpoint stays as a backstop at [`BACKSTOP_PAGES`] (40 MB of WAL); when it runs, the
//! background task has already copied nearly everything.

use std::time::Duration;

use sqlx::SqlitePool;
use tokio::task::AbortHandle;

/// How often the background task checkpoints.
const INTERVAL: Duration = Duration::from_millis(100);
/// WAL pages after which a commit checkpoints by itself.
pub(super) const BACKSTOP_PAGES: &str = "10000";

/// The background task; it stops when the last store clone holding this is dropped, or at its
/// next tick after the pool is closed.
#[derive(Debug)]
pub(crate) struct Checkpointer(AbortHandle);

impl Checkpointer {
    pub(super) fn start(pool: SqlitePool) -> Checkpointer {
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if pool.is_closed() {
                    return;
                }
                if let Err(err) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                    .fetch_all(&pool)
                    .await
                {
                    tracing::warn!(error = %err, "WAL checkpoint failed; the next one retries");
                }
            }
        });
        Checkpointer(task.abort_handle())
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.0.abort();
    }
}
