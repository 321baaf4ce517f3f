//! Enrollment events: every change makes exactly its events, the feed replays then follows
//! live, resumes from any sequence without gap or duplicate, and refuses what it cannot serve.

use std::time::{Duration, Instant};

use sqlx::Connection;
use student_service::{
    api::pb::{
        self, EnrollmentEvent, WatchEnrollmentEventsRequest, WatchEnrollmentEventsResponse,
        enrollment_event::{Cause, Type},
        enrollment_event_service_client::EnrollmentEventServiceClient,
    },
    server::ServerSettings,
};
use tonic::{Code, Status, Streaming};

use crate::helpers::{
    Backend, TestApp, TestDatabase, assert_error, error_metadata, error_reason, on_both_backends,
    violated_fields,
};

on_both_backends!(
    every_change_makes_exactly_its_events,
    the_feed_replays_then_follows_live,
    resuming_from_any_sequence_repeats_nothing_and_skips_nothing,
    filters_select_one_student_or_one_course,
    an_idle_watcher_gets_heartbeats_with_the_head,
    what_the_feed_cannot_serve_is_refused,
    retention_deletes_old_events_and_never_reuses_a_sequence,
    shutdown_ends_the_stream_unavailable,
);

/// What an event says, with the ids it carries.
type Said = (Type, Cause, i64, i64);

fn said(event: &EnrollmentEvent) -> Said {
    (
        event.r#type(),
        event.cause(),
        event.student_id,
        event.course_id,
    )
}

impl TestApp {
    async fn watch(
        &self,
        after_sequence: i64,
    ) -> Result<Streaming<WatchEnrollmentEventsResponse>, Status> {
        self.watch_filtered(after_sequence, 0, 0).await
    }

    async fn watch_filtered(
        &self,
        after_sequence: i64,
        student_id: i64,
        course_id: i64,
    ) -> Result<Streaming<WatchEnrollmentEventsResponse>, Status> {
        let request = WatchEnrollmentEventsRequest {
            after_sequence,
            student_id,
            course_id,
        };
        let mut client = EnrollmentEventServiceClient::new(self.channel.clone());
        client
            .watch_enrollment_events(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// Every event from the start, read until the stream has reached `count` events.
    async fn events(&self, count: usize) -> Vec<EnrollmentEvent> {
        let mut stream = self.watch(0).await.expect("WatchEnrollmentEvents");
        next_events(&mut stream, count).await
    }
}

/// Reads the stream until it has delivered `count` events (heartbeats skipped), or fails after
/// 10 s.
async fn next_events(
    stream: &mut Streaming<WatchEnrollmentEventsResponse>,
    count: usize,
) -> Vec<EnrollmentEvent> {
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while events.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        let response = tokio::time::timeout(left, stream.message())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {count} events in 10 s: {events:?}",
                    events.len()
                )
            })
            .expect("the stream goes on")
            .expect("the stream is open");
        events.extend(response.events);
    }
    events
}

fn sequences(events: &[EnrollmentEvent]) -> Vec<i64> {
    events.iter().map(|e| e.sequence).collect()
}

