//! Rotation without a restart, under load: while clients call without pause over mutual TLS
//! with tokens, the server certificate is replaced (new serial), a token is rotated and the
//! policy changed, then broken files are written. No call allowed before and after fails; new
//! connections see the new certificate; the removed token is refused within the reload
//! interval; a broken file leaves the old one in force and is counted.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use student_service::api::pb::{self, student_service_client::StudentServiceClient};
use tokio::{net::TcpStream, process::Command};
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{
    metrics::{scrape, value},
    process::free_address,
    security::{Pki, with_token},
};

const KEEPER: &str = "keeper-token-6d2e91b0c4f7";
const OLD: &str = "old-token-1a7c3e9f5b2d";
const NEW: &str = "new-token-8f4b2d6a0e1c";
/// Within this a change must be in force: the issue's 10 s.
const RELOAD_WITHIN: Duration = Duration::from_secs(10);
/// The second server certificate's not-after time, 2030-01-01T00:00:00Z.
const SECOND_NOT_AFTER: i64 = 1_893_456_000;

const POLICY: &str = r#"
[[allow]]
principals = ["keeper", "old", "new"]
methods = ["school.v1.StudentService/List*", "school.v1.StudentService/Get*"]
"#;

/// Replaces a file the way Kubernetes and cert-manager do: a new file renamed over the old, so
/// no reader ever sees half of it.
fn replace(path: &Path, contents: &str) {
    let temporary = path.with_extension("new");
    std::fs::write(&temporary, contents).expect("write");
    std::fs::rename(&temporary, path).expect("rename");
}

/// A channel over mutual TLS: `client` is (CA, client certificate, client key), PEM.
fn channel(address: SocketAddr, client: &(String, String, String)) -> Channel {
    let (ca, cert, key) = client;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key))
        .domain_name("localhost");
    Channel::from_shared(format!("https://{address}"))
        .expect("uri")
        .tls_config(tls)
        .expect("client TLS")
        .connect_lazy()
}

/// The serial number of the certificate a new TLS connection is served, in decimal.
async fn served_serial(address: SocketAddr, pki: &Pki) -> String {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pki.ca.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("a CA");
    }
    let chain = CertificateDer::pem_slice_iter(pki.client.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("client PEM");
    let key = PrivateKeyDer::from_pem_slice(pki.client.key.as_bytes()).expect("client key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client config");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(address).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("a name");
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let served = tls.get_ref().1.peer_certificates().expect("a certificate");
    let (_, cert) = X509Certificate::from_der(served[0].as_ref()).expect("X.509");
    cert.serial.to_string()
}

async fn list(channel: &Channel, token: &str) -> Result<(), tonic::Status> {
    StudentServiceClient::new(channel.clone())
        .list_students(with_token(pb::ListStudentsRequest::default(), Some(token)))
        .await
        .map(|_| ())
}

async fn create(channel: &Channel, token: &str, n: u64) -> Result<(), tonic::Status> {
    let student = pb::CreateStudentRequest {
        name: format!("Student {n}"),
        email: format!("student{n}@example.com"),
        request_id: String::new(),
    };
    StudentServiceClient::new(channel.clone())
        .create_student(with_token(student, Some(token)))
        .await
        .map(|_| ())
}

