//! Domain records to proto messages.

use sha2::{Digest, Sha256};

use super::pb::{self, timestamp};
use crate::domain::{Course, Enrollment, Once, Student, etag};

impl From<Student> for pb::Student {
    fn from(s: Student) -> Self {
        pb::Student {
            id: s.id,
            name: s.name,
            email: s.email,
            create_time: timestamp(s.create_time),
            etag: etag(s.id, s.revision),
        }
    }
}

impl From<Course> for pb::Course {
    fn from(c: Course) -> Self {
        pb::Course {
            id: c.id,
            code: c.code,
            title: c.title,
            capacity: c.capacity,
            enrolled: c.enrolled,
            create_time: timestamp(c.create_time),
            etag: etag(c.id, c.revision),
        }
    }
}

impl From<Enrollment> for pb::Enrollment {
    fn from(e: Enrollment) -> Self {
        pb::Enrollment {
            student_id: e.student_id,
            course_id: e.course_id,
            enroll_time: timestamp(e.enroll_time),
        }
    }
}

/// The paths of an update mask; an absent mask is an empty one.
pub(super) fn mask_paths(mask: Option<prost_types::FieldMask>) -> Vec<String> {
    mask.map(|mask| mask.paths).unwrap_or_default()
}

pub(super) fn all<T, P: From<T>>(items: Vec<T>) -> Vec<P> {
    items.into_iter().map(P::from).collect()
}

/// A create to be done at most once, when it carries a request_id: `request` is the request as
/// sent, its request_id already taken out, so a retry hashes to the same digest.
pub(super) fn once<M: prost::Message>(
    request_id: Option<String>,
    method: &'static str,
    request: &M,
) -> Option<Once> {
    let request_id = request_id?;
    let digest = Sha256::digest(request.encode_to_vec());
    let digest = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    Some(Once {
        request_id,
        method,
        digest,
    })
}
