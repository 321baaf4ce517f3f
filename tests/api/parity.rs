//! The two backends must be indistinguishable through the API: one scripted sequence of calls,
//! every error path included, runs against SQLite and against PostgreSQL, and the transcripts of
//! answers (codes, reasons, metadata, messages, with database-assigned ids replaced by names)
//! must be identical. The enrollment table walks every combination of (student exists, course
//! exists, course full, already enrolled) for AssignCourse and UnassignCourse.

use std::collections::{BTreeMap, HashMap};

use student_service::api::pb;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::helpers::{Backend, TestApp};

/// An id no database in these tests hands out.
const UNKNOWN: i64 = 999_999;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(test_postgres),
    ignore = "needs PostgreSQL: set TEST_DATABASE_URL (README)"
)]
async fn sqlite_and_postgres_give_identical_answers_to_the_same_calls() {
    let postgres = Backend::postgres();
    let on_sqlite = run_script(Backend::Sqlite).await;
    let on_postgres = run_script(postgres).await;

    for (i, (sqlite, postgres)) in on_sqlite.iter().zip(&on_postgres).enumerate() {
        assert_eq!(
            sqlite, postgres,
            "answer {i} differs (left SQLite, right PostgreSQL)"
        );
    }
    assert_eq!(on_sqlite.len(), on_postgres.len());
}

