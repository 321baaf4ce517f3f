//! Safe retries of creates (AIP-155): a create that carries a request_id runs in one transaction
//! with the row that remembers it (migrations/*/0008).
//!
//! The transaction claims the request_id first (an insert that does nothing if the id is
//! there), then creates, then records the answer, then commits: the id and the create are
//! written together or not at all. A retry finds the id claimed and answers what was recorded.
//! On PostgreSQL a retry that races its own first attempt waits on the claim (the unique index)
//! until the first commits, then finds its answer; if the first rolled back, the retry claims
//! the id and creates. SQLite runs one write transaction at a time. Only the claim can wait, and
//! it comes before the create takes any lock, so it adds no lock-order cycle.

use serde::{Serialize, de::DeserializeOwned};
use sqlx::{Connection, PgConnection, SqliteConnection, Transaction};

use super::{Store, with_writer};
use crate::{
    domain::{Once, REQUEST_ID_RETENTION},
    error::{Error, Result},
};

pub(super) const CLAIM: &str = "INSERT INTO request_ids \
    (request_id, method, request_digest, create_time) VALUES ($1, $2, $3, $4) \
    ON CONFLICT (request_id) DO NOTHING RETURNING request_id";
pub(super) const FIND: &str =
    "SELECT method, request_digest, response FROM request_ids WHERE request_id = $1";
pub(super) const RECORD: &str = "UPDATE request_ids SET response = $2 WHERE request_id = $1";
// A thousand at a time, so one run never holds many locks or one long transaction.
const EXPIRE: &str = "DELETE FROM request_ids WHERE request_id IN \
    (SELECT request_id FROM request_ids WHERE create_time < $1 LIMIT 1000)";

/// What a create with a request_id came to.
pub(super) enum Claimed<T> {
    /// It created, and recorded its answer.
    Done(T),
    /// The request_id was used before; nothing was written.
    Earlier(Earlier),
}

/// The row of a request_id used before.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct Earlier {
    method: String,
    request_digest: String,
    response: Option<String>,
}

impl Earlier {
    /// The first answer, when `once` repeats the request that got it.
    pub(super) fn answer<T: DeserializeOwned>(self, once: &Once) -> Result<T> {
        if self.method != once.method || self.request_digest != once.digest {
            return Err(Error::RequestIdReused {
                request_id: once.request_id.clone(),
                method: self.method,
            });
        }
        let response = self
            .response
            .ok_or_else(|| Error::Internal("a committed request_id without its answer".into()))?;
        serde_json::from_str(&response).map_err(|err| Error::Internal(err.into()))
    }
}

/// An answer as recorded.
pub(super) fn encode<T: Serialize>(answer: &T) -> Result<String, sqlx::Error> {
    serde_json::to_string(answer).map_err(|err| sqlx::Error::Encode(err.into()))
}

/// A connection's write transaction: SQLite's must take the write lock at BEGIN (a plain BEGIN
/// with more than one connection fails with "database is locked" at the first write).
pub(super) trait BeginWrite: Connection {
    const BEGIN: &'static str;
}

impl BeginWrite for SqliteConnection {
    const BEGIN: &'static str = "BEGIN IMMEDIATE";
}

impl BeginWrite for PgConnection {
    const BEGIN: &'static str = "BEGIN";
}

pub(super) fn begin_write<C: BeginWrite>(
    connection: &mut C,
) -> impl Future<Output = Result<Transaction<'_, C::Database>, sqlx::Error>> + Send + '_ {
    connection.begin_with(C::BEGIN)
}

/// Claims `$once` in `$transaction`: `None` when claimed (go on and create), the earlier row
/// when the id was used before.
macro_rules! claim {
    ($transaction:expr, $once:expr, $now:expr) => {{
        let once: &$crate::domain::Once = $once;
        let claimed: Option<(String,)> = sqlx::query_as($crate::store::request_ids::CLAIM)
            .bind(&once.request_id)
            .bind(once.method)
            .bind(&once.digest)
            .bind($now)
            .fetch_optional(&mut *$transaction)
            .await?;
        match claimed {
            Some(_) => None,
            None => Some(
                sqlx::query_as::<_, $crate::store::request_ids::Earlier>(
                    $crate::store::request_ids::FIND,
                )
                .bind(&once.request_id)
                .fetch_one(&mut *$transaction)
                .await?,
            ),
        }
    }};
}

/// Records `$answer` as the answer to the claimed `$once`.
macro_rules! record {
    ($transaction:expr, $once:expr, $answer:expr) => {
        sqlx::query($crate::store::request_ids::RECORD)
            .bind(&$once.request_id)
            .bind($crate::store::request_ids::encode($answer)?)
            .execute(&mut *$transaction)
            .await?
    };
}

/// `$create` (an expression that creates on the transaction bound to `$tx`) done at most once
/// per request_id: a `Result<Claimed<T>, sqlx::Error>`.
macro_rules! once {
    ($store:expr, $operation:literal, $once:expr, $now:expr, $tx:ident => $create:expr) => {
        $crate::store::with_writer!($store, $operation, connection => async {
            let once: &$crate::domain::Once = $once;
            let mut transaction = $crate::store::request_ids::begin_write(connection).await?;
            if let Some(earlier) = $crate::store::request_ids::claim!(transaction, once, $now) {
                transaction.rollback().await?;
                return Ok($crate::store::request_ids::Claimed::Earlier(earlier));
            }
            let created = {
                let $tx = &mut *transaction;
                $create
            }?;
            $crate::store::request_ids::record!(transaction, once, &created);
            transaction.commit().await?;
            Ok($crate::store::request_ids::Claimed::Done(created))
        }
        .await)
    };
}
pub(super) use {claim, once, record};

impl Store {
    /// Deletes request_ids older than `cutoff` (microseconds since the Unix epoch), a batch at a
    /// time; how many.
    pub async fn expire_request_ids(&self, cutoff: i64) -> Result<u64> {
        let mut deleted = 0;
        loop {
            let done = with_writer!(self, "expire_request_ids", pool => sqlx::query(EXPIRE)
                .bind(cutoff)
                .execute(pool)
                .await
                .map(|done| done.rows_affected()))?;
            deleted += done;
            if done < 1000 {
                return Ok(deleted);
            }
        }
    }
}

/// Deletes expired request_ids every `every`, for as long as it runs.
pub async fn expire_request_ids(store: Store, every: std::time::Duration) {
    let retention = i64::try_from(REQUEST_ID_RETENTION.as_micros()).unwrap_or(i64::MAX);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let cutoff = crate::domain::now_micros().saturating_sub(retention);
        match store.expire_request_ids(cutoff).await {
            Ok(0) => {}
            Ok(deleted) => tracing::debug!(deleted, "expired request_ids deleted"),
            Err(err) => tracing::warn!(error = %err, "cannot delete expired request_ids"),
        }
    }
}
