//! The one place where service errors become gRPC statuses.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::{Error, Resource};

/// The `domain` of every google.rpc.ErrorInfo we send.
const ERROR_DOMAIN: &str = "school.v1";

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let (code, reason, metadata) = classify(&err);
        log(&err, code);
        let mut details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata);
        if let Error::InvalidArgument(violations) = &err {
            for violation in violations {
                details.add_bad_request_violation(violation.field.as_ref(), &violation.description);
            }
        }
        Status::with_error_details(code, err.to_string(), details)
    }
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
        Error::Conflict(_) => (Code::Aborted, "CONCURRENT_CHANGE", HashMap::new()),
        Error::Unavailable(_) => (Code::Unavailable, "DATABASE_UNAVAILABLE", HashMap::new()),
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

/// Failures of ours are logged with their cause, which the client never sees; a client's own
/// mistakes are not worth more than the per-call log line, and neither are calls refused under
/// overload or cut off by their deadline (one more line each would add to the overload).
fn log(err: &Error, code: Code) {
    let cause = std::error::Error::source(err).map(|source| source.to_string());
    match err {
        Error::Internal(_) => tracing::error!(?code, cause, "internal error"),
        Error::Unavailable(_) | Error::Conflict(_) => tracing::warn!(?code, cause, "{err}"),
        _ => {}
    }
}