/// The script on one backend, with the answers that fix the contract asserted on the way (so
/// both backends agreeing on a wrong answer fails too).
async fn run_script(backend: Backend) -> Vec<String> {
    let app = TestApp::spawn(backend).await;
    let mut t = Transcript::default();
    let s = app.students.clone();
    let c = app.courses.clone();

    // Ada is enrolled in FULL (capacity 1) and FREE, Bob in nothing; Cid and GONE are deleted.
    let mut ids = Vec::new();
    for (name, email) in [
        ("Ada", "ada@example.com"),
        ("Bob", "bob@example.com"),
        ("Cid", "cid@example.com"),
        // Refused: the e-mail is taken (case does not matter), then every field is wrong.
        ("Ada Again", "ADA@example.com"),
        ("", "not-an-email"),
        ("Eve", "eve@example.com"),
    ] {
        let request = pb::CreateStudentRequest {
            name: name.into(),
            email: email.into(),
            request_id: String::new(),
        };
        let answer = s.clone().create_student(request).await;
        if let Ok(created) = &answer {
            t.students.insert(created.get_ref().id, name.to_owned());
            ids.push(created.get_ref().id);
        }
        t.record(
            format!("CreateStudent {name:?} {email:?}"),
            answer,
            Transcript::student,
        );
    }
    let [ada, bob, cid, _eve] = ids[..] else {
        panic!("four students created: {:?}", t.lines)
    };
    let mut ids = Vec::new();
    for (code, capacity) in [
        ("FULL", 1),
        ("FREE", 10),
        ("ANY", 0),
        ("GONE", 5),
        // Refused: the code is taken (case does not matter), then every field is wrong.
        ("full", 3),
        ("", -1),
        ("TWO WORDS", 1),
        ("NEW", 2),
    ] {
        let request = pb::CreateCourseRequest {
            code: code.into(),
            title: format!("Course {code}"),
            capacity,
            request_id: String::new(),
        };
        let answer = c.clone().create_course(request).await;
        if let Ok(created) = &answer {
            t.courses.insert(created.get_ref().id, code.to_owned());
            ids.push(created.get_ref().id);
        }
        t.record(
            format!("CreateCourse {code:?} {capacity}"),
            answer,
            Transcript::course,
        );
    }
    let [full, free, any, gone, _new] = ids[..] else {
        panic!("five courses created: {:?}", t.lines)
    };
    for course_id in [full, free] {
        let answer = s.clone().assign_course(pair(ada, course_id)).await;
        t.record(
            t.on_pair("AssignCourse", ada, course_id),
            answer,
            Transcript::assigned,
        );
    }
    let request = pb::DeleteStudentRequest {
        student_id: cid,
        ..Default::default()
    };
    let answer = s.clone().delete_student(request).await;
    t.record("DeleteStudent Cid".into(), answer, |_, ()| String::new());
    let answer = c
        .clone()
        .delete_course(pb::DeleteCourseRequest {
            course_id: gone,
            ..Default::default()
        })
        .await;
    t.record("DeleteCourse GONE".into(), answer, |_, ()| String::new());

    // The enrollment table: AssignCourse, then UnassignCourse, for every kind of student and
    // course (enrolled, free, full, unlimited, deleted, never existed, invalid).
    let students = [ada, bob, cid, UNKNOWN, 0, -5];
    let courses = [full, free, any, gone, UNKNOWN, 0];
    for student_id in students {
        for course_id in courses {
            let answer = s.clone().assign_course(pair(student_id, course_id)).await;
            let request = t.on_pair("AssignCourse", student_id, course_id);
            t.record(request, answer, Transcript::assigned);
        }
    }
    for student_id in students {
        for course_id in courses {
            let request = pb::UnassignCourseRequest {
                student_id,
                course_id,
            };
            let answer = s.clone().unassign_course(request).await;
            let request = t.on_pair("UnassignCourse", student_id, course_id);
            t.record(request, answer, |_, ()| String::new());
        }
    }

    // Batches (the table above left nobody enrolled): one that succeeds, then a full course,
    // missing courses outranking full ones, a deleted or unknown student, invalid ids, a repeat.
    let batches = [
        (ada, vec![full, free]),
        (bob, vec![free, full]),
        (bob, vec![gone, free, UNKNOWN, full]),
        (cid, vec![free]),
        (UNKNOWN, vec![UNKNOWN]),
        (bob, vec![0, free, free]),
        (bob, vec![any, free]),
        (bob, vec![free, any]),
    ];
    for (student_id, course_ids) in batches {
        let names: Vec<String> = course_ids.iter().map(|&id| t.course_name(id)).collect();
        let request = format!(
            "BatchAssignCourses student {} courses {names:?}",
            t.student_name(student_id)
        );
        let answer = s
            .clone()
            .batch_assign_courses(pb::BatchAssignCoursesRequest {
                student_id,
                course_ids,
                request_id: String::new(),
            })
            .await;
        t.record(request, answer, |t, r| {
            let results: Vec<String> = r.results.into_iter().map(|r| t.assigned(r)).collect();
            format!("{results:?}")
        });
    }
    for (student_id, course_id) in [(bob, free), (bob, full), (cid, free), (bob, gone), (0, 0)] {
        let request = pb::GetEnrollmentRequest {
            student_id,
            course_id,
        };
        let answer = s.clone().get_enrollment(request).await;
        let request = t.on_pair("GetEnrollment", student_id, course_id);
        t.record(request, answer, |t, e| {
            format!(
                "student {} course {}",
                t.student_name(e.student_id),
                t.course_name(e.course_id)
            )
        });
    }

    // Updates: each refusal, then the same update again once its etag is stale.
    let read = c
        .clone()
        .get_course(pb::GetCourseRequest { course_id: free })
        .await;
    let etag = read.expect("GetCourse FREE").into_inner().etag;
    let course_updates = [
        (
            "capacity 1 (2 enrolled)",
            pb::Course {
                id: free,
                capacity: 1,
                ..Default::default()
            },
            "capacity",
        ),
        (
            "code taken",
            pb::Course {
                id: free,
                code: "any".into(),
                ..Default::default()
            },
            "code",
        ),
        (
            "deleted course",
            pb::Course {
                id: gone,
                title: "T".into(),
                ..Default::default()
            },
            "",
        ),
        (
            "output-only path",
            pb::Course {
                id: free,
                ..Default::default()
            },
            "enrolled",
        ),
        (
            "title, etag current",
            pb::Course {
                id: free,
                title: "Freedom".into(),
                etag: etag.clone(),
                ..Default::default()
            },
            "title",
        ),
        (
            "title, etag stale",
            pb::Course {
                id: free,
                title: "Again".into(),
                etag,
                ..Default::default()
            },
            "title",
        ),
        (
            "unlimited",
            pb::Course {
                id: free,
                ..Default::default()
            },
            "capacity",
        ),
    ];
    for (what, course, path) in course_updates {
        let request = pb::UpdateCourseRequest {
            course: Some(course),
            update_mask: Some(prost_types::FieldMask {
                paths: [path]
                    .into_iter()
                    .filter(|p| !p.is_empty())
                    .map(String::from)
                    .collect(),
            }),
        };
        let answer = c.clone().update_course(request).await;
        t.record(
            format!("UpdateCourse FREE {what}"),
            answer,
            Transcript::course,
        );
    }
    let student_updates = [
        (
            "email taken",
            pb::Student {
                id: bob,
                email: "ADA@example.com".into(),
                ..Default::default()
            },
        ),
        (
            "deleted student",
            pb::Student {
                id: cid,
                name: "Cid".into(),
                ..Default::default()
            },
        ),
        (
            "nothing set",
            pb::Student {
                id: bob,
                ..Default::default()
            },
        ),
        (
            "name",
            pb::Student {
                id: bob,
                name: " Robert ".into(),
                ..Default::default()
            },
        ),
    ];
    for (what, student) in student_updates {
        let request = pb::UpdateStudentRequest {
            student: Some(student),
            update_mask: None,
        };
        let answer = s.clone().update_student(request).await;
        t.record(format!("UpdateStudent {what}"), answer, Transcript::student);
    }

    // Reads and deletes of what exists, what is gone, what never existed, and invalid ids.
    for student_id in [ada, cid, UNKNOWN, -1] {
        let name = t.student_name(student_id);
        let answer = s
            .clone()
            .get_student(pb::GetStudentRequest { student_id })
            .await;
        t.record(format!("GetStudent {name}"), answer, Transcript::student);
        let request = pb::ListCoursesRequest {
            student_id,
            page_size: 1,
            page_token: String::new(),
        };
        let answer = s.clone().list_courses(request).await;
        t.record(format!("ListCourses {name}"), answer, |t, r| {
            t.courses(&r.courses, &r.next_page_token)
        });
        let answer = s
            .clone()
            .delete_student(pb::DeleteStudentRequest {
                student_id,
                ..Default::default()
            })
            .await;
        t.record(format!("DeleteStudent {name}"), answer, |_, ()| {
            String::new()
        });
    }
    for course_id in [full, gone, UNKNOWN, 0] {
        let name = t.course_name(course_id);
        let answer = c
            .clone()
            .get_course(pb::GetCourseRequest { course_id })
            .await;
        t.record(format!("GetCourse {name}"), answer, Transcript::course);
        let request = pb::ListEnrolledStudentsRequest {
            course_id,
            page_size: 0,
            page_token: String::new(),
        };
        let answer = c.clone().list_enrolled_students(request).await;
        t.record(format!("ListEnrolledStudents {name}"), answer, |t, r| {
            t.students(&r.students, &r.next_page_token)
        });
        let answer = c
            .clone()
            .delete_course(pb::DeleteCourseRequest {
                course_id,
                ..Default::default()
            })
            .await;
        t.record(format!("DeleteCourse {name}"), answer, |_, ()| {
            String::new()
        });
    }

    // Paging and search, valid and not.
    for (page_size, page_token) in [(1, ""), (-1, ""), (0, "not-a-token"), (1001, "")] {
        let request = pb::ListStudentsRequest {
            page_size,
            page_token: page_token.into(),
        };
        let answer = s.clone().list_students(request).await;
        t.record(
            format!("ListStudents {page_size} {page_token:?}"),
            answer,
            |t, r| t.students(&r.students, &r.next_page_token),
        );
    }
    let long_query = "q".repeat(201);
    for (query, page_size) in [
        ("course", 0),
        ("fre", 0),
        ("", 1),
        ("x", -2),
        (&*long_query, 0),
    ] {
        let request = pb::SearchCoursesRequest {
            query: query.into(),
            page_size,
            page_token: String::new(),
        };
        let answer = c.clone().search_courses(request).await;
        t.record(
            format!("SearchCourses {query:?} {page_size}"),
            answer,
            |t, r| t.courses(&r.courses, &r.next_page_token),
        );
    }

    assert_contract(&t.lines);
    app.assert_integrity().await;
    app.stop().await;
    t.lines
}

