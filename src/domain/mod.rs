//! The rules of the service: what a valid request is, the records it deals in, and paging.
//! Nothing here knows about gRPC or SQL.

mod batch;
mod events;
mod page;
#[cfg(test)]
mod proptests;
mod requests;
mod retries;
mod text;
mod updates;

pub use batch::{BatchAssign, MAX_BATCH_COURSES};
pub use events::{EventFilter, parse_watch};
pub use page::{Listing, Page, PageRequest};
pub use requests::{
    NewCourse, NewStudent, SearchQuery, StudentCourse, parse_list_of, parse_list_students,
    parse_search, parse_single_id, parse_student_course,
};
pub use retries::{Once, REQUEST_ID_RETENTION, with_request_id};
pub use updates::{CourseFields, CourseUpdate, Delete, StudentFields, StudentUpdate, etag};

use std::time::{SystemTime, UNIX_EPOCH};

/// A student as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Student {
    pub id: i64,
    pub name: String,
    pub email: String,
    /// Microseconds since the Unix epoch.
    pub create_time: i64,
    /// Raised by every update; the etag is made of it.
    pub revision: i64,
}

/// A course as stored, with its live enrollment count.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Course {
    pub id: i64,
    pub code: String,
    pub title: String,
    /// 0 means unlimited.
    pub capacity: i32,
    pub enrolled: i32,
    /// Microseconds since the Unix epoch.
    pub create_time: i64,
    /// Raised by every update (not by enrollments); the etag is made of it.
    pub revision: i64,
}

/// One student enrolled in one course.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Enrollment {
    pub student_id: i64,
    pub course_id: i64,
    /// Microseconds since the Unix epoch.
    pub enroll_time: i64,
}

/// The current time in microseconds since the Unix epoch, the unit every stored time uses.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

#[cfg(test)]
pub(crate) mod tests {
    use crate::error::Error;

    /// The (field, description) pairs of an INVALID_ARGUMENT, in order.
    pub(crate) fn violations(err: Error) -> Vec<(String, String)> {
        match err {
            Error::InvalidArgument(violations) => violations
                .into_iter()
                .map(|v| (v.field.into_owned(), v.description))
                .collect(),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }
}
