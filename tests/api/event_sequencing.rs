//! PostgreSQL's event sequencer: a transaction that commits late is numbered late, never
//! skipped; replicas share one gap-free sequence; when the replica that numbers dies, another
//! takes over.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use sqlx::{Connection, PgConnection};
use student_service::api::pb::{
    AssignCourseRequest, UnassignCourseRequest, WatchEnrollmentEventsRequest,
    WatchEnrollmentEventsResponse, enrollment_event::Type,
    enrollment_event_service_client::EnrollmentEventServiceClient,
    student_service_client::StudentServiceClient,
};
use tonic::{Streaming, transport::Channel};

use crate::{
    helpers::{Backend, TestApp, TestDatabase},
    process::ServerProcess,
    resilience::{create_courses, create_students},
};

async fn watch_from_start(channel: Channel) -> Streaming<WatchEnrollmentEventsResponse> {
    let request = WatchEnrollmentEventsRequest::default();
    let mut client = EnrollmentEventServiceClient::new(channel);
    let answer = client.watch_enrollment_events(request).await;
    answer.expect("WatchEnrollmentEvents").into_inner()
}

/// The next `count` events, or fewer if `within` passes first.
async fn read_events(
    stream: &mut Streaming<WatchEnrollmentEventsResponse>,
    count: usize,
    within: Duration,
) -> Vec<student_service::api::pb::EnrollmentEvent> {
    let deadline = tokio::time::Instant::now() + within;
    let mut events = Vec::new();
    while events.len() < count {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Ok(message) => events.extend(message.expect("open").expect("a message").events),
            Err(_) => break,
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(test_postgres),
    ignore = "needs PostgreSQL: set TEST_DATABASE_URL (README)"
)]
async fn postgres_a_transaction_that_commits_late_is_delivered_late_never_skipped() {
    let backend = Backend::postgres();
    let app = TestApp::spawn(backend).await;
    let students = app.create_students(4).await;
    let course = app.create_course("LATE", "Late", 0).await.id;
    // Another course: the open transaction holds its course's row (the seat count).
    let other = app.create_course("OTHER", "Other", 0).await.id;

    // A transaction enrolls student 0 and stays open while three AssignCourse calls commit.
    let mut held = PgConnection::connect(&app.database.url)
        .await
        .expect("connect");
    sqlx::query("BEGIN")
        .execute(&mut held)
        .await
        .expect("BEGIN");
    sqlx::query(
        "INSERT INTO student_courses (student_id, course_id, enroll_time) VALUES ($1, $2, 0)",
    )
    .bind(students[0])
    .bind(course)
    .execute(&mut held)
    .await
    .expect("insert in the open transaction");
    for &student in &students[1..] {
        app.assign(student, other).await.expect("AssignCourse");
    }
    let mut stream = watch_from_start(app.channel.clone()).await;

    // Numbering the later ones now would let a reader pass the open transaction's event by.
    let early = read_events(&mut stream, 1, Duration::from_millis(1500)).await;
    assert!(
        early.is_empty(),
        "delivered while an older transaction was open: {early:?}"
    );

    sqlx::query("COMMIT")
        .execute(&mut held)
        .await
        .expect("COMMIT");
    let events = read_events(&mut stream, 4, Duration::from_secs(10)).await;

    let sequences: Vec<i64> = events.iter().map(|e| e.sequence).collect();
    let order: Vec<i64> = events.iter().map(|e| e.student_id).collect();
    assert_eq!(sequences, [1, 2, 3, 4]);
    assert_eq!(
        order, students,
        "the open transaction's event first: it started first"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(test_postgres),
    ignore = "needs PostgreSQL: set TEST_DATABASE_URL (README)"
)]
async fn postgres_replicas_share_one_gap_free_sequence_and_take_over_numbering() {
    const CLIENTS: usize = 8;
    const CALLS: usize = 600;
    let backend = Backend::postgres();
    let database = TestDatabase::create(&backend).await;
    // The first replica to start takes the sequencer lock.
    let first = ServerProcess::start(&database.url, &[]).await;
    let second = ServerProcess::start(&database.url, &[]).await;
    let (mut students, mut courses) = first.clients().await;
    let student_ids = create_students(&mut students, 32).await;
    let course_ids = create_courses(&mut courses, "SEQ", 0, 4).await;

    // Each client owns its students and counts the changes it was told it made.
    let mut workers = Vec::new();
    for client in 0..CLIENTS {
        let server = if client % 2 == 0 { &first } else { &second };
        let mut api = StudentServiceClient::new(server.channel().await);
        let mine: Vec<i64> = student_ids
            .iter()
            .copied()
            .skip(client)
            .step_by(CLIENTS)
            .collect();
        let course_ids = course_ids.clone();
        workers.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(client as u64);
            let mut changes = 0;
            for _ in 0..CALLS / CLIENTS {
                let (student_id, course_id) = (
                    mine[rng.usize(..mine.len())],
                    course_ids[rng.usize(..course_ids.len())],
                );
                if rng.bool() {
                    let request = AssignCourseRequest {
                        student_id,
                        course_id,
                    };
                    let created = api.assign_course(request).await.expect("AssignCourse");
                    changes += usize::from(created.into_inner().created);
                } else {
                    let request = UnassignCourseRequest {
                        student_id,
                        course_id,
                    };
                    changes += usize::from(api.unassign_course(request).await.is_ok());
                }
            }
            changes
        }));
    }
    let mut changes = 0;
    for worker in workers {
        changes += worker.await.expect("client");
    }

    let mut stream = watch_from_start(second.channel().await).await;
    let events = read_events(&mut stream, changes, Duration::from_secs(10)).await;
    let sequences: Vec<i64> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(
        sequences,
        (1..=changes as i64).collect::<Vec<_>>(),
        "one gap-free sequence"
    );
    // Each pair's events alternate, starting with CREATED: they come in the order they happened.
    let mut enrolled: HashMap<(i64, i64), bool> = HashMap::new();
    for event in &events {
        let pair = (event.student_id, event.course_id);
        let was = enrolled
            .insert(pair, event.r#type() == Type::Created)
            .unwrap_or(false);
        assert_eq!(
            was,
            event.r#type() == Type::Deleted,
            "out of order for {pair:?}: {event:?}"
        );
    }

    // The numbering replica dies; the other takes the lock and numbers what comes next.
    first.kill().await;
    let killed = Instant::now();
    let mut api = StudentServiceClient::new(second.channel().await);
    let request = AssignCourseRequest {
        student_id: student_ids[0],
        course_id: course_ids[0],
    };
    let created = api
        .assign_course(request)
        .await
        .expect("AssignCourse")
        .into_inner()
        .created;
    let request = UnassignCourseRequest {
        student_id: student_ids[0],
        course_id: course_ids[0],
    };
    let unassigned = api.unassign_course(request).await.is_ok();
    let more = usize::from(created) + usize::from(unassigned);
    let after = read_events(&mut stream, more, Duration::from_secs(15)).await;
    eprintln!(
        "{changes} events over 2 replicas; after kill -9 of the numbering replica, the next {more} arrived in {:?}",
        killed.elapsed()
    );
    let sequences: Vec<i64> = after.iter().map(|e| e.sequence).collect();
    assert_eq!(
        sequences,
        (changes as i64 + 1..=(changes + more) as i64).collect::<Vec<_>>()
    );
}
