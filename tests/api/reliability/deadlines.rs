//! Scenario 5, deadlines and cancellation: a deadline shorter than the work ends the call with
//! DEADLINE_EXCEEDED, the server stops the call's work, and the database is left with no partial
//! state.
//!
//! What "stops the work" means: at the deadline the handler's future is dropped. Work that had
//! not reached the database (waiting for a pool connection) never runs. A statement already in
//! the database is not interrupted (sqlx has no way to cancel it): it finishes or fails on its
//! own, as the single atomic statement it is, so the enrollment exists whole (row and seat) or
//! not at all. As gRPC says of DEADLINE_EXCEEDED, such a change may have happened; AssignCourse
//! is idempotent, so the client's retry settles it.

use std::time::{Duration, Instant};

use student_service::{api::pb, server::ServerSettings};
use tonic::{Code, Request};

use super::{
    WriteBlock, is_enrolled,
    raw::{RawClient, frame, message, proto},
};
use crate::helpers::{
    Backend, Peek, TestApp, TestDatabase, assert_error, on_both_backends, pool_settings,
};

on_both_backends!(
    a_deadline_shorter_than_the_work_stops_it_and_leaves_no_partial_state,
    the_request_timeout_caps_calls_that_set_no_deadline,
);

const DEADLINE: Duration = Duration::from_millis(300);
/// The `statement_timeout` the PostgreSQL test puts in the database URL.
const STATEMENT_TIMEOUT: Duration = Duration::from_millis(500);
/// How much later than its deadline a call may be answered on a busy two-core machine.
const SLACK: Duration = Duration::from_secs(1);
const ASSIGN: &str = "/school.v1.StudentService/AssignCourse";

async fn a_deadline_shorter_than_the_work_stops_it_and_leaves_no_partial_state(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let course = app.create_course("SLOW-1", "Waits for a lock", 0).await;
    let early = app.create_student("Early", "early@example.com").await;
    let late = app.create_student("Late", "late@example.com").await;
    // Connections the server writes on: one on SQLite, the whole pool on PostgreSQL. `early`
    // takes one; the occupiers take the rest, so `late` has to wait for a connection.
    let writers = match &app.peek {
        Peek::Sqlite(_) => 1,
        Peek::Postgres(_) => pool_settings().max_connections as usize,
    };
    let mut occupiers = Vec::new();
    for i in 1..writers {
        occupiers.push(
            app.create_student(&format!("Occupier {i}"), &format!("o{i}@example.com"))
                .await
                .id,
        );
    }

    let block = WriteBlock::hold(&app.database.url, course.id).await;

    // The generated client with a deadline: its INSERT reaches the database and waits there.
    let early_call = {
        let mut client = app.students.clone();
        tokio::spawn(async move {
            let mut request = Request::new(pb::AssignCourseRequest {
                student_id: early.id,
                course_id: course.id,
            });
            request.set_timeout(DEADLINE);
            let started = Instant::now();
            let result = client.assign_course(request).await;
            (result, started.elapsed())
        })
    };
    let occupier_calls: Vec<_> = occupiers
        .iter()
        .map(|&student_id| {
            let mut client = app.students.clone();
            tokio::spawn(async move {
                client
                    .assign_course(pb::AssignCourseRequest {
                        student_id,
                        course_id: course.id,
                    })
                    .await
            })
        })
        .collect();
    // tonic's client enforces the deadline itself and reports CANCELLED ("Timeout expired"),
    // usually before the server's DEADLINE_EXCEEDED arrives; either is the deadline passing.
    let (early_result, early_elapsed) = early_call.await.expect("no panic");
    let early_status = early_result.expect_err("the deadline passed first");
    assert!(
        matches!(
            early_status.code(),
            Code::Cancelled | Code::DeadlineExceeded
        ),
        "{early_status:?}"
    );
    assert!(
        early_elapsed < DEADLINE + SLACK,
        "answered after {early_elapsed:?}"
    );
    // Its deadline has passed, so its INSERT went to the database if it ever will; with the
    // occupiers', that takes every connection the server writes on.
    wait_until_writes_wait(&app, writers).await;

    // A raw HTTP/2 call with `grpc-timeout`, so the answer seen is the server's own (the
    // generated client would time out by itself first). It waits for a connection.
    let raw = RawClient::connect(app.address).await;
    let mut payload = Vec::new();
    proto::int(&mut payload, 1, late.id);
    proto::int(&mut payload, 2, course.id);
    let started = Instant::now();
    let reply = raw
        .call(ASSIGN, &[("grpc-timeout", "300m")], message(&payload))
        .await
        .expect("the server answers");
    let late_elapsed = started.elapsed();
    assert_eq!(
        reply.status,
        Some(Code::DeadlineExceeded as i32),
        "{reply:?}"
    );
    assert!(
        late_elapsed >= DEADLINE && late_elapsed < DEADLINE + SLACK,
        "answered after {late_elapsed:?}"
    );

    eprintln!(
        "tonic client with a {DEADLINE:?} deadline: {:?} {:?} after {early_elapsed:?}; \
         raw HTTP/2 with grpc-timeout 300m: server answered DEADLINE_EXCEEDED after {late_elapsed:?}",
        early_status.code(),
        early_status.message(),
    );
    assert!(!is_enrolled(&app.peek, early.id, course.id).await);

    block.release().await;
    for call in occupier_calls {
        call.await
            .expect("no panic")
            .expect("a call without a deadline succeeds once the lock is gone");
    }
    // The early INSERT was already in the database: it runs to completion, whole.
    assert!(
        eventually_enrolled(&app.peek, early.id, course.id).await,
        "the statement already in the database completes once the lock is gone"
    );
    // The late call's work never reached the database and never will.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!is_enrolled(&app.peek, late.id, course.id).await);

    // After DEADLINE_EXCEEDED a client retries; AssignCourse is idempotent, so that is safe.
    let retried = app.assign(early.id, course.id).await.expect("retry");
    assert!(!retried.created, "the early call's enrollment was kept");
    let retried = app.assign(late.id, course.id).await.expect("retry");
    assert!(retried.created, "the late call had left nothing behind");

    let enrolled = app.get_course(course.id).await.enrolled;
    assert_eq!(enrolled as usize, writers + 1);
    assert_eq!(i64::from(enrolled), app.enrollment_rows(course.id).await);
    app.assert_integrity().await;
    app.stop().await;
}