/// Polls `done` until it holds, for at most [`RELOAD_WITHIN`]; how long it took.
async fn within_reload<F: Future<Output = bool>>(
    what: &str,
    mut done: impl FnMut() -> F,
) -> Duration {
    let started = Instant::now();
    while started.elapsed() < RELOAD_WITHIN {
        if done().await {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not in force within {RELOAD_WITHIN:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_tokens_and_policy_rotate_under_load_without_failing_a_call() {
    let pki = Pki::new();
    let dir = pki.dir.path();
    let first = pki.authority.issue_server(1001, (2029, 1, 1));
    let second = pki.authority.issue_server(1002, (2030, 1, 1));
    let cert = dir.join("tls.crt");
    let key = dir.join("tls.key");
    replace(&cert, &first.cert);
    replace(&key, &first.key);
    let ca = pki.write("ca.crt", &pki.ca);
    let tokens = dir.join("tokens.txt");
    replace(&tokens, &format!("keeper {KEEPER}\nold {OLD}\n"));
    let policy = dir.join("policy.toml");
    replace(&policy, POLICY);
    let address = free_address();
    let metrics = free_address();
    let log = std::fs::File::create(dir.join("server.log")).expect("log file");
    let mut server = Command::new(env!("CARGO_BIN_EXE_student-service"))
        .env(
            "DATABASE_URL",
            format!("sqlite:{}", dir.join("school.db").display()),
        )
        .env("LISTEN_ADDR", address.to_string())
        .env("METRICS_LISTEN", metrics.to_string())
        .env("TLS_CERT", &cert)
        .env("TLS_KEY", &key)
        .env("TLS_CLIENT_CA", &ca)
        .env("AUTH_TOKENS_FILE", &tokens)
        .env("AUTHZ_POLICY", &policy)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start student-service");
    let client = (
        pki.ca.clone(),
        pki.client.cert.clone(),
        pki.client.key.clone(),
    );
    let shared = channel(address, &client);
    within_reload("the server serving", || async {
        list(&shared, KEEPER).await.is_ok()
    })
    .await;
    assert_eq!(served_serial(address, &pki).await, "1001");

    // Load: calls allowed before and after every change, on the shared connection and on new
    // ones, without pause until the end.
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for worker in 0..3 {
        let (stop, calls, shared) = (stop.clone(), calls.clone(), shared.clone());
        let fresh = (worker == 0).then(|| client.clone());
        load.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let channel = match &fresh {
                    Some(client) if n.is_multiple_of(5) => channel(address, client),
                    _ => shared.clone(),
                };
                if let Err(status) = list(&channel, KEEPER).await {
                    failures.push(format!("{:?}: {}", status.code(), status.message()));
                }
                calls.fetch_add(1, Ordering::Relaxed);
            }
            failures
        }));
    }

    // 1. A new server certificate: new connections are served it.
    replace(&cert, &second.cert);
    replace(&key, &second.key);
    let took = within_reload("the new certificate", || async {
        served_serial(address, &pki).await == "1002"
    })
    .await;
    println!("new certificate served after {took:?}");

    // 2. A token rotated: the old one removed, a new one added.
    replace(&tokens, &format!("keeper {KEEPER}\nnew {NEW}\n"));
    let took = within_reload("the removed token refused", || async {
        matches!(list(&shared, OLD).await, Err(s) if s.code() == Code::Unauthenticated)
    })
    .await;
    println!("removed token refused after {took:?}");
    list(&shared, NEW).await.expect("the new token works");

    // 3. The policy changed: the keeper may now create students too.
    assert_eq!(
        create(&shared, KEEPER, 0)
            .await
            .expect_err("not yet")
            .code(),
        Code::PermissionDenied
    );
    replace(
        &policy,
        &format!(
            "{POLICY}\n[[allow]]\nprincipals = [\"keeper\"]\nmethods = [\"school.v1.StudentService/CreateStudent\"]\n"
        ),
    );
    let mut n = 0;
    within_reload("the new policy", || {
        n += 1;
        let attempt = n;
        let shared = shared.clone();
        async move { create(&shared, KEEPER, attempt).await.is_ok() }
    })
    .await;

    // 4. Broken files: refused, counted, and the old ones stay in force.
    replace(&policy, "[[allow]\nthis is not TOML\n");
    replace(&key, &pki.client.key);
    replace(&tokens, "# nobody\n");
    within_reload("the broken files refused", || async {
        let scrape = scrape(metrics).await;
        let errors = |file| {
            value(
                &scrape,
                "student_service_config_reloads_total",
                &[("file", file), ("result", "error")],
            )
        };
        errors("policy") >= 1.0 && errors("tls_cert") >= 1.0 && errors("tokens") >= 1.0
    })
    .await;
    create(&shared, KEEPER, 1000)
        .await
        .expect("the last good policy is still in force");
    list(&shared, NEW).await.expect("the last good tokens too");
    assert_eq!(served_serial(address, &pki).await, "1002");

    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for worker in load {
        failures.extend(worker.await.expect("a load worker"));
    }
    let calls = calls.load(Ordering::Relaxed);
    assert!(calls > 50, "only {calls} calls were made");
    assert_eq!(failures, Vec::<String>::new(), "of {calls} calls");

    let scrape = scrape(metrics).await;
    let reloads = |file, result| {
        value(
            &scrape,
            "student_service_config_reloads_total",
            &[("file", file), ("result", result)],
        )
    };
    assert!(reloads("tls_cert", "ok") >= 1.0);
    assert!(reloads("tokens", "ok") >= 1.0);
    assert!(reloads("policy", "ok") >= 1.0);
    assert_eq!(
        value(&scrape, "student_service_tls_cert_expiry_seconds", &[]),
        SECOND_NOT_AFTER as f64
    );
    server.start_kill().expect("stop the server");
    let _ = server.wait().await;
    let log = std::fs::read_to_string(dir.join("server.log")).expect("the log");
    for line in [
        "tokens file reloaded",
        "authorization policy reloaded",
        "reload refused",
    ] {
        assert!(log.contains(line), "{line:?} not in the log:\n{log}");
    }
    for secret in [KEEPER, OLD, NEW] {
        assert!(!log.contains(secret), "a token in the log");
    }
}

/// A file whose changes no inotify watch can see (the configured path is a symlink into another
/// directory, and the target is rewritten in place) is still reloaded, by the periodic check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_no_event_reports_is_found_by_the_periodic_check() {
    let pki = Pki::new();
    let watched = pki.dir.path().join("watched");
    let elsewhere = pki.dir.path().join("elsewhere");
    std::fs::create_dir_all(&watched).expect("a directory");
    std::fs::create_dir_all(&elsewhere).expect("a directory");
    let target = elsewhere.join("tokens.txt");
    std::fs::write(&target, format!("keeper {KEEPER}\nold {OLD}\n")).expect("write");
    let tokens = watched.join("tokens.txt");
    std::os::unix::fs::symlink(&target, &tokens).expect("symlink");
    let args = student_service::config::SecurityArgs {
        auth_tokens_file: Some(tokens),
        ..Default::default()
    };
    let server = crate::security::SecureServer::start(&args).await;
    let channel = server.plaintext();
    list(&channel, OLD).await.expect("the old token works");

    // Rewritten in place, in a directory nobody watches.
    std::fs::write(&target, format!("keeper {KEEPER}\nnew {NEW}\n")).expect("rewrite");
    let took = within_reload("the token removed by an unwatched change", || async {
        matches!(list(&channel, OLD).await, Err(s) if s.code() == Code::Unauthenticated)
    })
    .await;
    println!("found by the periodic check after {took:?}");
    list(&channel, NEW).await.expect("the new token works");
    list(&channel, KEEPER).await.expect("the kept token works");
    server.stop().await;
}
