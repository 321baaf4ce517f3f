//! Concurrency is correct by construction: racing callers on one server, on either backend.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use student_service::api::pb;
use tonic::Code;

use crate::helpers::{Backend, TestApp, assert_error, on_both_backends};

on_both_backends!(
    racing_for_the_last_seats_admits_exactly_capacity,
    racing_on_the_same_pair_creates_one_row,
    churn_keeps_counts_equal_to_rows,
    concurrent_assignments_each_get_their_own_answer,
    deletes_racing_enrollments_never_deadlock,
    batches_racing_deletes_and_unassignments_never_deadlock,
);

async fn racing_for_the_last_seats_admits_exactly_capacity(backend: Backend) {
    const CALLERS: usize = 48;
    const CAPACITY: i32 = 7;
    let app = TestApp::spawn(backend).await;
    let course = app
        .create_course("HOT-1", "Everyone wants in", CAPACITY)
        .await;
    let students = app.create_students(CALLERS).await;

    let calls = students.iter().map(|&student| {
        let mut client = app.students.clone();
        tokio::spawn(async move {
            client
                .assign_course(student_service::api::pb::AssignCourseRequest {
                    student_id: student,
                    course_id: course.id,
                })
                .await
                .map(|r| r.into_inner().created)
        })
    });
    let results: Vec<_> = futures_join(calls).await;

    let admitted = results.iter().filter(|r| matches!(r, Ok(true))).count();
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(s) if s.code() == Code::FailedPrecondition))
        .count();
    assert_eq!(admitted, CAPACITY as usize, "results: {results:?}");
    assert_eq!(refused, CALLERS - CAPACITY as usize, "results: {results:?}");
    assert_eq!(app.get_course(course.id).await.enrolled, CAPACITY);
    assert_eq!(app.enrollment_rows(course.id).await, i64::from(CAPACITY));
    app.assert_integrity().await;
    app.stop().await;
}

async fn racing_on_the_same_pair_creates_one_row(backend: Backend) {
    const CALLERS: usize = 32;
    let app = TestApp::spawn(backend).await;
    let ada = app.create_student("Ada", "ada@example.com").await;
    let course = app.create_course("CS-101", "Engines", 1).await;

    let calls = (0..CALLERS).map(|_| {
        let mut client = app.students.clone();
        tokio::spawn(async move {
            client
                .assign_course(student_service::api::pb::AssignCourseRequest {
                    student_id: ada.id,
                    course_id: course.id,
                })
                .await
                .map(|r| r.into_inner())
        })
    });
    let results: Vec<_> = futures_join(calls).await;

    let responses: Vec<_> = results
        .into_iter()
        .map(|r| r.expect("every caller gets OK"))
        .collect();
    assert_eq!(responses.iter().filter(|r| r.created).count(), 1);
    let enrollments: HashSet<_> = responses
        .iter()
        .map(|r| format!("{:?}", r.enrollment))
        .collect();
    assert_eq!(enrollments.len(), 1, "everyone sees the same enrollment");
    assert_eq!(app.enrollment_rows(course.id).await, 1);
    assert_eq!(app.get_course(course.id).await.enrolled, 1);
    app.assert_integrity().await;
    app.stop().await;
}

async fn churn_keeps_counts_equal_to_rows(backend: Backend) {
    const STUDENTS: usize = 12;
    const ROUNDS: usize = 6;
    let app = TestApp::spawn(backend).await;
    let course = app.create_course("CHURN-1", "Seats come and go", 3).await;
    let students = app.create_students(STUDENTS).await;

    let workers = students.iter().map(|&student| {
        let mut client = app.students.clone();
        tokio::spawn(async move {
            let mut unexpected = Vec::new();
            for _ in 0..ROUNDS {
                let assigned = client
                    .assign_course(student_service::api::pb::AssignCourseRequest {
                        student_id: student,
                        course_id: course.id,
                    })
                    .await;
                match assigned {
                    Ok(_) => {
                        if let Err(status) = client
                            .unassign_course(student_service::api::pb::UnassignCourseRequest {
                                student_id: student,
                                course_id: course.id,
                            })
                            .await
                        {
                            unexpected.push(status);
                        }
                    }
                    Err(status) if status.code() == Code::FailedPrecondition => {}
                    Err(status) => unexpected.push(status),
                }
            }
            unexpected
        })
    });
    let unexpected: Vec<_> = futures_join(workers).await.into_iter().flatten().collect();

    assert!(unexpected.is_empty(), "unexpected statuses: {unexpected:?}");
    assert_eq!(app.get_course(course.id).await.enrolled, 0);
    assert_eq!(app.enrollment_rows(course.id).await, 0);
    app.assert_integrity().await;
    app.stop().await;
}

