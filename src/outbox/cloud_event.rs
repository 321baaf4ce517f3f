//! The message of one event on NATS: the protobuf `EnrollmentEvent` in CloudEvents 1.0 binary
//! mode, the attributes as `ce-*` headers (docs/events.md lists them).

use async_nats::{HeaderMap, jetstream::message::PublishMessage};
use bytes::Bytes;
use prost::Message;

use crate::{
    pb::{self, timestamp},
    store::Event,
};

/// The subject and the CloudEvents 1.0 binary-mode message of one event.
pub(super) fn cloud_event(prefix: &str, event: Event) -> (String, PublishMessage) {
    let kind = if event.kind == pb::enrollment_event::Type::Created as i32 {
        "created"
    } else {
        "deleted"
    };
    let id = event.id.clone();
    let subject = format!("{prefix}.{kind}");
    let event = message(event);
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

/// The protobuf form of an event: the payload on NATS and what WatchEnrollmentEvents streams.
pub fn message(e: Event) -> pb::EnrollmentEvent {
    pb::EnrollmentEvent {
        id: e.id,
        sequence: e.sequence,
        r#type: e.kind,
        cause: e.cause,
        student_id: e.student_id,
        course_id: e.course_id,
        enroll_time: timestamp(e.enroll_time),
        event_time: timestamp(e.event_time),
    }
}
