//! What the audit record of a call is made of, gathered as the call passes: the per-call layer
//! (`observe`) knows the method, the peer, the caller's trace and, at the end, the status; the
//! access layer learns the principal and the handler the ids, which they put in the call's
//! [`AuditNote`] (only calls that change data carry one). The record itself, and where it goes,
//! are `security::audit`'s.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
};

use tonic::{Code, Status};

use super::pb;
use crate::{
    error::Error,
    security::audit::{self, Ids, MAX_COURSE_IDS, Record},
};

/// The methods that change data: each call to one is audited, whatever its outcome.
const CHANGES_DATA: &[&str] = &[
    "CreateStudent",
    "UpdateStudent",
    "DeleteStudent",
    "AssignCourse",
    "BatchAssignCourses",
    "UnassignCourse",
    "CreateCourse",
    "UpdateCourse",
    "DeleteCourse",
];

/// Where the access layer and the handler leave what only they know, for the record.
#[derive(Debug, Clone, Default)]
pub(super) struct AuditNote(Arc<Mutex<Noted>>);

#[derive(Debug, Default)]
struct Noted {
    principal: Option<Arc<str>>,
    ids: Ids,
}

impl AuditNote {
    pub(super) fn principal(&self, name: &Arc<str>) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .principal = Some(name.clone());
    }

    fn ids(&self, ids: Ids) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).ids = ids;
    }
}

/// A request whose ids go into the audit record.
pub(super) trait Audited {
    fn ids(&self) -> Ids;
}

/// Leaves the request's ids in its call's note, when the call is audited.
pub(super) fn note_ids<T: Audited>(request: &tonic::Request<T>) {
    if let Some(note) = request.extensions().get::<AuditNote>() {
        note.ids(request.get_ref().ids());
    }
}

/// A call to a school.v1 method, to be audited when it ends if it changed data or was refused
/// for its credentials or by the policy.
pub(super) struct PendingAudit {
    service: &'static str,
    method: &'static str,
    peer: Option<SocketAddr>,
    trace_id: Option<String>,
    /// Only for the methods that change data.
    note: Option<AuditNote>,
    reason: Option<&'static str>,
    denied: Option<Arc<str>>,
}

impl PendingAudit {
    /// For a call to `service`/`method` of school.v1; `None` for anything else. A note is put in
    /// the request's extensions when the method changes data.
    pub(super) fn of<B>(
        service: &'static str,
        method: &'static str,
        request: &mut http::Request<B>,
    ) -> Option<Self> {
        if !service.starts_with("school.v1.") {
            return None;
        }
        let note = CHANGES_DATA.contains(&method).then(AuditNote::default);
        if let Some(note) = &note {
            request.extensions_mut().insert(note.clone());
        }
        let peer = request
            .extensions()
            .get::<crate::listen::PeerInfo>()
            .map(|peer| peer.remote_addr);
        let trace_id = crate::telemetry::traces::remote_parent(request.headers())
            .map(|parent| parent.context.trace_id.to_string());
        Some(PendingAudit {
            service,
            method,
            peer,
            trace_id,
            note,
            reason: None,
            denied: None,
        })
    }

    /// What the status of a failed call adds: its reason and, for a denial, who was denied.
    pub(super) fn failed_with(&mut self, status: &Status) {
        let Some(err) = super::status::error_of(status) else {
            return;
        };
        self.reason = Some(super::status::reason(err));
        if let Error::PermissionDenied { principal, .. } = err {
            self.denied = Some(principal.clone());
        }
    }

    /// Writes the record, if this call is audited.
    pub(super) fn finish(self, code: Code) {
        let refused = matches!(code, Code::PermissionDenied | Code::Unauthenticated);
        if self.note.is_none() && !refused {
            return;
        }
        let noted = self.note.as_ref().map(|note| {
            std::mem::take(&mut *note.0.lock().unwrap_or_else(PoisonError::into_inner))
        });
        let (principal, ids) = match noted {
            Some(noted) => (noted.principal, noted.ids),
            None => (None, Ids::default()),
        };
        let principal = principal.or(self.denied);
        let method = format!("{}/{}", self.service, self.method);
        audit::write(&Record {
            time: pb::timestamp(crate::domain::now_micros())
                .map(|time| time.to_string())
                .unwrap_or_default(),
            principal: principal.as_deref(),
            method: &method,
            ids: &ids,
            code: canonical_name(code),
            reason: self.reason,
            trace_id: self.trace_id,
            peer: self.peer,
        });
    }
}

/// The name the gRPC spec gives a status code.
fn canonical_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

impl Audited for pb::CreateStudentRequest {
    fn ids(&self) -> Ids {
        Ids::default()
    }
}

impl Audited for pb::CreateCourseRequest {
    fn ids(&self) -> Ids {
        Ids::default()
    }
}

impl Audited for pb::UpdateStudentRequest {
    fn ids(&self) -> Ids {
        Ids {
            student_id: self.student.as_ref().map(|student| student.id),
            ..Ids::default()
        }
    }
}

impl Audited for pb::UpdateCourseRequest {
    fn ids(&self) -> Ids {
        Ids {
            course_id: self.course.as_ref().map(|course| course.id),
            ..Ids::default()
        }
    }
}

impl Audited for pb::DeleteStudentRequest {
    fn ids(&self) -> Ids {
        Ids {
            student_id: Some(self.student_id),
            ..Ids::default()
        }
    }
}

impl Audited for pb::DeleteCourseRequest {
    fn ids(&self) -> Ids {
        Ids {
            course_id: Some(self.course_id),
            ..Ids::default()
        }
    }
}

impl Audited for pb::AssignCourseRequest {
    fn ids(&self) -> Ids {
        Ids {
            student_id: Some(self.student_id),
            course_id: Some(self.course_id),
            course_ids: None,
        }
    }
}

impl Audited for pb::UnassignCourseRequest {
    fn ids(&self) -> Ids {
        Ids {
            student_id: Some(self.student_id),
            course_id: Some(self.course_id),
            course_ids: None,
        }
    }
}

impl Audited for pb::BatchAssignCoursesRequest {
    fn ids(&self) -> Ids {
        Ids {
            student_id: Some(self.student_id),
            course_id: None,
            course_ids: Some(
                self.course_ids
                    .iter()
                    .copied()
                    .take(MAX_COURSE_IDS)
                    .collect(),
            ),
        }
    }
}
