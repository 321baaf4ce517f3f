//! `school.v1.EnrollmentEventService`: the outbox as a gRPC stream, replayed then followed live.

use std::{sync::Arc, time::Duration};

use tokio::{
    sync::{Semaphore, SemaphorePermit, mpsc, watch},
    time::Instant,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::pb::{self, enrollment_event_service_server::EnrollmentEventService};
use crate::{
    domain::{self, EventFilter},
    error::Error,
    store::{Event, Store},
};

/// Events read and sent per response.
const PAGE: i64 = 500;
/// Responses a watcher may leave unread before the server waits for it: a slow reader holds
/// at most this many pages in memory, however far behind it is.
const UNREAD: usize = 4;

type Sent = Result<pb::WatchEnrollmentEventsResponse, Status>;

/// `school.v1.EnrollmentEventService`.
#[derive(Debug, Clone)]
pub struct EventApi {
    store: Store,
    /// Watchers read through at most this many connections at once (see [`watcher_share`]).
    reads: Arc<Semaphore>,
    /// The newest sequence, kept current by the store's head follower.
    head: watch::Receiver<i64>,
    heartbeat: Duration,
}

impl EventApi {
    /// Serve it wrapped in `EndOnShutdown`: that ends open streams UNAVAILABLE when the server
    /// shuts down, and the stream's reader task ends with it.
    pub fn new(store: Store, head: watch::Receiver<i64>, heartbeat: Duration) -> Self {
        Self {
            reads: Arc::new(Semaphore::new(watcher_share(store.max_connections()))),
            store,
            head,
            heartbeat,
        }
    }
}

#[tonic::async_trait]
impl EnrollmentEventService for EventApi {
    type WatchEnrollmentEventsStream = ReceiverStream<Sent>;

    async fn watch_enrollment_events(
        &self,
        request: Request<pb::WatchEnrollmentEventsRequest>,
    ) -> Result<Response<Self::WatchEnrollmentEventsStream>, Status> {
        let request = request.get_ref();
        let (after, filter) = domain::parse_watch(
            request.after_sequence,
            request.student_id,
            request.course_id,
        )?;
        let range = {
            let _reading = self.reading().await?;
            self.store.event_range().await?
        };
        if after > range.head {
            return Err(Error::SequenceInFuture {
                after,
                head: range.head,
            }
            .into());
        }
        // 0 starts from the oldest event kept; any other cursor must not point into a gap.
        let cursor = if after == 0 { range.oldest - 1 } else { after };
        if cursor + 1 < range.oldest {
            return Err(Error::EventsCompacted {
                oldest: range.oldest,
            }
            .into());
        }
        let (sender, receiver) = mpsc::channel(UNREAD);
        tokio::spawn(self.clone().follow(cursor, filter, sender));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

impl EventApi {
    /// Sends every event after `cursor` that passes `filter`, then each new one, until the
    /// watcher goes away (or the server, ending the stream, drops it).
    async fn follow(mut self, mut cursor: i64, filter: EventFilter, sender: mpsc::Sender<Sent>) {
        let mut last_sent = Instant::now();
        loop {
            let (events, head) = match self.next_page(cursor, filter).await {
                Ok(page) => page,
                Err(err) => {
                    // Sent in the stream's trailers, where the per-call layer cannot see it.
                    let status = Status::from(err);
                    super::observe::log_failure(&status);
                    let _ = sender.send(Err(status)).await;
                    return;
                }
            };
            let caught_up = (events.len() as i64) < PAGE;
            if !events.is_empty() {
                cursor = events.last().map_or(cursor, |e| e.sequence);
                if !self.send(&sender, events, head).await {
                    return;
                }
                last_sent = Instant::now();
            }
            if !caught_up {
                continue;
            }
            // Everything up to `head` that passes the filter has been sent.
            cursor = cursor.max(head);
            let heartbeat = last_sent + self.heartbeat;
            tokio::select! {
                changed = self.head.changed() => if changed.is_err() {
                    // The head follower stops only when the server does.
                    let _ = sender.send(Err(Error::ShuttingDown.into())).await;
                    return;
                },
                () = tokio::time::sleep_until(heartbeat) => {
                    if !self.send(&sender, Vec::new(), head).await {
                        return;
                    }
                    last_sent = Instant::now();
                }
                () = sender.closed() => return,
            }
        }
    }

    /// The next events after `cursor` and the head they were read under. Fails with
    /// EVENTS_COMPACTED when retention has deleted events the watcher has not received.
    async fn next_page(
        &self,
        cursor: i64,
        filter: EventFilter,
    ) -> crate::error::Result<(Vec<Event>, i64)> {
        let _reading = self.reading().await?;
        let head = self.store.event_head().await?;
        let events = self.store.events_after(cursor, head, filter, PAGE).await?;
        // Read after the page, so that a deletion while it was read is seen. With no event left,
        // nothing after the cursor is missing: retention always keeps the newest event.
        if let Some(oldest) = self.store.oldest_event().await?
            && cursor + 1 < oldest
        {
            return Err(Error::EventsCompacted { oldest });
        }
        Ok((events, head))
    }

    /// A turn to read, waiting while the watchers' share of connections is in use.
    async fn reading(&self) -> crate::error::Result<SemaphorePermit<'_>> {
        // The semaphore is never closed.
        self.reads.acquire().await.map_err(|_| Error::ShuttingDown)
    }

    /// Sends one response, waiting while the watcher's window is full; false when the watcher
    /// is gone.
    async fn send(&self, sender: &mpsc::Sender<Sent>, events: Vec<Event>, head: i64) -> bool {
        let response = pb::WatchEnrollmentEventsResponse {
            events: events.into_iter().map(crate::outbox::message).collect(),
            head_sequence: head,
        };
        sender.send(Ok(response)).await.is_ok()
    }
}

/// How many of the pool's `connections` event watchers may use at once: a quarter, at least
/// one. A watcher catching up reads page after page without pause, and a few hundred of them
/// would otherwise hold every connection in turn: unary calls queued behind them for seconds
/// and failed with "pool timed out". They wait for their turn instead, which only slows the
/// catching up.
fn watcher_share(connections: u32) -> usize {
    (connections as usize / 4).max(1)
}