/// Calls that succeed and calls that fail for every reason AssignCourse has, all at once, so
/// that on SQLite they share group-commit transactions: one call's failure must not touch
/// another's answer or row.
async fn concurrent_assignments_each_get_their_own_answer(backend: Backend) {
    const STUDENTS: usize = 10;
    const UNKNOWN: i64 = 999_999;
    let app = TestApp::spawn(backend).await;
    let open = app.create_course("OPEN-1", "Room for all", 0).await;
    let full = app.create_course("FULL-1", "One seat, taken", 1).await;
    let taken = app.create_course("TAKEN-1", "Everyone is in", 0).await;
    let filler = app.create_student("Filler", "filler@example.com").await;
    app.assign(filler.id, full.id).await.expect("fill the seat");
    let students = app.create_students(STUDENTS).await;
    let mut first_enrolled = Vec::new();
    for &student in &students {
        let enrolled = app.assign(student, taken.id).await.expect("enroll");
        first_enrolled.push(enrolled.enrollment);
    }

    let pairs: Vec<(i64, i64)> = students
        .iter()
        .flat_map(|&student| {
            [
                (student, open.id),
                (UNKNOWN, open.id),
                (student, full.id),
                (student, taken.id),
                (student, UNKNOWN),
            ]
        })
        .collect();
    let calls = pairs.iter().map(|&(student_id, course_id)| {
        let mut client = app.students.clone();
        tokio::spawn(async move {
            client
                .assign_course(student_service::api::pb::AssignCourseRequest {
                    student_id,
                    course_id,
                })
                .await
                .map(|r| r.into_inner())
        })
    });
    let results: Vec<_> = futures_join(calls).await;

    for (&(student, course), result) in pairs.iter().zip(results) {
        if student == UNKNOWN {
            assert_error(
                result,
                Code::NotFound,
                "STUDENT_NOT_FOUND",
                "student 999999",
            );
        } else if course == UNKNOWN {
            assert_error(result, Code::NotFound, "COURSE_NOT_FOUND", "course 999999");
        } else if course == full.id {
            assert_error(result, Code::FailedPrecondition, "COURSE_FULL", "is full");
        } else if course == taken.id {
            let response = result.expect("an existing pair is OK");
            assert!(!response.created);
            let index = students.iter().position(|&s| s == student);
            assert_eq!(
                Some(&response.enrollment),
                index.and_then(|i| first_enrolled.get(i)),
                "the original enrollment"
            );
        } else {
            assert!(result.expect("a new pair is OK").created);
        }
    }
    assert_eq!(app.get_course(open.id).await.enrolled, STUDENTS as i32);
    assert_eq!(app.get_course(full.id).await.enrolled, 1);
    assert_eq!(app.get_course(taken.id).await.enrolled, STUDENTS as i32);
    app.assert_integrity().await;
    app.stop().await;
}

