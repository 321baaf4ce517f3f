//! TLS, mutual TLS and token authentication, over real TLS with certificates made for each test
//! by rcgen: what each mode lets through, what it refuses, and how bad files fail the start.
//! SQLite only: none of this touches the database.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use rcgen::ExtendedKeyUsagePurpose;
use student_service::{
    api::pb::{
        self, course_service_client::CourseServiceClient,
        student_service_client::StudentServiceClient,
    },
    app::Running,
    config::SecurityArgs,
    security::{Security, SecurityError},
    server::ServerSettings,
};
use tokio_stream::StreamExt;
use tonic::{
    Code, Request, Status,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::{v1, v1alpha};

use crate::{
    helpers::{Backend, TestDatabase, assert_error, pool_settings, start_app, stop_app},
    pki::{Ca, Pair},
};

pub(crate) const ADA_TOKEN: &str = "ada-token-5f3a9c2e8b71d4";
pub(crate) const CI_TOKEN: &str = "ci-token-0d6e2b94f1a7c3";
/// A call gets this long before the test counts it as hung.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a test needs, written to a temporary directory the way an operator would have it.
pub(crate) struct Pki {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) ca: String,
    /// Signs client certificates; the server trusts it for clients.
    pub(crate) authority: Ca,
    pub(crate) server: Pair,
    /// Signed by the CA the server trusts for clients.
    pub(crate) client: Pair,
    /// Signed by a CA the server has never heard of.
    stranger: Pair,
}

impl Pki {
    pub(crate) fn new() -> Pki {
        let ca = Ca::new("student-service test CA");
        let other = Ca::new("some other CA");
        Pki {
            dir: tempfile::tempdir().expect("temporary directory"),
            server: ca.issue(
                &["localhost", "127.0.0.1"],
                ExtendedKeyUsagePurpose::ServerAuth,
            ),
            client: ca.issue(&["ada-client"], ExtendedKeyUsagePurpose::ClientAuth),
            stranger: other.issue(&["mallory-client"], ExtendedKeyUsagePurpose::ClientAuth),
            ca: ca.pem.clone(),
            authority: ca,
        }
    }

    pub(crate) fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write a test file");
        path
    }

    pub(crate) fn tokens_file(&self) -> PathBuf {
        self.write(
            "tokens.txt",
            &format!("# name token\nada {ADA_TOKEN}\n\nci {CI_TOKEN}\n"),
        )
    }

    pub(crate) fn args(&self, tls: bool, mutual: bool, tokens: bool) -> SecurityArgs {
        SecurityArgs {
            tls_cert: tls.then(|| self.write("server.pem", &self.server.cert)),
            tls_key: tls.then(|| self.write("server.key", &self.server.key)),
            tls_client_ca: mutual.then(|| self.write("ca.pem", &self.ca)),
            auth_tokens_file: tokens.then(|| self.tokens_file()),
            auth_reflection: false,
            authz_policy: None,
        }
    }
}

/// The real server with `security`, on 127.0.0.1:0 over a fresh SQLite database.
pub(crate) struct SecureServer {
    pub(crate) address: SocketAddr,
    running: Running,
    _database: TestDatabase,
}

impl SecureServer {
    pub(crate) async fn start(args: &SecurityArgs) -> SecureServer {
        let security = Security::load(args).expect("the security settings load");
        let database = TestDatabase::create(&Backend::Sqlite).await;
        let settings = ServerSettings {
            security,
            ..ServerSettings::default()
        };
        let running = start_app(&database.url, settings, pool_settings()).await;
        SecureServer {
            address: running.address(),
            running,
            _database: database,
        }
    }

