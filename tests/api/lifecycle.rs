//! The service as operators see it: restarts, health, reflection, migrations, verify.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use sqlx::{Connection, Executor};
use student_service::{api::pb, server::ServerSettings};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
use tonic_reflection::pb::{v1, v1alpha};

use crate::{
    helpers::{Backend, TestApp, TestDatabase, assert_error, on_both_backends},
    proxy::Proxy,
};

on_both_backends!(
    data_survives_a_restart,
    health_is_serving_for_every_name_and_turns_not_serving_at_shutdown,
    reflection_v1_and_v1alpha_describe_our_services,
    an_open_reflection_stream_takes_no_call_slot,
    migrations_apply_once,
);

async fn data_survives_a_restart(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let ada = app.create_student("Ada", "ada@example.com").await;
    let course = app.create_course("CS-101", "Engines", 2).await;
    let enrollment = app
        .assign(ada.id, course.id)
        .await
        .expect("assign")
        .enrollment;
    let database = app.stop().await;

    let app = TestApp::spawn_on(database, ServerSettings::default()).await;

    let again = app.assign(ada.id, course.id).await.expect("assign again");
    assert!(!again.created, "the enrollment survived the restart");
    assert_eq!(again.enrollment, enrollment);
    assert_eq!(app.get_course(course.id).await.enrolled, 1);
    app.stop().await;
}

fn check(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.into(),
    }
}

async fn health_is_serving_for_every_name_and_turns_not_serving_at_shutdown(backend: Backend) {
    let mut app = TestApp::spawn(backend).await;
    let mut health = app.health.clone();
    for service in ["", "school.v1.StudentService", "school.v1.CourseService"] {
        let status = health
            .check(check(service))
            .await
            .expect("Check")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let unknown = health.check(check("no.such.Service")).await;
    assert_eq!(unknown.expect_err("unknown service").code(), Code::NotFound);
    let mut watch = health.watch(check("")).await.expect("Watch").into_inner();
    let first = watch.next().await.expect("a first status").expect("status");
    assert_eq!(first.status, ServingStatus::Serving as i32);

    app.shutdown_server().await;

    let mut statuses = Vec::new();
    while let Ok(Some(Ok(update))) =
        tokio::time::timeout(Duration::from_secs(5), watch.next()).await
    {
        statuses.push(update.status);
    }
    assert!(
        statuses.contains(&(ServingStatus::NotServing as i32)),
        "the watcher saw NOT_SERVING before the stream ended: {statuses:?}"
    );
    app.stop().await;
}

async fn reflection_v1_and_v1alpha_describe_our_services(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    let mut v1_client =
        v1::server_reflection_client::ServerReflectionClient::new(app.channel.clone());
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut responses = v1_client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("v1 reflection")
        .into_inner();
    let v1_services = match responses
        .next()
        .await
        .expect("a response")
        .expect("ok")
        .message_response
    {
        Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
        }
        other => panic!("unexpected v1 response {other:?}"),
    };

    let mut alpha_client =
        v1alpha::server_reflection_client::ServerReflectionClient::new(app.channel.clone());
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "school.v1.StudentService.AssignCourse".into(),
            ),
        ),
    };
    let mut responses = alpha_client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("v1alpha reflection")
        .into_inner();
    let files = match responses
        .next()
        .await
        .expect("a response")
        .expect("ok")
        .message_response
    {
        Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(
            files,
        )) => files.file_descriptor_proto,
        other => panic!("unexpected v1alpha response {other:?}"),
    };

    for service in [
        "school.v1.StudentService",
        "school.v1.CourseService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            v1_services.iter().any(|s| s == service),
            "{service} missing from {v1_services:?}"
        );
    }
    let names: Vec<String> = files
        .iter()
        .map(|bytes| {
            prost::Message::decode(bytes.as_slice())
                .map(|f: prost_types::FileDescriptorProto| f.name().to_owned())
        })
        .collect::<Result<_, _>>()
        .expect("descriptors decode");
    assert!(
        names.iter().any(|n| n == "school/v1/student_service.proto"),
        "{names:?}"
    );
    app.stop().await;
}

