//! Read RPCs served by a streaming replica (`--database-read-url`), with read-your-writes by the
//! `x-consistency-token` a write answers with, a bound on staleness without one, and the
//! primary standing in, without an error, for a replica that lags or stops. On a primary and a
//! standby of the test's own.

use std::time::Duration;

use sqlx::{Connection, PgConnection};
use student_service::{
    api::pb::{self, student_service_client::StudentServiceClient},
    store::Store,
};
use tonic::{Code, Request, transport::Channel};

use crate::{
    clusters::{Cluster, Setup, wait_until_answering},
    helpers::pool_settings,
    metrics::{scrape, value},
    process::{ServerProcess, free_address},
};

const TOKEN: &str = "x-consistency-token";
const READS: &str = "student_service_db_reads_total";

struct Replicated {
    primary: Cluster,
    standby: Cluster,
    server: ServerProcess,
    metrics: std::net::SocketAddr,
}

/// A primary and its standby, and the server over them; the read URL is the standby's, or with
/// `prefer_standby` every member as libpq would be given it.
async fn replicated(max_lag: &str, prefer_standby: bool) -> Replicated {
    let primary = Cluster::start(Setup::default());
    let store = Store::connect(&primary.admin_url(), &pool_settings())
        .await
        .expect("connect to the primary");
    store.migrate().await.expect("migrate");
    store.close().await;
    let standby = Cluster::standby_of(&primary);
    wait_until_answering(&standby.admin_url()).await;
    let metrics = free_address();
    // Every member, the primary first: `prefer-standby` must pick the standby.
    let read_url = if prefer_standby {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=prefer-standby",
            primary.port, standby.port
        )
    } else {
        standby.admin_url()
    };
    let server = ServerProcess::start(
        &primary.admin_url(),
        &[
            ("DATABASE_READ_URL", &read_url),
            ("MAX_REPLICA_LAG", max_lag),
            ("METRICS_LISTEN", &metrics.to_string()),
        ],
    )
    .await;
    Replicated {
        primary,
        standby,
        server,
        metrics,
    }
}

/// Creates a student; its id and the write's token.
async fn create(students: &mut StudentServiceClient<Channel>, n: usize) -> (i64, String) {
    let response = students
        .create_student(pb::CreateStudentRequest {
            name: format!("Student {n}"),
            email: format!("student{n}@example.com"),
            request_id: String::new(),
        })
        .await
        .expect("a write");
    let token = response
        .metadata()
        .get(TOKEN)
        .expect("a write answers with a consistency token")
        .to_str()
        .expect("ASCII")
        .to_owned();
    (response.into_inner().id, token)
}

/// GetStudent, with the token if given: whether the student was found.
async fn found(students: &mut StudentServiceClient<Channel>, id: i64, token: Option<&str>) -> bool {
    let mut request = Request::new(pb::GetStudentRequest { student_id: id });
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert(TOKEN, token.parse().expect("ASCII"));
    }
    match students.get_student(request).await {
        Ok(_) => true,
        Err(status) if status.code() == Code::NotFound => false,
        Err(status) => panic!("a read failed: {status:?}"),
    }
}

async fn reads(metrics: std::net::SocketAddr, target: &str, reason: &str) -> f64 {
    value(
        &scrape(metrics).await,
        READS,
        &[("target", target), ("reason", reason)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(test_pg_clusters),
    ignore = "needs PostgreSQL's server binaries (initdb, pg_ctl): set PG_BIN (docs/development.md)"
)]
async fn reads_go_to_the_replica_and_an_echoed_token_never_reads_older_than_its_write() {
    let setup = replicated("1s", true).await;
    let (mut students, _) = setup.server.clients().await;
    const ROUNDS: usize = 1000;
    let mut stale_with_token = 0;
    for n in 0..ROUNDS {
        let (id, token) = create(&mut students, n).await;
        if !found(&mut students, id, Some(&token)).await {
            stale_with_token += 1;
        }
    }
    // Without the token the replica may not have the write yet: how often, for the record.
    let mut stale_without = 0;
    for n in ROUNDS..ROUNDS + 200 {
        let (id, _) = create(&mut students, n).await;
        if !found(&mut students, id, None).await {
            stale_without += 1;
        }
    }
    let on_replica = reads(setup.metrics, "replica", "fresh").await as u64;
    let waited_out = reads(setup.metrics, "primary", "token_not_replayed").await as u64;
    eprintln!(
        "{ROUNDS} write-then-read rounds with the token: {stale_with_token} stale; reads on the \
         replica {on_replica}, on the primary after the token wait {waited_out}; 200 rounds \
         without the token: {stale_without} stale"
    );
    assert_eq!(
        stale_with_token, 0,
        "a read with the token saw the world before its write"
    );
    assert!(
        on_replica >= ROUNDS as u64 / 2,
        "reads go to the replica: {on_replica}"
    );

    let mut standby = PgConnection::connect(&setup.standby.admin_url())
        .await
        .expect("connect to the standby");
    let serving: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'student-service'",
    )
    .fetch_one(&mut standby)
    .await
    .expect("pg_stat_activity");
    assert!(
        serving > 0,
        "prefer-standby: the service reads from the standby, listed second"
    );
    standby.close().await.expect("close");

    let bad = {
        let mut request = Request::new(pb::GetStudentRequest { student_id: 1 });
        request
            .metadata_mut()
            .insert(TOKEN, "0/16B3748".parse().expect("ASCII"));
        students
            .get_student(request)
            .await
            .expect_err("a malformed token")
    };
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains(TOKEN), "{bad:?}");
    drop(setup.primary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(test_pg_clusters),
    ignore = "needs PostgreSQL's server binaries (initdb, pg_ctl): set PG_BIN (docs/development.md)"
)]
async fn a_lagging_or_stopped_replica_leaves_reads_to_the_primary_without_an_error() {
    let mut setup = replicated("300ms", false).await;
    let (mut students, _) = setup.server.clients().await;
    let mut standby = PgConnection::connect(&setup.standby.admin_url())
        .await
        .expect("connect to the standby");

    // Replay paused: the replica falls behind.
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&mut standby)
        .await
        .expect("pause replay");
    let (id, token) = create(&mut students, 0).await;
    assert!(
        found(&mut students, id, Some(&token)).await,
        "with the token: the replica waited for, then the primary"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        found(&mut students, id, None).await,
        "a replica more than the bound behind is not read from"
    );
    assert!(reads(setup.metrics, "primary", "token_not_replayed").await >= 1.0);
    assert!(reads(setup.metrics, "primary", "replica_lagging").await >= 1.0);
    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&mut standby)
        .await
        .expect("resume replay");
    standby.close().await.expect("close");

    // The replica stops: every read still answers, from the primary, and health stays SERVING.
    tokio::task::block_in_place(|| setup.standby.stop());
    for n in 1..=50 {
        let (id, token) = create(&mut students, n).await;
        assert!(found(&mut students, id, Some(&token)).await);
        assert!(found(&mut students, id, None).await);
    }
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(setup.server.channel().await);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health answers")
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
        "the replica is an optimisation: health does not follow it"
    );
    assert!(reads(setup.metrics, "primary", "replica_down").await >= 1.0);
}
