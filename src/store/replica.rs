//! Reads from a PostgreSQL streaming replica (`--database-read-url`), with read-your-writes.
//!
//! Only the reads of read RPCs go there: the API runs them inside [`reading`], with the
//! consistency token the caller sent back, if any. Every write, every read inside a write, and
//! the event feed stay on the primary.
//!
//! A write's token is the primary's WAL position after it ([`Store::write_position`]): a read
//! that carries one goes to the replica only once the replica has replayed past it, waiting at
//! most `--read-your-writes-wait`; otherwise to the primary. Without a token, the replica serves
//! while it is no more than `--max-replica-lag` behind: a task samples the primary's WAL
//! position and the replica's replay position every [`SAMPLE_PERIOD`], and the replica is
//! behind by more than the bound when it has not yet replayed what the primary had written that
//! long ago. A replica that cannot be reached, or fails a read, sends reads to the primary; the
//! caller sees no error.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use sqlx::postgres::PgConnection;
use tokio::task::AbortHandle;

use super::pg_pool::Connections;
use crate::telemetry::catalogue;

/// How often the primary's and the replica's positions are sampled.
const SAMPLE_PERIOD: Duration = Duration::from_millis(50);
/// How often a read with a token asks the replica again while it waits.
const TOKEN_POLL: Duration = Duration::from_millis(5);
/// At most one warning about the replica per this long.
const WARNING_PERIOD: Duration = Duration::from_secs(60);

impl super::Store {
    /// Whether read RPCs may read from a replica (`--database-read-url`).
    pub fn has_replica(&self) -> bool {
        matches!(&self.0, super::Backend::Postgres(_, Some(_)))
    }

    /// The primary's WAL position now (a write's consistency token): every commit acknowledged
    /// before is at or before it. Only with a replica.
    pub async fn write_position(&self) -> Result<Lsn, crate::error::Error> {
        match &self.0 {
            super::Backend::Postgres(primary, Some(_)) => Ok(write_position(primary).await?),
            _ => Err(crate::error::Error::Internal(
                "a consistency token without a replica".into(),
            )),
        }
    }
}

/// A position in the primary's WAL (PostgreSQL's `pg_lsn`), as a number.
pub type Lsn = u64;

tokio::task_local! {
    /// Set while a read RPC runs: `Some(token)` when the caller sent one.
    static READING: Option<Lsn>;
}

/// Runs `read` as a read RPC's store work, which may go to the replica; `after` is the
/// caller's consistency token.
pub async fn reading<F: Future>(after: Option<Lsn>, read: F) -> F::Output {
    READING.scope(after, read).await
}

/// The read RPC's token, when the current task runs one (`None`: not a read RPC).
fn current_read() -> Option<Option<Lsn>> {
    READING.try_with(|after| *after).ok()
}

/// Settings of the replica.
#[derive(Debug, Clone)]
pub struct ReplicaSettings {
    pub url: String,
    pub max_lag: Duration,
    pub token_wait: Duration,
}

#[derive(Debug)]
pub(crate) struct Replica {
    pool: Connections,
    settings: ReplicaSettings,
    state: Arc<Mutex<State>>,
    sampler: AbortHandle,
}

#[derive(Debug, Default)]
struct State {
    /// The primary's WAL position, sampled, newest last, as far back as the lag bound.
    primary: VecDeque<(Instant, Lsn)>,
    /// The replica's replay position at the last sample; none while it cannot be reached.
    replayed: Option<Lsn>,
    last_warning: Option<Instant>,
}

/// Where a read goes, and why (the `reason` of the reads metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Replica,
    Primary(&'static str),
}

impl Replica {
    pub(crate) fn start(
        pool: Connections,
        primary: Connections,
        settings: ReplicaSettings,
    ) -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let sampler = tokio::spawn(sample(
            primary,
            pool.clone(),
            Arc::downgrade(&state),
            settings.max_lag,
        ))
        .abort_handle();
        Replica {
            pool,
            settings,
            state,
            sampler,
        }
    }

    pub(crate) fn pool(&self) -> &Connections {
        &self.pool
    }

    pub(crate) async fn close(&self) {
        self.sampler.abort();
        self.pool.close().await;
    }

    /// Where the current task's read goes (the primary when it is not a read RPC's).
    pub(crate) async fn choose(&self) -> Target {
        let Some(after) = current_read() else {
            return Target::Primary("write");
        };
        let target = self.choose_for(after).await;
        count(target);
        target
    }

    async fn choose_for(&self, after: Option<Lsn>) -> Target {
        let (replayed, fresh) = {
            let state = self.lock();
            (state.replayed, state.fresh(self.settings.max_lag))
        };
        let Some(replayed) = replayed else {
            return Target::Primary("replica_down");
        };
        if !fresh {
            return Target::Primary("replica_lagging");
        }
        let Some(after) = after else {
            return Target::Replica;
        };
        if replayed >= after {
            return Target::Replica;
        }
        if self.wait_for(after).await {
            Target::Replica
        } else {
            Target::Primary("token_not_replayed")
        }
    }

    /// Waits at most the token wait for the replica to replay `after`.
    async fn wait_for(&self, after: Lsn) -> bool {
        let deadline = tokio::time::Instant::now() + self.settings.token_wait;
        loop {
            if let Ok(Some(replayed)) = replay_position(&self.pool).await
                && replayed >= after
            {
                return true;
            }
            if tokio::time::Instant::now() + TOKEN_POLL > deadline {
                return false;
            }
            tokio::time::sleep(TOKEN_POLL).await;
        }
    }

    /// A read on the replica failed: reads go to the primary until the next sample reaches it.
    pub(crate) fn failed(&self, why: &dyn std::fmt::Display) {
        let mut state = self.lock();
        state.replayed = None;
        state.warn(&format!(
            "a read on the replica failed ({why}); reading from the primary"
        ));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.sampler.abort();
    }
}

