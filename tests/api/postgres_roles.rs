//! Production's split of roles: the schema's owner applies the migrations once
//! (`student-service migrate`), and the server runs as a role that may only read and write rows,
//! granted by deploy/postgres/runtime-role.sql, with `--migrations check`. On a cluster of the
//! test's own, so that its roles do not outlive it.

use std::time::Duration;

use sqlx::{Connection, PgConnection};
use student_service::{
    api::pb::{
        self, AssignCourseRequest, BatchAssignCoursesRequest, UnassignCourseRequest,
        WatchEnrollmentEventsRequest,
        enrollment_event_service_client::EnrollmentEventServiceClient,
    },
    store::Store,
};
use tokio_stream::StreamExt;

use crate::{
    clusters::{Cluster, Setup},
    helpers::pool_settings,
    process::{ServerProcess, run_to_end, run_until_exit},
};

const GRANTS: &str = include_str!("../../deploy/postgres/runtime-role.sql");
const CHECK: &[(&str, &str)] = &[("MIGRATIONS", "check")];

async fn execute(url: &str, statements: &[&'static str]) {
    let mut connection = PgConnection::connect(url).await.expect("connect");
    for statement in statements {
        sqlx::raw_sql(*statement)
            .execute(&mut connection)
            .await
            .unwrap_or_else(|err| panic!("{statement}: {err}"));
    }
    connection.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(test_pg_clusters),
    ignore = "needs PostgreSQL's server binaries (initdb, pg_ctl): set PG_BIN (docs/development.md)"
)]
async fn a_role_that_may_only_read_and_write_rows_runs_the_server_with_migrations_check() {
    let cluster = Cluster::start(Setup::default());
    execute(
        &cluster.admin_url(),
        &[
            "CREATE ROLE student_service_owner LOGIN",
            "CREATE ROLE student_service_app LOGIN",
            "CREATE DATABASE school OWNER student_service_owner",
            // What a hardened cluster does: nobody connects or creates anything unless granted.
            "REVOKE ALL ON DATABASE school FROM PUBLIC",
        ],
    )
    .await;
    let owner = cluster.url("student_service_owner", "127.0.0.1", "school");
    let app = cluster.url("student_service_app", "127.0.0.1", "school");

    // The release before the latest: the owner migrated the database up to the previous version.
    let store = Store::connect(&owner, &pool_settings())
        .await
        .expect("connect as the owner");
    store.migrate_to(7).await.expect("migrate to version 7");
    store.close().await;
    execute(&owner, &[GRANTS]).await;
    let (code, stderr) = run_until_exit(&app, CHECK).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "the database's schema is at version 7, behind this binary's 8 (not applied: 8)"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("student-service migrate"), "{stderr}");

    // `auto` with a role that may not change the schema: refused, with what to do instead.
    let (code, stderr) = run_until_exit(&app, &[]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("the database role may not change the schema")
            && stderr.contains("--migrations check"),
        "{stderr}"
    );

    let (code, output) = run_to_end(&["migrate", "--database-url", &owner], &[]).await;
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("applied 8"), "{output}");
    // This release's migration added a table: its grants are run again, as docs/operations.md says.
    execute(&owner, &[GRANTS]).await;

    let server = ServerProcess::start(&app, CHECK).await;
    exercise_every_kind_of_write(&server).await;
    server.stop().await;

    let (code, output) = run_to_end(&["verify", "--database-url", &app], &[]).await;
    assert_eq!(code, Some(0), "{output}");

    // The runtime role cannot change the schema, and the server's migration table is not its
    // to write.
    for statement in [
        "CREATE TABLE intruder (id int)",
        "ALTER TABLE courses ADD COLUMN intruder int",
        "DELETE FROM _sqlx_migrations",
        "DROP TABLE students",
    ] {
        let mut connection = PgConnection::connect(&app).await.expect("connect as app");
        let refused = sqlx::raw_sql(statement).execute(&mut connection).await;
        let err = refused.expect_err(statement).to_string();
        assert!(
            err.contains("permission denied") || err.contains("must be owner"),
            "{statement}: {err}"
        );
    }

    // A newer release migrated the database: this binary is behind it and says so.
    execute(
        &owner,
        &["INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
           VALUES (9, 'from a newer release', true, '\\x00', 0)"],
    )
    .await;
    let (code, stderr) = run_until_exit(&app, CHECK).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "the database's schema is at version 9, ahead of this binary's 8 (unknown to it: 9)"
        ),
        "{stderr}"
    );
}

/// Students, courses, enrollments one by one and in a batch, an unassignment, a course update
/// and a delete, and the event feed that numbers them (the sequencer's advisory lock and
/// updates).
async fn exercise_every_kind_of_write(server: &ServerProcess) {
    let (mut students, mut courses) = server.clients().await;
    let ada = crate::process::create_ada(&mut students).await;
    // With request_ids: remembering one is a write too.
    let course = |code: &str, request_id: &str| pb::CreateCourseRequest {
        code: code.into(),
        title: format!("Course {code}"),
        capacity: 10,
        request_id: request_id.into(),
    };
    let first = courses
        .create_course(course("CS-101", "a3e1c5b7-2d4f-4a6b-8c0d-1e2f3a4b5c6d"))
        .await
        .expect("create a course")
        .into_inner();
    let second = courses
        .create_course(course("CS-102", ""))
        .await
        .expect("create a course")
        .into_inner();
    students
        .assign_course(AssignCourseRequest {
            student_id: ada.id,
            course_id: first.id,
        })
        .await
        .expect("assign");
    students
        .unassign_course(UnassignCourseRequest {
            student_id: ada.id,
            course_id: first.id,
        })
        .await
        .expect("unassign");
    students
        .batch_assign_courses(BatchAssignCoursesRequest {
            student_id: ada.id,
            course_ids: vec![first.id, second.id],
            request_id: "b4f2d6c8-3e5a-4b7c-9d1e-2f3a4b5c6d7e".into(),
        })
        .await
        .expect("batch assign");
    courses
        .update_course(pb::UpdateCourseRequest {
            course: Some(pb::Course {
                id: second.id,
                capacity: 20,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["capacity".into()],
            }),
        })
        .await
        .expect("update a course");
    courses
        .delete_course(pb::DeleteCourseRequest {
            course_id: second.id,
            ..Default::default()
        })
        .await
        .expect("delete a course");

    // Five enrollment events (created, deleted, created twice, deleted by the course's delete),
    // numbered 1 to 5 by the sequencer.
    let mut events = EnrollmentEventServiceClient::new(server.channel().await);
    let mut stream = events
        .watch_enrollment_events(WatchEnrollmentEventsRequest {
            after_sequence: 0,
            ..Default::default()
        })
        .await
        .expect("watch the events")
        .into_inner();
    let mut sequences = Vec::new();
    while sequences.len() < 5 {
        let response = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("the events come within 10 s")
            .expect("the stream stays open")
            .expect("a response");
        sequences.extend(response.events.iter().map(|event| event.sequence));
    }
    assert_eq!(sequences, vec![1, 2, 3, 4, 5]);
}
