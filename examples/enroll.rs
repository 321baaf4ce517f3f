//! How a calling service should use student-service, with the generated tonic client:
//!
//! - a deadline on every call (`grpc-timeout`), so a slow server costs a bounded wait;
//! - retries with exponential backoff and full jitter for RESOURCE_EXHAUSTED and ABORTED (the
//!   server did not do the work) and UNAVAILABLE (it may have): every call here is safe to
//!   repeat, creates included, because each create carries a `request_id` made once and sent
//!   again with each retry (AIP-155: the retry answers the first result). The same policy as
//!   docs/clients.md's service config, which tonic cannot load. Never for INVALID_ARGUMENT or
//!   FAILED_PRECONDITION: the same request fails the same way;
//! - decisions taken on the `ErrorInfo` reason (COURSE_FULL vs COURSE_NOT_FOUND), not on the
//!   message text, which is for people;
//! - paging with `next_page_token` until it is empty;
//! - TLS (`--ca-cert`) and a bearer token (`--token` or `STUDENT_SERVICE_TOKEN`) when configured.
//!
//! It enrolls a student in a course of one seat, then sees a second student refused as the
//! course is full and a third call refused for an unknown course, and lists the courses page by
//! page. It exits non-zero if any answer is not the expected one, so CI runs it.
//!
//! ```sh
//! cargo run --example enroll -- --target http://127.0.0.1:50051
//! cargo run --example enroll -- --target https://school.internal:50051 --ca-cert ca.pem --token T
//! ```

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;
use student_service::api::pb::{
    AssignCourseRequest, CreateCourseRequest, CreateStudentRequest, ListCoursesRequest,
    course_service_client::CourseServiceClient, student_service_client::StudentServiceClient,
};
use tonic::{
    Code, Request, Status,
    metadata::AsciiMetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};
use tonic_types::StatusExt;

/// The deadline of each attempt.
const DEADLINE: Duration = Duration::from_secs(2);
/// Attempts per call, the first included.
const MAX_ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