async fn the_request_timeout_caps_calls_that_set_no_deadline(backend: Backend) {
    let settings = ServerSettings {
        request_timeout: DEADLINE,
        ..ServerSettings::default()
    };
    let app = TestApp::spawn_on(TestDatabase::create(&backend).await, settings).await;
    let course = app.create_course("SLOW-2", "Waits for a lock", 0).await;
    let ada = app.create_student("Ada", "ada@example.com").await;

    let block = assign_fails_behind_a_lock(
        &app,
        (ada.id, course.id),
        DEADLINE,
        (
            Code::DeadlineExceeded,
            "DEADLINE_EXCEEDED",
            "did not finish within its deadline of 300ms",
        ),
    )
    .await;
    // Calls that do not wait for the lock are still served.
    assert_eq!(app.get_course(course.id).await.enrolled, 0);
    // A client that stops halfway through its request is cut off by the same timeout.
    let raw = RawClient::connect(app.address).await;
    let started = Instant::now();
    let reply = raw
        .call_unfinished(
            "/school.v1.CourseService/GetCourse",
            &[],
            frame(0, 100, b"\x08\x01"),
        )
        .await
        .expect("the server answers");
    let elapsed = started.elapsed();
    assert_eq!(
        reply.status,
        Some(Code::DeadlineExceeded as i32),
        "{reply:?}"
    );
    assert!(
        elapsed >= DEADLINE && elapsed < DEADLINE + SLACK,
        "answered after {elapsed:?}"
    );

    block.release().await;
    // Its statement was in the database: it completes whole, row and seat together.
    assert!(eventually_enrolled(&app.peek, ada.id, course.id).await);
    assert_eq!(app.get_course(course.id).await.enrolled, 1);
    app.assert_integrity().await;
    app.stop().await;
}

/// Waits until `writers` statements are waiting for the lock, as PostgreSQL shows its lock
/// waits. SQLite's busy handler shows nowhere; there, its one writer is the early call's.
/// Takes the write lock on the course, then calls AssignCourse for the pair: the call must fail
/// with `expected` (code, ErrorInfo reason, part of the message) after `after`, give or take
/// [`SLACK`]. Returns the lock, still held.
async fn assign_fails_behind_a_lock(
    app: &TestApp,
    (student_id, course_id): (i64, i64),
    after: Duration,
    (code, reason, message): (Code, &str, &str),
) -> WriteBlock {
    let block = WriteBlock::hold(&app.database.url, course_id).await;
    let started = Instant::now();
    let result = app.assign(student_id, course_id).await;
    let elapsed = started.elapsed();
    assert_error(result, code, reason, message);
    assert!(
        elapsed >= after && elapsed < after + SLACK,
        "answered after {elapsed:?}"
    );
    block
}

async fn wait_until_writes_wait(app: &TestApp, writers: usize) {
    let Peek::Postgres(pool) = &app.peek else {
        return;
    };
    let mut connection = pool.acquire().await.expect("a connection");
    let started = Instant::now();
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut *connection)
        .await
        .expect("read pg_stat_activity");
        if waiting as usize >= writers {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "only {waiting} of {writers} writes are waiting for the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn eventually_enrolled(peek: &Peek, student_id: i64, course_id: i64) -> bool {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        if is_enrolled(peek, student_id, course_id).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// An operator bounds how long any statement may run with PostgreSQL's `statement_timeout` in the
/// database URL; a statement stuck behind a lock is then cancelled by PostgreSQL, the caller
/// gets UNAVAILABLE (retryable: nothing was written) and the connection is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(test_postgres),
    ignore = "needs PostgreSQL: set TEST_DATABASE_URL (README)"
)]
async fn postgres_statement_timeout_from_the_url_frees_statements_stuck_on_a_lock() {
    let backend = Backend::postgres();
    let mut database = TestDatabase::create(&backend).await;
    let separator = if database.url.contains('?') { '&' } else { '?' };
    database.url = format!(
        "{}{separator}options=-c%20statement_timeout%3D{}",
        database.url,
        STATEMENT_TIMEOUT.as_millis()
    );
    let app = TestApp::spawn_on(database, ServerSettings::default()).await;
    let course = app.create_course("LOCKED-1", "Waits for a lock", 0).await;
    let ada = app.create_student("Ada", "ada@example.com").await;

    let block = assign_fails_behind_a_lock(
        &app,
        (ada.id, course.id),
        STATEMENT_TIMEOUT,
        (
            Code::Unavailable,
            "DATABASE_UNAVAILABLE",
            "the database is unavailable",
        ),
    )
    .await;
    block.release().await;
    assert!(!is_enrolled(&app.peek, ada.id, course.id).await);
    let retried = app.assign(ada.id, course.id).await.expect("retry");
    assert!(
        retried.created,
        "the cancelled statement left nothing behind"
    );
    app.assert_integrity().await;
    app.stop().await;
}
