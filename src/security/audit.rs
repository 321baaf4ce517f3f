//! The audit trail: one JSON record per call that changes data, and per call refused for its
//! credentials or by the policy, written when the call finishes. Records go to the `audit`
//! tracing target (routed apart from the service log with `RUST_LOG`) and, with `--audit-log`,
//! appended to a file of their own, one line each, written through at once and reopened on
//! SIGHUP for log rotation.
//!
//! A record holds ids, never names, e-mails or credentials: whatever a request carries besides
//! its ids stays out.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Mutex, OnceLock, PoisonError},
};

use serde::Serialize;

/// The most course ids one record lists: a batch takes at most 100, and a longer list in a
/// request refused as invalid must not turn into a megabyte of log.
pub const MAX_COURSE_IDS: usize = 100;

/// The ids a request names (those it has; the others stay out of the record).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Ids {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub student_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub course_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub course_ids: Option<Vec<i64>>,
}

/// One audit record, serialized as one line of JSON.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    /// RFC 3339, UTC.
    pub time: String,
    /// The caller, when it was identified (`null` for a call without valid credentials).
    pub principal: Option<&'a str>,
    /// `package.Service/Method`.
    pub method: &'a str,
    #[serde(flatten)]
    pub ids: &'a Ids,
    /// The canonical status code name: `OK`, `PERMISSION_DENIED`...
    pub code: &'static str,
    /// The ErrorInfo reason, when the call failed with one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// The caller's trace, when its request carried a `traceparent`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    pub peer: Option<SocketAddr>,
}

/// The file records are appended to, when there is one.
static FILE: OnceLock<AuditFile> = OnceLock::new();

struct AuditFile {
    path: PathBuf,
    file: Mutex<File>,
}

/// Appends every record to `path` from now on (created if missing, never truncated).
pub fn open_file(path: &Path) -> std::io::Result<()> {
    let file = append(path)?;
    let _ = FILE.set(AuditFile {
        path: path.into(),
        file: Mutex::new(file),
    });
    Ok(())
}

/// Opens the audit file again under its name, after log rotation moved the old one away. On
/// failure the old file stays in use, and the error says why.
pub fn reopen() -> std::io::Result<()> {
    let Some(audit) = FILE.get() else {
        return Ok(());
    };
    let file = append(&audit.path)?;
    *audit.file.lock().unwrap_or_else(PoisonError::into_inner) = file;
    Ok(())
}

fn append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Writes `record` to the `audit` target and to the audit file.
pub fn write(record: &Record<'_>) {
    let Ok(mut line) = serde_json::to_string(record) else {
        return;
    };
    tracing::info!(target: "audit", "{line}");
    let Some(audit) = FILE.get() else {
        return;
    };
    line.push('\n');
    // One write of the whole line on an O_APPEND file: records never interleave, and each is
    // in the file when this returns.
    let written = audit
        .file
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .write_all(line.as_bytes());
    if let Err(err) = written {
        tracing::error!(path = %audit.path.display(), error = %err, "cannot write the audit log");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_one_line_of_json_with_only_what_the_call_had() {
        let ids = Ids {
            student_id: Some(7),
            course_id: Some(3),
            course_ids: None,
        };
        let record = Record {
            time: "2026-12-03T10:00:00.000001Z".into(),
            principal: Some("registrar"),
            method: "school.v1.StudentService/AssignCourse",
            ids: &ids,
            code: "FAILED_PRECONDITION",
            reason: Some("COURSE_FULL"),
            trace_id: None,
            peer: "10.0.0.7:51234".parse().ok(),
        };
        assert_eq!(
            serde_json::to_string(&record).expect("serializes"),
            r#"{"time":"2026-12-03T10:00:00.000001Z","principal":"registrar","method":"school.v1.StudentService/AssignCourse","student_id":7,"course_id":3,"code":"FAILED_PRECONDITION","reason":"COURSE_FULL","peer":"10.0.0.7:51234"}"#
        );
    }
}