async fn every_change_makes_exactly_its_events(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let [ada, bob] = app.create_students(2).await[..] else {
        unreachable!()
    };
    let one = app.create_course("ONE", "One seat", 1).await.id;
    let open = app.create_course("OPEN", "Open", 0).await.id;
    let more = app.create_course("MORE", "More", 0).await.id;

    app.assign(ada, one).await.expect("created: an event");
    app.assign(ada, one).await.expect("a repeat: no event");
    app.assign(bob, one).await.expect_err("full: no event");
    app.assign(bob, 999_999)
        .await
        .expect_err("no such course: no event");
    let batch = pb::BatchAssignCoursesRequest {
        student_id: bob,
        course_ids: vec![more, open],
        request_id: String::new(),
    };
    app.students
        .clone()
        .batch_assign_courses(batch)
        .await
        .expect("two events");
    let refused = pb::BatchAssignCoursesRequest {
        student_id: ada,
        course_ids: vec![open, one, 999_999],
        request_id: String::new(),
    };
    app.students
        .clone()
        .batch_assign_courses(refused)
        .await
        .expect_err("no event");
    let unassign = pb::UnassignCourseRequest {
        student_id: bob,
        course_id: more,
    };
    app.students
        .clone()
        .unassign_course(unassign)
        .await
        .expect("an event");
    app.students
        .clone()
        .unassign_course(unassign)
        .await
        .expect_err("not enrolled: no event");
    app.assign(ada, open).await.expect("an event");
    let update = pb::UpdateCourseRequest {
        course: Some(pb::Course {
            id: open,
            title: "Renamed".into(),
            ..Default::default()
        }),
        update_mask: None,
    };
    app.courses
        .clone()
        .update_course(update)
        .await
        .expect("no event");
    // Ada is in ONE and OPEN: two events; then OPEN still has Bob: one more.
    let delete = pb::DeleteStudentRequest {
        student_id: ada,
        ..Default::default()
    };
    app.students
        .clone()
        .delete_student(delete)
        .await
        .expect("two events");
    let delete = pb::DeleteCourseRequest {
        course_id: open,
        ..Default::default()
    };
    app.courses
        .clone()
        .delete_course(delete)
        .await
        .expect("one event");

    let events = app.events(8).await;

    let (created, deleted, none) = (Type::Created, Type::Deleted, Cause::Unspecified);
    let mut got: Vec<Said> = events.iter().map(said).collect();
    // The rows of one statement (a batch, a cascade) come in an order of the database's.
    got[1..3].sort_by_key(|s| s.3);
    got[5..7].sort_by_key(|s| s.3);
    let mut expected = vec![
        (created, none, ada, one),
        (created, none, bob, open),
        (created, none, bob, more),
        (deleted, Cause::Unassigned, bob, more),
        (created, none, ada, open),
        (deleted, Cause::StudentDeleted, ada, one),
        (deleted, Cause::StudentDeleted, ada, open),
        (deleted, Cause::CourseDeleted, bob, open),
    ];
    expected[1..3].sort_by_key(|s| s.3);
    expected[5..7].sort_by_key(|s| s.3);
    assert_eq!(got, expected);
    assert_eq!(sequences(&events), (1..=8).collect::<Vec<_>>());
    let ids: std::collections::HashSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), 8, "every event has its own id");
    assert!(
        events
            .iter()
            .all(|e| e.id.len() == 36 && e.id.as_bytes()[14] == b'8'),
        "UUIDs (version 8)"
    );
    assert!(
        events
            .iter()
            .all(|e| e.enroll_time.is_some() && e.event_time.is_some())
    );
    let head = app.watch(8).await.expect("watch from the head");
    let _ = head;
    let status = assert_error(
        app.watch(9).await,
        Code::OutOfRange,
        "SEQUENCE_IN_FUTURE",
        "beyond the newest event, 8",
    );
    let _ = status;
    app.stop().await;
}

async fn the_feed_replays_then_follows_live(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let students = app.create_students(3).await;
    let course = app.create_course("LIVE", "Live", 0).await.id;
    app.assign(students[0], course)
        .await
        .expect("before the watch");

    let mut stream = app.watch(0).await.expect("WatchEnrollmentEvents");
    let replayed = next_events(&mut stream, 1).await;
    assert_eq!(
        said(&replayed[0]),
        (Type::Created, Cause::Unspecified, students[0], course)
    );

    let mut delays = Vec::new();
    for &student in &students[1..] {
        let sent = Instant::now();
        app.assign(student, course).await.expect("while watching");
        let live = next_events(&mut stream, 1).await;
        delays.push(sent.elapsed());
        assert_eq!(live[0].student_id, student);
    }
    eprintln!("live events reached the watcher after {delays:?}");
    app.stop().await;
}