/// The answers that settle the contract, whatever both backends say.
fn assert_contract(lines: &[String]) {
    let expect = |call: &str, answer: &str| {
        assert!(
            lines
                .iter()
                .any(|line| line.starts_with(call) && line.contains(answer)),
            "no answer `{call}` -> `{answer}` in:\n{}",
            lines.join("\n")
        );
    };
    // A missing student outranks a full course.
    expect(
        "AssignCourse student 999999 course FULL",
        "NOT_FOUND STUDENT_NOT_FOUND",
    );
    expect(
        "AssignCourse student Cid course FULL",
        "NOT_FOUND STUDENT_NOT_FOUND",
    );
    expect(
        "AssignCourse student Bob course FULL",
        "FAILED_PRECONDITION COURSE_FULL",
    );
    expect("AssignCourse student Ada course FULL", "ok created=false");
    expect(
        "AssignCourse student Bob course GONE",
        "NOT_FOUND COURSE_NOT_FOUND",
    );
    expect(
        "AssignCourse student 999999 course 999999",
        "NOT_FOUND STUDENT_NOT_FOUND",
    );
    expect(
        "UnassignCourse student Bob course FULL",
        "NOT_FOUND NOT_ENROLLED",
    );
    expect(
        "BatchAssignCourses student Bob courses [\"FREE\", \"FULL\"]",
        "FAILED_PRECONDITION COURSE_FULL (school.v1) {\"course_ids\": \"FULL\"}",
    );
    expect(
        "BatchAssignCourses student Bob courses [\"GONE\", \"FREE\", \"999999\", \"FULL\"]",
        "NOT_FOUND COURSE_NOT_FOUND (school.v1) {\"course_ids\": \"GONE,999999\"}",
    );
    expect(
        "BatchAssignCourses student Cid",
        "NOT_FOUND STUDENT_NOT_FOUND",
    );
    expect(
        "BatchAssignCourses student Bob courses [\"FREE\", \"ANY\"]",
        "created=false",
    );
    expect(
        "GetEnrollment student Bob course FULL",
        "NOT_FOUND NOT_ENROLLED",
    );
    expect("UpdateCourse FREE capacity 1", "CAPACITY_BELOW_ENROLLED");
    expect(
        "UpdateCourse FREE title, etag stale",
        "FAILED_PRECONDITION ETAG_MISMATCH",
    );
    expect(
        "UpdateCourse FREE deleted course",
        "NOT_FOUND COURSE_NOT_FOUND",
    );
    expect("UpdateStudent email taken", "ALREADY_EXISTS EMAIL_TAKEN");
}

