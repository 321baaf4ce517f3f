//! A PostgreSQL standby where the primary should be: the service started on one, and the
//! service's endpoint moved to one (a DNS name or a Service that switches before the promotion,
//! an old primary that rejoined as a standby). Writes are UNAVAILABLE `DATABASE_READ_ONLY`,
//! never INTERNAL; health is NOT_SERVING until the endpoint reaches a writable server again.
//! And libpq's multi-host URLs over a primary and its standby: a host that is down or of the
//! wrong kind is skipped. On clusters of the test's own: a primary and a streaming standby
//! (`pg_basebackup -R`).

use std::time::{Duration, Instant};

use student_service::{api::pb, store::Store};
use tonic::Code;
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};

use crate::{
    clusters::{Cluster, Setup},
    helpers::{error_reason, pool_settings},
    lifecycle::wait_for_health,
    process::{ServerProcess, connect_when_listening, run_until_exit},
    proxy::Proxy,
};

/// A primary holding the service's schema, and a standby of it.
async fn primary_and_standby() -> (Cluster, Cluster) {
    let primary = Cluster::start(Setup::default());
    let store = Store::connect(&primary.admin_url(), &pool_settings())
        .await
        .expect("connect to the primary");
    store.migrate().await.expect("migrate the primary");
    store.close().await;
    let standby = Cluster::standby_of(&primary);
    crate::clusters::wait_until_answering(&standby.admin_url()).await;
    (primary, standby)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(test_pg_clusters),
    ignore = "needs PostgreSQL's server binaries (initdb, pg_ctl): set PG_BIN (docs/development.md)"
)]
async fn started_on_a_standby_the_server_says_so_in_one_line_and_exits() {
    let (_primary, standby) = primary_and_standby().await;
    let (code, stderr) = run_until_exit(&standby.admin_url(), &[]).await;
    assert_eq!(code, Some(1), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("ERROR"))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains(
            "the database refuses writes (a PostgreSQL standby, in recovery, or read-only \
             transactions), so the migrations cannot be applied: point --database-url at the primary"
        ),
        "{stderr}"
    );
    assert_eq!(
        errors[0].matches("cannot execute").count(),
        1,
        "the database's own words, once: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(test_pg_clusters),
    ignore = "needs PostgreSQL's server binaries (initdb, pg_ctl): set PG_BIN (docs/development.md)"
)]
async fn an_endpoint_moved_to_a_standby_is_unavailable_and_not_serving_until_it_moves_back() {
    let (primary, standby) = primary_and_standby().await;
    let proxy = Proxy::start(primary.address()).await;
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/postgres",
        proxy.address.port()
    );
    let server = ServerProcess::start(&url, &[("HEALTH_INTERVAL", "200ms")]).await;
    let (mut students, _) = server.clients().await;
    let mut health = HealthClient::new(server.channel().await);
    let create = |n: usize| pb::CreateStudentRequest {
        name: format!("Student {n}"),
        email: format!("student{n}@example.com"),
        request_id: String::new(),
    };
    let first = students
        .create_student(create(0))
        .await
        .expect("a write on the primary")
        .into_inner();

    proxy.switch_to(standby.address()).await;
    let started = Instant::now();
    let mut refusals = 0;
    for n in 1..=20 {
        match students.create_student(create(n)).await {
            Err(status) if status.code() == Code::Unavailable => {
                let reason = error_reason(&status);
                assert!(
                    reason == "DATABASE_READ_ONLY" || reason == "DATABASE_UNAVAILABLE",
                    "{status:?}"
                );
                refusals += usize::from(reason == "DATABASE_READ_ONLY");
            }
            other => panic!("a write on the standby: {other:?}"),
        }
    }
    assert!(refusals > 0, "the standby's refusal is told apart");
    wait_for_health(&mut health, ServingStatus::NotServing).await;
    eprintln!(
        "on the standby: 20 writes refused, health NOT_SERVING after {:?}",
        started.elapsed()
    );

    // Reads are served by the standby: sixteen at once leave the pool full of connections to it.
    let mut reads = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let mut students = students.clone();
        let request = pb::GetStudentRequest {
            student_id: first.id,
        };
        reads.spawn(async move { students.get_student(request).await });
    }
    while let Some(read) = reads.join_next().await {
        read.expect("the read task").expect("a read on the standby");
    }

    // Back on the primary as a DNS change is: new connections reach it, those open stay on the
    // standby. Each of those is dropped at its first refusal, so after at most one refused
    // write per pooled connection (8 by default), every write reaches the primary.
    proxy.redirect(primary.address());
    wait_for_health(&mut health, ServingStatus::Serving).await;
    let mut refused = 0;
    let mut n = 21;
    while students.create_student(create(n)).await.is_err() {
        refused += 1;
        n += 1;
        assert!(refused <= 8, "writes still refused after {refused} tries");
    }
    eprintln!("back on the primary: {refused} writes refused on connections left on the standby");
    for n in n + 1..n + 11 {
        students
            .create_student(create(n))
            .await
            .expect("a write once the endpoint is back on the primary");
    }
    server.stop().await;
}