/// DeleteStudent and DeleteCourse cascade through enrollments while AssignCourse and
/// UnassignCourse change them: every write takes its locks in one order (courses before
/// enrollments, courses by id), so none waits in a cycle. A deadlock would cost PostgreSQL's
/// `deadlock_timeout` and come back ABORTED, which the contract does not list for these calls.
async fn deletes_racing_enrollments_never_deadlock(backend: Backend) {
    const ROUNDS: usize = 3;
    const STUDENTS: usize = 30;
    const COURSES: usize = 8;
    let app = TestApp::spawn(backend).await;
    let mut codes = std::collections::BTreeMap::new();
    for round in 0..ROUNDS {
        let mut students = Vec::new();
        for i in 0..STUDENTS {
            let email = format!("r{round}s{i}@example.com");
            students.push(app.create_student(&format!("S{i}"), &email).await.id);
        }
        let mut courses = Vec::new();
        for i in 0..COURSES {
            let capacity = if i % 2 == 0 { 0 } else { 40 };
            courses.push(
                app.create_course(&format!("R{round}C{i}"), "Race", capacity)
                    .await
                    .id,
            );
        }
        for &student in &students {
            for &course in &courses {
                app.assign(student, course)
                    .await
                    .expect("enroll before the race");
            }
        }

        let mut tasks = Vec::new();
        // 2 tasks delete the courses, 4 the students (each in an order of its own), 10 enroll
        // and unenroll random pairs.
        for task in 0..2 {
            let mut client = app.courses.clone();
            let mine: Vec<i64> = courses
                .iter()
                .copied()
                .skip(task)
                .step_by(2)
                .rev()
                .collect();
            tasks.push(tokio::spawn(async move {
                let mut codes = Vec::new();
                for course_id in mine {
                    let request = pb::DeleteCourseRequest {
                        course_id,
                        ..Default::default()
                    };
                    codes.push(("DeleteCourse", code_of(client.delete_course(request).await)));
                }
                codes
            }));
        }
        for task in 0..4 {
            let mut client = app.students.clone();
            let mut mine: Vec<i64> = students.iter().copied().skip(task).step_by(4).collect();
            fastrand::shuffle(&mut mine);
            tasks.push(tokio::spawn(async move {
                let mut codes = Vec::new();
                for student_id in mine {
                    let request = pb::DeleteStudentRequest {
                        student_id,
                        ..Default::default()
                    };
                    codes.push((
                        "DeleteStudent",
                        code_of(client.delete_student(request).await),
                    ));
                }
                codes
            }));
        }
        for _ in 0..10 {
            let mut client = app.students.clone();
            let (students, courses) = (students.clone(), courses.clone());
            tasks.push(tokio::spawn(async move {
                let mut codes = Vec::new();
                for _ in 0..40 {
                    let student_id = students[fastrand::usize(..students.len())];
                    let course_id = courses[fastrand::usize(..courses.len())];
                    if fastrand::bool() {
                        let request = pb::AssignCourseRequest {
                            student_id,
                            course_id,
                        };
                        codes.push(("AssignCourse", code_of(client.assign_course(request).await)));
                    } else {
                        let request = pb::UnassignCourseRequest {
                            student_id,
                            course_id,
                        };
                        let answer = client.unassign_course(request).await;
                        codes.push(("UnassignCourse", code_of(answer)));
                    }
                }
                codes
            }));
        }
        for (call, code) in futures_join(tasks.into_iter()).await.into_iter().flatten() {
            *codes.entry((call, format!("{code:?}"))).or_insert(0) += 1;
        }
    }

    let unexpected: Vec<_> = codes
        .iter()
        .filter(|((_, code), _)| !["Ok", "NotFound", "FailedPrecondition"].contains(&code.as_str()))
        .collect();
    assert!(
        unexpected.is_empty(),
        "unexpected codes: {unexpected:?} (all: {codes:?})"
    );
    assert_eq!(
        codes[&("DeleteCourse", "Ok".to_owned())],
        ROUNDS * COURSES,
        "{codes:?}"
    );
    assert_eq!(
        codes[&("DeleteStudent", "Ok".to_owned())],
        ROUNDS * STUDENTS,
        "{codes:?}"
    );
    app.assert_integrity().await;
    app.stop().await;
}