/// The google.rpc types our errors carry are served under googleapis' file names, by both
/// reflection versions, and the bare names tonic-types uses are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_details_are_served_under_their_canonical_names() {
    use v1::server_reflection_request::MessageRequest as V1Request;
    use v1alpha::server_reflection_request::MessageRequest as AlphaRequest;
    let app = TestApp::spawn(Backend::Sqlite).await;
    let by_symbol = |symbol: &str| V1Request::FileContainingSymbol(symbol.into());
    for (symbol, file) in [
        ("google.rpc.ErrorInfo", "google/rpc/error_details.proto"),
        ("google.rpc.BadRequest", "google/rpc/error_details.proto"),
        ("google.rpc.Status", "google/rpc/status.proto"),
    ] {
        let v1_files = reflect_v1(&app, by_symbol(symbol))
            .await
            .expect("v1 finds it");
        assert_eq!(v1_files.first().map(String::as_str), Some(file), "{symbol}");
        let request = AlphaRequest::FileContainingSymbol(symbol.into());
        let alpha_files = reflect_v1alpha(&app, request)
            .await
            .expect("v1alpha finds it");
        assert_eq!(
            alpha_files.first().map(String::as_str),
            Some(file),
            "{symbol}"
        );
    }
    let canonical = reflect_v1(
        &app,
        V1Request::FileByFilename("google/rpc/status.proto".into()),
    )
    .await;
    assert!(canonical.is_ok(), "{canonical:?}");
    for bare in ["status.proto", "error_details.proto"] {
        let found = reflect_v1(&app, V1Request::FileByFilename(bare.into())).await;
        assert!(found.is_err(), "{bare} is still served: {found:?}");
    }
    app.stop().await;
}

/// grpcurl keeps a reflection stream open beside each call it makes: with `--max-in-flight 1`
/// the call must still get the one slot.
async fn an_open_reflection_stream_takes_no_call_slot(backend: Backend) {
    let settings = ServerSettings {
        max_in_flight: 1,
        ..ServerSettings::default()
    };
    let app = TestApp::spawn_on(TestDatabase::create(&backend).await, settings).await;
    let (requests, receiver) = tokio::sync::mpsc::channel(1);
    let mut client =
        v1alpha::server_reflection_client::ServerReflectionClient::new(app.channel.clone());
    let list = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    requests.send(list).await.expect("queued");
    let mut responses = client
        .server_reflection_info(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .expect("v1alpha reflection")
        .into_inner();
    responses
        .next()
        .await
        .expect("a response")
        .expect("the services listed");

    // The reflection stream is still open (its request stream is): a call gets the slot.
    let ada = app.create_student("Ada", "ada@example.com").await;
    assert_eq!(ada.name, "Ada");
    drop(requests);
    app.stop().await;
}

/// The names of the files a v1 reflection request returns, or the error it answers with.
async fn reflect_v1(
    app: &TestApp,
    request: v1::server_reflection_request::MessageRequest,
) -> Result<Vec<String>, String> {
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(app.channel.clone());
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("v1 reflection")
        .into_inner();
    let response = responses
        .next()
        .await
        .expect("a response")
        .map_err(|status| status.to_string())?;
    match response.message_response {
        Some(v1::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) => {
            Ok(file_names(&files.file_descriptor_proto))
        }
        other => Err(format!("{other:?}")),
    }
}

/// Like `reflect_v1`, over v1alpha (which grpcurl 1.8 speaks).
async fn reflect_v1alpha(
    app: &TestApp,
    request: v1alpha::server_reflection_request::MessageRequest,
) -> Result<Vec<String>, String> {
    let mut client =
        v1alpha::server_reflection_client::ServerReflectionClient::new(app.channel.clone());
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("v1alpha reflection")
        .into_inner();
    let response = responses
        .next()
        .await
        .expect("a response")
        .map_err(|status| status.to_string())?;
    match response.message_response {
        Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(
            files,
        )) => Ok(file_names(&files.file_descriptor_proto)),
        other => Err(format!("{other:?}")),
    }
}

