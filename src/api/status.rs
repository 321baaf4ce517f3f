//! The one place where service errors become gRPC statuses.

use std::{collections::HashMap, sync::Arc};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::{Error, FieldViolation, Resource};

/// The `domain` of every google.rpc.ErrorInfo we send.
const ERROR_DOMAIN: &str = "school.v1";

/// An error travels in the response's trailers (`grpc-message`, percent-encoded, and
/// `grpc-status-details-bin`, base64), and a client refuses trailers over its metadata limit,
/// reporting RESOURCE_EXHAUSTED instead of our status: 8 KiB in grpc-java, 16 KiB in
/// grpc-python and grpc-core. So what one error lists is capped: at most this many field
/// violations (the message says how many more there were)...
const MAX_VIOLATIONS_LISTED: usize = 10;
/// ...each description at most this many bytes (some quote what the client sent)...
const MAX_DESCRIPTION_BYTES: usize = 200;
/// ...and the message at most this many bytes. With the largest ErrorInfo we send (100 course
/// ids), the trailers stay under 6 KiB (test `every_error_fits_in_a_clients_metadata_limit`).
const MAX_MESSAGE_BYTES: usize = 1024;

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let (code, reason, metadata) = classify(&err);
        let mut details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata);
        let message = match &err {
            Error::InvalidArgument(violations) => {
                let not_listed = violations.len().saturating_sub(MAX_VIOLATIONS_LISTED);
                let listed: Vec<FieldViolation> = violations
                    .iter()
                    .take(MAX_VIOLATIONS_LISTED)
                    .map(|violation| FieldViolation {
                        field: violation.field.clone(),
                        description: truncated(&violation.description, MAX_DESCRIPTION_BYTES),
                    })
                    .collect();
                for violation in &listed {
                    details.add_bad_request_violation(
                        violation.field.as_ref(),
                        &violation.description,
                    );
                }
                let mut message = Error::InvalidArgument(listed).to_string();
                if not_listed > 0 {
                    message.push_str(&format!("; and {not_listed} more not listed"));
                }
                message
            }
            err => err.to_string(),
        };
        let mut status =
            Status::with_error_details(code, truncated(&message, MAX_MESSAGE_BYTES), details);
        // The error rides along inside the process (tonic never sends a status's source), for
        // the per-call layer to log with its cause (`api::observe::log_failure`).
        status.set_source(Arc::new(err));
        status
    }
}

/// The error of ours a status was made from, if it was.
pub(super) fn error_of(status: &Status) -> Option<&Error> {
    std::error::Error::source(status).and_then(|source| source.downcast_ref::<Error>())
}

/// The ErrorInfo reason an error is sent with.
pub(super) fn reason(err: &Error) -> &'static str {
    classify(err).1
}

/// `text` cut to at most `max` bytes, at a character boundary, marked with an ellipsis.
fn truncated(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    const ELLIPSIS: &str = "...";
    let mut end = max - ELLIPSIS.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ELLIPSIS}", &text[..end])
}

