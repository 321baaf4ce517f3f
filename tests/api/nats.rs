//! Delivery of the events to NATS JetStream, against real NATS servers the tests start and stop
//! themselves (Debian's `nats-server`, found on PATH when the tests are built; without it these
//! tests are reported as ignored). Every test uses a stream and subject prefix of its own.

use std::{
    collections::HashSet,
    net::SocketAddr,
    process::Stdio,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use async_nats::jetstream;
use prost::Message;
use student_service::{
    api::pb::{self, EnrollmentEvent},
    outbox::NatsSettings,
    server::ServerSettings,
};
use tokio::process::{Child, Command};

use crate::{
    helpers::{Backend, TestApp, TestDatabase, on_both_backends, read_with},
    metrics::{scrape, value},
    process::{ServerProcess, free_address},
};

on_both_backends!(
    needs_nats_server:
    events_reach_jetstream_in_order_as_cloudevents,
    a_crash_between_publish_and_mark_duplicates_nothing,
);

static STREAMS: AtomicU32 = AtomicU32::new(0);

/// A stream and subject prefix no other test uses.
fn unique(url: &str) -> NatsSettings {
    // The process id and the time: names of a run never meet those of an earlier one, whose
    // streams a failed test may have left behind.
    let n = STREAMS.fetch_add(1, Ordering::Relaxed);
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let id = format!("{}_{started}_{n}", std::process::id());
    NatsSettings::new(
        url.to_owned(),
        format!("SCHOOL_TEST_{id}"),
        format!("school.test.{id}"),
    )
    .expect("valid NATS settings")
}

async fn jetstream(url: &str) -> jetstream::Context {
    let client = async_nats::connect(url)
        .await
        .expect("NATS must run (see the module comment)");
    jetstream::new(client)
}

/// The stream's messages, in stream order, once it holds at least `count` (or after 20 s).
async fn stored(
    settings: &NatsSettings,
    count: u64,
) -> Vec<async_nats::jetstream::message::StreamMessage> {
    let context = jetstream(settings.url()).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut stream) = context.get_stream(settings.stream()).await {
            let held = stream.info().await.expect("stream info").state.messages;
            if held >= count || Instant::now() > deadline {
                let mut messages = Vec::new();
                for sequence in 1..=held {
                    messages.push(
                        stream
                            .get_raw_message(sequence)
                            .await
                            .expect("a stored message"),
                    );
                }
                return messages;
            }
        }
        assert!(
            Instant::now() < deadline,
            "stream {} never appeared",
            settings.stream()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn delete_stream(settings: &NatsSettings) {
    let _ = jetstream(settings.url())
        .await
        .delete_stream(settings.stream())
        .await;
}

/// The event sequences the messages carry, in stream order.
fn sequences_of(messages: &[async_nats::jetstream::message::StreamMessage]) -> Vec<i64> {
    let decode = |m: &async_nats::jetstream::message::StreamMessage| {
        EnrollmentEvent::decode(m.payload.clone()).expect("a protobuf EnrollmentEvent")
    };
    messages.iter().map(|m| decode(m).sequence).collect()
}

fn header(message: &async_nats::jetstream::message::StreamMessage, name: &str) -> String {
    message
        .headers
        .get(name)
        .map(|value| value.as_str().to_owned())
        .unwrap_or_default()
}

async fn events_reach_jetstream_in_order_as_cloudevents(backend: Backend) {
    let broker = PrivateNats::start().await;
    let nats = unique(&broker.url());
    let settings = ServerSettings {
        nats: Some(nats.clone()),
        ..ServerSettings::default()
    };
    let app = TestApp::spawn_on(TestDatabase::create(&backend).await, settings).await;
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
    let request = pb::DeleteStudentRequest {
        student_id: students[0],
        ..Default::default()
    };
    app.students
        .clone()
        .delete_student(request)
        .await
        .expect("DeleteStudent");

    let messages = stored(&nats, 6).await;
    // The stream the relay created keeps messages as long as the outbox keeps events.
    let mut stream = jetstream(nats.url())
        .await
        .get_stream(nats.stream())
        .await
        .expect("the stream");
    let config = stream.info().await.expect("stream info").config.clone();
    assert_eq!(config.max_age, ServerSettings::default().events_retention);

    assert_eq!(messages.len(), 6, "4 created, 2 deleted by the cascade");
    for (i, message) in messages.iter().enumerate() {
        let event =
            EnrollmentEvent::decode(message.payload.clone()).expect("a protobuf EnrollmentEvent");
        let kind = if i < 4 { "created" } else { "deleted" };
        assert_eq!(event.sequence, i as i64 + 1, "in sequence order");
        assert_eq!(
            message.subject.as_str(),
            format!("{}.{kind}", nats.subject_prefix())
        );
        assert_eq!(header(message, "ce-specversion"), "1.0");
        assert_eq!(header(message, "ce-id"), event.id);
        assert_eq!(header(message, "Nats-Msg-Id"), event.id);
        assert_eq!(header(message, "ce-source"), "//student-service");
        assert_eq!(
            header(message, "ce-type"),
            format!("school.v1.enrollment.{kind}")
        );
        assert_eq!(
            header(message, "ce-subject"),
            format!("students/{}/courses/{}", event.student_id, event.course_id)
        );
        assert_eq!(
            header(message, "ce-sequence"),
            format!("{:020}", event.sequence)
        );
        assert_eq!(header(message, "content-type"), "application/protobuf");
        let time = header(message, "ce-time");
        assert!(
            time.ends_with('Z') && time.contains('T'),
            "RFC 3339: {time}"
        );
    }
    app.stop().await;
    delete_stream(&nats).await;
}

/// `kill -9` under load while the relay publishes, then a restart on the same database: the
/// stream holds every event of the outbox exactly once, in sequence order (the re-publish of
/// events published but not yet marked is dropped by JetStream's duplicate window).
async fn a_crash_between_publish_and_mark_duplicates_nothing(backend: Backend) {
    let broker = PrivateNats::start().await;
    let nats = unique(&broker.url());
    let env = [
        ("EVENTS_NATS_URL", nats.url()),
        ("EVENTS_NATS_STREAM", nats.stream()),
        ("EVENTS_NATS_SUBJECT_PREFIX", nats.subject_prefix()),
    ];
    let database = TestDatabase::create(&backend).await;
    let server = ServerProcess::start(&database.url, &env).await;
    let (mut students, mut courses) = server.clients().await;
    let student_ids = crate::resilience::create_students(&mut students, 80).await;
    let course_ids = crate::resilience::create_courses(&mut courses, "N", 0, 10).await;
    let pairs: Vec<(i64, i64)> = student_ids
        .iter()
        .flat_map(|&s| course_ids.iter().map(move |&c| (s, c)))
        .collect();
    let mut workers = Vec::new();
    for client in 0..4 {
        let mut api = students.clone();
        let mine: Vec<(i64, i64)> = pairs.iter().copied().skip(client).step_by(4).collect();
        workers.push(tokio::spawn(async move {
            for (student_id, course_id) in mine {
                let request = pb::AssignCourseRequest {
                    student_id,
                    course_id,
                };
                if api.assign_course(request).await.is_err() {
                    break;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill().await;
    for worker in workers {
        let _ = worker.await;
    }

    let restarted = ServerProcess::start(&database.url, &env).await;
    let (mut students, _) = restarted.clients().await;
    let request = pb::AssignCourseRequest {
        student_id: student_ids[0],
        course_id: course_ids[0],
    };
    let _ = students.assign_course(request).await;
    let store =
        student_service::store::Store::connect(&database.url, &crate::helpers::pool_settings())
            .await
            .expect("connect");
    let peek = crate::helpers::Peek::open(&database.url).await;
    // Once the restarted server has numbered and published everything:
    const WAITING: &str = "SELECT COUNT(*) FROM enrollment_events \
        WHERE sequence IS NULL OR sequence > (SELECT last_published FROM event_feed)";
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: i64 =
            read_with!(&peek, pool => sqlx::query_scalar(WAITING).fetch_one(pool).await)
                .expect("count the waiting events");
        if waiting == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{waiting} events still unpublished after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let outbox = store.event_head().await.expect("head");
    let messages = stored(&nats, outbox as u64).await;

    let sequences = sequences_of(&messages);
    let ids: HashSet<String> = messages.iter().map(|m| header(m, "ce-id")).collect();
    eprintln!(
        "kill -9 with the relay running: {outbox} events in the outbox, {} in the stream",
        messages.len()
    );
    assert_eq!(
        sequences,
        (1..=outbox).collect::<Vec<_>>(),
        "each event once, in order"
    );
    assert_eq!(ids.len(), messages.len());
    store.close().await;
    delete_stream(&nats).await;
}

/// A NATS server of the test's own, with JetStream and a store directory that survives restarts.
struct PrivateNats {
    child: Child,
    address: SocketAddr,
    directory: tempfile::TempDir,
}

impl PrivateNats {
    async fn start() -> PrivateNats {
        let address = free_address();
        let directory = tempfile::tempdir().expect("store directory");
        PrivateNats::run(address, directory).await
    }

    async fn run(address: SocketAddr, directory: tempfile::TempDir) -> PrivateNats {
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &address.port().to_string()])
            .arg("-sd")
            .arg(directory.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server (Debian package nats-server) must be installed");
        let started = Instant::now();
        while tokio::net::TcpStream::connect(address).await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "nats-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        PrivateNats {
            child,
            address,
            directory,
        }
    }

    fn url(&self) -> String {
        format!("nats://{}", self.address)
    }

    /// SIGSTOP: the server keeps its connections open and answers nothing.
    fn pause(&self) {
        self.signal("-STOP");
    }

    fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("nats-server runs");
        let sent = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill {signal} failed");
    }

    async fn stop(mut self) -> (SocketAddr, tempfile::TempDir) {
        self.child.kill().await.expect("stop nats-server");
        (self.address, self.directory)
    }
}

/// The broker goes away under load: no call fails or waits for it, and once it is back every
/// event arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(test_nats_server),
    ignore = "needs nats-server (Debian package nats-server) on PATH when the tests are built"
)]
async fn a_broker_outage_fails_no_call_and_loses_no_event() {
    let broker = PrivateNats::start().await;
    let nats = unique(&broker.url());
    let settings = ServerSettings {
        nats: Some(nats.clone()),
        ..ServerSettings::default()
    };
    let app = TestApp::spawn_on(TestDatabase::create(&Backend::Sqlite).await, settings).await;
    let students = app.create_students(60).await;
    let course = app.create_course("OUT", "Outage", 0).await.id;
    for &student in &students[..20] {
        app.assign(student, course).await.expect("AssignCourse");
    }
    stored(&nats, 20).await;

    let (address, directory) = broker.stop().await;
    let mut slowest = Duration::ZERO;
    for &student in &students[20..] {
        let started = Instant::now();
        app.assign(student, course)
            .await
            .expect("no call fails while the broker is down");
        slowest = slowest.max(started.elapsed());
    }
    let broker = PrivateNats::run(address, directory).await;
    let messages = stored(&nats, 60).await;

    let sequences = sequences_of(&messages);
    eprintln!(
        "broker down for 40 AssignCourse calls: slowest call {slowest:?}; all 60 events delivered after the restart"
    );
    assert_eq!(sequences, (1..=60).collect::<Vec<_>>());
    assert!(
        slowest < Duration::from_secs(1),
        "a call waited for the broker: {slowest:?}"
    );
    app.stop().await;
    drop(broker);
}

/// The broker stops answering without closing its connection (SIGSTOP: a hung process, a
/// partition) while a batch of 100 events is in flight: the relay gives up on the batch within
/// its timeout instead of waiting for each acknowledgement in turn (5 s each: 8 minutes for
/// these 100), and its lag gauge then counts every event waiting, later ones included. Once the
/// broker answers again, every event arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(test_nats_server),
    ignore = "needs nats-server (Debian package nats-server) on PATH when the tests are built"
)]
async fn a_broker_that_stops_answering_holds_the_relay_seconds_not_minutes() {
    const COURSES: usize = 100;
    const LATER: usize = 20;
    let broker = PrivateNats::start().await;
    let nats = unique(&broker.url());
    let metrics = free_address();
    let env = [
        ("EVENTS_NATS_URL", nats.url()),
        ("EVENTS_NATS_STREAM", nats.stream()),
        ("EVENTS_NATS_SUBJECT_PREFIX", nats.subject_prefix()),
        ("METRICS_LISTEN", &metrics.to_string()),
    ];
    let database = TestDatabase::create(&Backend::Sqlite).await;
    let server = ServerProcess::start(&database.url, &env).await;
    let (mut students, mut courses) = server.clients().await;
    let mut course_ids = Vec::new();
    for n in 0..COURSES {
        let course = pb::CreateCourseRequest {
            code: format!("HUNG-{n}"),
            title: "Hung broker".into(),
            capacity: 0,
            request_id: String::new(),
        };
        let created = courses.create_course(course).await.expect("CreateCourse");
        course_ids.push(created.into_inner().id);
    }
    let new_student = async |n: usize| {
        let student = pb::CreateStudentRequest {
            name: format!("Student {n}"),
            email: format!("student{n}@example.com"),
            request_id: String::new(),
        };
        let created = students.clone().create_student(student).await;
        created.expect("CreateStudent").into_inner().id
    };
    let first = new_student(0).await;
    let mut later = Vec::new();
    for n in 1..=LATER {
        later.push(new_student(n).await);
    }

    broker.pause();
    let batch = pb::BatchAssignCoursesRequest {
        student_id: first,
        course_ids: course_ids.clone(),
        request_id: String::new(),
    };
    students
        .batch_assign_courses(batch)
        .await
        .expect("no call waits for the broker");
    // The relay is now waiting on the 100; these come after its round began.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for &student_id in &later {
        let assign = pb::AssignCourseRequest {
            student_id,
            course_id: course_ids[0],
        };
        students.assign_course(assign).await.expect("AssignCourse");
    }
    let waiting = (COURSES + LATER) as f64;
    let started = Instant::now();
    let lag = loop {
        let lag = value(
            &scrape(metrics).await,
            "student_service_events_relay_lag",
            &[],
        );
        if lag >= waiting || started.elapsed() > Duration::from_secs(20) {
            break lag;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "broker paused with 100 events in flight: lag gauge {lag} after {:?} ({waiting} waiting)",
        started.elapsed()
    );
    assert_eq!(lag, waiting, "the relay is still waiting on the batch");

    broker.resume();
    let sequences = sequences_of(&stored(&nats, waiting as u64).await);
    assert_eq!(sequences, (1..=waiting as i64).collect::<Vec<_>>());
    server.terminate();
    assert!(server.wait(Duration::from_secs(15)).await.success());
    drop(broker);
}
