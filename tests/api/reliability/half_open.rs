//! Connections that open and then send too little: half an HTTP/2 preface on the gRPC port, a
//! request line without its blank line on the metrics port. Each is closed once
//! `--handshake-timeout` passes; while they exhaust the process's file descriptors the accept
//! loops back off instead of spinning, and once they are gone a normal client is served.

use std::time::{Duration, Instant};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{
    helpers::{Backend, TestDatabase},
    metrics::scrape,
    process::{ServerProcess, create_ada, free_address},
};

/// More half-open connections than the server has descriptors.
const HALF_OPEN: usize = 200;
const OPEN_FILES: u64 = 128;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_are_closed_and_exhaustion_does_not_spin() {
    let database = TestDatabase::create(&Backend::Sqlite).await;
    let metrics = free_address();
    let env = [
        ("HANDSHAKE_TIMEOUT", "2s"),
        ("METRICS_LISTEN", &metrics.to_string()),
    ];
    let server = ServerProcess::start_limited(&database.url, &env, OPEN_FILES).await;

    let started = Instant::now();
    let mut idle = Vec::new();
    for i in 0..HALF_OPEN {
        let (address, partial): (_, &[u8]) = if i % 4 == 0 {
            (metrics, b"GET /metrics HTTP/1.1\r\n")
        } else {
            (server.address, b"PRI * HTTP/2.0\r\n")
        };
        // Past the descriptor limit, connections wait in the listen backlog.
        let mut stream = TcpStream::connect(address).await.expect("connect");
        stream.write_all(partial).await.expect("send part");
        idle.push(stream);
    }
    // While descriptors are exhausted, the accept loops wait: far below a core.
    let cpu_before = server.cpu_time();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu = server.cpu_time() - cpu_before;
    assert!(
        cpu < Duration::from_millis(300),
        "the server used {cpu:?} of CPU in 1 s while out of descriptors"
    );

    // Every half-open connection is closed by the server, the backlogged ones once accepted.
    for mut stream in idle {
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut rest));
        assert!(
            closed.await.is_ok(),
            "a half-open connection is still open after {:?}",
            started.elapsed()
        );
    }
    let all_closed = started.elapsed();

    let (mut students, _) = server.clients().await;
    assert_eq!(create_ada(&mut students).await.name, "Ada");
    assert!(scrape(metrics).await.samples.len() > 10, "metrics served");
    eprintln!(
        "{HALF_OPEN} half-open connections with {OPEN_FILES} descriptors: {cpu:?} CPU in 1 s \
         while exhausted, all closed after {all_closed:?}"
    );
    server.terminate();
    assert!(server.wait(Duration::from_secs(10)).await.success());
}
