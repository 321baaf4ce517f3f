//! Group commit of AssignCourse on SQLite.
//!
//! SQLite has one writer, so concurrent enrollments queue for it one by one, and each pays for
//! a commit of its own: the WAL frames of every page it touched and, every thousand pages or
//! so, a checkpoint with its `fsync`. Here a single task takes the enrollments waiting in the
//! queue at once and commits them in one `BEGIN IMMEDIATE` transaction on the writer
//! connection: one commit for the lot, pages shared by the lot written once.
//!
//! Each enrollment is still its own statement inside the transaction, so the rules stay those
//! of the migrations: a full course (the seat trigger's `RAISE(ABORT)`) or an unknown student or
//! course (an immediate foreign key) undoes that statement only, and the others go on. Two calls
//! for the same pair in one batch: the first creates the row, the second finds it. Any other
//! error rolls the whole batch back and every call in it gets that error; nothing is answered
//! before the commit has succeeded.
//!
//! A call waits in the queue for at most the pool's acquire timeout and then gets UNAVAILABLE,
//! as if it had waited for a connection; a call whose client is gone (deadline, cancellation)
//! is dropped from the queue. Either way its enrollment never runs. Once a batch has taken a
//! call, the call's statement runs to the end with the batch, like a statement already sent to
//! the database.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use sqlx::{Executor, SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use super::{
    enrollments::{Assigned, INSERT, SELECT, after_insert},
    errors::shared,
    observe,
};
use crate::{
    domain::StudentCourse,
    error::{Error, Result},
};

/// The most enrollments one transaction commits.
const MAX_BATCH: usize = 128;

/// Where a queued call stands; the batch and the waiting caller race to move it on from
/// `QUEUED`, and whoever does decides whether it runs.
const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const ABANDONED: u8 = 2;

/// The queue's sending side; cloned with the store.
#[derive(Debug, Clone)]
pub(crate) struct Assigner {
    queue: mpsc::UnboundedSender<Pending>,
    max_wait: Duration,
}

#[derive(Debug)]
struct Pending {
    pair: StudentCourse,
    now: i64,
    state: Arc<AtomicU8>,
    reply: oneshot::Sender<Result<Assigned>>,
}

impl Pending {
    /// Whether the batch may run this call: its caller still waits and has not given up.
    fn take(&self) -> bool {
        !self.reply.is_closed()
            && self
                .state
                .compare_exchange(QUEUED, TAKEN, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }
}

impl Assigner {
    /// Starts the task that commits the queue on `writer`; it ends when every store clone is
    /// dropped. `max_wait` is how long a call may wait to be taken.
    pub(super) fn start(writer: SqlitePool, max_wait: Duration) -> Assigner {
        let (queue, waiting) = mpsc::unbounded_channel();
        tokio::spawn(commit_batches(writer, waiting));
        Assigner { queue, max_wait }
    }

    pub(super) async fn assign(&self, pair: StudentCourse, now: i64) -> Result<Assigned> {
        let state = Arc::new(AtomicU8::new(QUEUED));
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            pair,
            now,
            state: state.clone(),
            reply,
        };
        if self.queue.send(pending).is_err() {
            return Err(Error::Unavailable(Box::new(sqlx::Error::PoolClosed)));
        }
        let waiting = self.wait_for(state, answer);
        let name = "sqlite group commit";
        observe::in_span(name, observe::SQLITE_SYSTEM, "assign_course", waiting).await
    }

    /// Waits for the batch that runs the call, or gives up after `max_wait` if none took it.
    async fn wait_for(
        &self,
        state: Arc<AtomicU8>,
        mut answer: oneshot::Receiver<Result<Assigned>>,
    ) -> Result<Assigned> {
        let worker_gone = || Err(Error::Unavailable(Box::new(sqlx::Error::WorkerCrashed)));
        tokio::select! {
            answer = &mut answer => return answer.unwrap_or_else(|_| worker_gone()),
            () = tokio::time::sleep(self.max_wait) => {}
        }
        if state
            .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return Err(Error::Unavailable(Box::new(sqlx::Error::PoolTimedOut)));
        }
        // A batch took the call just now: it runs, so wait for its answer.
        answer.await.unwrap_or_else(|_| worker_gone())
    }
}