fn file_names(files: &[Vec<u8>]) -> Vec<String> {
    files
        .iter()
        .map(|bytes| {
            prost::Message::decode(bytes.as_slice())
                .map(|f: prost_types::FileDescriptorProto| f.name().to_owned())
                .expect("descriptors decode")
        })
        .collect()
}

async fn migrations_apply_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    let applied = app.store.migrate().await.expect("migrate again");

    assert!(applied.is_empty(), "nothing left to apply: {applied:?}");
    app.stop().await;
}

fn binary(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_student-service"))
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .expect("run student-service");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), printed)
}

#[tokio::test]
async fn the_migrate_and_verify_commands_report_what_they_did() {
    let database = TestDatabase::create(&Backend::Sqlite).await;
    let url = database.url.as_str();

    let (ok, missing) = binary(&["migrate", "--database-url", url]);
    assert!(!ok && missing.contains("does not exist"), "{missing}");
    let create = format!("{url}?mode=rwc");
    let (ok, first) = binary(&["migrate", "--database-url", &create]);
    assert!(ok && first.contains("applied 1 schema"), "{first}");
    let (ok, second) = binary(&["migrate", "--database-url", url]);
    assert!(ok && second.contains("up to date"), "{second}");
    let (ok, verified) = binary(&["verify", "--database-url", url]);
    assert!(
        ok && verified.contains("all integrity checks passed"),
        "{verified}"
    );

    // Break a rule behind the service's back: a count that disagrees with the rows.
    let pool = sqlx::SqlitePool::connect(url).await.expect("connect");
    sqlx::query("INSERT INTO courses (code, title, title_folded, capacity, enrolled, create_time) VALUES ('X', 'X', 'x', 0, 3, 0)")
        .execute(&pool)
        .await
        .expect("insert");
    pool.close().await;
    let (ok, broken) = binary(&["verify", "--database-url", url]);
    assert!(!ok, "verify must fail: {broken}");
    assert!(
        broken.contains("VIOLATION enrolled count: course 1 says 3 enrolled but has 0"),
        "{broken}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(test_postgres),
    ignore = "needs PostgreSQL: set TEST_DATABASE_URL (README)"
)]
async fn postgres_health_follows_the_database_and_calls_fail_fast_while_it_is_gone() {
    let backend = Backend::postgres();
    let database = TestDatabase::create(&backend).await;
    let target = postgres_address(&database.url).await;
    let proxy = Proxy::start(target).await;
    let settings = ServerSettings {
        health_interval: Duration::from_millis(200),
        ..ServerSettings::default()
    };
    let app = TestApp::spawn_via(database, &proxy.address.to_string(), settings).await;
    let ada = app.create_student("Ada", "ada@example.com").await;
    let mut health = app.health.clone();

    proxy.cut().await;
    let down = wait_for_health(&mut health, ServingStatus::NotServing).await;
    let started = Instant::now();
    let during = app
        .students
        .clone()
        .get_student(pb::GetStudentRequest { student_id: ada.id })
        .await;
    let failed_after = started.elapsed();
    proxy.restore();
    let up = wait_for_health(&mut health, ServingStatus::Serving).await;

    eprintln!(
        "outage: NOT_SERVING after {down:.1?}, calls failed after {failed_after:.1?}, SERVING again after {up:.1?}"
    );
    assert!(down < Duration::from_secs(2), "NOT_SERVING after {down:?}");
    assert_error(
        during,
        Code::Unavailable,
        "DATABASE_UNAVAILABLE",
        "unavailable",
    );
    assert!(
        failed_after < Duration::from_secs(5),
        "failed after {failed_after:?}"
    );
    assert!(up < Duration::from_secs(2), "SERVING again after {up:?}");
    let after = app
        .students
        .clone()
        .get_student(pb::GetStudentRequest { student_id: ada.id })
        .await;
    assert_eq!(
        after.expect("served again without a restart").into_inner(),
        ada
    );
    app.stop().await;
}