async fn resuming_from_any_sequence_repeats_nothing_and_skips_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let students = app.create_students(4).await;
    let courses = [
        app.create_course("A", "A", 0).await.id,
        app.create_course("B", "B", 0).await.id,
    ];
    for &student in &students {
        for &course in &courses {
            app.assign(student, course).await.expect("AssignCourse");
        }
    }
    let all = app.events(8).await;

    for after in 0..8 {
        let mut stream = app.watch(after).await.expect("resume");
        let rest = next_events(&mut stream, 8 - after as usize).await;
        assert_eq!(rest, all[after as usize..], "resumed after {after}");
    }
    app.stop().await;
}

async fn filters_select_one_student_or_one_course(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let students = app.create_students(2).await;
    let courses = [
        app.create_course("A", "A", 0).await.id,
        app.create_course("B", "B", 0).await.id,
    ];
    for &student in &students {
        for &course in &courses {
            app.assign(student, course).await.expect("AssignCourse");
        }
    }

    let mut of_student = app.watch_filtered(0, students[1], 0).await.expect("watch");
    let mut of_course = app.watch_filtered(0, 0, courses[0]).await.expect("watch");
    let mut of_pair = app
        .watch_filtered(0, students[0], courses[1])
        .await
        .expect("watch");

    let got = next_events(&mut of_student, 2).await;
    assert!(got.iter().all(|e| e.student_id == students[1]), "{got:?}");
    assert_eq!(sequences(&got), [3, 4]);
    let got = next_events(&mut of_course, 2).await;
    assert!(got.iter().all(|e| e.course_id == courses[0]), "{got:?}");
    assert_eq!(sequences(&got), [1, 3]);
    let got = next_events(&mut of_pair, 1).await;
    assert_eq!(sequences(&got), [2]);
    app.stop().await;
}

async fn an_idle_watcher_gets_heartbeats_with_the_head(backend: Backend) {
    let settings = ServerSettings {
        watch_heartbeat: Duration::from_millis(200),
        ..ServerSettings::default()
    };
    let app = TestApp::spawn_on(TestDatabase::create(&backend).await, settings).await;
    let student = app.create_students(1).await[0];
    let course = app.create_course("A", "A", 0).await.id;
    app.assign(student, course).await.expect("AssignCourse");
    let other = app.create_course("B", "B", 0).await.id;
    // Once the event has its number (on PostgreSQL the sequencer gives it within 100 ms, later
    // on a loaded machine), it is the head every heartbeat carries.
    let mut all = app.watch(0).await.expect("watch");
    assert_eq!(sequences(&next_events(&mut all, 1).await), [1]);

    // Filtered on a course with no events: nothing but heartbeats, each with the head.
    let mut stream = app.watch_filtered(0, 0, other).await.expect("watch");
    let started = Instant::now();
    for _ in 0..3 {
        let beat = stream.message().await.expect("open").expect("a heartbeat");
        assert!(beat.events.is_empty());
        assert_eq!(beat.head_sequence, 1);
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(400),
        "three heartbeats 200 ms apart took {elapsed:?}"
    );
    app.stop().await;
}

async fn what_the_feed_cannot_serve_is_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let students = app.create_students(3).await;
    let course = app.create_course("A", "A", 0).await.id;
    for &student in &students {
        app.assign(student, course).await.expect("AssignCourse");
    }
    // On PostgreSQL events are numbered a moment after they commit.
    app.events(3).await;

    let status = assert_error(
        app.watch_filtered(-1, -2, -3).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        "after_sequence",
    );
    assert_eq!(
        violated_fields(&status),
        ["after_sequence", "student_id", "course_id"]
    );
    let status = assert_error(
        app.watch(4).await,
        Code::OutOfRange,
        "SEQUENCE_IN_FUTURE",
        "beyond the newest event, 3",
    );
    assert_eq!(error_metadata(&status, "head_sequence"), "3");

    // What retention does: the oldest events go.
    compact_through(&app, 2).await;
    let status = assert_error(
        app.watch(1).await,
        Code::OutOfRange,
        "EVENTS_COMPACTED",
        "the oldest kept is 3",
    );
    assert_eq!(error_metadata(&status, "oldest_sequence"), "3");
    let mut from_two = app.watch(2).await.expect("nothing after 2 was deleted");
    assert_eq!(sequences(&next_events(&mut from_two, 1).await), [3]);
    let mut from_oldest = app.watch(0).await.expect("0 is the oldest kept");
    assert_eq!(sequences(&next_events(&mut from_oldest, 1).await), [3]);
    app.stop().await;
}