/// `postgres://postgres@127.0.0.1:P1,127.0.0.1:P2,.../postgres?QUERY`
fn multi_host_url(ports: &[u16], query: &str) -> String {
    let hosts: Vec<String> = ports
        .iter()
        .map(|port| format!("127.0.0.1:{port}"))
        .collect();
    format!("postgres://postgres@{}/postgres?{query}", hosts.join(","))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(test_pg_clusters),
    ignore = "needs PostgreSQL's server binaries (initdb, pg_ctl): set PG_BIN (docs/development.md)"
)]
async fn a_multi_host_url_skips_hosts_that_are_down_or_of_the_wrong_kind() {
    let (primary, mut standby) = primary_and_standby().await;
    let down = crate::process::free_address().port();

    // The first host is down: the second serves.
    let url = multi_host_url(&[down, primary.port], "connect_timeout=2");
    let server = ServerProcess::start(&url, &[]).await;
    let (mut students, _) = server.clients().await;
    crate::process::create_ada(&mut students).await;
    server.stop().await;

    // The first host is a standby: `any` (libpq's default) takes it, and the start says so...
    let standby_first = [standby.port, primary.port];
    let (code, stderr) = run_until_exit(&multi_host_url(&standby_first, ""), &[]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("point --database-url at the primary"),
        "{stderr}"
    );
    // ...`read-write` skips it.
    let url = multi_host_url(&standby_first, "target_session_attrs=read-write");
    let server = ServerProcess::start(&url, &[]).await;
    let (mut students, _) = server.clients().await;
    students
        .create_student(pb::CreateStudentRequest {
            name: "Grace".into(),
            email: "grace@example.com".into(),
            request_id: String::new(),
        })
        .await
        .expect("a write reaches the primary");
    server.stop().await;

    // `prefer-standby` takes the standby while there is one (writes there are refused as
    // read-only, health is NOT_SERVING: the server runs with --migrations check, which writes
    // nothing), and the primary once it is gone.
    let url = multi_host_url(
        &[primary.port, standby.port],
        "target_session_attrs=prefer-standby",
    );
    let address = crate::process::free_address();
    let _server = tokio::process::Command::new(env!("CARGO_BIN_EXE_student-service"))
        .env("DATABASE_URL", &url)
        .env("LISTEN_ADDR", address.to_string())
        .env("MIGRATIONS", "check")
        .env("HEALTH_INTERVAL", "200ms")
        .env("RUST_LOG", "error")
        .kill_on_drop(true)
        .spawn()
        .expect("start student-service");
    let channel = connect_when_listening(address).await;
    let mut students = pb::student_service_client::StudentServiceClient::new(channel.clone());
    let mut health = HealthClient::new(channel);
    wait_for_health(&mut health, ServingStatus::NotServing).await;
    let refused = students
        .create_student(pb::CreateStudentRequest {
            name: "Linus".into(),
            email: "linus@example.com".into(),
            request_id: String::new(),
        })
        .await
        .expect_err("the standby refuses writes");
    assert_eq!(error_reason(&refused), "DATABASE_READ_ONLY", "{refused:?}");
    standby.stop();
    wait_for_health(&mut health, ServingStatus::Serving).await;
    let started = Instant::now();
    loop {
        let written = students
            .create_student(pb::CreateStudentRequest {
                name: "Linus".into(),
                email: "linus@example.com".into(),
                request_id: String::new(),
            })
            .await;
        match written {
            Ok(_) => break,
            Err(status) => assert!(
                started.elapsed() < Duration::from_secs(10) && status.code() == Code::Unavailable,
                "{status:?}"
            ),
        }
    }
}
