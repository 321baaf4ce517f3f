//! One caller's trouble stays its own: calls queued behind a lock and event watchers catching
//! up may slow each other, but never take health down or starve unrelated calls of a database
//! connection. Readiness means "the database answers", not "the pool has a free connection".

use std::time::{Duration, Instant};

use sqlx::{Connection, Executor, PgConnection};
use student_service::{api::pb, server::ServerSettings, store::PoolSettings};
use tokio_stream::StreamExt;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

use super::WriteBlock;
use crate::helpers::{Backend, TestApp, TestDatabase, on_both_backends, pool_settings};

on_both_backends!(health_stays_serving_while_enrollments_queue_behind_a_lock);

/// A registration rush on one course: ten enrollments wait on its row lock (on SQLite, on the
/// write lock) and hold every pooled connection. The database still answers, so health must
/// stay SERVING, as watched by a load balancer's probe.
async fn health_stays_serving_while_enrollments_queue_behind_a_lock(backend: Backend) {
    let settings = ServerSettings {
        health_interval: Duration::from_millis(100),
        ..ServerSettings::default()
    };
    let pool = PoolSettings {
        max_connections: 2,
        acquire_timeout: Duration::from_secs(10),
        ..pool_settings()
    };
    let database = TestDatabase::create(&backend).await;
    let app = TestApp::spawn_with_pool(database, settings, pool).await;
    let students = app.create_students(10).await;
    let course = app.create_course("RUSH", "Everyone at once", 0).await.id;

    let block = WriteBlock::hold(&app.database.url, course).await;
    let queued: Vec<_> = students
        .iter()
        .map(|&student_id| {
            let mut client = app.students.clone();
            tokio::spawn(async move {
                client
                    .assign_course(pb::AssignCourseRequest {
                        student_id,
                        course_id: course,
                    })
                    .await
            })
        })
        .collect();
    let mut watch = app
        .health
        .clone()
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health Watch")
        .into_inner();
    let mut seen = Vec::new();
    let until = Instant::now() + Duration::from_millis(1500);
    while let Ok(Some(update)) = tokio::time::timeout_at(until.into(), watch.next()).await {
        seen.push(update.expect("a health update").status);
    }
    block.release().await;

    assert_eq!(
        seen,
        [ServingStatus::Serving as i32],
        "health changed while calls waited on a lock"
    );
    for call in queued {
        let answer = call.await.expect("the call task");
        assert!(
            answer
                .expect("enrolled once the lock is gone")
                .into_inner()
                .created
        );
    }
    app.stop().await;
}

/// Watchers that cannot read (their tables locked by the test) hold at most their share of the
/// pool: a quarter of it. Before that share, eight of them took all four connections and an
/// unrelated GetStudent failed UNAVAILABLE ("pool timed out").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(test_postgres),
    ignore = "needs PostgreSQL: set TEST_DATABASE_URL (README)"
)]
async fn watchers_that_cannot_read_leave_the_pool_to_other_calls() {
    const WATCHERS: usize = 8;
    let pool = PoolSettings {
        max_connections: 4,
        acquire_timeout: Duration::from_millis(500),
        ..pool_settings()
    };
    let database = TestDatabase::create(&Backend::postgres()).await;
    let app = TestApp::spawn_with_pool(database, ServerSettings::default(), pool).await;
    let ada = app.create_student("Ada", "ada@example.com").await;
    let course = app.create_course("FEED", "Feed", 0).await.id;
    app.assign(ada.id, course).await.expect("AssignCourse");

    let mut lock = PgConnection::connect(&app.database.url)
        .await
        .expect("connect");
    lock.execute("BEGIN").await.expect("begin");
    lock.execute("LOCK TABLE enrollment_events, event_feed IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock the event tables");
    let watchers: Vec<_> = (0..WATCHERS)
        .map(|_| {
            let channel = app.channel.clone();
            tokio::spawn(async move {
                let mut client =
                    pb::enrollment_event_service_client::EnrollmentEventServiceClient::new(channel);
                let mut stream = client
                    .watch_enrollment_events(pb::WatchEnrollmentEventsRequest {
                        after_sequence: 0,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                let first = stream.next().await.transpose()?;
                Ok::<_, tonic::Status>(first.map_or(0, |response| response.events.len()))
            })
        })
        .collect();
    // Let every watcher reach the database and wait there.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..5 {
        let answer = app
            .students
            .clone()
            .get_student(pb::GetStudentRequest { student_id: ada.id })
            .await;
        assert_eq!(
            answer
                .expect("GetStudent is served beside waiting watchers")
                .into_inner(),
            ada
        );
    }
    lock.execute("ROLLBACK").await.expect("release the lock");
    for watcher in watchers {
        let events = watcher.await.expect("the watcher task");
        assert_eq!(events.expect("the watcher's stream"), 1);
    }
    app.stop().await;
}
