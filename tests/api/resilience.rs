//! Promises kept under races across replicas, crashes and shutdown, tested against the real
//! binary in processes of its own. Sizes: `RACE_OPERATIONS` (default 10,000) and
//! `CRASH_LOAD_MS` (default 1,500) scale the runs.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use student_service::{
    api::pb::{
        AssignCourseRequest, CreateCourseRequest, CreateStudentRequest, UnassignCourseRequest,
        course_service_client::CourseServiceClient, student_service_client::StudentServiceClient,
    },
    store::Store,
};
use tokio_stream::StreamExt;
use tonic::{Code, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    helpers::{Backend, Peek, TestDatabase, on_both_backends, pool_settings, read_with},
    process::ServerProcess,
};

on_both_backends!(
    racing_replicas_keep_every_promise,
    a_crash_loses_no_acknowledged_enrollment,
    sigterm_turns_health_off_finishes_calls_in_flight_and_exits,
);

pub(crate) fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Every (student, course) pair the database holds.
pub(crate) async fn stored_pairs(peek: &Peek) -> HashSet<(i64, i64)> {
    const SQL: &str = "SELECT student_id, course_id FROM student_courses";
    let rows: Vec<(i64, i64)> = read_with!(peek, pool => sqlx::query_as(SQL).fetch_all(pool).await)
        .expect("read enrollments");
    rows.into_iter().collect()
}

/// Client `client`'s share of `ids` when `clients` split them: every `clients`-th, from its own.
pub(crate) fn share_of(ids: &[i64], client: usize, clients: usize) -> Vec<i64> {
    ids.iter().copied().skip(client).step_by(clients).collect()
}

pub(crate) async fn assert_verify_passes(store: &Store) {
    let violations = store.verify().await.expect("verify runs");
    assert!(
        violations.is_empty(),
        "integrity violations: {violations:?}"
    );
}

pub(crate) async fn create_students(
    client: &mut StudentServiceClient<Channel>,
    count: usize,
) -> Vec<i64> {
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        let request = CreateStudentRequest {
            name: format!("Student {i}"),
            email: format!("s{i}@example.com"),
            request_id: String::new(),
        };
        ids.push(
            client
                .create_student(request)
                .await
                .expect("CreateStudent")
                .into_inner()
                .id,
        );
    }
    ids
}

/// Creates courses `PREFIX-0`, `PREFIX-1`, ... with `capacity` seats and returns their ids.
pub(crate) async fn create_courses(
    client: &mut CourseServiceClient<Channel>,
    prefix: &str,
    capacity: i32,
    count: usize,
) -> Vec<i64> {
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        let request = CreateCourseRequest {
            code: format!("{prefix}-{i}"),
            title: format!("Course {i}"),
            capacity,
            request_id: String::new(),
        };
        ids.push(
            client
                .create_course(request)
                .await
                .expect("CreateCourse")
                .into_inner()
                .id,
        );
    }
    ids
}

/// What one client saw; it alone touches its students' pairs, one call at a time, so the last
/// acknowledged call on a pair says whether it is enrolled.
#[derive(Default)]
struct History {
    enrolled: HashMap<(i64, i64), bool>,
    outcomes: BTreeMap<String, u64>,
    contradictions: Vec<String>,
}