#[derive(Parser)]
struct Args {
    /// The server, `http://HOST:PORT` or `https://HOST:PORT`.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    /// PEM CA certificate to verify the server with (TLS).
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// The name the server's certificate carries, when it differs from the target's host.
    #[arg(long)]
    tls_domain: Option<String>,
    /// Bearer token, when the server requires one.
    #[arg(long, env = "STUDENT_SERVICE_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// Adds `authorization: Bearer TOKEN` to every call when a token is configured.
#[derive(Clone)]
struct Bearer(Option<AsciiMetadataValue>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

type Students = StudentServiceClient<InterceptedService<Channel, Bearer>>;
type Courses = CourseServiceClient<InterceptedService<Channel, Bearer>>;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => {
            println!("done: every answer was the expected one");
            ExitCode::SUCCESS
        }
        Err(problem) => {
            eprintln!("FAILED: {problem}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let (students, courses) = connect(&args)?;
    // Unique per run, so the example can run again against the same database.
    let run = fastrand::u32(..);

    // One request_id per logical create, the same in each of its attempts.
    let request_id = new_request_id();
    let ada = call("CreateStudent", || {
        let (mut client, request) = (
            students.clone(),
            CreateStudentRequest {
                name: "Ada Lovelace".into(),
                email: format!("ada.{run}@example.com"),
                request_id: request_id.clone(),
            },
        );
        async move { client.create_student(with_deadline(request)).await }
    })
    .await
    .map_err(describe)?;
    let request_id = new_request_id();
    let grace = call("CreateStudent", || {
        let (mut client, request) = (
            students.clone(),
            CreateStudentRequest {
                name: "Grace Hopper".into(),
                email: format!("grace.{run}@example.com"),
                request_id: request_id.clone(),
            },
        );
        async move { client.create_student(with_deadline(request)).await }
    })
    .await
    .map_err(describe)?;
    let mut course_ids = Vec::new();
    for (code, capacity) in [(format!("ONE-{run}"), 1), (format!("ANY-{run}"), 0)] {
        let request_id = new_request_id();
        let course = call("CreateCourse", || {
            let (mut client, request) = (
                courses.clone(),
                CreateCourseRequest {
                    code: code.clone(),
                    title: "Analytical Engines".into(),
                    capacity,
                    request_id: request_id.clone(),
                },
            );
            async move { client.create_course(with_deadline(request)).await }
        })
        .await
        .map_err(describe)?;
        course_ids.push(course.id);
    }
    let (one_seat, unlimited) = (course_ids[0], course_ids[1]);

    for course_id in [one_seat, unlimited] {
        let assigned = assign(&students, ada.id, course_id)
            .await
            .map_err(describe)?;
        println!(
            "enrolled Ada in course {course_id} (created: {})",
            assigned.created
        );
    }
    // A second student on the one-seat course: the reason says why, and whether to retry.
    match assign(&students, grace.id, one_seat).await {
        Err(status) if reason(&status) == "COURSE_FULL" => {
            println!("course {one_seat} is full: offer the waiting list, do not retry");
        }
        other => return Err(format!("expected COURSE_FULL, got {other:?}")),
    }
    match assign(&students, grace.id, i64::from(i32::MAX)).await {
        Err(status) if reason(&status) == "COURSE_NOT_FOUND" => {
            println!(
                "course {} does not exist: fix the id, do not retry",
                i32::MAX
            );
        }
        other => return Err(format!("expected COURSE_NOT_FOUND, got {other:?}")),
    }

    let listed = list_all_courses(&students, ada.id)
        .await
        .map_err(describe)?;
    println!("Ada's courses, one page at a time: {listed:?}");
    if listed != [one_seat, unlimited] {
        return Err(format!(
            "expected courses {:?}, listed {listed:?}",
            [one_seat, unlimited]
        ));
    }
    Ok(())
}

fn connect(args: &Args) -> Result<(Students, Courses), String> {
    let mut endpoint = Endpoint::from_shared(args.target.clone())
        .map_err(|err| format!("bad --target {}: {err}", args.target))?
        .connect_timeout(Duration::from_secs(5));
    if let Some(ca) = &args.ca_cert {
        let pem =
            std::fs::read(ca).map_err(|err| format!("cannot read {}: {err}", ca.display()))?;
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
        if let Some(domain) = &args.tls_domain {
            tls = tls.domain_name(domain.clone());
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|err| format!("TLS: {err}"))?;
    }
    let token = match &args.token {
        Some(token) => Some(
            format!("Bearer {token}")
                .parse()
                .map_err(|_| "the token must be printable ASCII".to_owned())?,
        ),
        None => None,
    };
    // One HTTP/2 connection carries every call. Lazy: it connects at the first call and
    // reconnects by itself when it drops, and a server that is not up yet makes that call fail
    // UNAVAILABLE, which `call` retries, rather than failing the program at start.
    let channel = endpoint.connect_lazy();
    let bearer = Bearer(token);
    Ok((
        StudentServiceClient::with_interceptor(channel.clone(), bearer.clone()),
        CourseServiceClient::with_interceptor(channel, bearer),
    ))
}

/// Clients are cheap handles on one channel: each attempt clones one to own its call.
///
/// AssignCourse is safe to retry: a repeat of a call that did enroll answers `created: false`.
async fn assign(
    students: &Students,
    student_id: i64,
    course_id: i64,
) -> Result<student_service::api::pb::AssignCourseResponse, Status> {
    call("AssignCourse", || {
        let mut client = students.clone();
        let request = AssignCourseRequest {
            student_id,
            course_id,
        };
        async move { client.assign_course(with_deadline(request)).await }
    })
    .await
}

/// Every course id of a student, following `next_page_token` until the last page.
async fn list_all_courses(students: &Students, student_id: i64) -> Result<Vec<i64>, Status> {
    let mut ids = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = call("ListCourses", || {
            let (mut client, request) = (
                students.clone(),
                ListCoursesRequest {
                    student_id,
                    page_size: 1,
                    page_token: page_token.clone(),
                },
            );
            async move { client.list_courses(with_deadline(request)).await }
        })
        .await?;
        ids.extend(page.courses.iter().map(|course| course.id));
        if page.next_page_token.is_empty() {
            return Ok(ids);
        }
        page_token = page.next_page_token;
    }
}

/// The request with this attempt's deadline (sent as `grpc-timeout`; the server stops the call
/// when it passes).
fn with_deadline<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(DEADLINE);
    request
}

/// A random (version 4) UUID, for a create's `request_id`.
fn new_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Runs `attempt` until it succeeds, fails with a code not worth retrying, or has been tried
/// `MAX_ATTEMPTS` times, sleeping an exponential backoff with full jitter between attempts.
async fn call<T, F, Fut>(name: &str, mut attempt: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, Status>>,
{
    let mut backoff = FIRST_BACKOFF;
    for attempt_number in 1.. {
        match attempt().await {
            Ok(response) => return Ok(response.into_inner()),
            Err(status) if is_retryable(&status) && attempt_number < MAX_ATTEMPTS => {
                let pause = backoff.mul_f64(fastrand::f64());
                eprintln!(
                    "{name}: {:?} ({}); retrying in {pause:?}",
                    status.code(),
                    reason(&status)
                );
                tokio::time::sleep(pause).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(status) => return Err(status),
        }
    }
    unreachable!("the loop returns by its last attempt")
}

/// RESOURCE_EXHAUSTED: the server was at its limit and refused the call unread.
/// ABORTED: a concurrent change got in the way; nothing was written.
/// UNAVAILABLE: the server, its database or the connection failed; the work may or may not
/// have been done, which a repeat of any call here tells apart (reads and AssignCourse are
/// idempotent, creates carry a request_id).
/// DEADLINE_EXCEEDED is left out: the deadline is spent.
fn is_retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::ResourceExhausted | Code::Aborted | Code::Unavailable
    )
}

/// The `ErrorInfo` reason of a failed call (every error of this service carries one).
fn reason(status: &Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
        .unwrap_or_default()
}

fn describe(status: Status) -> String {
    format!(
        "{:?} {} ({})",
        status.code(),
        status.message(),
        reason(&status)
    )
}
