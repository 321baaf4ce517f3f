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

use async_nats::{
    HeaderMap,
    jetstream::{self, context::PublishAckFuture, message::PublishMessage, stream},
};
use bytes::Bytes;
use prost::Message;
use tokio::{sync::watch, time::Instant};

use crate::{
    api::pb,
    store::{Event, Leadership, Store},
};

/// Where the events go. Build it with `new`, which refuses at start what the client or the
/// broker would refuse only at the first event, in a warning once a minute.
#[derive(Debug, Clone)]
pub struct NatsSettings {
    pub url: String,
    /// The JetStream stream, created (file storage) if missing.
    pub stream: String,
    /// Subjects are `<prefix>.created` and `<prefix>.deleted`.
    pub subject_prefix: String,
}

/// A NATS setting the client or the broker would refuse, named by its flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag} {problem}")]
pub struct InvalidNatsSetting {
    flag: &'static str,
    problem: String,
}

const URL_FLAG: &str = "--events-nats-url (EVENTS_NATS_URL)";
const STREAM_FLAG: &str = "--events-nats-stream (EVENTS_NATS_STREAM)";
const PREFIX_FLAG: &str = "--events-nats-subject-prefix (EVENTS_NATS_SUBJECT_PREFIX)";
/// The longest stream name nats-server takes (its JSMaxNameLen), in bytes.
const MAX_STREAM_NAME_BYTES: usize = 255;

impl NatsSettings {
    pub fn new(
        url: String,
        stream: String,
        subject_prefix: String,
    ) -> Result<Self, InvalidNatsSetting> {
        check_url(&url)?;
        check_stream(&stream)?;
        check_subject_prefix(&subject_prefix)?;
        Ok(NatsSettings {
            url,
            stream,
            subject_prefix,
        })
    }
}

/// What async-nats dials: `nats://` or `tls://` and a host, or a bare `host[:port]`. It also
/// parses `ws://` and `wss://`, which this build cannot dial (its websockets feature is off). The
/// URL is never echoed: it may carry a password.
fn check_url(url: &str) -> Result<(), InvalidNatsSetting> {
    let invalid = |why: &str| InvalidNatsSetting {
        flag: URL_FLAG,
        problem: format!(
            "is not a NATS server address ({why}): use nats://HOST:PORT, tls://HOST:PORT or \
             HOST:PORT"
        ),
    };
    let address: async_nats::ServerAddr = url
        .parse()
        .map_err(|err: std::io::Error| invalid(&err.to_string()))?;
    if address.is_websocket() {
        return Err(invalid(&format!(
            "{}:// needs WebSocket support, which this build leaves out",
            address.scheme()
        )));
    }
    if address.host().is_empty() {
        return Err(invalid("no host"));
    }
    Ok(())
}

/// nats-server's rule (its isValidName and the path separator check of its stream API): the
/// name is a token of API subjects and the name of a directory.
fn check_stream(stream: &str) -> Result<(), InvalidNatsSetting> {
    let invalid = |why: String| {
        Err(InvalidNatsSetting {
            flag: STREAM_FLAG,
            problem: format!("{stream:?} {why}"),
        })
    };
    if stream.is_empty() {
        return invalid("is empty: JetStream needs a stream name".into());
    }
    if stream.len() > MAX_STREAM_NAME_BYTES {
        return invalid(format!(
            "is {} bytes long, over JetStream's {MAX_STREAM_NAME_BYTES}",
            stream.len()
        ));
    }
    let forbidden =
        |c: char| c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\');
    if let Some(c) = stream.chars().find(|&c| forbidden(c)) {
        return invalid(format!(
            "contains {c:?}: a JetStream stream name may not contain whitespace, control \
             characters, '.', '*', '>', '/' or '\\'"
        ));
    }
    Ok(())
}

/// `<prefix>.created` must be one literal subject and `<prefix>.>` the stream's filter: tokens
/// separated by single dots, no wildcard, nothing that ends a NATS protocol word.
fn check_subject_prefix(prefix: &str) -> Result<(), InvalidNatsSetting> {
    let invalid = |why: String| {
        Err(InvalidNatsSetting {
            flag: PREFIX_FLAG,
            problem: format!("{prefix:?} {why}"),
        })
    };
    if prefix.is_empty() {
        return invalid("is empty: events need a subject such as school.v1.enrollment".into());
    }
    if let Some(c) = prefix
        .chars()
        .find(|&c| c.is_whitespace() || c.is_control())
    {
        return invalid(format!(
            "contains {c:?}: NATS subjects may not contain whitespace or control characters"
        ));
    }
    if let Some(c) = prefix.chars().find(|&c| matches!(c, '*' | '>')) {
        return invalid(format!(
            "contains the wildcard {c:?}: events are published to a literal subject"
        ));
    }
    if prefix.split('.').any(str::is_empty) {
        return invalid("has an empty token: a leading, trailing or doubled '.'".into());
    }
    Ok(())
}

