//! The audit trail (`--audit-log`): one JSON line per call that changes data, whatever its
//! outcome, and per call refused for its credentials or by the policy; nothing for reads; ids
//! and never names, e-mails or tokens; the file reopened on SIGHUP.

use std::{path::Path, time::Duration};

use serde_json::{Value, json};
use student_service::api::pb::{
    self, course_service_client::CourseServiceClient, student_service_client::StudentServiceClient,
};
use tonic::{Request, transport::Channel};

use crate::{
    helpers::{Backend, TestDatabase, on_both_backends},
    process::ServerProcess,
};

const REGISTRAR_TOKEN: &str = "registrar-token-4b8e2f61d09a";
const READER_TOKEN: &str = "reader-token-93c5a7e1f2b0";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const NAME: &str = "Ada Lovelace";
const EMAIL: &str = "ada.lovelace@example.com";

on_both_backends!(every_write_and_every_refusal_is_audited_once_with_ids_only);

fn with<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().expect("ASCII");
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// The audit file's records, without their `time` and `peer` (checked, then dropped).
fn records(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| {
            let mut record: Value = serde_json::from_str(line).expect("each line is JSON");
            let object = record.as_object_mut().expect("an object");
            let time = object.remove("time").expect("a time");
            let time = time.as_str().expect("a string");
            assert!(
                time.len() >= 20 && time.as_bytes()[10] == b'T' && time.ends_with('Z'),
                "RFC 3339 in UTC: {time}"
            );
            let peer = object.remove("peer").expect("a peer");
            assert!(
                peer.as_str()
                    .is_some_and(|peer| peer.starts_with("127.0.0.1:")),
                "{peer}"
            );
            record
        })
        .collect()
}

