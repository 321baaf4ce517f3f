//! Per-caller authorization (`--authz-policy`): the full allow/deny matrix of every school.v1
//! method for a reader token, an enroller token and an admin known only by the SPIFFE ID of its
//! client certificate, over real mutual TLS; what a denial says; how a bad policy stops the start.

use std::path::PathBuf;

use student_service::config::SecurityArgs;
use tonic::{Code, Status, transport::Channel};

use crate::{
    helpers::{Backend, TestDatabase, error_metadata, error_reason},
    metrics::{scrape, value},
    pki::Pair,
    process::{ServerProcess, free_address},
    security::{Pki, SecureServer, health, in_time, load_error, run_binary, with_token},
};

const READER_TOKEN: &str = "reader-token-8c41f07d2b9e";
const ENROLLER_TOKEN: &str = "enroller-token-3e9a6d51c0f4";
/// In the tokens file, named by no rule.
const INTERN_TOKEN: &str = "intern-token-b27f4e80c6a1";
const ADMIN: &str = "spiffe://school.example/ns/admin/sa/console";

const POLICY: &str = r#"
# Reporting reads.
[[allow]]
principals = ["reader"]
methods = [
  "school.v1.StudentService/List*",
  "school.v1.*/Get*",
  "school.v1.CourseService/SearchCourses",
  "school.v1.CourseService/ListEnrolledStudents",
]

# The registration front end enrolls, and watches what it did.
[[allow]]
principals = ["enroller"]
methods = [
  "school.v1.StudentService/AssignCourse",
  "school.v1.StudentService/BatchAssignCourses",
  "school.v1.StudentService/UnassignCourse",
  "school.v1.StudentService/GetEnrollment",
  "school.v1.EnrollmentEventService/WatchEnrollmentEvents",
]

[[allow]]
principals = ["spiffe://school.example/ns/admin/sa/console"]
methods = ["school.v1.*/*"]
"#;

/// Every method of school.v1, and who the policy above lets call it, written out by hand.
const MATRIX: &[(&str, &[&str])] = &[
    ("school.v1.StudentService/CreateStudent", &["admin"]),
    ("school.v1.StudentService/GetStudent", &["reader", "admin"]),
    ("school.v1.StudentService/UpdateStudent", &["admin"]),
    (
        "school.v1.StudentService/ListStudents",
        &["reader", "admin"],
    ),
    ("school.v1.StudentService/DeleteStudent", &["admin"]),
    (
        "school.v1.StudentService/AssignCourse",
        &["enroller", "admin"],
    ),
    (
        "school.v1.StudentService/BatchAssignCourses",
        &["enroller", "admin"],
    ),
    (
        "school.v1.StudentService/GetEnrollment",
        &["reader", "enroller", "admin"],
    ),
    (
        "school.v1.StudentService/UnassignCourse",
        &["enroller", "admin"],
    ),
    ("school.v1.StudentService/ListCourses", &["reader", "admin"]),
    ("school.v1.CourseService/CreateCourse", &["admin"]),
    ("school.v1.CourseService/GetCourse", &["reader", "admin"]),
    ("school.v1.CourseService/UpdateCourse", &["admin"]),
    (
        "school.v1.CourseService/SearchCourses",
        &["reader", "admin"],
    ),
    ("school.v1.CourseService/DeleteCourse", &["admin"]),
    (
        "school.v1.CourseService/ListEnrolledStudents",
        &["reader", "admin"],
    ),
    (
        "school.v1.EnrollmentEventService/WatchEnrollmentEvents",
        &["enroller", "admin"],
    ),
];

/// A caller of the matrix: its name there, the principal the server should see, its
/// connection and token.
struct Caller {
    name: &'static str,
    principal: &'static str,
    channel: Channel,
    token: Option<&'static str>,
}

fn tokens_file(pki: &Pki) -> PathBuf {
    pki.write(
        "tokens.txt",
        &format!("reader {READER_TOKEN}\nenroller {ENROLLER_TOKEN}\nintern {INTERN_TOKEN}\n"),
    )
}

fn policy_args(pki: &Pki, policy: &str) -> SecurityArgs {
    SecurityArgs {
        auth_tokens_file: Some(tokens_file(pki)),
        authz_policy: Some(pki.write("policy.toml", policy)),
        ..pki.args(true, true, false)
    }
}