impl State {
    /// Whether the replica has replayed what the primary had written `max_lag` ago.
    fn fresh(&self, max_lag: Duration) -> bool {
        let Some(replayed) = self.replayed else {
            return false;
        };
        let now = Instant::now();
        let then = self
            .primary
            .iter()
            .rev()
            .find(|(at, _)| now.saturating_duration_since(*at) >= max_lag)
            .or(self.primary.front());
        then.is_none_or(|(_, written)| replayed >= *written)
    }

    fn warn(&mut self, message: &str) {
        let now = Instant::now();
        if self
            .last_warning
            .is_none_or(|at| now.duration_since(at) >= WARNING_PERIOD)
        {
            self.last_warning = Some(now);
            tracing::warn!("{message}");
        }
    }
}

/// Samples both positions until the replica is dropped.
async fn sample(
    primary: Connections,
    replica: Connections,
    state: std::sync::Weak<Mutex<State>>,
    max_lag: Duration,
) {
    let mut ticks = tokio::time::interval(SAMPLE_PERIOD);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let written = write_position(&primary).await;
        let replayed = replay_position(&replica).await;
        let Some(state) = state.upgrade() else {
            return;
        };
        let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if let Ok(written) = written {
            state.primary.push_back((now, written));
        }
        // Keep one sample older than the bound, for `fresh`.
        while state.primary.len() > 2
            && state
                .primary
                .get(1)
                .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= max_lag)
        {
            state.primary.pop_front();
        }
        match replayed {
            Ok(Some(replayed)) => {
                let was_down = state.replayed.is_none();
                state.replayed = Some(replayed);
                if was_down && state.last_warning.is_some() {
                    tracing::info!("the replica answers again; reads go to it");
                }
            }
            Ok(None) | Err(_) => {
                state.replayed = None;
                state.warn("the replica cannot be reached; reading from the primary");
            }
        }
    }
}

/// The primary's WAL position now: any commit acknowledged before is at or before it.
pub(crate) async fn write_position(pool: &Connections) -> Result<Lsn, sqlx::Error> {
    let mut connection = pool.acquire().await?;
    let text: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&mut *connection as &mut PgConnection)
        .await?;
    connection.settle(super::pg_pool::Left::Clean);
    parse_lsn(&text).ok_or_else(|| sqlx::Error::Protocol(format!("not an LSN: {text}")))
}

/// How far the replica has replayed (a server that is not in recovery: how far it has written).
async fn replay_position(pool: &Connections) -> Result<Option<Lsn>, sqlx::Error> {
    let mut connection = pool.acquire().await?;
    let text: Option<String> =
        sqlx::query_scalar("SELECT COALESCE(pg_last_wal_replay_lsn(), pg_current_wal_lsn())::text")
            .fetch_one(&mut *connection as &mut PgConnection)
            .await?;
    connection.settle(super::pg_pool::Left::Clean);
    Ok(text.as_deref().and_then(parse_lsn))
}

/// PostgreSQL's `X/Y` (two hexadecimal halves) as a number.
pub fn parse_lsn(text: &str) -> Option<Lsn> {
    let (high, low) = text.split_once('/')?;
    let high = u32::from_str_radix(high, 16).ok()?;
    let low = u32::from_str_radix(low, 16).ok()?;
    Some((u64::from(high) << 32) | u64::from(low))
}

fn count(target: Target) {
    let (target, reason) = match target {
        Target::Replica => ("replica", "fresh"),
        Target::Primary(reason) => ("primary", reason),
    };
    metrics::counter!(catalogue::DB_READS.name, "target" => target, "reason" => reason)
        .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_compare_as_postgres_orders_them() {
        assert_eq!(parse_lsn("0/16B3748"), Some(0x16B_3748));
        assert_eq!(parse_lsn("1/0"), Some(1 << 32));
        assert!(parse_lsn("1/0") > parse_lsn("0/FFFFFFFF"));
        assert_eq!(parse_lsn("16B3748"), None);
        assert_eq!(parse_lsn("x/1"), None);
    }

    #[test]
    fn a_replica_is_fresh_once_it_has_replayed_what_was_written_max_lag_ago() {
        let now = Instant::now();
        let second = Duration::from_secs(1);
        let state = |replayed| State {
            primary: VecDeque::from([(now - 2 * second, 100), (now - second / 2, 200)]),
            replayed,
            last_warning: None,
        };
        assert!(
            state(Some(100)).fresh(second),
            "replayed what was written 2 s ago"
        );
        assert!(
            !state(Some(99)).fresh(second),
            "behind what was written 2 s ago"
        );
        assert!(!state(None).fresh(second), "down");
    }
}