    pub(crate) fn plaintext(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.address))
            .expect("uri")
            .connect_lazy()
    }

    /// A TLS channel to `host:port` trusting `ca`, presenting `identity` if given.
    pub(crate) fn tls(&self, host: &str, ca: &str, identity: Option<&Pair>) -> Channel {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        if let Some(pair) = identity {
            tls = tls.identity(Identity::from_pem(&pair.cert, &pair.key));
        }
        // Connect to the bound IPv4 address whatever `host` is; `host` is what the certificate
        // is checked against.
        let tls = if host == "127.0.0.1" {
            tls
        } else {
            tls.domain_name(host)
        };
        Channel::from_shared(format!("https://{}", self.address))
            .expect("uri")
            .tls_config(tls)
            .expect("client TLS settings")
            .connect_lazy()
    }

    pub(crate) async fn stop(self) {
        stop_app(self.running).await;
    }
}

pub(crate) fn with_token<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ascii"),
        );
    }
    request
}

pub(crate) async fn in_time<T>(call: impl Future<Output = T>) -> T {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .expect("the call neither succeeded nor failed in time")
}

async fn list_students(
    channel: &Channel,
    token: Option<&str>,
) -> Result<pb::ListStudentsResponse, Status> {
    in_time(
        StudentServiceClient::new(channel.clone())
            .list_students(with_token(pb::ListStudentsRequest::default(), token)),
    )
    .await
    .map(tonic::Response::into_inner)
}

async fn search_courses(
    channel: &Channel,
    token: Option<&str>,
) -> Result<pb::SearchCoursesResponse, Status> {
    in_time(
        CourseServiceClient::new(channel.clone())
            .search_courses(with_token(pb::SearchCoursesRequest::default(), token)),
    )
    .await
    .map(tonic::Response::into_inner)
}