fn pair(student_id: i64, course_id: i64) -> pb::AssignCourseRequest {
    pb::AssignCourseRequest {
        student_id,
        course_id,
    }
}

/// The answers of one run, with database-assigned ids replaced by the names the script gave
/// them (PostgreSQL may skip ids that SQLite hands out, so raw ids could differ).
#[derive(Default)]
struct Transcript {
    lines: Vec<String>,
    students: HashMap<i64, String>,
    courses: HashMap<i64, String>,
}

impl Transcript {
    /// Adds `request -> answer` to the transcript; `ok` describes a successful answer.
    fn record<T>(
        &mut self,
        request: String,
        answer: Result<tonic::Response<T>, Status>,
        ok: impl FnOnce(&Self, T) -> String,
    ) {
        let outcome = match answer {
            Ok(response) => format!("ok {}", ok(self, response.into_inner())),
            Err(status) => self.status(&status),
        };
        self.lines.push(format!("{request} -> {outcome}"));
    }

    /// `CALL student NAME course NAME`, for the calls on a pair.
    fn on_pair(&self, call: &str, student_id: i64, course_id: i64) -> String {
        format!(
            "{call} student {} course {}",
            self.student_name(student_id),
            self.course_name(course_id)
        )
    }

    fn status(&self, status: &Status) -> String {
        let details = status.get_error_details();
        let (reason, metadata) = details.error_info().map_or_else(
            || ("<no ErrorInfo>".to_owned(), BTreeMap::new()),
            |info| {
                let metadata: BTreeMap<_, _> = info
                    .metadata
                    .iter()
                    .map(|(k, v)| (k.clone(), self.metadata_value(k, v)))
                    .collect();
                (format!("{} ({})", info.reason, info.domain), metadata)
            },
        );
        let violations: Vec<String> = details.bad_request().map_or_else(Vec::new, |bad| {
            bad.field_violations
                .iter()
                .map(|v| format!("{}: {}", v.field, v.description))
                .collect()
        });
        format!(
            "{} {reason} {metadata:?} {violations:?} {:?}",
            code_name(status.code()),
            self.text(status.message())
        )
    }