fn classify(err: &Error) -> (Code, &'static str, HashMap<String, String>) {
    let meta = |pairs: &[(&str, String)]| -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    };
    match err {
        Error::InvalidArgument(_) => (Code::InvalidArgument, "INVALID_ARGUMENT", HashMap::new()),
        Error::NotFound(resource, id) => (
            Code::NotFound,
            match resource {
                Resource::Student => "STUDENT_NOT_FOUND",
                Resource::Course => "COURSE_NOT_FOUND",
            },
            meta(&[(id_key(*resource), id.to_string())]),
        ),
        Error::NotEnrolled {
            student_id,
            course_id,
        } => (
            Code::NotFound,
            "NOT_ENROLLED",
            meta(&[
                ("student_id", student_id.to_string()),
                ("course_id", course_id.to_string()),
            ]),
        ),
        Error::EmailTaken(email) => (
            Code::AlreadyExists,
            "EMAIL_TAKEN",
            meta(&[("email", email.clone())]),
        ),
        Error::CourseCodeTaken(code) => (
            Code::AlreadyExists,
            "COURSE_CODE_TAKEN",
            meta(&[("code", code.clone())]),
        ),
        Error::RequestIdReused { request_id, method } => (
            Code::InvalidArgument,
            "REQUEST_ID_REUSED",
            meta(&[
                ("request_id", request_id.clone()),
                ("method", method.clone()),
            ]),
        ),
        Error::CourseFull(id) => (
            Code::FailedPrecondition,
            "COURSE_FULL",
            meta(&[("course_id", id.to_string())]),
        ),
        Error::CoursesNotFound(ids) => (
            Code::NotFound,
            "COURSE_NOT_FOUND",
            meta(&[("course_ids", id_list(ids))]),
        ),
        Error::CoursesFull(ids) => (
            Code::FailedPrecondition,
            "COURSE_FULL",
            meta(&[("course_ids", id_list(ids))]),
        ),
        Error::EtagMismatch(resource, id) => (
            Code::FailedPrecondition,
            "ETAG_MISMATCH",
            meta(&[(id_key(*resource), id.to_string())]),
        ),
        Error::CapacityBelowEnrolled {
            course_id,
            capacity,
            enrolled,
        } => (
            Code::FailedPrecondition,
            "CAPACITY_BELOW_ENROLLED",
            meta(&[
                ("course_id", course_id.to_string()),
                ("capacity", capacity.to_string()),
                ("enrolled", enrolled.to_string()),
            ]),
        ),
        Error::SequenceInFuture { head, .. } => (
            Code::OutOfRange,
            "SEQUENCE_IN_FUTURE",
            meta(&[("head_sequence", head.to_string())]),
        ),
        Error::EventsCompacted { oldest } => (
            Code::OutOfRange,
            "EVENTS_COMPACTED",
            meta(&[("oldest_sequence", oldest.to_string())]),
        ),
        Error::Unauthenticated(_) => (Code::Unauthenticated, "UNAUTHENTICATED", HashMap::new()),
        Error::PermissionDenied { principal, method } => (
            Code::PermissionDenied,
            "PERMISSION_DENIED",
            meta(&[
                ("principal", principal.to_string()),
                ("method", (*method).to_owned()),
            ]),
        ),
        Error::Conflict(_) => (Code::Aborted, "CONCURRENT_CHANGE", HashMap::new()),
        Error::Unavailable(_) => (Code::Unavailable, "DATABASE_UNAVAILABLE", HashMap::new()),
        Error::ReadOnly(_) => (Code::Unavailable, "DATABASE_READ_ONLY", HashMap::new()),
        Error::ShuttingDown => (Code::Unavailable, "SHUTTING_DOWN", HashMap::new()),
        Error::DeadlineExceeded(_) => (Code::DeadlineExceeded, "DEADLINE_EXCEEDED", HashMap::new()),
        Error::Overloaded(limit) => (
            Code::ResourceExhausted,
            "OVERLOADED",
            meta(&[("max_in_flight", limit.to_string())]),
        ),
        Error::Internal(_) => (Code::Internal, "INTERNAL", HashMap::new()),
    }
}

/// The metadata key that names a resource's id.
fn id_key(resource: Resource) -> &'static str {
    match resource {
        Resource::Student => "student_id",
        Resource::Course => "course_id",
    }
}

/// Ids as ErrorInfo metadata: "3,7".
fn id_list(ids: &[i64]) -> String {
    let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
    ids.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes of the trailers a status is sent as.
    fn trailer_bytes(status: &Status) -> usize {
        let mut headers = http::HeaderMap::new();
        status.add_header(&mut headers).expect("a valid status");
        headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum()
    }

    #[test]
    fn every_error_fits_in_a_clients_metadata_limit() {
        // grpc-java's default limit for all of a response's trailers.
        const LIMIT: usize = 8 * 1024;
        let many_violations: Vec<FieldViolation> = (0..1_000_000)
            .map(|i| FieldViolation::new(format!("course_ids[{i}]"), "é".repeat(1000)))
            .collect();
        let largest_ids: Vec<i64> = vec![i64::MAX; 100];
        for err in [
            Error::InvalidArgument(many_violations),
            Error::CoursesNotFound(largest_ids.clone()),
            Error::CoursesFull(largest_ids),
            Error::EmailTaken("é".repeat(254)),
        ] {
            let status = Status::from(err);
            let bytes = trailer_bytes(&status);
            assert!(bytes < LIMIT, "{bytes} bytes of trailers: {status:?}");
        }
    }

    #[test]
    fn an_error_says_how_many_violations_it_does_not_list() {
        let violations = (0..25)
            .map(|i| FieldViolation::new(format!("course_ids[{i}]"), "must be a positive id"))
            .collect();
        let status = Status::from(Error::InvalidArgument(violations));
        assert!(
            status.message().ends_with("; and 15 more not listed"),
            "{}",
            status.message()
        );
        let listed = status.get_details_bad_request().expect("BadRequest");
        assert_eq!(listed.field_violations.len(), MAX_VIOLATIONS_LISTED);
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncated("abc", 3), "abc");
        assert_eq!(truncated("abcdef", 5), "ab...");
        assert_eq!(truncated("éééé", 6), "é...");
    }
}
