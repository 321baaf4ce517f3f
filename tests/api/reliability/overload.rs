//! Scenario 6, overload: far more concurrent calls than the database pool can serve. The real
//! binary runs in its own process, so its peak memory (VmHWM) is its own, with its default
//! limits except `--max-in-flight`, lowered to [`MAX_IN_FLIGHT`] so that 4 connections of 128
//! streams each (512 calls at the server at once) cross it. Every call must be answered within [`BOUND`] with a result, RESOURCE_EXHAUSTED
//! (`OVERLOADED`: over `--max-in-flight`) or UNAVAILABLE (`DATABASE_UNAVAILABLE`: no connection
//! within `--database-acquire-timeout`); the server must stay up, healthy and consistent, and
//! a refused call must have left no row behind.
//!
//! One transport answer is allowed too: an HTTP/2 `REFUSED_STREAM` reset, which tonic reports as
//! UNAVAILABLE. A client that keeps its connection at the server's 128-stream limit opens a new
//! stream the moment an answer ends, and hyper's HTTP/2 server can still be counting the old one
//! (seen once in 4,000 calls in CI, when most answers are an instant RESOURCE_EXHAUSTED). HTTP/2
//! guarantees that a refused stream was never processed, and gRPC maps it to UNAVAILABLE so that
//! clients may retry it; the tally counts these apart as `RefusedStream`.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use student_service::{
    api::pb::{
        self, course_service_client::CourseServiceClient,
        student_service_client::StudentServiceClient,
    },
    store::Store,
};
use tonic::{Code, Status, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_types::StatusExt;

use super::{WriteBlock, is_enrolled};
use crate::{
    helpers::{Backend, Peek, TestDatabase, on_both_backends, pool_settings},
    process::ServerProcess,
};

on_both_backends!(overload_is_answered_within_bounds_and_memory_stays_bounded);

/// HTTP/2 connections the calls share.
const CONNECTIONS: usize = 4;
/// Calls started at once in each phase.
const CALLS: usize = 2000;
const STUDENTS: usize = 100;
/// How long the stalled phase keeps writes waiting: longer than the 3 s acquire timeout, shorter
/// than SQLite's 5 s busy timeout.
const STALL: Duration = Duration::from_secs(4);
/// The longest any call may take to be answered, as the client sees it. The server answers a
/// call it admits within the 3 s acquire timeout plus its statement (a statement already in the
/// database waits out the 4 s stall), and one it refuses at once; but a call also waits in the
/// client for one of its connection's 128 streams, and a debug build on a busy two-core machine
/// (the whole suite runs beside this test) is slow to drain 2,000 calls: measured up to 5.8 s.
const BOUND: Duration = Duration::from_secs(15);
/// Below the 4 x 128 streams the test's connections may have open at once.
const MAX_IN_FLIGHT: &str = "256";
/// The server's peak resident memory must stay below this.
const PEAK_RSS_BOUND_MIB: u64 = 256;

async fn overload_is_answered_within_bounds_and_memory_stays_bounded(backend: Backend) {
    let database = TestDatabase::create(&backend).await;
    let server = ServerProcess::start(
        &database.url,
        &[("MAX_IN_FLIGHT", MAX_IN_FLIGHT), ("RUST_LOG", "error")],
    )
    .await;
    let backend_name = if database.url.starts_with("sqlite:") {
        "sqlite"
    } else {
        "postgres"
    };
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(server.channel().await);
    }
    let students_client = StudentServiceClient::new(channels[0].clone());
    let courses_client = CourseServiceClient::new(channels[0].clone());

    let mut students = Vec::new();
    for i in 0..STUDENTS {
        let student = students_client
            .clone()
            .create_student(pb::CreateStudentRequest {
                name: format!("Student {i}"),
                email: format!("s{i}@example.com"),
                request_id: String::new(),
            })
            .await
            .expect("CreateStudent")
            .into_inner();
        students.push(student.id);
    }
    let mut courses = Vec::new();
    for code in ["OPEN-1", "HOT-1"] {
        let course = courses_client
            .clone()
            .create_course(pb::CreateCourseRequest {
                code: code.into(),
                title: format!("Course {code}"),
                capacity: 0,
                request_id: String::new(),
            })
            .await
            .expect("CreateCourse")
            .into_inner();
        courses.push(course.id);
    }
    let (open, hot) = (courses[0], courses[1]);

    // Phase 1: a burst of mixed reads and writes, far above the pool's 8 connections.
    let burst: Vec<Call> = (0..CALLS)
        .map(|i| {
            let student = students[i % STUDENTS];
            match i % 6 {
                0 => Call::GetStudent(student),
                1 => Call::ListStudents,
                2 => Call::Search,
                3 => Call::Assign(student, open),
                4 => Call::GetCourse(open),
                _ => Call::ListCourses(student),
            }
        })
        .collect();
    let tally = run(&channels, burst, None).await;
    tally.report(backend_name, "burst", &server);
    tally.assert_answered();

    // Phase 2: the same load of writes while the database keeps them waiting, so they pile up
    // in the server: the in-flight limit and the pool's acquire timeout must answer them.
    let block = WriteBlock::hold(&database.url, hot).await;
    let stalled: Vec<Call> = (0..CALLS)
        .map(|i| Call::Assign(students[i % STUDENTS], hot))
        .collect();
    let tally = run(&channels, stalled, Some(block)).await;
    tally.report(backend_name, "stalled", &server);
    tally.assert_answered();
    assert!(
        tally.count(Code::ResourceExhausted) > 0 && tally.count(Code::Unavailable) > 0,
        "the stalled phase should overload the server: {:?}",
        tally.by_code
    );

    // Still up, healthy, answering, and consistent. (On PostgreSQL the health probe shares the
    // pool the stall filled, so it may have reported NOT_SERVING for a moment.)
    let mut health = HealthClient::new(channels[1].clone());
    let started = Instant::now();
    loop {
        let status = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health answers")
            .into_inner()
            .status;
        if status == ServingStatus::Serving as i32 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "health stays {status} after the overload"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let course = courses_client
        .clone()
        .get_course(pb::GetCourseRequest { course_id: hot })
        .await
        .expect("served normally after the overload")
        .into_inner();
    let check = Store::connect(&database.url, &pool_settings())
        .await
        .expect("connect");
    let violations = check.verify().await.expect("verify runs");
    let peek = Peek::open(&database.url).await;
    assert!(
        violations.is_empty(),
        "integrity violations: {violations:?}"
    );
    assert!(course.enrolled > 0, "the admitted writes were kept");
    // A refused call never runs: the hot course holds exactly the students some call enrolled.
    let mut enrolled_students = Vec::new();
    for &student in &students {
        if is_enrolled(&peek, student, hot).await {
            enrolled_students.push(student);
        }
    }
    assert_eq!(
        enrolled_students,
        tally.succeeded_students(),
        "enrolled students against those with an OK answer"
    );
    let peak = server.peak_rss_mib();
    assert!(
        peak < PEAK_RSS_BOUND_MIB,
        "peak RSS {peak} MiB exceeds {PEAK_RSS_BOUND_MIB} MiB"
    );
    check.close().await;
    drop(server);
}

#[derive(Debug, Clone, Copy)]
enum Call {
    GetStudent(i64),
    ListStudents,
    Search,
    Assign(i64, i64),
    GetCourse(i64),
    ListCourses(i64),
}

impl Call {
    async fn send(self, channel: Channel) -> Result<(), Status> {
        let mut students = StudentServiceClient::new(channel.clone());
        let mut courses = CourseServiceClient::new(channel);
        match self {
            Call::GetStudent(student_id) => students
                .get_student(pb::GetStudentRequest { student_id })
                .await
                .map(drop),
            Call::ListStudents => students
                .list_students(pb::ListStudentsRequest {
                    page_size: 50,
                    page_token: String::new(),
                })
                .await
                .map(drop),
            Call::Search => courses
                .search_courses(pb::SearchCoursesRequest {
                    query: "course".into(),
                    page_size: 10,
                    page_token: String::new(),
                })
                .await
                .map(drop),
            Call::Assign(student_id, course_id) => students
                .assign_course(pb::AssignCourseRequest {
                    student_id,
                    course_id,
                })
                .await
                .map(drop),
            Call::GetCourse(course_id) => courses
                .get_course(pb::GetCourseRequest { course_id })
                .await
                .map(drop),
            Call::ListCourses(student_id) => students
                .list_courses(pb::ListCoursesRequest {
                    student_id,
                    page_size: 10,
                    page_token: String::new(),
                })
                .await
                .map(drop),
        }
    }
}

/// Outcomes of one phase.
struct Tally {
    calls: usize,
    elapsed: Duration,
    by_code: BTreeMap<String, usize>,
    /// Calls whose status is not one this scenario allows, with their latency.
    unexpected: Vec<(Status, Duration)>,
    latencies: Vec<Duration>,
    /// The calls answered OK.
    succeeded: Vec<Call>,
}

/// Starts every call at once, spread over the connections; releases `block` after [`STALL`].
async fn run(channels: &[Channel], calls: Vec<Call>, block: Option<WriteBlock>) -> Tally {
    let started = Instant::now();
    let tasks: Vec<_> = calls
        .into_iter()
        .enumerate()
        .map(|(i, call)| {
            let channel = channels[i % channels.len()].clone();
            tokio::spawn(async move {
                let sent = Instant::now();
                let result = tokio::time::timeout(BOUND * 2, call.send(channel)).await;
                (call, result, sent.elapsed())
            })
        })
        .collect();
    if let Some(block) = block {
        tokio::time::sleep(STALL).await;
        block.release().await;
    }
    let mut tally = Tally {
        calls: tasks.len(),
        elapsed: Duration::ZERO,
        by_code: BTreeMap::new(),
        unexpected: Vec::new(),
        latencies: Vec::new(),
        succeeded: Vec::new(),
    };
    for task in tasks {
        let (call, result, latency) = task.await.expect("no panic");
        tally.latencies.push(latency);
        let status = match result {
            Ok(Ok(())) => {
                *tally.by_code.entry(format!("{:?}", Code::Ok)).or_default() += 1;
                tally.succeeded.push(call);
                continue;
            }
            Ok(Err(status)) => status,
            Err(_) => Status::deadline_exceeded("the test gave up waiting for an answer"),
        };
        if refused_by_http2(&status) {
            *tally.by_code.entry("RefusedStream".into()).or_default() += 1;
            continue;
        }
        *tally
            .by_code
            .entry(format!("{:?}", status.code()))
            .or_default() += 1;
        let reason = status
            .get_error_details()
            .error_info()
            .map(|info| info.reason.clone());
        let expected = matches!(
            (status.code(), reason.as_deref()),
            (Code::ResourceExhausted, Some("OVERLOADED"))
                | (Code::Unavailable, Some("DATABASE_UNAVAILABLE"))
        );
        if !expected {
            tally.unexpected.push((status, latency));
        }
    }
    tally.elapsed = started.elapsed();
    tally.latencies.sort();
    tally
}

/// Whether the call's stream was reset by the server with `REFUSED_STREAM`: unprocessed.
fn refused_by_http2(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            return status.code() == Code::Unavailable
                && h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                && h2.is_remote();
        }
        source = error.source();
    }
    false
}

