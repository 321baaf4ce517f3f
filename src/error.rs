//! The one error type of the service. Domain rules and the store produce it; `api::status` turns
//! it into a gRPC status, in one place.

use std::{borrow::Cow, fmt};

/// A resource the API exposes, named in NOT_FOUND messages and reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Student,
    Course,
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Resource::Student => "student",
            Resource::Course => "course",
        })
    }
}

/// One invalid field of a request, named by its path (`student.email`, `course_ids[2]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: Cow<'static, str>,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<Cow<'static, str>>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Every invalid field of the request, reported at once.
    #[error("{}", describe_violations(.0))]
    InvalidArgument(Vec<FieldViolation>),

    #[error("{0} {1} not found")]
    NotFound(Resource, i64),

    #[error("student {student_id} is not enrolled in course {course_id}")]
    NotEnrolled { student_id: i64, course_id: i64 },

    #[error("a student with email {0:?} already exists")]
    EmailTaken(String),

    #[error("a course with code {0:?} already exists")]
    CourseCodeTaken(String),

    #[error("course {0} is full")]
    CourseFull(i64),

    /// A request_id (AIP-155) came again with a different request, or for another method.
    #[error(
        "request_id {request_id} was used within the last 24 hours for a different request \
         (to {method}): a retry must repeat its request exactly; make a new request_id for a new \
         request"
    )]
    RequestIdReused {
        request_id: String,
        /// The method the id was first used with.
        method: String,
    },

    /// BatchAssignCourses: every requested course that does not exist.
    #[error("{} not found", courses(.0))]
    CoursesNotFound(Vec<i64>),

    /// BatchAssignCourses: every requested course that is full (and the student not yet in).
    #[error("{} full", courses_are(.0))]
    CoursesFull(Vec<i64>),

    /// An update or delete named an etag that is no longer the resource's.
    #[error("{0} {1} has changed since the etag was read: read it again and retry")]
    EtagMismatch(Resource, i64),

    /// A watch asked for events after a sequence no event has yet.
    #[error(
        "after_sequence {after} is beyond the newest event, {head}: watch from a sequence you \
         received, or 0"
    )]
    SequenceInFuture { after: i64, head: i64 },

    /// A watch asked for events that retention has already deleted.
    #[error(
        "the events after the requested sequence were deleted by retention; the oldest kept is \
         {oldest}: list the current state again and watch from the head"
    )]
    EventsCompacted { oldest: i64 },

    /// UpdateCourse would set the capacity below the students already enrolled.
    #[error(
        "course {course_id} has {enrolled} students enrolled, more than the new capacity of \
         {capacity}: unassign students first or choose a capacity of at least {enrolled}"
    )]
    CapacityBelowEnrolled {
        course_id: i64,
        capacity: i32,
        enrolled: i32,
    },

    /// A concurrent change got in the way (a deadlock or serialization failure); safe to retry.
    #[error("the request conflicted with a concurrent change; retry it")]
    Conflict(#[source] Cause),

    /// The database cannot be reached or has no free connection.
    #[error("the database is unavailable; retry later")]
    Unavailable(#[source] Cause),

    /// The database refuses writes: the endpoint reaches a PostgreSQL standby (or read-only
    /// transactions), or the SQLite file became read-only. Nothing was written.
    #[error("the database is read-only now; retry later")]
    ReadOnly(#[source] Cause),

    /// The server is shutting down; the call can be made again (on another replica).
    #[error("the server is shutting down; call again")]
    ShuttingDown,

    /// The call did not finish before its deadline: the client's `grpc-timeout` or the server's
    /// `--request-timeout`, whichever is shorter. The handler was dropped at that moment.
    #[error("the call did not finish within its deadline of {0:?}")]
    DeadlineExceeded(std::time::Duration),

    /// The server already has its limit of calls in flight; this one was refused unread.
    #[error("the server is at its limit of {0} calls in flight; retry with backoff")]
    Overloaded(usize),

    /// The call carries no credentials the server accepts. The message says what was wrong and
    /// never repeats what the client sent.
    #[error("{0}")]
    Unauthenticated(AuthFailure),

    /// The caller is known, and the authorization policy does not let it call this method.
    #[error("{principal:?} may not call {method}: the authorization policy does not allow it")]
    PermissionDenied {
        principal: std::sync::Arc<str>,
        /// `package.Service/Method`.
        method: &'static str,
    },

    /// Anything else. The source is logged, never shown to the client.
    #[error("internal error")]
    Internal(#[source] Cause),
}

/// Why a call was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `authorization` metadata at all.
    Missing,
    /// `authorization` metadata that is not one `Bearer <token>`.
    Malformed,
    /// A bearer token that is not in the tokens file.
    Unrecognised,
}

impl fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthFailure::Missing => {
                "missing credentials: send the metadata `authorization: Bearer <token>`"
            }
            AuthFailure::Malformed => {
                "malformed credentials: the `authorization` metadata must be one `Bearer <token>`"
            }
            AuthFailure::Unrecognised => "the bearer token is not recognised",
        })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What lies behind a failure of ours (a driver's error, a panic, a lost invariant): logged with
/// the error, never sent to the client.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// "course 3" or "courses 3, 7".
fn courses(ids: &[i64]) -> String {
    let list: Vec<String> = ids.iter().map(i64::to_string).collect();
    match ids {
        [_] => format!("course {}", list[0]),
        _ => format!("courses {}", list.join(", ")),
    }
}

/// "course 3 is" or "courses 3, 7 are".
fn courses_are(ids: &[i64]) -> String {
    let verb = if ids.len() == 1 { "is" } else { "are" };
    format!("{} {verb}", courses(ids))
}

fn describe_violations(violations: &[FieldViolation]) -> String {
    let parts: Vec<String> = violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect();
    format!("invalid request: {}", parts.join("; "))
}