impl History {
    fn record(&mut self, pair: (i64, i64), assign: bool, result: Result<bool, tonic::Status>) {
        let was = self.enrolled.get(&pair).copied().unwrap_or(false);
        let outcome = match (&result, assign) {
            (Ok(created), true) => {
                if *created == was {
                    self.contradictions
                        .push(format!("{pair:?}: created={created} but enrolled={was}"));
                }
                self.enrolled.insert(pair, true);
                "assign OK"
            }
            (Ok(_), false) => {
                if !was {
                    self.contradictions
                        .push(format!("{pair:?}: unassigned but was not enrolled"));
                }
                self.enrolled.insert(pair, false);
                "unassign OK"
            }
            (Err(s), true) if s.code() == Code::FailedPrecondition => {
                if was {
                    self.contradictions
                        .push(format!("{pair:?}: COURSE_FULL but already enrolled"));
                }
                "assign FAILED_PRECONDITION"
            }
            (Err(s), false) if s.code() == Code::NotFound => {
                if was {
                    self.contradictions
                        .push(format!("{pair:?}: NOT_ENROLLED but enrolled"));
                }
                "unassign NOT_FOUND"
            }
            // Nothing was written: a conflicting change rolled the statement back.
            (Err(s), _) if s.code() == Code::Aborted => "ABORTED",
            (Err(s), _) => {
                self.contradictions.push(format!(
                    "{pair:?}: unexpected {:?}: {}",
                    s.code(),
                    s.message()
                ));
                "unexpected"
            }
        };
        *self.outcomes.entry(outcome.to_owned()).or_insert(0) += 1;
    }
}

/// Racing clients split across replicas (two processes on PostgreSQL; one process and 64
/// writers on SQLite, whose writers share one file) assign and unassign over a few small courses.
/// Afterwards the database must hold exactly what the acknowledged calls say, and no course may
/// be over capacity.
async fn racing_replicas_keep_every_promise(backend: Backend) {
    const COURSES: usize = 4;
    const CAPACITY: i32 = 5;
    const STUDENTS: usize = 64;
    let (replicas, clients) = match backend {
        Backend::Sqlite => (1, 64),
        Backend::Postgres { .. } => (2, 16),
    };
    let operations = env_number("RACE_OPERATIONS", 10_000) as usize;
    let database = TestDatabase::create(&backend).await;
    let mut servers = Vec::new();
    for _ in 0..replicas {
        servers.push(ServerProcess::start(&database.url, &[]).await);
    }
    let (mut students, mut courses) = servers[0].clients().await;
    let student_ids = create_students(&mut students, STUDENTS).await;
    let course_ids = create_courses(&mut courses, "RACE", CAPACITY, COURSES).await;

    let started = Instant::now();
    let mut workers = Vec::new();
    for client in 0..clients {
        let mine = share_of(&student_ids, client, clients);
        let course_ids = course_ids.clone();
        let mut api = StudentServiceClient::new(servers[client % replicas].channel().await);
        workers.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(client as u64);
            let mut history = History::default();
            for _ in 0..operations / clients {
                let pair = (
                    mine[rng.usize(..mine.len())],
                    course_ids[rng.usize(..course_ids.len())],
                );
                let assign = rng.bool();
                let result = if assign {
                    let request = AssignCourseRequest {
                        student_id: pair.0,
                        course_id: pair.1,
                    };
                    api.assign_course(request)
                        .await
                        .map(|r| r.into_inner().created)
                } else {
                    let request = UnassignCourseRequest {
                        student_id: pair.0,
                        course_id: pair.1,
                    };
                    api.unassign_course(request).await.map(|_| false)
                };
                history.record(pair, assign, result);
            }
            history
        }));
    }
    let mut expected = HashSet::new();
    let mut outcomes = BTreeMap::new();
    let mut contradictions = Vec::new();
    for worker in workers {
        let history = worker.await.expect("client task");
        expected.extend(
            history
                .enrolled
                .into_iter()
                .filter(|(_, on)| *on)
                .map(|(pair, _)| pair),
        );
        for (outcome, n) in history.outcomes {
            *outcomes.entry(outcome).or_insert(0) += n;
        }
        contradictions.extend(history.contradictions);
    }
    let elapsed = started.elapsed();

    let store = Store::connect(&database.url, &pool_settings())
        .await
        .expect("connect");
    let stored = stored_pairs(&Peek::open(&database.url).await).await;
    eprintln!(
        "races: {} calls by {clients} clients over {replicas} replica(s) in {elapsed:.1?}: {outcomes:?}; {} enrolled",
        operations / clients * clients,
        stored.len()
    );
    assert!(
        contradictions.is_empty(),
        "history contradictions: {contradictions:#?}"
    );
    assert_eq!(
        stored, expected,
        "the database differs from the acknowledged history"
    );
    for course in &course_ids {
        let seated = stored.iter().filter(|(_, c)| c == course).count();
        assert!(
            seated <= CAPACITY as usize,
            "course {course} holds {seated}"
        );
    }
    assert_verify_passes(&store).await;
    store.close().await;
}

