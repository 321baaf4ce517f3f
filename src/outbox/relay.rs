//! Delivery of the enrollment events to NATS JetStream, from the outbox, at least once.
//!
//! One task reads the events not yet published, in sequence order, publishes each to
//! `<prefix>.created` / `<prefix>.deleted` as the protobuf `EnrollmentEvent` in CloudEvents 1.0
//! binary mode (the attributes as `ce-*` headers), waits for JetStream's acknowledgements, and
//! only then marks them published. A crash between the two publishes them again; each carries
//! its event id as `Nats-Msg-Id`, so JetStream drops the repeat (within the stream's duplicate
//! window, two minutes by default). A broker that is down or slow delays only this task: calls
//! never wait for it, events stay in the outbox, and retention keeps them until they are out.
//! With several replicas on PostgreSQL, one relays at a time: the holder of an advisory lock.

use std::time::Duration;

use async_nats::jetstream::{self, context::PublishAckFuture, stream};
use tokio::{sync::watch, time::Instant};

use super::{Leadership, NatsSettings, cloud_event::cloud_event};
use crate::store::{Event, Store};

/// Events published per round before their acknowledgements are awaited.
const BATCH: i64 = 256;
/// How long the relay waits for the broker to answer a connection or an acknowledgement.
const BROKER_TIMEOUT: Duration = Duration::from_secs(5);
/// The relay looks for new events at least this often (and at once when the head moves).
const IDLE_CHECK: Duration = Duration::from_millis(200);
/// Warnings about an unreachable broker repeat at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Relays events until stopped (at shutdown). The stream, when the relay creates
/// it, keeps messages for `retention`, as the outbox keeps events.
pub(crate) async fn relay(
    store: Store,
    settings: NatsSettings,
    mut head: watch::Receiver<i64>,
    retention: Duration,
) {
    let mut relay = Relay {
        store,
        settings,
        retention,
        broker: None,
        last_warning: None,
        head: head.clone(),
    };
    let mut leadership = Leadership::relay();
    loop {
        tokio::select! {
            _ = head.changed() => {}
            () = tokio::time::sleep(IDLE_CHECK) => {}
        }
        if !leadership.hold(&relay.store).await {
            continue;
        }
        while let Some(full) = relay.round().await {
            if !full {
                break;
            }
        }
    }
}

struct Relay {
    store: Store,
    settings: NatsSettings,
    /// The stream's `max_age`.
    retention: Duration,
    broker: Option<jetstream::Context>,
    last_warning: Option<Instant>,
    /// The newest sequence, for the lag gauge.
    head: watch::Receiver<i64>,
}

impl Relay {
    /// Publishes one batch; `Some(true)` when there may be more, `None` when the round failed.
    async fn round(&mut self) -> Option<bool> {
        let events = match self.store.unpublished_events(BATCH).await {
            Ok(events) => events,
            Err(err) => {
                self.warn(&format!("cannot read the outbox: {err}"));
                return None;
            }
        };
        let Some(first) = events.first().map(|e| e.sequence) else {
            self.record_lag(None);
            return Some(false);
        };
        self.record_lag(Some(first - 1));
        let broker = self.broker().await?;
        let full = events.len() as i64 == BATCH;
        match publish(&broker, &self.settings.subject_prefix, events).await {
            Ok(last) => {
                if let Err(err) = self.store.mark_published(last).await {
                    // Published but not marked: the next round publishes them again, and
                    // JetStream drops the repeats by their message ids.
                    self.warn(&format!("cannot mark events published: {err}"));
                    return None;
                }
                self.last_warning = None;
                self.record_lag(Some(last));
                Some(full)
            }
            Err((acknowledged, err)) => {
                if let Some(last) = acknowledged {
                    let _ = self.store.mark_published(last).await;
                }
                self.broker = None;
                self.warn(&format!("cannot publish to NATS JetStream: {err}"));
                None
            }
        }
    }

    /// The JetStream context, connecting (and creating the stream) first if needed.
    async fn broker(&mut self) -> Option<jetstream::Context> {
        if let Some(broker) = &self.broker {
            return Some(broker.clone());
        }
        match connect(&self.settings, self.retention).await {
            Ok(broker) => {
                tracing::info!(
                    server = %self.settings.server(),
                    stream = %self.settings.stream,
                    "relaying enrollment events to NATS JetStream"
                );
                self.broker = Some(broker.clone());
                Some(broker)
            }
            Err(err) => {
                self.warn(&format!("cannot reach NATS JetStream: {err}"));
                None
            }
        }
    }