/// Calls `method` with an empty request message and says how it ended: the status code of a
/// refusal, or OK once the server accepted the call (its answer to the empty message, often
/// INVALID_ARGUMENT, is the handler's, past authorization). Server-streaming framing works for
/// every method: a refusal is a trailers-only response either way.
async fn call(channel: &Channel, method: &str, token: Option<&str>) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    in_time(grpc.ready())
        .await
        .map_err(|err| Status::unavailable(err.to_string()))?;
    let path = http::uri::PathAndQuery::try_from(format!("/{method}")).expect("a path");
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let request = with_token((), token);
    in_time(grpc.server_streaming(request, path, codec))
        .await
        .map(|_| ())
}

/// Whether the call got past authentication and authorization.
fn admitted(outcome: &Result<(), Status>) -> bool {
    !matches!(outcome, Err(status) if matches!(status.code(), Code::PermissionDenied | Code::Unauthenticated))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_is_allowed_exactly_to_the_principals_the_policy_names() {
    let pki = Pki::new();
    let admin: Pair = pki.authority.issue_uri(ADMIN, "admin console");
    let server = SecureServer::start(&policy_args(&pki, POLICY)).await;
    // The front end's certificate (DNS SAN `ada-client`) carries the tokens.
    let frontend = server.tls("localhost", &pki.ca, Some(&pki.client));
    let console = server.tls("localhost", &pki.ca, Some(&admin));
    let callers = [
        Caller {
            name: "reader",
            principal: "reader",
            channel: frontend.clone(),
            token: Some(READER_TOKEN),
        },
        Caller {
            name: "enroller",
            principal: "enroller",
            channel: frontend.clone(),
            token: Some(ENROLLER_TOKEN),
        },
        Caller {
            name: "admin",
            principal: ADMIN,
            channel: console.clone(),
            token: None,
        },
        Caller {
            name: "intern",
            principal: "intern",
            channel: frontend.clone(),
            token: Some(INTERN_TOKEN),
        },
        // No token: the certificate's identity, which no rule names.
        Caller {
            name: "frontend certificate",
            principal: "ada-client",
            channel: frontend.clone(),
            token: None,
        },
    ];

    for (method, allowed) in MATRIX {
        for caller in &callers {
            let outcome = call(&caller.channel, method, caller.token).await;
            let expected = allowed.contains(&caller.name);
            assert_eq!(
                admitted(&outcome),
                expected,
                "{} calling {method}: {outcome:?}",
                caller.name
            );
            if let (false, Err(status)) = (expected, &outcome) {
                assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
                assert_eq!(error_reason(status), "PERMISSION_DENIED");
                assert_eq!(error_metadata(status, "principal"), caller.principal);
                assert_eq!(error_metadata(status, "method"), *method);
                for token in [READER_TOKEN, ENROLLER_TOKEN, INTERN_TOKEN] {
                    assert!(!format!("{status:?}").contains(token), "{status:?}");
                }
            }
        }
    }

    // A token, when one comes, names the caller whatever the certificate: a bad one is
    // UNAUTHENTICATED even on the admin's connection.
    let forged = call(
        &console,
        "school.v1.CourseService/DeleteCourse",
        Some("not-a-token-anyone-has"),
    )
    .await;
    assert_eq!(forged.expect_err("refused").code(), Code::Unauthenticated);
    // And the admin's certificate with the reader's token is the reader.
    let as_reader = call(
        &console,
        "school.v1.CourseService/DeleteCourse",
        Some(READER_TOKEN),
    )
    .await;
    assert_eq!(
        error_metadata(&as_reader.expect_err("denied"), "principal"),
        "reader"
    );
    // Health stays open to any client the TLS layer lets in.
    health(&frontend).await.expect("health needs no token");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_are_counted_per_principal_the_policy_names_and_others_as_other() {
    let pki = Pki::new();
    let database = TestDatabase::create(&Backend::Sqlite).await;
    let metrics = free_address();
    let tokens = tokens_file(&pki);
    let policy = pki.write(
        "policy.toml",
        "[[allow]]\nprincipals = [\"reader\", \"enroller\"]\nmethods = [\"school.v1.*/Get*\"]\n",
    );
    let server = ServerProcess::start(
        &database.url,
        &[
            ("METRICS_LISTEN", &metrics.to_string()),
            ("AUTH_TOKENS_FILE", tokens.to_str().expect("UTF-8")),
            ("AUTHZ_POLICY", policy.to_str().expect("UTF-8")),
        ],
    )
    .await;
    let channel = server.channel().await;
    let delete = "school.v1.CourseService/DeleteCourse";
    for token in [READER_TOKEN, READER_TOKEN, INTERN_TOKEN] {
        let denied = call(&channel, delete, Some(token)).await;
        assert_eq!(denied.expect_err("denied").code(), Code::PermissionDenied);
    }
    call(
        &channel,
        "school.v1.CourseService/GetCourse",
        Some(READER_TOKEN),
    )
    .await
    .ok();
    let scrape = scrape(metrics).await;
    let denied = |principal| {
        value(
            &scrape,
            "student_service_authz_denied_total",
            &[("principal", principal)],
        )
    };
    assert_eq!(denied("reader"), 2.0);
    assert_eq!(denied("other"), 1.0);
    assert_eq!(
        denied("intern"),
        0.0,
        "a principal no rule names is `other`"
    );
    let handled = value(
        &scrape,
        "grpc_server_handled_total",
        &[
            ("grpc_method", "DeleteCourse"),
            ("grpc_code", "PermissionDenied"),
        ],
    );
    assert_eq!(handled, 3.0);
}

#[test]
fn a_bad_policy_stops_the_start_naming_the_file_and_line() {
    let pki = Pki::new();
    let cases = [
        (
            "[[allow]]\nprincipals = [\"reader\"]\nmethods = [\"school.v1.StudentService/Lst*\"]\n",
            "line 3: method pattern \"school.v1.StudentService/Lst*\" matches no method",
        ),
        (
            "[[allow]]\nprincipals = [\"reader\"]\nmethods = [\"ListCourses\"]\n",
            "line 3: method pattern \"ListCourses\" is malformed",
        ),
        (
            "[[allow]]\nprincipals = [\"reader\"]\nmethods = [\"school.v1.*/Get*\"]\n\n[[allow]]\nprincipals = [\"reader\"]\nmethods = [\"school.v1.*/Get*\"]\n",
            "line 5: this rule repeats the rule on line 1",
        ),
        (
            "[[allow]]\nprincipals = [\"reader\", \"auditor\"]\nmethods = [\"school.v1.*/Get*\"]\n",
            "line 2: principal \"auditor\" is not the NAME of any token",
        ),
        (
            "[[allow]]\nprincipals = [\"reader\"]\nmethods = \"school.v1.*/Get*\"\n",
            "line 3: ",
        ),
    ];
    for (policy, expected) in cases {
        let args = SecurityArgs {
            authz_policy: Some(pki.write("bad-policy.toml", policy)),
            auth_tokens_file: Some(tokens_file(&pki)),
            ..SecurityArgs::default()
        };
        let error = load_error(&args);
        assert!(
            error.starts_with("authorization policy ") && error.contains("bad-policy.toml, "),
            "{error}"
        );
        assert!(error.contains(expected), "{expected:?} in {error}");
    }

    // The binary says the same and exits before touching the database.
    let database = pki.dir.path().join("never.db");
    let tokens = tokens_file(&pki);
    let policy = pki.write(
        "policy.toml",
        "[[allow]]\nprincipals = [\"reader\"]\nmethods = [\"school.v1.CourseService/Drop*\"]\n",
    );
    let (code, stderr) = run_binary(&[
        "--database-url",
        &format!("sqlite:{}", database.display()),
        "--auth-tokens-file",
        &tokens.display().to_string(),
        "--authz-policy",
        &policy.display().to_string(),
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "authorization policy {}, line 3",
            policy.display()
        )),
        "{stderr}"
    );
    assert!(!database.exists(), "the database was touched");

    // A policy needs callers that authenticate.
    let (code, stderr) = run_binary(&["--authz-policy", &policy.display().to_string()]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("--authz-policy needs"), "{stderr}");
}