/// `kill -9` under AssignCourse load, then a restart on the same database: every enrollment the
/// server acknowledged before it died is there, and the data passes `verify`.
async fn a_crash_loses_no_acknowledged_enrollment(backend: Backend) {
    const CLIENTS: usize = 8;
    const STUDENTS: usize = 100;
    const COURSES: usize = 50;
    let database = TestDatabase::create(&backend).await;
    let server = ServerProcess::start(&database.url, &[]).await;
    let (mut students, mut courses) = server.clients().await;
    let student_ids = create_students(&mut students, STUDENTS).await;
    let course_ids = create_courses(&mut courses, "C", 0, COURSES).await;
    let pairs: Arc<Vec<(i64, i64)>> = Arc::new(
        course_ids
            .iter()
            .flat_map(|&c| student_ids.iter().map(move |&s| (s, c)))
            .collect(),
    );

    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for client in 0..CLIENTS {
        let (pairs, stop) = (pairs.clone(), stop.clone());
        let mut api = StudentServiceClient::new(server.channel().await);
        workers.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for &(student_id, course_id) in pairs.iter().skip(client).step_by(CLIENTS) {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match api
                    .assign_course(AssignCourseRequest {
                        student_id,
                        course_id,
                    })
                    .await
                {
                    Ok(_) => acknowledged.push((student_id, course_id)),
                    Err(_) => break, // the server is gone
                }
            }
            acknowledged
        }));
    }
    tokio::time::sleep(Duration::from_millis(env_number("CRASH_LOAD_MS", 1_500))).await;
    server.kill().await;
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    for worker in workers {
        acknowledged.extend(worker.await.expect("client task"));
    }

    let restarted = ServerProcess::start(&database.url, &[]).await;
    let store = Store::connect(&database.url, &pool_settings())
        .await
        .expect("connect");
    let stored = stored_pairs(&Peek::open(&database.url).await).await;
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|p| !stored.contains(p))
        .collect();
    eprintln!(
        "crash: {} enrollments acknowledged before kill -9, {} stored after restart, {} lost",
        acknowledged.len(),
        stored.len(),
        lost.len()
    );
    assert!(!acknowledged.is_empty(), "the load ran before the kill");
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    assert_verify_passes(&store).await;
    let (mut students, _) = restarted.clients().await;
    let more = students
        .assign_course(AssignCourseRequest {
            student_id: student_ids[0],
            course_id: course_ids[0],
        })
        .await;
    assert!(more.is_ok(), "the restarted server serves: {more:?}");
    store.close().await;
}

/// How a call failed: its code, and the ErrorInfo reason when the service itself answered (a
/// status without one comes from the client's transport, e.g. a connection closing under it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Refusal {
    code: String,
    reason: Option<String>,
}

impl Refusal {
    fn of(status: &tonic::Status) -> Refusal {
        use tonic_types::StatusExt;
        Refusal {
            code: format!("{:?}", status.code()),
            reason: status
                .get_error_details()
                .error_info()
                .map(|info| info.reason.clone()),
        }
    }

    /// What a server going away may answer: transport outcomes of the client (any code, no
    /// ErrorInfo: tonic reports a stream the closing connection reset as INTERNAL, CANCELLED or
    /// UNAVAILABLE depending on the HTTP/2 reason), or the service's own UNAVAILABLE.
    fn is_shutdown(&self) -> bool {
        match &self.reason {
            None => true,
            Some(reason) => self.code == "Unavailable" && reason == "DATABASE_UNAVAILABLE",
        }
    }
}