    /// Sets the lag gauge: events after `published` (all caught up with `None`).
    fn record_lag(&self, published: Option<i64>) {
        let head = *self.head.borrow();
        let lag = published.map_or(0, |published| (head - published).max(0));
        metrics::gauge!(crate::telemetry::catalogue::EVENTS_RELAY_LAG.name).set(lag as f64);
    }

    /// Logs a warning, at most once a minute.
    fn warn(&mut self, what: &str) {
        if self
            .last_warning
            .is_some_and(|at| at.elapsed() < WARN_EVERY)
        {
            return;
        }
        self.last_warning = Some(Instant::now());
        tracing::warn!(
            "{what}; enrollment events wait in the outbox and go out in order once it is back \
             (this warning repeats at most once a minute)"
        );
    }
}

/// Connects, and creates the stream if it is missing: file storage, messages kept for
/// `retention` (`max_age`), so the stream does not grow without bound. A stream that exists
/// keeps its own limits (an operator may have sized it); a `max_age` that differs is warned
/// about.
async fn connect(
    settings: &NatsSettings,
    retention: Duration,
) -> Result<jetstream::Context, async_nats::Error> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(BROKER_TIMEOUT)
        .connect(settings.url.as_str())
        .await?;
    let mut context = jetstream::new(client);
    context.set_timeout(BROKER_TIMEOUT);
    let config = stream::Config {
        name: settings.stream.clone(),
        subjects: vec![format!("{}.>", settings.subject_prefix)],
        storage: stream::StorageType::File,
        max_age: retention,
        ..Default::default()
    };
    let stream = tokio::time::timeout(BROKER_TIMEOUT, context.get_or_create_stream(config))
        .await
        .map_err(|_| "timed out creating the stream")??;
    let max_age = stream.cached_info().config.max_age;
    if max_age != retention {
        tracing::warn!(
            stream = %settings.stream,
            ?max_age,
            events_retention = ?retention,
            "the JetStream stream keeps messages for another time than --events-retention \
             (max_age 0 keeps them forever); edit the stream if that is not intended"
        );
    }
    Ok(context)
}

/// Publishes the events in order and waits for every acknowledgement, all within
/// [`BROKER_TIMEOUT`] for the whole batch. Returns the last sequence, or the last sequence
/// acknowledged in order (if any) with the error.
///
/// The bound is on the batch, not on each acknowledgement: a broker that vanishes without
/// closing the connection answers none of them, and waiting for each in turn held the relay
/// for minutes (76 s with 15 in flight, measured; 21 minutes for a full batch), with no warning
/// and a lag gauge frozen at the start of the round.
async fn publish(
    broker: &jetstream::Context,
    prefix: &str,
    events: Vec<Event>,
) -> Result<i64, (Option<i64>, async_nats::Error)> {
    let deadline = tokio::time::Instant::now() + BROKER_TIMEOUT;
    let too_late = || -> async_nats::Error {
        format!("no acknowledgement within {BROKER_TIMEOUT:?} for the batch").into()
    };
    let mut pending: Vec<(i64, PublishAckFuture)> = Vec::with_capacity(events.len());
    let mut acknowledged = None;
    let mut failure = None;
    for event in events {
        let sequence = event.sequence;
        let (subject, message) = cloud_event(prefix, event);
        match tokio::time::timeout_at(deadline, broker.send_publish(subject, message)).await {
            Ok(Ok(ack)) => pending.push((sequence, ack)),
            Ok(Err(err)) => {
                failure = Some(err.into());
                break;
            }
            Err(_) => {
                failure = Some(too_late());
                break;
            }
        }
    }
    for (sequence, ack) in pending {
        match tokio::time::timeout_at(deadline, ack).await {
            Ok(Ok(_)) if failure.is_none() => acknowledged = Some(sequence),
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                failure.get_or_insert(err.into());
            }
            Err(_) => {
                failure.get_or_insert_with(too_late);
                break;
            }
        }
    }
    match (failure, acknowledged) {
        (None, Some(last)) => Ok(last),
        (failure, acknowledged) => Err((
            acknowledged,
            failure.unwrap_or_else(|| "nothing was acknowledged".into()),
        )),
    }
}