pub(crate) async fn health(channel: &Channel) -> Result<i32, Status> {
    in_time(
        HealthClient::new(channel.clone()).check(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .map(|response| response.into_inner().status)
}

async fn assert_serving(channel: &Channel) {
    let status = health(channel).await.expect("health answers");
    assert_eq!(status, ServingStatus::Serving as i32);
}

/// The services reflection v1 lists.
pub(crate) async fn reflection_v1(
    channel: &Channel,
    token: Option<&str>,
) -> Result<Vec<String>, Status> {
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let mut responses =
        in_time(client.server_reflection_info(with_token(tokio_stream::iter([request]), token)))
            .await?
            .into_inner();
    match in_time(responses.next())
        .await
        .expect("a response")?
        .message_response
    {
        Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) => {
            Ok(list
                .service
                .into_iter()
                .map(|service| service.name)
                .collect())
        }
        other => panic!("unexpected reflection response {other:?}"),
    }
}

/// Whether reflection v1alpha answers.
async fn reflection_v1alpha(channel: &Channel, token: Option<&str>) -> Result<(), Status> {
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut client =
        v1alpha::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let mut responses =
        in_time(client.server_reflection_info(with_token(tokio_stream::iter([request]), token)))
            .await?
            .into_inner();
    in_time(responses.next()).await.expect("a response")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_clients_that_trust_its_ca_and_refuses_plaintext() {
    let pki = Pki::new();
    let server = SecureServer::start(&pki.args(true, false, false)).await;

    for host in ["localhost", "127.0.0.1"] {
        let channel = server.tls(host, &pki.ca, None);
        list_students(&channel, None)
            .await
            .unwrap_or_else(|status| panic!("TLS call to {host} failed: {status:?}"));
        assert_serving(&channel).await;
    }

    let plaintext = list_students(&server.plaintext(), None).await;
    assert!(plaintext.is_err(), "plaintext was served: {plaintext:?}");
    let plaintext_health = health(&server.plaintext()).await;
    assert!(plaintext_health.is_err(), "plaintext health was served");

    let other_ca = Ca::new("a CA the client trusts instead");
    let untrusted = list_students(&server.tls("localhost", &other_ca.pem, None), None).await;
    assert!(
        untrusted.is_err(),
        "a client that does not trust the server's CA connected"
    );
    let wrong_name = list_students(&server.tls("example.com", &pki.ca, None), None).await;
    assert!(
        wrong_name.is_err(),
        "the certificate was accepted for a name it does not have"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_clients_with_a_certificate_from_the_client_ca() {
    let pki = Pki::new();
    let server = SecureServer::start(&pki.args(true, true, false)).await;

    let anonymous = list_students(&server.tls("localhost", &pki.ca, None), None).await;
    assert!(
        anonymous.is_err(),
        "a client without a certificate got through: {anonymous:?}"
    );
    let stranger =
        list_students(&server.tls("localhost", &pki.ca, Some(&pki.stranger)), None).await;
    assert!(
        stranger.is_err(),
        "a certificate from another CA got through: {stranger:?}"
    );
    let plaintext = list_students(&server.plaintext(), None).await;
    assert!(plaintext.is_err(), "plaintext was served");

    let client = server.tls("localhost", &pki.ca, Some(&pki.client));
    list_students(&client, None)
        .await
        .expect("the client certificate is accepted");
    assert_serving(&client).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_required_and_missing_or_wrong_ones_are_unauthenticated() {
    let pki = Pki::new();
    let server = SecureServer::start(&pki.args(false, false, true)).await;
    let channel = server.plaintext();

    assert_error(
        list_students(&channel, None).await,
        Code::Unauthenticated,
        "UNAUTHENTICATED",
        "missing credentials",
    );
    let wrong = "ada-token-5f3a9c2e8b71d5";
    let status = assert_error(
        list_students(&channel, Some(wrong)).await,
        Code::Unauthenticated,
        "UNAUTHENTICATED",
        "not recognised",
    );
    assert!(
        !status.message().contains(wrong),
        "the token was echoed: {status:?}"
    );
    assert_error(
        search_courses(&channel, Some(wrong)).await,
        Code::Unauthenticated,
        "UNAUTHENTICATED",
        "not recognised",
    );
    let mut basic = Request::new(pb::ListStudentsRequest::default());
    basic.metadata_mut().insert(
        "authorization",
        format!("Basic {ADA_TOKEN}").parse().expect("ascii"),
    );
    assert_error(
        in_time(StudentServiceClient::new(channel.clone()).list_students(basic)).await,
        Code::Unauthenticated,
        "UNAUTHENTICATED",
        "malformed credentials",
    );

    list_students(&channel, Some(ADA_TOKEN))
        .await
        .expect("ada's token works");
    search_courses(&channel, Some(CI_TOKEN))
        .await
        .expect("ci's token works");
    let created = in_time(
        StudentServiceClient::new(channel.clone()).create_student(with_token(
            pb::CreateStudentRequest {
                name: "Ada".into(),
                email: "ada@example.com".into(),
                request_id: String::new(),
            },
            Some(ADA_TOKEN),
        )),
    )
    .await
    .expect("a write with a token works");
    assert_eq!(created.into_inner().email, "ada@example.com");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_stay_open_unless_reflection_is_protected() {
    let pki = Pki::new();
    let open = SecureServer::start(&pki.args(false, false, true)).await;
    let channel = open.plaintext();
    assert_serving(&channel).await;
    let services = reflection_v1(&channel, None)
        .await
        .expect("reflection is open");
    assert!(
        services.iter().any(|s| s == "school.v1.StudentService"),
        "{services:?}"
    );
    reflection_v1alpha(&channel, None)
        .await
        .expect("v1alpha is open");
    open.stop().await;

    let args = SecurityArgs {
        auth_reflection: true,
        ..pki.args(false, false, true)
    };
    let closed = SecureServer::start(&args).await;
    let channel = closed.plaintext();
    assert_serving(&channel).await;
    assert_error(
        reflection_v1(&channel, None).await,
        Code::Unauthenticated,
        "UNAUTHENTICATED",
        "missing credentials",
    );
    assert_error(
        reflection_v1alpha(&channel, Some("not-a-token-at-all")).await,
        Code::Unauthenticated,
        "UNAUTHENTICATED",
        "not recognised",
    );
    let services = reflection_v1(&channel, Some(CI_TOKEN))
        .await
        .expect("reflection with a token");
    assert!(
        services.iter().any(|s| s == "school.v1.CourseService"),
        "{services:?}"
    );
    reflection_v1alpha(&channel, Some(ADA_TOKEN))
        .await
        .expect("v1alpha with a token");
    closed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_three_together_need_the_ca_a_client_certificate_and_a_token() {
    let pki = Pki::new();
    let server = SecureServer::start(&pki.args(true, true, true)).await;
    let client = server.tls("localhost", &pki.ca, Some(&pki.client));

    assert_error(
        list_students(&client, None).await,
        Code::Unauthenticated,
        "UNAUTHENTICATED",
        "missing credentials",
    );
    list_students(&client, Some(CI_TOKEN))
        .await
        .expect("certificate and token");
    let stranger = server.tls("localhost", &pki.ca, Some(&pki.stranger));
    assert!(
        list_students(&stranger, Some(CI_TOKEN)).await.is_err(),
        "a token does not replace the certificate"
    );
    assert_serving(&client).await;
    server.stop().await;
}

pub(crate) fn load_error(args: &SecurityArgs) -> String {
    match Security::load(args) {
        Ok(_) => panic!("{args:?} should not load"),
        Err(err) => chain(&err),
    }
}

/// An error with its causes, as `main` prints it.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

#[test]
fn unusable_tls_files_fail_with_a_message_naming_the_file() {
    let pki = Pki::new();
    let good = pki.args(true, true, false);
    let missing = pki.dir.path().join("nowhere.pem");
    let display = |path: &Path| path.display().to_string();

    let error = load_error(&SecurityArgs {
        tls_cert: Some(missing.clone()),
        ..good.clone()
    });
    assert!(
        error.starts_with(&format!(
            "cannot read the TLS certificate (--tls-cert, TLS_CERT) {}",
            display(&missing)
        )),
        "{error}"
    );
    assert!(error.contains("No such file or directory"), "{error}");

    // Files swapped: the key file holds a certificate, and the other way round.
    let swapped = SecurityArgs {
        tls_cert: good.tls_key.clone(),
        tls_key: good.tls_cert.clone(),
        ..good.clone()
    };
    let error = load_error(&swapped);
    assert!(
        error.contains("holds no PEM certificate") && error.contains("server.key"),
        "{error}"
    );

    let not_a_key = SecurityArgs {
        tls_key: Some(pki.write("cert-as-key.pem", &pki.server.cert)),
        ..good.clone()
    };
    let error = load_error(&not_a_key);
    assert!(
        error.contains("holds no PEM private key") && error.contains("cert-as-key.pem"),
        "{error}"
    );

    let other_key = SecurityArgs {
        tls_key: Some(pki.write("client.key", &pki.client.key)),
        ..good.clone()
    };
    let error = load_error(&other_key);
    assert!(
        error.contains("does not match the TLS certificate")
            && error.contains("client.key")
            && error.contains("server.pem"),
        "{error}"
    );

    let garbage = SecurityArgs {
        tls_cert: Some(pki.write(
            "garbage.pem",
            "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
        )),
        ..good.clone()
    };
    let error = load_error(&garbage);
    assert!(error.contains("garbage.pem"), "{error}");

    let ca_is_a_key = SecurityArgs {
        tls_client_ca: Some(pki.write("ca-is-a-key.pem", &pki.client.key)),
        ..good.clone()
    };
    let error = load_error(&ca_is_a_key);
    assert!(
        error.contains("client CA") && error.contains("ca-is-a-key.pem"),
        "{error}"
    );

    let half = SecurityArgs {
        tls_key: None,
        ..good.clone()
    };
    assert!(matches!(
        Security::load(&half),
        Err(SecurityError::Incomplete(_))
    ));
    Security::load(&good).expect("the good files load");
}

#[test]
fn a_bad_tokens_file_fails_with_its_name_and_line() {
    let pki = Pki::new();
    let path = pki.write(
        "tokens.txt",
        &format!("# callers\nada {ADA_TOKEN}\nci {CI_TOKEN} oops\n"),
    );
    let error = load_error(&SecurityArgs {
        auth_tokens_file: Some(path.clone()),
        ..SecurityArgs::default()
    });
    assert_eq!(
        error,
        format!(
            "tokens file {}, line 3: expected `NAME TOKEN` (two fields separated by spaces), found 3 field(s)",
            path.display()
        )
    );
    assert!(!error.contains(CI_TOKEN));
}

pub(crate) fn run_binary(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_student-service"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .output()
        .expect("run student-service");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_binary_refuses_to_start_with_bad_security_settings() {
    let pki = Pki::new();
    let database = format!("sqlite:{}", pki.dir.path().join("never.db").display());
    let key = pki.write("server.key", &pki.server.key);
    let missing = pki.dir.path().join("missing-cert.pem");

    let (code, stderr) = run_binary(&[
        "--database-url",
        &database,
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        &missing.display().to_string(),
        "--tls-key",
        &key.display().to_string(),
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot read the TLS certificate (--tls-cert, TLS_CERT) {}",
            missing.display()
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        !pki.dir.path().join("never.db").exists(),
        "the database was touched before the files were checked"
    );

    let tokens = pki.write("bad-tokens.txt", &format!("ada {ADA_TOKEN}\nci\n"));
    let (code, stderr) = run_binary(&[
        "--database-url",
        &database,
        "--listen",
        "127.0.0.1:0",
        "--auth-tokens-file",
        &tokens.display().to_string(),
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("bad-tokens.txt, line 2: expected `NAME TOKEN`"),
        "{stderr}"
    );
    assert!(!stderr.contains(ADA_TOKEN), "{stderr}");

    // Flags that need others: a client CA without a server certificate, reflection auth without
    // tokens.
    let ca = pki.write("ca.pem", &pki.ca);
    let (code, stderr) = run_binary(&["--tls-client-ca", &ca.display().to_string()]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--tls-cert"), "{stderr}");
    let (code, stderr) = run_binary(&["--database-url", &database, "--auth-reflection"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("--auth-reflection needs --auth-tokens-file"),
        "{stderr}"
    );
}

/// Kills the child process when dropped, so a failing test leaves no server behind.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_takes_everything_from_the_environment_and_logs_callers_not_tokens() {
    let pki = Pki::new();
    let args = pki.args(true, true, true);
    let path = |p: &Option<PathBuf>| p.as_ref().expect("set").display().to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let log_path = pki.dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let child = Child(
        Command::new(env!("CARGO_BIN_EXE_student-service"))
            .env(
                "DATABASE_URL",
                format!("sqlite:{}", pki.dir.path().join("school.db").display()),
            )
            .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("TLS_CERT", path(&args.tls_cert))
            .env("TLS_KEY", path(&args.tls_key))
            .env("TLS_CLIENT_CA", path(&args.tls_client_ca))
            .env("AUTH_TOKENS_FILE", path(&args.auth_tokens_file))
            .env("AUTH_REFLECTION", "true")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start student-service"),
    );
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .identity(Identity::from_pem(&pki.client.cert, &pki.client.key))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .expect("uri")
        .tls_config(tls)
        .expect("client TLS settings")
        .connect_lazy();
    let started = std::time::Instant::now();
    while health(&channel).await.ok() != Some(ServingStatus::Serving as i32) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never served; log:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    list_students(&channel, Some(CI_TOKEN))
        .await
        .expect("served with TLS, a certificate and a token");
    assert_error(
        reflection_v1(&channel, None).await,
        Code::Unauthenticated,
        "UNAUTHENTICATED",
        "missing credentials",
    );
    drop(child);

    let log = log();
    assert!(
        log.contains("transport=\"mutual TLS\"") && log.contains("tokens=2"),
        "{log}"
    );
    assert!(
        log.lines().any(
            |line| line.contains(r#"method="/school.v1.StudentService/ListStudents""#)
                && line.contains(r#"caller="ci""#)
        ),
        "the caller's name is logged with the call:\n{log}"
    );
    assert!(
        !log.contains(CI_TOKEN) && !log.contains(ADA_TOKEN),
        "a token was logged:\n{log}"
    );
}

/// A client certificate without X.509 v3 extensions (what `openssl x509 -req` makes without an
/// extfile) fails the handshake, and the client sees only a broken connection: the server says
/// why in its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_tls_handshake_is_logged_with_its_reason() {
    let pki = Pki::new();
    let dir = pki.dir.path();
    let openssl = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl (Debian package openssl) runs");
        assert!(status.success(), "openssl {args:?} failed");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "plain-ca.key",
                "-out",
                "plain-ca.pem",
                "-subj",
                "/CN=plain CA",
                "-days",
                "2",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "plain.key",
                "-out",
                "plain.csr",
                "-subj",
                "/CN=plain client",
            ],
        ]
        .concat(),
    );
    openssl(&[
        "x509",
        "-req",
        "-in",
        "plain.csr",
        "-CA",
        "plain-ca.pem",
        "-CAkey",
        "plain-ca.key",
        "-CAcreateserial",
        "-out",
        "plain.pem",
        "-days",
        "2",
    ]);
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).expect("an openssl output");
    let plain = Pair {
        cert: read("plain.pem"),
        key: read("plain.key"),
    };
    assert!(!plain.key.is_empty());

    let database = TestDatabase::create(&Backend::Sqlite).await;
    let address = crate::process::free_address();
    let server = tokio::process::Command::new(env!("CARGO_BIN_EXE_student-service"))
        .env("DATABASE_URL", &database.url)
        .env("LISTEN_ADDR", address.to_string())
        .env("TLS_CERT", pki.write("server.pem", &pki.server.cert))
        .env("TLS_KEY", pki.write("server.key", &pki.server.key))
        .env("TLS_CLIENT_CA", dir.join("plain-ca.pem"))
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start student-service");
    let started = std::time::Instant::now();
    while tokio::net::TcpStream::connect(address).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the server never listened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // tonic's client will not even present such a certificate: openssl's will.
    pki.write("plain-client.pem", &plain.cert);
    let ca = pki.write("trusted-ca.pem", &pki.ca);
    let mut client = Command::new("openssl")
        .args(["s_client", "-connect", &address.to_string(), "-alpn", "h2"])
        .args(["-cert", "plain-client.pem", "-key", "plain.key", "-CAfile"])
        .arg(&ca)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_client runs");
    // With TLS 1.3 the client has finished its side before the server checks its certificate:
    // s_client, its input kept open, waits until the server's alert ends it. (Closed at once, the
    // server would only see the connection end.)
    let started = std::time::Instant::now();
    while client.try_wait().expect("s_client").is_none() && started.elapsed() < CALL_TIMEOUT {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(client.stdin.take());
    client.wait().expect("s_client ends");

    let pid = server.id().expect("the server runs").to_string();
    let sent = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(sent.success());
    let output = tokio::time::timeout(Duration::from_secs(15), server.wait_with_output())
        .await
        .expect("the server exits")
        .expect("its output");
    let log = String::from_utf8_lossy(&output.stderr);
    let line = log
        .lines()
        .find(|line| line.contains("TLS handshake failed"))
        .unwrap_or_else(|| panic!("no handshake failure in the log:\n{log}"));
    assert!(
        line.contains("UnsupportedCertVersion"),
        "the reason is given: {line}"
    );
    assert!(line.contains("127.0.0.1"), "the peer is named: {line}");
    eprintln!("{line}");
}