    fn metadata_value(&self, key: &str, value: &str) -> String {
        let id = value.parse::<i64>().ok();
        match (key, id) {
            ("student_id", Some(id)) => self.student_name(id),
            ("course_id", Some(id)) => self.course_name(id),
            ("course_ids", _) => {
                let names: Vec<String> = value
                    .split(',')
                    .map(|id| {
                        id.parse()
                            .map_or_else(|_| id.to_owned(), |id| self.course_name(id))
                    })
                    .collect();
                names.join(",")
            }
            _ => value.to_owned(),
        }
    }

    /// `student 12 is not enrolled in course 7` -> `student Bob is not enrolled in course FREE`;
    /// `courses 4, 9 are full` -> `courses GONE, FULL are full`.
    fn text(&self, message: &str) -> String {
        let mut words: Vec<String> = Vec::new();
        let (mut previous, mut in_courses) = ("", false);
        for word in message.split(' ') {
            let (bare, comma) = word
                .strip_suffix(',')
                .map_or((word, ""), |bare| (bare, ","));
            let id = bare.parse::<i64>().ok();
            let named = match (previous, id) {
                ("student", Some(id)) => self.student_name(id),
                ("course", Some(id)) => self.course_name(id),
                (_, Some(id)) if in_courses => format!("{}{comma}", self.course_name(id)),
                _ => word.to_owned(),
            };
            in_courses = word == "courses" || (in_courses && id.is_some());
            previous = word;
            words.push(named);
        }
        words.join(" ")
    }

    fn student_name(&self, id: i64) -> String {
        self.students
            .get(&id)
            .cloned()
            .unwrap_or_else(|| id.to_string())
    }

    fn course_name(&self, id: i64) -> String {
        self.courses
            .get(&id)
            .cloned()
            .unwrap_or_else(|| id.to_string())
    }

    fn student(&self, s: pb::Student) -> String {
        format!(
            "student {} {:?} {:?}",
            self.student_name(s.id),
            s.name,
            s.email
        )
    }

    fn course(&self, c: pb::Course) -> String {
        format!(
            "course {} {:?} {:?} capacity={} enrolled={}",
            self.course_name(c.id),
            c.code,
            c.title,
            c.capacity,
            c.enrolled
        )
    }

    fn assigned(&self, r: pb::AssignCourseResponse) -> String {
        let e = r.enrollment.unwrap_or_default();
        format!(
            "created={} student {} course {}",
            r.created,
            self.student_name(e.student_id),
            self.course_name(e.course_id)
        )
    }

    fn students(&self, students: &[pb::Student], next_page_token: &str) -> String {
        let names: Vec<String> = students.iter().map(|s| self.student_name(s.id)).collect();
        format!("{names:?} more={}", !next_page_token.is_empty())
    }

    fn courses(&self, courses: &[pb::Course], next_page_token: &str) -> String {
        let names: Vec<String> = courses
            .iter()
            .map(|c| format!("{}({})", self.course_name(c.id), c.enrolled))
            .collect();
        format!("{names:?} more={}", !next_page_token.is_empty())
    }
}

/// Codes as the gRPC specification spells them.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::Unavailable => "UNAVAILABLE",
        Code::Internal => "INTERNAL",
        _ => "OTHER",
    }
}