/// BatchAssignCourses among every other write on the same students and courses: single
/// assignments, unassignments, and students deleted and replaced, on four five-seat courses.
/// A batch must queue behind the others, never deadlock: the contract lists ABORTED for
/// AssignCourse only. Before the fix, a batch that found one of its pairs unassigned between
/// its insert and its read inserted that pair again in a second statement, locking a course
/// after courses of higher id, and PostgreSQL answered `deadlock detected`.
async fn batches_racing_deletes_and_unassignments_never_deadlock(backend: Backend) {
    const COURSES: usize = 4;
    const CAPACITY: i32 = 5;
    // Seven students for twenty seats: courses fill up, and batches, unassignments and deletes
    // keep meeting on the same pairs.
    const STUDENTS: usize = 7;
    const CALLERS: usize = 16;
    const SECONDS: u64 = 5;
    let app = TestApp::spawn(backend).await;
    let mut courses = Vec::new();
    for i in 0..COURSES {
        courses.push(
            app.create_course(&format!("MIX-{i}"), "Mix", CAPACITY)
                .await
                .id,
        );
    }
    let students = Arc::new(Mutex::new(app.create_students(STUDENTS).await));
    let replacements = Arc::new(AtomicUsize::new(0));

    let deadline = Instant::now() + Duration::from_secs(SECONDS);
    let callers = (0..CALLERS).map(|caller| {
        let (mut client, courses) = (app.students.clone(), courses.clone());
        let (students, replacements) = (students.clone(), replacements.clone());
        tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(caller as u64);
            let mut codes = Vec::new();
            while Instant::now() < deadline {
                let slot = rng.usize(..STUDENTS);
                let student_id = students.lock().expect("students")[slot];
                let course_id = courses[rng.usize(..courses.len())];
                match rng.u8(..10) {
                    0..4 => {
                        let mut course_ids = courses.clone();
                        rng.shuffle(&mut course_ids);
                        course_ids.truncate(rng.usize(2..=COURSES));
                        let request = pb::BatchAssignCoursesRequest {
                            student_id,
                            course_ids,
                            request_id: String::new(),
                        };
                        let answer = client.batch_assign_courses(request).await;
                        codes.push(("BatchAssignCourses", code_of(answer)));
                    }
                    4 => {
                        let request = pb::AssignCourseRequest {
                            student_id,
                            course_id,
                        };
                        codes.push(("AssignCourse", code_of(client.assign_course(request).await)));
                    }
                    5..9 => {
                        let request = pb::UnassignCourseRequest {
                            student_id,
                            course_id,
                        };
                        let answer = client.unassign_course(request).await;
                        codes.push(("UnassignCourse", code_of(answer)));
                    }
                    _ => {
                        let request = pb::DeleteStudentRequest {
                            student_id,
                            ..Default::default()
                        };
                        let answer = code_of(client.delete_student(request).await);
                        codes.push(("DeleteStudent", answer));
                        // Only the call that deleted the student replaces it in its slot.
                        if answer != Code::Ok {
                            continue;
                        }
                        let n = replacements.fetch_add(1, Ordering::Relaxed);
                        let request = pb::CreateStudentRequest {
                            name: format!("R{n}"),
                            email: format!("r{n}@example.com"),
                            request_id: String::new(),
                        };
                        match client.create_student(request).await {
                            Ok(created) => {
                                students.lock().expect("students")[slot] = created.into_inner().id;
                                codes.push(("CreateStudent", Code::Ok));
                            }
                            Err(status) => codes.push(("CreateStudent", status.code())),
                        }
                    }
                }
            }
            codes
        })
    });
    let mut codes = BTreeMap::new();
    for (call, code) in futures_join(callers).await.into_iter().flatten() {
        *codes.entry((call, format!("{code:?}"))).or_insert(0) += 1;
    }

    eprintln!("mixed race for {SECONDS} s: {codes:?}");
    let unexpected: Vec<_> = codes
        .iter()
        .filter(|((call, code), _)| {
            let allowed = ["Ok", "NotFound", "FailedPrecondition"].contains(&code.as_str())
                || (*call == "AssignCourse" && code == "Aborted");
            !allowed
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "unexpected codes: {unexpected:?} (all: {codes:?})"
    );
    for (call, code) in [
        ("BatchAssignCourses", "Ok"),
        ("UnassignCourse", "Ok"),
        ("DeleteStudent", "Ok"),
    ] {
        assert!(
            codes.contains_key(&(call, code.to_owned())),
            "the race never saw {call} {code}: {codes:?}"
        );
    }
    for &course in &courses {
        let read = app.get_course(course).await;
        assert!(read.enrolled <= CAPACITY, "over capacity: {read:?}");
        assert_eq!(i64::from(read.enrolled), app.enrollment_rows(course).await);
    }
    app.assert_integrity().await;
    app.stop().await;
}

fn code_of<T>(answer: Result<T, tonic::Status>) -> Code {
    answer.map_or_else(|status| status.code(), |_| Code::Ok)
}

/// Awaits every spawned task, in order.
async fn futures_join<T>(tasks: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let tasks: Vec<_> = tasks.collect();
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await.expect("task did not panic"));
    }
    results
}
