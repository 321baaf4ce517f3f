//! Test harness: the real server on 127.0.0.1:0 over a fresh database, called with the generated
//! tonic clients over real HTTP/2.
//!
//! Every scenario runs on SQLite (a file in a temporary directory) and on PostgreSQL (a fresh
//! database, dropped afterwards) when `TEST_DATABASE_URL` names a server to create them on.
//! Without it at build time the PostgreSQL tests are marked ignored (`build.rs` sets the
//! `test_postgres` cfg), so the summary counts them as ignored, never as passed.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use sqlx::{
    Connection, Executor, PgConnection, PgPool, SqlitePool, postgres::PgPoolOptions,
    sqlite::SqlitePoolOptions,
};
use student_service::{
    api::pb::{
        self, course_service_client::CourseServiceClient,
        student_service_client::StudentServiceClient,
    },
    app::{self, AppSettings, Migrations, Running},
    server::ServerSettings,
    store::{PoolSettings, Store},
};
use tonic::{Code, Status, transport::Channel};
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;

/// Declares `sqlite::NAME` and `postgres::NAME` tests for each `async fn NAME(Backend)` given.
/// The PostgreSQL ones are ignored (with the reason) unless the build saw `TEST_DATABASE_URL`;
/// `needs_nats_server:` before the names also ignores both unless the build found `nats-server`.
macro_rules! on_both_backends {
    (needs_nats_server: $($name:ident),* $(,)?) => {
        $crate::helpers::on_both_backends!(@ test_nats_server,
            "needs nats-server (Debian package nats-server) on PATH when the tests are built",
            "needs PostgreSQL (TEST_DATABASE_URL) and nats-server on PATH when the tests are built";
            $($name),*);
    };
    ($($name:ident),* $(,)?) => {
        $crate::helpers::on_both_backends!(@ all(), "",
            "needs PostgreSQL: set TEST_DATABASE_URL (README)"; $($name),*);
    };
    (@ $needs:meta, $why_sqlite:literal, $why_postgres:literal; $($name:ident),*) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(not($needs), ignore = $why_sqlite)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(not(all(test_postgres, $needs)), ignore = $why_postgres)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::postgres()).await
                }
            )*
        }
    };
}
pub(crate) use on_both_backends;

/// Runs the same read on a [`Peek`] of either kind: the expression is compiled once per backend,
/// with `$pool` the sqlx pool.
macro_rules! read_with {
    ($peek:expr, $pool:ident => $body:expr) => {
        match $peek {
            $crate::helpers::Peek::Sqlite($pool) => $body,
            $crate::helpers::Peek::Postgres($pool) => $body,
        }
    };
}
pub(crate) use read_with;

