//! A failover of PostgreSQL under load, as production has it: a primary with a synchronous
//! streaming standby, behind an endpoint the replicas connect through (a TCP proxy here, a
//! Service or a DNS name there). The primary crashes, the standby is promoted, the endpoint
//! switches. Promised: callers see UNAVAILABLE only, nothing acknowledged is lost, the event
//! feed stays gap-free and duplicate-free, and the sequencer's lock is taken back.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use sqlx::{Connection, PgConnection};
use student_service::{
    api::pb::{AssignCourseRequest, student_service_client::StudentServiceClient},
    store::Store,
};

use crate::{
    clusters::{Cluster, Setup},
    helpers::{Peek, error_reason, pool_settings},
    process::ServerProcess,
    proxy::Proxy,
    resilience::{assert_verify_passes, create_courses, create_students, stored_pairs},
};

const CALLERS: usize = 16;

/// Every call's end, stamped with when it ended.
#[derive(Default)]
struct Record {
    ok: Vec<Instant>,
    acknowledged: Vec<(i64, i64)>,
    refused: BTreeMap<String, u64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(test_pg_clusters),
    ignore = "needs PostgreSQL's server binaries (initdb, pg_ctl): set PG_BIN (docs/development.md)"
)]
async fn a_failover_under_load_loses_nothing_acknowledged_and_answers_only_unavailable() {
    let mut primary = Cluster::start(Setup {
        settings: vec!["synchronous_standby_names = '*'".into()],
        ..Setup::default()
    });
    let standby = Cluster::standby_of(&primary);
    wait_for_synchronous_standby(&primary.admin_url()).await;
    let proxy = Proxy::start(primary.address()).await;
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/postgres",
        proxy.address.port()
    );
    let replicas = [
        ServerProcess::start(&url, &[("HEALTH_INTERVAL", "200ms")]).await,
        ServerProcess::start(&url, &[("HEALTH_INTERVAL", "200ms")]).await,
    ];
    let (mut students, mut courses) = replicas[0].clients().await;
    let student_ids = create_students(&mut students, 200).await;
    let course_ids = create_courses(&mut courses, "F", 0, 20).await;
    let pairs: Arc<Vec<(i64, i64)>> = Arc::new(
        course_ids
            .iter()
            .flat_map(|&c| student_ids.iter().map(move |&s| (s, c)))
            .collect(),
    );

    let stop = Arc::new(AtomicBool::new(false));
    let record = Arc::new(Mutex::new(Record::default()));
    let mut callers = Vec::new();
    for caller in 0..CALLERS {
        let channel = replicas[caller % replicas.len()].channel().await;
        let mut api = StudentServiceClient::new(channel);
        let (pairs, stop, record) = (pairs.clone(), stop.clone(), record.clone());
        callers.push(tokio::spawn(async move {
            for &(student_id, course_id) in pairs.iter().skip(caller).step_by(CALLERS) {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let request = AssignCourseRequest {
                    student_id,
                    course_id,
                };
                let answer = api.assign_course(request).await;
                let refused = {
                    let mut record = record.lock().expect("the record");
                    match answer {
                        Ok(_) => {
                            record.ok.push(Instant::now());
                            record.acknowledged.push((student_id, course_id));
                            false
                        }
                        Err(status) => {
                            let key = format!("{:?} {}", status.code(), error_reason(&status));
                            *record.refused.entry(key).or_default() += 1;
                            true
                        }
                    }
                };
                if refused {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let crashed = Instant::now();
    tokio::task::block_in_place(|| {
        primary.stop();
        standby.promote();
    });
    // The promoted standby has the primary's settings, and no standby of its own: it would wait
    // for one at every commit.
    let mut promoted = PgConnection::connect(&standby.admin_url())
        .await
        .expect("connect to the promoted standby");
    for statement in [
        "ALTER SYSTEM SET synchronous_standby_names = ''",
        "SELECT pg_reload_conf()",
    ] {
        sqlx::raw_sql(statement)
            .execute(&mut promoted)
            .await
            .expect(statement);
    }
    promoted.close().await.expect("close");
    proxy.switch_to(standby.address()).await;
    let switched = crashed.elapsed();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await.expect("a caller");
    }

    let mut record = std::mem::take(&mut *record.lock().expect("the record"));
    record.ok.sort();
    let after_crash = record.ok.iter().filter(|at| **at >= crashed).count();
    assert!(
        after_crash > 0,
        "no call succeeded after the failover: {:?}",
        record.refused
    );
    let longest_gap = record
        .ok
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .max()
        .unwrap_or_default();
    eprintln!(
        "failover: primary stopped and standby promoted, endpoint switched {switched:.1?} after \
         the crash began; longest time without a successful call {longest_gap:.1?}; {} \
         acknowledged ({after_crash} after the crash), refused: {:?}",
        record.acknowledged.len(),
        record.refused
    );
    assert!(
        record
            .refused
            .keys()
            .all(|key| key.starts_with("Unavailable")),
        "only UNAVAILABLE while the database moves: {:?}",
        record.refused
    );

    let new_url = standby.admin_url();
    let stored = stored_pairs(&Peek::open(&new_url).await).await;
    let lost: Vec<_> = record
        .acknowledged
        .iter()
        .filter(|pair| !stored.contains(pair))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged, then lost in the failover: {lost:?}"
    );
    assert_events_numbered_without_gaps(&new_url, &record.acknowledged).await;
    let store = Store::connect(&new_url, &pool_settings())
        .await
        .expect("connect");
    assert_verify_passes(&store).await;
    store.close().await;
    for replica in replicas {
        replica.stop().await;
    }
}

/// Waits until the primary has a synchronous standby (`pg_stat_replication.sync_state`).
async fn wait_for_synchronous_standby(url: &str) {
    let mut admin = PgConnection::connect(url).await.expect("connect");
    for _ in 0..300 {
        let synchronous: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'",
        )
        .fetch_one(&mut admin)
        .await
        .expect("pg_stat_replication");
        if synchronous > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the standby never became synchronous");
}

/// Once the sequencer (whichever replica took its lock back) has numbered every event: numbers
/// 1..n, each once, and an enrollment event for each acknowledged enrollment.
async fn assert_events_numbered_without_gaps(url: &str, acknowledged: &[(i64, i64)]) {
    let mut connection = PgConnection::connect(url).await.expect("connect");
    let started = Instant::now();
    loop {
        let unnumbered: i64 =
            sqlx::query_scalar("SELECT count(*) FROM enrollment_events WHERE sequence IS NULL")
                .fetch_one(&mut connection)
                .await
                .expect("count unnumbered events");
        if unnumbered == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{unnumbered} events still unnumbered 15 s after the failover: the sequencer's lock was not taken back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sequences: Vec<i64> =
        sqlx::query_scalar("SELECT sequence FROM enrollment_events ORDER BY sequence")
            .fetch_all(&mut connection)
            .await
            .expect("read the sequences");
    let expected: Vec<i64> = (1..=sequences.len() as i64).collect();
    assert!(
        sequences == expected,
        "gaps or repeats in the event sequence"
    );
    let created: HashSet<(i64, i64)> =
        sqlx::query_as("SELECT student_id, course_id FROM enrollment_events WHERE type = 1")
            .fetch_all(&mut connection)
            .await
            .expect("read the created events")
            .into_iter()
            .collect();
    let silent: Vec<_> = acknowledged
        .iter()
        .filter(|pair| !created.contains(pair))
        .collect();
    assert!(
        silent.is_empty(),
        "acknowledged without an event: {silent:?}"
    );
    connection.close().await.expect("close");
}