/// The database endpoint starts refusing writes, as when it moves to a standby (here by the
/// database's `default_transaction_read_only`, which refuses writes with the same SQLSTATE,
/// 25006, as a standby does): writes fail UNAVAILABLE DATABASE_READ_ONLY, never INTERNAL, and
/// health is NOT_SERVING until the database takes writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(test_postgres),
    ignore = "needs PostgreSQL: set TEST_DATABASE_URL (README)"
)]
async fn postgres_a_read_only_database_is_unavailable_and_not_serving_until_writable() {
    let database = TestDatabase::create(&Backend::postgres()).await;
    let settings = ServerSettings {
        health_interval: Duration::from_millis(100),
        ..ServerSettings::default()
    };
    let app = TestApp::spawn_on(database, settings).await;
    let mut health = app.health.clone();
    let mut admin = sqlx::PgConnection::connect(&app.database.url)
        .await
        .expect("connect");

    set_read_only(&mut admin, true).await;
    wait_for_health(&mut health, ServingStatus::NotServing).await;
    let started = Instant::now();
    let refused = loop {
        // The first call on a session that was ended fails as unavailable, and ends it.
        let answer = app
            .students
            .clone()
            .create_student(pb::CreateStudentRequest {
                name: "Ada".into(),
                email: "ada@example.com".into(),
                request_id: String::new(),
            })
            .await;
        let status = answer.expect_err("no write succeeds on a read-only database");
        if crate::helpers::error_reason(&status) != "DATABASE_UNAVAILABLE"
            || started.elapsed() > Duration::from_secs(5)
        {
            break status;
        }
    };
    assert_error(
        Err::<(), _>(refused),
        Code::Unavailable,
        "DATABASE_READ_ONLY",
        "read-only",
    );

    set_read_only(&mut admin, false).await;
    wait_for_health(&mut health, ServingStatus::Serving).await;
    let started = Instant::now();
    loop {
        let answer = app
            .students
            .clone()
            .create_student(pb::CreateStudentRequest {
                name: "Ada".into(),
                email: "ada@example.com".into(),
                request_id: String::new(),
            })
            .await;
        match answer {
            Ok(_) => break,
            Err(status) => assert!(
                started.elapsed() < Duration::from_secs(5),
                "writes do not come back: {status:?}"
            ),
        }
    }
    admin.close().await.expect("close");
    app.stop().await;
}