async fn retention_deletes_old_events_and_never_reuses_a_sequence(backend: Backend) {
    let settings = ServerSettings {
        events_retention: Duration::from_secs(1),
        ..ServerSettings::default()
    };
    let app = TestApp::spawn_on(TestDatabase::create(&backend).await, settings).await;
    let students = app.create_students(3).await;
    let course = app.create_course("A", "A", 0).await.id;
    for &student in &students {
        app.assign(student, course).await.expect("AssignCourse");
    }

    // Events 1 and 2 go; the newest, 3, always stays. A watch after 1 fails only then.
    let deadline = Instant::now() + Duration::from_secs(10);
    let compacted = loop {
        match app.watch(1).await {
            Err(status) if error_reason(&status) == "EVENTS_COMPACTED" => break status,
            // Not numbered yet (PostgreSQL), or not deleted yet.
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("events a second old were not deleted within 10 s: {other:?}"),
        }
    };
    assert_error::<()>(
        Err(compacted),
        Code::OutOfRange,
        "EVENTS_COMPACTED",
        "the oldest kept is 3",
    );

    let request = pb::UnassignCourseRequest {
        student_id: students[0],
        course_id: course,
    };
    app.students
        .clone()
        .unassign_course(request)
        .await
        .expect("UnassignCourse");
    // Numbered 4, not 1 or 3 again (on PostgreSQL a moment after it commits).
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.store.event_head().await.expect("head") < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.store.event_head().await.expect("head"), 4);
    let range = app.store.event_range().await.expect("range");
    assert!(range.oldest >= 3 && range.head == 4, "{range:?}");
    app.stop().await;
}

async fn shutdown_ends_the_stream_unavailable(backend: Backend) {
    let mut app = TestApp::spawn(backend).await;
    let mut stream = app.watch(0).await.expect("watch");

    let stopping = Instant::now();
    app.shutdown_server().await;

    let ended = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    let status = ended.expect_err("the stream ends with a status");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "the stream did not hold the shutdown up"
    );
}

/// A stream holds its place among the calls in flight until it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_streams_count_toward_the_in_flight_limit() {
    let settings = ServerSettings {
        max_in_flight: 2,
        ..ServerSettings::default()
    };
    let app = TestApp::spawn_on(TestDatabase::create(&Backend::Sqlite).await, settings).await;
    let first = app.watch(0).await.expect("the first stream");
    let second = app.watch(0).await.expect("the second stream");

    assert_error(
        app.courses
            .clone()
            .get_course(pb::GetCourseRequest { course_id: 1 })
            .await,
        Code::ResourceExhausted,
        "OVERLOADED",
        "2 calls in flight",
    );

    drop(first);
    // The server sees the stream reset a moment later.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = app
            .courses
            .clone()
            .get_course(pb::GetCourseRequest { course_id: 1 })
            .await;
        match answer {
            Err(status)
                if status.code() == Code::ResourceExhausted && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => {
                let status = other.expect_err("no such course");
                assert_eq!(
                    status.code(),
                    Code::NotFound,
                    "a place came free: {status:?}"
                );
                break;
            }
        }
    }
    drop(second);
    app.stop().await;
}

/// Deletes the events up to `sequence`, as retention would.
async fn compact_through(app: &TestApp, sequence: i64) {
    const SQL: &str = "DELETE FROM enrollment_events WHERE sequence <= $1";
    if app.database.url.starts_with("sqlite:") {
        let mut connection = sqlx::SqliteConnection::connect(&app.database.url)
            .await
            .expect("connect");
        sqlx::query(SQL)
            .bind(sequence)
            .execute(&mut connection)
            .await
            .expect("compact");
    } else {
        let mut connection = sqlx::PgConnection::connect(&app.database.url)
            .await
            .expect("connect");
        sqlx::query(SQL)
            .bind(sequence)
            .execute(&mut connection)
            .await
            .expect("compact");
    }
}
