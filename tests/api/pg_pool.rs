//! PostgreSQL's pool under its limits, through the real binary: connections are replaced as
//! they reach their lifetime while calls go on, and none of those calls fails.

use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};
use student_service::{api::pb, telemetry::catalogue::DB_POOL_CONNECTIONS_CLOSED};

use crate::{
    helpers::{Backend, TestDatabase},
    metrics::{scrape, value},
    process::{ServerProcess, create_ada, free_address},
};

/// The backends of the server's sessions on the test's database: its pool's, its health
/// probe's and its event sequencer's (the last two are not the pool's, and live on).
async fn server_backends(url: &str) -> Vec<i32> {
    let mut admin = PgConnection::connect(url).await.expect("connect");
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'student-service'",
    )
    .fetch_all(&mut admin)
    .await
    .expect("pg_stat_activity")
}

/// Four callers for 1.5 s against a pool whose connections live 300 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(test_postgres),
    ignore = "needs PostgreSQL: set TEST_DATABASE_URL (README)"
)]
async fn calls_keep_succeeding_while_connections_past_their_lifetime_are_replaced() {
    let database = TestDatabase::create(&Backend::postgres()).await;
    let metrics_address = free_address();
    let metrics = metrics_address.to_string();
    let env = [
        ("METRICS_LISTEN", metrics.as_str()),
        ("DATABASE_MAX_LIFETIME", "300ms"),
        ("DATABASE_IDLE_TIMEOUT", "10m"),
    ];
    let server = ServerProcess::start(&database.url, &env).await;
    let (mut students, mut courses) = server.clients().await;
    let ada = create_ada(&mut students).await;
    let course = courses
        .create_course(pb::CreateCourseRequest {
            code: "LIFE".into(),
            title: "Lifetimes".into(),
            capacity: 0,
            request_id: String::new(),
        })
        .await
        .expect("CreateCourse")
        .into_inner();
    let before = server_backends(&database.url).await;

    let until = Instant::now() + Duration::from_millis(1500);
    let callers: Vec<_> = (0..4)
        .map(|caller| {
            let mut students = students.clone();
            let (student_id, course_id) = (ada.id, course.id);
            tokio::spawn(async move {
                let mut calls = 0;
                while Instant::now() < until {
                    if caller % 2 == 0 {
                        let request = pb::AssignCourseRequest {
                            student_id,
                            course_id,
                        };
                        students.assign_course(request).await?;
                    } else {
                        let request = pb::ListCoursesRequest {
                            student_id,
                            ..Default::default()
                        };
                        students.list_courses(request).await?;
                    }
                    calls += 1;
                }
                Ok::<_, tonic::Status>(calls)
            })
        })
        .collect();
    let mut calls = 0;
    for caller in callers {
        calls += caller
            .await
            .expect("the caller")
            .expect("every call succeeds");
    }
    let after = server_backends(&database.url).await;
    let scraped = scrape(metrics_address).await;
    server.kill().await;

    assert!(calls > 100, "{calls} calls");
    let lifetime = value(
        &scraped,
        DB_POOL_CONNECTIONS_CLOSED.name,
        &[("reason", "lifetime")],
    );
    assert!(lifetime >= 3.0, "closed for their lifetime: {lifetime}");
    let broken = value(
        &scraped,
        DB_POOL_CONNECTIONS_CLOSED.name,
        &[("reason", "broken")],
    );
    assert_eq!(broken, 0.0);
    assert!(
        before.iter().any(|pid| !after.contains(pid)),
        "no backend replaced: {before:?} -> {after:?}"
    );
}
