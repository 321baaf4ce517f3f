//! TLS to PostgreSQL, as managed databases require it: a cluster of the test's own with
//! `ssl = on`, a certificate for `localhost` from a CA made by the test, and a pg_hba.conf that
//! refuses every connection without TLS. libpq's URL parameters (`sslmode`, `sslrootcert`,
//! `sslcert`, `sslkey`) do what libpq does with them.

use std::path::PathBuf;

use rcgen::ExtendedKeyUsagePurpose;
use sqlx::Connection;

use crate::{
    clusters::{Cluster, Setup},
    pki::Ca,
    process::ServerProcess,
};

/// A cluster that speaks TLS only, and the files its clients are given.
struct TlsDatabase {
    cluster: Cluster,
    /// The CA that signed the server's certificate.
    ca: PathBuf,
    /// A CA that signed nothing of this server's.
    other_ca: PathBuf,
    /// A client certificate for the role `certuser` (its CN), and its key.
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl TlsDatabase {
    fn start() -> TlsDatabase {
        let ca = Ca::new("database CA");
        let server = ca.issue(&["localhost"], ExtendedKeyUsagePurpose::ServerAuth);
        let client = ca.issue(&["certuser"], ExtendedKeyUsagePurpose::ClientAuth);
        let cluster = Cluster::start(Setup {
            settings: vec![
                "ssl = on".into(),
                "ssl_cert_file = 'server.crt'".into(),
                "ssl_key_file = 'server.key'".into(),
                "ssl_ca_file = 'ca.crt'".into(),
            ],
            hba: vec![
                "hostnossl all all 127.0.0.1/32 reject".into(),
                "hostssl all certuser 127.0.0.1/32 cert".into(),
            ],
            files: vec![
                ("server.crt", server.cert),
                ("server.key", server.key),
                ("ca.crt", ca.pem.clone()),
            ],
        });
        let write = |name: &str, contents: &str| {
            let path = cluster.scratch().join(name);
            std::fs::write(&path, contents).expect("write a client file");
            path
        };
        TlsDatabase {
            ca: write("ca.pem", &ca.pem),
            other_ca: write("other-ca.pem", &Ca::new("some other CA").pem),
            client_cert: write("client.pem", &client.cert),
            client_key: write("client.key", &client.key),
            cluster,
        }
    }

    /// `postgres://USER@HOST:PORT/DATABASE?QUERY`.
    fn url(&self, user: &str, host: &str, database: &str, query: &str) -> String {
        format!("{}?{query}", self.cluster.url(user, host, database))
    }

    /// The superuser over TLS, not verified (the test's own look at the server).
    fn admin_url(&self) -> String {
        self.url("postgres", "127.0.0.1", "postgres", "sslmode=require")
    }
}

fn display(path: &std::path::Path) -> String {
    path.display().to_string()
}

/// How many of the service's connections the server sees, and how many of those use TLS.
async fn service_connections(admin_url: &str) -> (i64, i64) {
    let mut admin = sqlx::PgConnection::connect(admin_url)
        .await
        .expect("the test's own TLS connection");
    let counts = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a \
         JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = 'student-service'",
    )
    .fetch_one(&mut admin)
    .await
    .expect("read pg_stat_ssl");
    admin.close().await.expect("close");
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(test_pg_clusters),
    ignore = "needs PostgreSQL's server binaries (initdb, pg_ctl): set PG_BIN (docs/development.md)"
)]
async fn verify_full_with_the_right_ca_and_host_name_serves_over_tls_only() {
    let database = TlsDatabase::start();
    let url = database.url(
        "postgres",
        "localhost",
        "postgres",
        &format!("sslmode=verify-full&sslrootcert={}", display(&database.ca)),
    );
    let server = ServerProcess::start(&url, &[]).await;
    let (mut students, _) = server.clients().await;
    crate::process::create_ada(&mut students).await;
    let (connections, encrypted) = service_connections(&database.admin_url()).await;
    assert!(connections > 0, "the service holds connections");
    assert_eq!(encrypted, connections, "every one of them is TLS");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(test_pg_clusters),
    ignore = "needs PostgreSQL's server binaries (initdb, pg_ctl): set PG_BIN (docs/development.md)"
)]
async fn a_wrong_ca_a_wrong_host_name_or_no_tls_is_refused_at_start_with_a_clear_error() {
    let database = TlsDatabase::start();
    let wrong_ca = database.url(
        "postgres",
        "localhost",
        "postgres",
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            display(&database.other_ca)
        ),
    );
    let (code, stderr) = crate::process::run_until_exit(&wrong_ca, &[]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("UnknownIssuer"), "{stderr}");

    // The certificate names localhost, not 127.0.0.1.
    let wrong_name = database.url(
        "postgres",
        "127.0.0.1",
        "postgres",
        &format!("sslmode=verify-full&sslrootcert={}", display(&database.ca)),
    );
    let (code, stderr) = crate::process::run_until_exit(&wrong_name, &[]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("certificate not valid for name \"127.0.0.1\""),
        "{stderr}"
    );

    // verify-ca checks the CA but not the name: the same URL is accepted.
    let verify_ca = database.url(
        "postgres",
        "127.0.0.1",
        "postgres",
        &format!("sslmode=verify-ca&sslrootcert={}", display(&database.ca)),
    );
    let server = ServerProcess::start(&verify_ca, &[]).await;
    server.stop().await;

    let plaintext = database.url("postgres", "localhost", "postgres", "sslmode=disable");
    let (code, stderr) = crate::process::run_until_exit(&plaintext, &[]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no encryption"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(test_pg_clusters),
    ignore = "needs PostgreSQL's server binaries (initdb, pg_ctl): set PG_BIN (docs/development.md)"
)]
async fn require_and_prefer_encrypt_without_checking_the_certificate() {
    let database = TlsDatabase::start();
    for mode in ["require", "prefer"] {
        let url = database.url(
            "postgres",
            "127.0.0.1",
            "postgres",
            &format!("sslmode={mode}"),
        );
        let server = ServerProcess::start(&url, &[]).await;
        let (connections, encrypted) = service_connections(&database.admin_url()).await;
        assert!(connections > 0, "{mode}: the service holds connections");
        assert_eq!(encrypted, connections, "{mode}: every one of them is TLS");
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(test_pg_clusters),
    ignore = "needs PostgreSQL's server binaries (initdb, pg_ctl): set PG_BIN (docs/development.md)"
)]
async fn a_client_certificate_authenticates_its_role_and_none_is_refused() {
    let database = TlsDatabase::start();
    let mut admin = sqlx::PgConnection::connect(&database.admin_url())
        .await
        .expect("connect as the superuser");
    for statement in [
        "CREATE ROLE certuser LOGIN",
        "CREATE DATABASE school OWNER certuser",
    ] {
        sqlx::query(statement)
            .execute(&mut admin)
            .await
            .expect(statement);
    }
    admin.close().await.expect("close");

    let url = database.url(
        "certuser",
        "localhost",
        "school",
        &format!(
            "sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
            display(&database.ca),
            display(&database.client_cert),
            display(&database.client_key)
        ),
    );
    let server = ServerProcess::start(&url, &[]).await;
    let (mut students, _) = server.clients().await;
    crate::process::create_ada(&mut students).await;
    server.stop().await;

    let without_certificate = database.url(
        "certuser",
        "localhost",
        "school",
        &format!("sslmode=verify-full&sslrootcert={}", display(&database.ca)),
    );
    let (code, stderr) = crate::process::run_until_exit(&without_certificate, &[]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("certificate"), "{stderr}");
}