/// A failure of ours is logged with its cause, once, by the per-call layer, and the cause never
/// reaches the client: a write refused by a read-only PostgreSQL leaves the database's own words
/// in the server's log and none in the status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(test_postgres),
    ignore = "needs PostgreSQL: set TEST_DATABASE_URL (README)"
)]
async fn postgres_a_failure_is_logged_with_its_cause_which_the_client_never_sees() {
    let database = TestDatabase::create(&Backend::postgres()).await;
    let address = crate::process::free_address();
    let server = tokio::process::Command::new(env!("CARGO_BIN_EXE_student-service"))
        .env("DATABASE_URL", &database.url)
        .env("LISTEN_ADDR", address.to_string())
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start student-service");
    let channel = crate::process::connect_when_listening(address).await;
    let mut students = pb::student_service_client::StudentServiceClient::new(channel);
    let mut admin = sqlx::PgConnection::connect(&database.url)
        .await
        .expect("connect");
    set_read_only(&mut admin, true).await;
    let started = Instant::now();
    let refused = loop {
        let answer = students
            .create_student(pb::CreateStudentRequest {
                name: "Ada".into(),
                email: "ada@example.com".into(),
                request_id: String::new(),
            })
            .await;
        let status = answer.expect_err("no write succeeds on a read-only database");
        if crate::helpers::error_reason(&status) == "DATABASE_READ_ONLY" {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{status:?}");
    };
    assert!(
        !refused.message().contains("INSERT") && !refused.message().contains("transaction"),
        "the database's words stay in the server: {refused:?}"
    );
    admin.close().await.expect("close");

    let pid = server.id().expect("the server runs").to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status();
    assert!(sent.expect("kill").success());
    let output = tokio::time::timeout(Duration::from_secs(15), server.wait_with_output())
        .await
        .expect("the server exits")
        .expect("its output");
    let log = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("the database is read-only now"))
        .collect();
    assert!(
        lines
            .iter()
            .any(|line| line.contains("WARN") && line.contains("read-only transaction")),
        "the refusal is logged with the database's words:\n{log}"
    );
    eprintln!("{}", lines[0]);
}

/// Makes the database refuse writes (`on`) or take them again, as a standby and a primary do:
/// `default_transaction_read_only` refuses with the same SQLSTATE (25006). Sessions read it when
/// they start, so every other session is ended.
async fn set_read_only(admin: &mut sqlx::PgConnection, on: bool) {
    let value = if on { "on" } else { "off" };
    let alter = format!(
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET default_transaction_read_only = {value}', current_database()); END $$"
    );
    admin
        .execute(sqlx::AssertSqlSafe(alter))
        .await
        .expect("set default_transaction_read_only");
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .await
        .expect("terminate sessions");
}

pub(crate) async fn wait_for_health(
    health: &mut tonic_health::pb::health_client::HealthClient<tonic::transport::Channel>,
    wanted: ServingStatus,
) -> Duration {
    let started = Instant::now();
    loop {
        let status = health
            .check(check(""))
            .await
            .expect("health answers")
            .into_inner()
            .status;
        if status == wanted as i32 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "health never became {wanted:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn postgres_address(url: &str) -> std::net::SocketAddr {
    let options: sqlx::postgres::PgConnectOptions = url.parse().expect("a postgres URL");
    let host = format!("{}:{}", options.get_host(), options.get_port());
    tokio::net::lookup_host(host)
        .await
        .expect("resolve")
        .find(std::net::SocketAddr::is_ipv4)
        .expect("an IPv4 address")
}

/// SQLite's write-ahead log is checkpointed in the background while the server writes: the
/// enrollments reach the database file itself (which grows only when a checkpoint copies pages
/// into it) within moments, long before the WAL reaches the writer's own 10,000-page backstop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_write_ahead_log_is_checkpointed_in_the_background() {
    const STUDENTS: usize = 60;
    const COURSES: usize = 30;
    let app = TestApp::spawn(Backend::Sqlite).await;
    let students = app.create_students(STUDENTS).await;
    let mut courses = Vec::new();
    for i in 0..COURSES {
        courses.push(app.create_course(&format!("C-{i}"), "Open", 0).await.id);
    }
    let path = app.database.url.trim_start_matches("sqlite:").to_owned();
    let file_size = || std::fs::metadata(&path).map_or(0, |m| m.len());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = file_size();

    // 1,800 enrollments: about 60 KB of new rows and index entries, some 15 new pages.
    let writers: Vec<_> = courses
        .iter()
        .map(|&course_id| {
            let (mut client, students) = (app.students.clone(), students.clone());
            tokio::spawn(async move {
                for student_id in students {
                    client
                        .assign_course(pb::AssignCourseRequest {
                            student_id,
                            course_id,
                        })
                        .await
                        .expect("AssignCourse");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }

    let started = Instant::now();
    while file_size() <= before {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the database file stayed at {before} bytes: nothing was checkpointed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;
}