/// SIGTERM under load: health turns NOT_SERVING, every call sent before the signal completes OK,
/// the process exits 0 within the drain timeout, and the data passes `verify`. Calls sent after
/// the signal meet a closing connection: the client reports transport outcomes, never an error
/// of the service's other than UNAVAILABLE.
async fn sigterm_turns_health_off_finishes_calls_in_flight_and_exits(backend: Backend) {
    const CLIENTS: usize = 16;
    const DRAIN: Duration = Duration::from_secs(5);
    let database = TestDatabase::create(&backend).await;
    let server = ServerProcess::start(&database.url, &[("DRAIN_TIMEOUT", "5s")]).await;
    let (mut students, mut courses) = server.clients().await;
    let student_ids = create_students(&mut students, 200).await;
    let course = CreateCourseRequest {
        code: "BUSY-1".into(),
        title: "Busy".into(),
        capacity: 0,
        request_id: String::new(),
    };
    let course_id = courses
        .create_course(course)
        .await
        .expect("CreateCourse")
        .into_inner()
        .id;
    let mut watch = HealthClient::new(server.channel().await)
        .watch(HealthCheckRequest::default())
        .await
        .expect("Watch")
        .into_inner();
    let first = watch.next().await.expect("a status").expect("ok");
    assert_eq!(first.status, ServingStatus::Serving as i32);

    let mut workers = Vec::new();
    for client in 0..CLIENTS {
        let mine = share_of(&student_ids, client, CLIENTS);
        let mut api = StudentServiceClient::new(server.channel().await);
        workers.push(tokio::spawn(async move {
            let mut calls = Vec::new();
            for student_id in mine.into_iter().cycle() {
                let sent = Instant::now();
                let result = api
                    .assign_course(AssignCourseRequest {
                        student_id,
                        course_id,
                    })
                    .await;
                let failed = result.as_ref().err().map(Refusal::of);
                calls.push((sent, failed.clone()));
                if failed.is_some() {
                    break; // the server is going away
                }
            }
            calls
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let signalled = Instant::now();
    server.terminate();
    let mut statuses = Vec::new();
    while let Ok(Some(Ok(update))) = tokio::time::timeout(DRAIN, watch.next()).await {
        statuses.push(update.status);
    }
    let exit = server.wait(DRAIN + Duration::from_secs(5)).await;
    let exited_after = signalled.elapsed();

    let mut before = 0;
    let mut failed_before = Vec::new();
    let mut refused_after = BTreeMap::new();
    for worker in workers {
        for (sent, failed) in worker.await.expect("client task") {
            if sent < signalled {
                before += 1;
                if let Some(refusal) = failed {
                    failed_before.push(refusal);
                }
            } else if let Some(refusal) = failed {
                *refused_after.entry(refusal).or_insert(0) += 1;
            }
        }
    }
    eprintln!(
        "sigterm: {before} calls sent before the signal, {} failed; refused after: {refused_after:?}; exit {exit} after {exited_after:.1?}",
        failed_before.len()
    );
    assert!(exit.success(), "exit status {exit}");
    assert!(
        exited_after < DRAIN,
        "took {exited_after:?}, the drain timeout is {DRAIN:?}"
    );
    assert!(
        statuses.contains(&(ServingStatus::NotServing as i32)),
        "health updates: {statuses:?}"
    );
    assert!(
        failed_before.is_empty(),
        "calls in flight failed: {failed_before:?}"
    );
    assert!(
        refused_after.keys().all(Refusal::is_shutdown),
        "refused with {refused_after:?}"
    );
    let store = Store::connect(&database.url, &pool_settings())
        .await
        .expect("connect");
    assert_verify_passes(&store).await;
    store.close().await;
}