/// Waits until the file holds `count` records: a record is written as its call ends, which
/// can be a moment after the client has its answer.
async fn wait_for_records(path: &Path, count: usize) -> Vec<Value> {
    for _ in 0..100 {
        let found = records(path);
        if found.len() >= count {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    records(path)
}

async fn every_write_and_every_refusal_is_audited_once_with_ids_only(backend: Backend) {
    let database = TestDatabase::create(&backend).await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let tokens = dir.path().join("tokens.txt");
    std::fs::write(
        &tokens,
        format!("registrar {REGISTRAR_TOKEN}\nreader {READER_TOKEN}\n"),
    )
    .expect("write tokens");
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[allow]]\nprincipals = [\"registrar\"]\nmethods = [\"school.v1.*/*\"]\n\n\
         [[allow]]\nprincipals = [\"reader\"]\nmethods = [\"school.v1.*/Get*\", \"school.v1.*/List*\"]\n",
    )
    .expect("write policy");
    let log = dir.path().join("audit.log");
    let server = ServerProcess::start(
        &database.url,
        &[
            ("AUTH_TOKENS_FILE", tokens.to_str().expect("UTF-8")),
            ("AUTHZ_POLICY", policy.to_str().expect("UTF-8")),
            ("AUDIT_LOG", log.to_str().expect("UTF-8")),
        ],
    )
    .await;
    let channel: Channel = server.channel().await;
    let mut students = StudentServiceClient::new(channel.clone());
    let mut courses = CourseServiceClient::new(channel);
    let registrar = Some(REGISTRAR_TOKEN);

    let student = students
        .create_student(with(
            pb::CreateStudentRequest {
                name: NAME.into(),
                email: EMAIL.into(),
                request_id: String::new(),
            },
            registrar,
        ))
        .await
        .expect("create a student")
        .into_inner();
    let course = courses
        .create_course(with(
            pb::CreateCourseRequest {
                code: "MATH-101".into(),
                title: "Calculus".into(),
                capacity: 1,
                request_id: String::new(),
            },
            registrar,
        ))
        .await
        .expect("create a course")
        .into_inner();
    let (s, c) = (student.id, course.id);
    students
        .update_student(with(
            pb::UpdateStudentRequest {
                student: Some(pb::Student {
                    id: s,
                    name: "Ada King".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["name".into()],
                }),
            },
            registrar,
        ))
        .await
        .expect("rename");
    courses
        .update_course(with(
            pb::UpdateCourseRequest {
                course: Some(pb::Course {
                    id: c,
                    capacity: 2,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["capacity".into()],
                }),
            },
            registrar,
        ))
        .await
        .expect("raise the capacity");
    let assign = |student_id, course_id| {
        with(
            pb::AssignCourseRequest {
                student_id,
                course_id,
            },
            registrar,
        )
    };
    students.assign_course(assign(s, c)).await.expect("enroll");
    students
        .assign_course(assign(s, c + 1000))
        .await
        .expect_err("no such course");
    students
        .batch_assign_courses(with(
            pb::BatchAssignCoursesRequest {
                student_id: s,
                course_ids: vec![c, c + 1000],
                request_id: String::new(),
            },
            registrar,
        ))
        .await
        .expect_err("one course is missing");
    // Reads are not audited, the reader's or anyone's.
    students
        .get_student(with(
            pb::GetStudentRequest { student_id: s },
            Some(READER_TOKEN),
        ))
        .await
        .expect("a read");
    students
        .list_courses(with(
            pb::ListCoursesRequest {
                student_id: s,
                ..Default::default()
            },
            registrar,
        ))
        .await
        .expect("a read");
    // Refusals are, reads included, with the caller's trace.
    let mut denied = with(
        pb::DeleteCourseRequest {
            course_id: c,
            ..Default::default()
        },
        Some(READER_TOKEN),
    );
    denied.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-00f067aa0ba902b7-01")
            .parse()
            .expect("ASCII"),
    );
    courses.delete_course(denied).await.expect_err("denied");
    students
        .list_students(with(pb::ListStudentsRequest::default(), None))
        .await
        .expect_err("no token");
    students
        .unassign_course(with(
            pb::UnassignCourseRequest {
                student_id: s,
                course_id: c,
            },
            registrar,
        ))
        .await
        .expect("unenroll");
    students
        .delete_student(with(
            pb::DeleteStudentRequest {
                student_id: s,
                ..Default::default()
            },
            registrar,
        ))
        .await
        .expect("delete the student");
    courses
        .delete_course(with(
            pb::DeleteCourseRequest {
                course_id: c,
                ..Default::default()
            },
            registrar,
        ))
        .await
        .expect("delete the course");

    let ok = |method: &str, ids: Value| {
        let mut record = json!({"principal": "registrar", "method": method, "code": "OK"});
        record
            .as_object_mut()
            .expect("an object")
            .extend(ids.as_object().expect("ids").clone());
        record
    };
    let expected = vec![
        ok("school.v1.StudentService/CreateStudent", json!({})),
        ok("school.v1.CourseService/CreateCourse", json!({})),
        ok(
            "school.v1.StudentService/UpdateStudent",
            json!({"student_id": s}),
        ),
        ok(
            "school.v1.CourseService/UpdateCourse",
            json!({"course_id": c}),
        ),
        ok(
            "school.v1.StudentService/AssignCourse",
            json!({"student_id": s, "course_id": c}),
        ),
        json!({"principal": "registrar", "method": "school.v1.StudentService/AssignCourse",
               "student_id": s, "course_id": c + 1000, "code": "NOT_FOUND", "reason": "COURSE_NOT_FOUND"}),
        json!({"principal": "registrar", "method": "school.v1.StudentService/BatchAssignCourses",
               "student_id": s, "course_ids": [c, c + 1000], "code": "NOT_FOUND", "reason": "COURSE_NOT_FOUND"}),
        json!({"principal": "reader", "method": "school.v1.CourseService/DeleteCourse",
               "code": "PERMISSION_DENIED", "reason": "PERMISSION_DENIED", "trace_id": TRACE_ID}),
        json!({"principal": null, "method": "school.v1.StudentService/ListStudents",
               "code": "UNAUTHENTICATED", "reason": "UNAUTHENTICATED"}),
        ok(
            "school.v1.StudentService/UnassignCourse",
            json!({"student_id": s, "course_id": c}),
        ),
        ok(
            "school.v1.StudentService/DeleteStudent",
            json!({"student_id": s}),
        ),
        ok(
            "school.v1.CourseService/DeleteCourse",
            json!({"course_id": c}),
        ),
    ];
    let found = wait_for_records(&log, expected.len()).await;
    assert_eq!(found, expected);

    let text = std::fs::read_to_string(&log).expect("the audit log");
    for secret in [
        NAME,
        "Ada King",
        EMAIL,
        REGISTRAR_TOKEN,
        READER_TOKEN,
        "Calculus",
    ] {
        assert!(!text.contains(secret), "{secret:?} in the audit log");
    }

    // Log rotation: the file is moved away, SIGHUP, and new records go to a new file.
    let rotated = dir.path().join("audit.log.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    let hangup = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(hangup.success());
    let mut reopened = false;
    for _ in 0..100 {
        students
            .delete_student(with(
                pb::DeleteStudentRequest {
                    student_id: s,
                    ..Default::default()
                },
                registrar,
            ))
            .await
            .expect_err("already deleted");
        if log.exists() {
            reopened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reopened, "the audit log was not reopened after SIGHUP");
    let after = wait_for_records(&log, 1).await;
    assert_eq!(after[0]["code"], "NOT_FOUND", "{after:?}");
    // The old file kept what was written before, and the attempts made before the reopen.
    let old = records(&rotated);
    assert_eq!(old[..expected.len()], expected[..]);
    for record in &old[expected.len()..] {
        assert_eq!(record["method"], "school.v1.StudentService/DeleteStudent");
        assert_eq!(record["code"], "NOT_FOUND");
    }
}