/// A test's own look at its database, beside the server, to check what it holds: plain sqlx
/// pools, apart from the server's store and whatever it does with its connections.
pub(crate) enum Peek {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Peek {
    pub(crate) async fn open(url: &str) -> Peek {
        if url.starts_with("sqlite:") {
            let pool = SqlitePoolOptions::new().max_connections(2).connect(url);
            Peek::Sqlite(pool.await.expect("open the SQLite database to check it"))
        } else {
            let pool = PgPoolOptions::new().max_connections(2).connect(url);
            Peek::Postgres(
                pool.await
                    .expect("connect to PostgreSQL to check the database"),
            )
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Backend {
    Sqlite,
    /// The server on which to create a fresh database per test.
    Postgres {
        admin_url: String,
    },
}

impl Backend {
    /// PostgreSQL from `TEST_DATABASE_URL`. The tests that call this are ignored unless the
    /// variable was set at build time; one run anyway (`--include-ignored`) without it fails.
    pub(crate) fn postgres() -> Backend {
        match std::env::var("TEST_DATABASE_URL") {
            Ok(admin_url) if !admin_url.is_empty() => Backend::Postgres { admin_url },
            _ => panic!("this test needs PostgreSQL: set TEST_DATABASE_URL=postgres://..."),
        }
    }
}

/// A database that exists for one test and is removed when dropped.
pub(crate) struct TestDatabase {
    pub(crate) url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    Directory(#[allow(dead_code)] tempfile::TempDir),
    DropPostgres { admin_url: String, name: String },
}

static DATABASES: AtomicU32 = AtomicU32::new(0);

impl TestDatabase {
    pub(crate) async fn create(backend: &Backend) -> TestDatabase {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temporary directory");
                let url = format!("sqlite:{}", dir.path().join("school.db").display());
                TestDatabase {
                    url,
                    cleanup: Cleanup::Directory(dir),
                }
            }
            Backend::Postgres { admin_url } => {
                let name = format!(
                    "school_test_{}_{}",
                    std::process::id(),
                    DATABASES.fetch_add(1, Ordering::Relaxed)
                );
                let mut admin = PgConnection::connect(admin_url)
                    .await
                    .expect("TEST_DATABASE_URL must reach a PostgreSQL server");
                admin
                    .execute(sqlx::AssertSqlSafe(format!(
                        r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#
                    )))
                    .await
                    .expect("drop stale test database");
                admin
                    .execute(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
                    .await
                    .expect("create test database");
                let url = with_database(admin_url, &name);
                TestDatabase {
                    url,
                    cleanup: Cleanup::DropPostgres {
                        admin_url: admin_url.clone(),
                        name,
                    },
                }
            }
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Cleanup::DropPostgres { admin_url, name } = &self.cleanup else {
            return;
        };
        let (admin_url, name) = (admin_url.clone(), name.clone());
        let drop_sql = format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#);
        // Drop runs inside the test's runtime, where blocking on another future is not allowed,
        // and also while a failed test unwinds: a thread of its own serves both.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let mut admin = PgConnection::connect(&admin_url).await?;
                admin.execute(sqlx::AssertSqlSafe(drop_sql)).await.map(drop)
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {name}: {dropped:?}");
        }
    }
}

/// `postgres://user@host:port/other?x` -> `postgres://user@host:port/NAME?x`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut result = format!("{}/{name}", &base[..path_start]);
    if let Some(query) = query {
        result.push('?');
        result.push_str(query);
    }
    result
}

/// `postgres://user@host:port/db` -> `postgres://user@HOST_PORT/db`.
pub(crate) fn with_host(url: &str, host_port: &str) -> String {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let authority_end = url[authority_start..]
        .find('/')
        .map_or(url.len(), |i| authority_start + i);
    let user_end = url[authority_start..authority_end]
        .rfind('@')
        .map_or(authority_start, |i| authority_start + i + 1);
    format!("{}{host_port}{}", &url[..user_end], &url[authority_end..])
}

pub(crate) fn pool_settings() -> PoolSettings {
    PoolSettings {
        max_connections: 8,
        acquire_timeout: Duration::from_secs(3),
        sqlite_direct_reads: true,
        max_lifetime: Some(Duration::from_secs(30 * 60)),
        idle_timeout: Some(Duration::from_secs(10 * 60)),
        replica: None,
    }
}

/// A running server and clients connected to it.
pub(crate) struct TestApp {
    pub(crate) students: StudentServiceClient<Channel>,
    pub(crate) courses: CourseServiceClient<Channel>,
    pub(crate) health: HealthClient<Channel>,
    pub(crate) channel: Channel,
    /// Where the server listens, for clients other than the generated ones.
    pub(crate) address: SocketAddr,
    /// A store of the test's own on the same database, for `verify` and the event feed.
    pub(crate) store: Store,
    /// Plain SQL on the same database, to check what it holds.
    pub(crate) peek: Peek,
    running: Option<Running>,
    pub(crate) database: TestDatabase,
}

/// Starts the server on 127.0.0.1:0 over `url` the way `main` does (`app::start`: claim,
/// migrate, serve, with every background task), without metrics (one recorder per process).
pub(crate) async fn start_app(url: &str, server: ServerSettings, pool: PoolSettings) -> Running {
    let settings = AppSettings {
        database_url: url.to_owned(),
        pool,
        migrations: Migrations::Auto,
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        metrics_listen: None,
        server,
    };
    app::start(settings).await.expect("the server starts")
}

/// Shuts `running` down as SIGTERM does and waits until it has stopped.
pub(crate) async fn stop_app(running: Running) {
    running.shutdown();
    tokio::time::timeout(Duration::from_secs(15), running.join())
        .await
        .expect("server stops within the drain timeout")
        .expect("server ran and stopped cleanly");
}

impl TestApp {
    pub(crate) async fn spawn(backend: Backend) -> TestApp {
        TestApp::spawn_on(
            TestDatabase::create(&backend).await,
            ServerSettings::default(),
        )
        .await
    }

    /// Starts the server the way `main` does: migrate, bind, serve.
    pub(crate) async fn spawn_on(database: TestDatabase, settings: ServerSettings) -> TestApp {
        let url = database.url.clone();
        TestApp::spawn_serving(database, &url, settings).await
    }

    /// Like `spawn_on`, with the server reaching PostgreSQL through `host_port` (a proxy).
    pub(crate) async fn spawn_via(
        database: TestDatabase,
        host_port: &str,
        settings: ServerSettings,
    ) -> TestApp {
        let url = with_host(&database.url, host_port);
        TestApp::spawn_serving(database, &url, settings).await
    }

    /// Like `spawn_on`, with a server pool of its own size and acquire timeout.
    pub(crate) async fn spawn_with_pool(
        database: TestDatabase,
        settings: ServerSettings,
        pool: PoolSettings,
    ) -> TestApp {
        let url = database.url.clone();
        TestApp::spawn_serving_with(database, &url, settings, pool).await
    }

    async fn spawn_serving(
        database: TestDatabase,
        server_url: &str,
        settings: ServerSettings,
    ) -> TestApp {
        TestApp::spawn_serving_with(database, server_url, settings, pool_settings()).await
    }

    async fn spawn_serving_with(
        database: TestDatabase,
        server_url: &str,
        settings: ServerSettings,
        pool: PoolSettings,
    ) -> TestApp {
        let running = start_app(server_url, settings, pool).await;
        let address = running.address();
        let channel = Channel::from_shared(format!("http://{address}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect to the server");
        let check_store = Store::connect(&database.url, &pool_settings())
            .await
            .expect("connect");
        TestApp {
            students: StudentServiceClient::new(channel.clone()),
            courses: CourseServiceClient::new(channel.clone()),
            health: HealthClient::new(channel.clone()),
            channel,
            address,
            store: check_store,
            peek: Peek::open(&database.url).await,
            running: Some(running),
            database,
        }
    }

    /// Shuts the server down gracefully, proving that it stops, and hands back its database.
    pub(crate) async fn stop(mut self) -> TestDatabase {
        self.shutdown_server().await;
        self.store.close().await;
        let TestApp { database, .. } = self;
        database
    }

    pub(crate) async fn shutdown_server(&mut self) {
        if let Some(running) = self.running.take() {
            stop_app(running).await;
        }
    }

    pub(crate) async fn create_student(&self, name: &str, email: &str) -> pb::Student {
        self.students
            .clone()
            .create_student(pb::CreateStudentRequest {
                name: name.into(),
                email: email.into(),
                request_id: String::new(),
            })
            .await
            .expect("CreateStudent")
            .into_inner()
    }

    /// Creates students `S0`, `S1`, ... (emails `s0@example.com`, ...) and returns their ids.
    pub(crate) async fn create_students(&self, count: usize) -> Vec<i64> {
        let mut ids = Vec::with_capacity(count);
        for i in 0..count {
            ids.push(
                self.create_student(&format!("S{i}"), &format!("s{i}@example.com"))
                    .await
                    .id,
            );
        }
        ids
    }

    pub(crate) async fn create_course(&self, code: &str, title: &str, capacity: i32) -> pb::Course {
        self.courses
            .clone()
            .create_course(pb::CreateCourseRequest {
                code: code.into(),
                title: title.into(),
                capacity,
                request_id: String::new(),
            })
            .await
            .expect("CreateCourse")
            .into_inner()
    }

    pub(crate) async fn assign(
        &self,
        student_id: i64,
        course_id: i64,
    ) -> Result<pb::AssignCourseResponse, Status> {
        self.students
            .clone()
            .assign_course(pb::AssignCourseRequest {
                student_id,
                course_id,
            })
            .await
            .map(tonic::Response::into_inner)
    }

    pub(crate) async fn list_courses(
        &self,
        student_id: i64,
        page_size: i32,
        page_token: &str,
    ) -> Result<pb::ListCoursesResponse, Status> {
        self.students
            .clone()
            .list_courses(pb::ListCoursesRequest {
                student_id,
                page_size,
                page_token: page_token.into(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    pub(crate) async fn get_course(&self, course_id: i64) -> pb::Course {
        self.courses
            .clone()
            .get_course(pb::GetCourseRequest { course_id })
            .await
            .expect("GetCourse")
            .into_inner()
    }

    /// Asserts the database passes every integrity check of `student-service verify`.
    pub(crate) async fn assert_integrity(&self) {
        let violations = self.store.verify().await.expect("verify runs");
        assert!(
            violations.is_empty(),
            "integrity violations: {violations:?}"
        );
    }

    /// The number of enrollment rows the database holds for a course.
    pub(crate) async fn enrollment_rows(&self, course_id: i64) -> i64 {
        const SQL: &str = "SELECT COUNT(*) FROM student_courses WHERE course_id = $1";
        read_with!(&self.peek, pool => sqlx::query_scalar(SQL)
            .bind(course_id)
            .fetch_one(pool)
            .await)
        .expect("count rows")
    }
}

/// Asserts a call failed with `code`, an ErrorInfo `reason`, and a message containing `message`.
#[track_caller]
pub(crate) fn assert_error<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: Code,
    reason: &str,
    message: &str,
) -> Status {
    let status = result.expect_err("the call should fail");
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    let details = status.get_error_details();
    let info = details
        .error_info()
        .expect("every error carries an ErrorInfo");
    assert_eq!(info.reason, reason, "unexpected reason: {status:?}");
    assert_eq!(info.domain, "school.v1");
    assert!(
        status.message().contains(message),
        "message {:?} should contain {message:?}",
        status.message()
    );
    status
}

/// The ErrorInfo reason of an error (empty when it has none).
pub(crate) fn error_reason(status: &Status) -> String {
    let details = status.get_error_details();
    details
        .error_info()
        .map(|info| info.reason.clone())
        .unwrap_or_default()
}

/// The value of `key` in the ErrorInfo metadata of an error (empty when absent).
pub(crate) fn error_metadata(status: &Status, key: &str) -> String {
    let details = status.get_error_details();
    let info = details
        .error_info()
        .expect("every error carries an ErrorInfo");
    info.metadata.get(key).cloned().unwrap_or_default()
}

/// The fields named by the BadRequest detail of an INVALID_ARGUMENT status.
pub(crate) fn violated_fields(status: &Status) -> Vec<String> {
    let details = status.get_error_details();
    let bad_request = details
        .bad_request()
        .expect("INVALID_ARGUMENT carries a BadRequest");
    bad_request
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect()
}