/// Events published per round before their acknowledgements are awaited.
const BATCH: i64 = 256;
/// How long the relay waits for the broker to answer a connection or an acknowledgement.
const BROKER_TIMEOUT: Duration = Duration::from_secs(5);
/// The relay looks for new events at least this often (and at once when the head moves).
const IDLE_CHECK: Duration = Duration::from_millis(200);
/// Warnings about an unreachable broker repeat at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Relays events until the task is aborted (at shutdown). The stream, when the relay creates
/// it, keeps messages for `retention`, as the outbox keeps events.
pub async fn relay(
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
                tracing::info!(url = %self.settings.url, stream = %self.settings.stream, "relaying enrollment events to NATS JetStream");
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
        metrics::gauge!("student_service_events_relay_lag").set(lag as f64);
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

/// The subject and the CloudEvents 1.0 binary-mode message of one event.
fn cloud_event(prefix: &str, event: Event) -> (String, PublishMessage) {
    let kind = if event.kind == pb::enrollment_event::Type::Created as i32 {
        "created"
    } else {
        "deleted"
    };
    let id = event.id.clone();
    let subject = format!("{prefix}.{kind}");
    let event = pb::EnrollmentEvent::from(event);
    let time = event
        .event_time
        .map(|time| time.to_string())
        .unwrap_or_default();
    let mut headers = HeaderMap::new();
    headers.insert("ce-specversion", "1.0");
    headers.insert("ce-id", id.as_str());
    headers.insert("ce-source", "//student-service");
    headers.insert("ce-type", format!("school.v1.enrollment.{kind}").as_str());
    headers.insert("ce-time", time.as_str());
    headers.insert(
        "ce-subject",
        format!("students/{}/courses/{}", event.student_id, event.course_id).as_str(),
    );
    headers.insert("ce-sequence", format!("{:020}", event.sequence).as_str());
    headers.insert("content-type", "application/protobuf");
    let message = PublishMessage::build()
        .payload(Bytes::from(event.encode_to_vec()))
        .headers(headers)
        .message_id(id);
    (subject, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str, stream: &str, prefix: &str) -> Result<NatsSettings, InvalidNatsSetting> {
        NatsSettings::new(url.into(), stream.into(), prefix.into())
    }

    /// The flag a refusal names, checking that it names one.
    fn refused_flag(url: &str, stream: &str, prefix: &str) -> &'static str {
        settings(url, stream, prefix)
            .map(|_| ())
            .expect_err(&format!("accepted {url:?} {stream:?} {prefix:?}"))
            .flag
    }

    #[test]
    fn addresses_async_nats_dials_are_accepted() {
        for url in [
            "nats://127.0.0.1:4222",
            "tls://nats.example.com:4222",
            "nats://user:secret@nats.example.com",
            "nats.example.com:4222",
            "localhost",
            "nats://[::1]:4222",
        ] {
            assert!(
                settings(url, "SCHOOL_ENROLLMENTS", "school.v1.enrollment").is_ok(),
                "{url} refused"
            );
        }
    }

    #[test]
    fn other_urls_are_refused_without_echoing_them() {
        for url in [
            "",
            "http://nats.example.com:4222",
            "ws://nats.example.com:80",
            "wss://nats.example.com",
            "nats://",
            "nats://host:notaport",
            "nats://a b:4222",
            "nats://user:hunter2@:4222",
        ] {
            let err = settings(url, "S", "p").map(|_| ()).expect_err(url);
            assert_eq!(err.flag, URL_FLAG, "{url}");
            let message = err.to_string();
            assert!(
                message.contains("is not a NATS server address"),
                "{message}"
            );
            assert!(!message.contains("hunter2"), "{message}");
        }
    }

    #[test]
    fn stream_names_follow_jetstream() {
        let long = "S".repeat(MAX_STREAM_NAME_BYTES);
        for stream in [
            "SCHOOL_ENROLLMENTS",
            "school-events-2",
            "Ünïcode",
            long.as_str(),
        ] {
            assert!(
                settings("nats://h:4222", stream, "p").is_ok(),
                "{stream} refused"
            );
        }
        let too_long = "S".repeat(MAX_STREAM_NAME_BYTES + 1);
        for stream in [
            "",
            "SCHOOL.EVENTS",
            "SCHOOL*",
            "SCHOOL>",
            "a/b",
            "a\\b",
            "two words",
            "tab\there",
            "new\nline",
            too_long.as_str(),
        ] {
            assert_eq!(
                refused_flag("nats://h:4222", stream, "p"),
                STREAM_FLAG,
                "{stream:?}"
            );
        }
        let message = settings("nats://h:4222", "SCHOOL.EVENTS", "p")
            .map(|_| ())
            .expect_err("a dot")
            .to_string();
        assert_eq!(
            message,
            "--events-nats-stream (EVENTS_NATS_STREAM) \"SCHOOL.EVENTS\" contains '.': a \
             JetStream stream name may not contain whitespace, control characters, '.', '*', \
             '>', '/' or '\\'"
        );
    }

    #[test]
    fn subject_prefixes_are_literal_dotted_tokens() {
        for prefix in ["school.v1.enrollment", "events", "a.b-c_d.$x", "ünï.côdé"] {
            assert!(
                settings("nats://h:4222", "S", prefix).is_ok(),
                "{prefix} refused"
            );
        }
        for prefix in [
            "",
            "school v1",
            "school.\tv1",
            "school.*",
            "school.>",
            "a*b",
            ".school",
            "school.",
            "a..b",
            ".",
        ] {
            assert_eq!(
                refused_flag("nats://h:4222", "S", prefix),
                PREFIX_FLAG,
                "{prefix:?}"
            );
        }
    }
}