async fn commit_batches(writer: SqlitePool, mut waiting: mpsc::UnboundedReceiver<Pending>) {
    while let Some(first) = waiting.recv().await {
        let mut connection = match observe::acquire(&writer, observe::SQLITE_WRITER).await {
            Ok(connection) => connection,
            Err(err) => {
                // Closed or timed out: tell every waiting call now rather than at its timeout.
                let mut refused = vec![first];
                while let Ok(pending) = waiting.try_recv() {
                    refused.push(pending);
                }
                for pending in refused.into_iter().filter(Pending::take) {
                    let _ = pending.reply.send(Err(shared(&err)));
                }
                continue;
            }
        };
        let mut batch = Vec::with_capacity(MAX_BATCH);
        batch.extend(Some(first).filter(Pending::take));
        while batch.len() < MAX_BATCH {
            let Ok(pending) = waiting.try_recv() else {
                break;
            };
            batch.extend(Some(pending).filter(Pending::take));
        }
        if batch.is_empty() {
            continue;
        }
        metrics::histogram!(crate::telemetry::catalogue::SQLITE_GROUP_COMMIT_BATCH_SIZE.name)
            .record(batch.len() as f64);
        // The batch serves several calls: no span of its own (each call's span covers its wait).
        let outcomes = observe::time("assign_course", commit(&mut connection, &batch)).await;
        for (pending, outcome) in batch.into_iter().zip(outcomes) {
            let _ = pending.reply.send(outcome);
        }
    }
}

/// Runs the batch's enrollments and commits them; one outcome per call, in order.
async fn commit(connection: &mut SqliteConnection, batch: &[Pending]) -> Vec<Result<Assigned>> {
    // A single statement commits by itself.
    let in_transaction = batch.len() > 1;
    if in_transaction && let Err(err) = connection.execute("BEGIN IMMEDIATE").await {
        return batch.iter().map(|_| Err(shared(&err))).collect();
    }
    let mut outcomes = Vec::with_capacity(batch.len());
    for pending in batch {
        match enroll(connection, pending).await {
            Ok(assigned) => outcomes.push(Ok(assigned)),
            Err(err) => return roll_back(connection, batch, err, in_transaction).await,
        }
    }
    if in_transaction && let Err(err) = connection.execute("COMMIT").await {
        return roll_back(connection, batch, err, in_transaction).await;
    }
    outcomes
}

async fn enroll(
    connection: &mut SqliteConnection,
    pending: &Pending,
) -> Result<Assigned, sqlx::Error> {
    let inserted = sqlx::query_scalar(INSERT)
        .bind(pending.pair.student_id)
        .bind(pending.pair.course_id)
        .bind(pending.now)
        .fetch_all(&mut *connection)
        .await;
    if let Some(assigned) = after_insert(inserted)? {
        return Ok(assigned);
    }
    // The pair exists, and cannot vanish before we read it: every write of the service goes
    // through this one connection, which is the batch's until it ends.
    let enroll_time: i64 = sqlx::query_scalar(SELECT)
        .bind(pending.pair.student_id)
        .bind(pending.pair.course_id)
        .fetch_one(&mut *connection)
        .await?;
    Ok(Assigned::Existing(enroll_time))
}

/// Undoes the batch after `err`; every call in it gets the error.
async fn roll_back(
    connection: &mut SqliteConnection,
    batch: &[Pending],
    err: sqlx::Error,
    in_transaction: bool,
) -> Vec<Result<Assigned>> {
    if in_transaction && let Err(rollback) = connection.execute("ROLLBACK").await {
        // SQLite rolls back by itself after some errors; then there is nothing left to undo.
        tracing::debug!(error = %rollback, "rollback after a failed enrollment batch");
    }
    tracing::warn!(error = %err, calls = batch.len(), "enrollment batch rolled back");
    batch.iter().map(|_| Err(shared(&err))).collect()
}