impl Tally {
    /// The students of the AssignCourse calls answered OK, sorted, once each.
    fn succeeded_students(&self) -> Vec<i64> {
        let mut students: Vec<i64> = self
            .succeeded
            .iter()
            .filter_map(|call| match call {
                Call::Assign(student, _) => Some(*student),
                _ => None,
            })
            .collect();
        students.sort_unstable();
        students.dedup();
        students
    }

    fn count(&self, code: Code) -> usize {
        self.by_code
            .get(&format!("{code:?}"))
            .copied()
            .unwrap_or_default()
    }

    fn percentile(&self, p: usize) -> Duration {
        let index = (self.latencies.len() * p / 100).min(self.latencies.len().saturating_sub(1));
        self.latencies.get(index).copied().unwrap_or_default()
    }

    fn report(&self, backend: &str, phase: &str, server: &ServerProcess) {
        eprintln!(
            "overload {backend} {phase}: {} calls over {CONNECTIONS} connections in {:?}; \
             codes {:?}; latency p50 {:?} p99 {:?} max {:?}; server peak RSS {} MiB",
            self.calls,
            self.elapsed,
            self.by_code,
            self.percentile(50),
            self.percentile(99),
            self.latencies.last().copied().unwrap_or_default(),
            server.peak_rss_mib(),
        );
    }

    /// Every call was answered within the bound, with a status the scenario allows.
    fn assert_answered(&self) {
        assert!(
            self.unexpected.is_empty(),
            "{} unexpected answers, e.g. {:?}",
            self.unexpected.len(),
            self.unexpected.first()
        );
        let slowest = self.latencies.last().copied().unwrap_or_default();
        assert!(slowest < BOUND, "a call took {slowest:?}");
    }
}
