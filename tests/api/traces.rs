//! Traces from the real binary, received by a stand-in for an OpenTelemetry Collector (a tonic
//! server implementing OTLP's TraceService): the server span continues the caller's trace, has
//! the RPC attributes, and parents the database spans; a collector that is gone costs calls
//! nothing; log lines name the trace.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
    trace::v1::{Span, span::SpanKind, status::StatusCode},
};
use sqlx::Connection as _;
use student_service::api::pb::{self, student_service_client::StudentServiceClient};
use tokio::{io::AsyncReadExt, net::TcpListener, process::Command, sync::oneshot};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request, codec::CompressionEncoding, transport::Channel};

use crate::{
    helpers::with_host,
    helpers::{Backend, TestDatabase, on_both_backends},
    lifecycle::postgres_address,
    metrics::{scrape, value},
    process::{ServerProcess, create_ada, free_address},
    proxy::Proxy,
    reliability::raw::{RawClient, message},
};

on_both_backends!(the_server_span_continues_the_callers_trace_and_parents_the_database_spans);

pub(crate) const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const CALLER_STATE: &str = "congo=t61rcWkgMzE";

/// Receives spans as an OpenTelemetry Collector would, and keeps them; a slow one takes
/// `delay` to answer each export, a failing one answers UNAVAILABLE to the next `failures`, a
/// picky one rejects up to `reject` spans of each export (`partial_success`).
#[derive(Clone, Default)]
pub(crate) struct Collector {
    pub(crate) spans: Arc<Mutex<Vec<Span>>>,
    delay: Duration,
    failures: Arc<AtomicUsize>,
    attempts: Arc<AtomicUsize>,
    /// The `schema_url` of each resource and scope received.
    schema_urls: Arc<Mutex<Vec<String>>>,
    /// The `grpc-encoding` of each export received (`None`: uncompressed).
    pub(crate) encodings: Arc<Mutex<Vec<Option<String>>>>,
    reject: usize,
    /// The spans rejected so far.
    pub(crate) rejected: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        tokio::time::sleep(self.delay).await;
        self.attempts.fetch_add(1, Ordering::SeqCst);
        let failing = self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if failing.is_ok() {
            return Err(tonic::Status::unavailable("the collector is restarting"));
        }
        let encoding = request.metadata().get("grpc-encoding");
        let encoding = encoding
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        self.encodings.lock().expect("lock").push(encoding);
        let request = request.into_inner();
        let mut schema_urls = self.schema_urls.lock().expect("lock");
        for resource in &request.resource_spans {
            schema_urls.push(resource.schema_url.clone());
            schema_urls.extend(resource.scope_spans.iter().map(|s| s.schema_url.clone()));
        }
        let spans = request
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans);
        let spans: Vec<Span> = spans.collect();
        let rejected = self.reject.min(spans.len());
        self.spans.lock().expect("lock").extend(spans);
        self.rejected.fetch_add(rejected, Ordering::SeqCst);
        let partial_success = (self.reject > 0).then(|| ExportTracePartialSuccess {
            rejected_spans: i64::try_from(rejected).expect("a few spans"),
            error_message: "span too old".into(),
        });
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success,
        }))
    }
}

impl Collector {
    /// A collector that rejects up to `spans` spans of each export.
    pub(crate) fn rejecting(spans: usize) -> Self {
        Self {
            reject: spans,
            ..Self::default()
        }
    }

    /// Serves OTLP on a free port until the returned sender is dropped or used; takes gzipped
    /// requests as a Collector does.
    pub(crate) async fn start(&self) -> (SocketAddr, oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let (stop, stopped) = oneshot::channel::<()>();
        let service =
            TraceServiceServer::new(self.clone()).accept_compressed(CompressionEncoding::Gzip);
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await;
        });
        (address, stop)
    }

    /// The spans received so far, once `ready` holds for them (waits up to 20 s).
    pub(crate) async fn wait_for(&self, ready: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        for _ in 0..400 {
            let spans = self.spans.lock().expect("lock").clone();
            if ready(&spans) {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the collector never got the spans: {:?}",
            self.spans.lock().expect("lock")
        );
    }
}

pub(crate) fn traced<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    let traceparent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let metadata = request.metadata_mut();
    metadata.insert("traceparent", traceparent.parse().expect("ASCII"));
    metadata.insert("tracestate", CALLER_STATE.parse().expect("ASCII"));
    request
}

/// A client, Ada, and a course of `capacity` seats.
async fn ada_and_course(
    server: &ServerProcess,
    code: &str,
    capacity: i32,
) -> (StudentServiceClient<Channel>, pb::Student, pb::Course) {
    let (mut students, mut courses) = server.clients().await;
    let ada = create_ada(&mut students).await;
    let request = pb::CreateCourseRequest {
        code: code.into(),
        title: format!("Course {code}"),
        capacity,
        request_id: String::new(),
    };
    let course = courses
        .create_course(request)
        .await
        .expect("create")
        .into_inner();
    (students, ada, course)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(span: &Span, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.clone()?.value)
}

fn text(value: &str) -> Option<Value> {
    Some(Value::StringValue(value.to_owned()))
}

async fn the_server_span_continues_the_callers_trace_and_parents_the_database_spans(
    backend: Backend,
) {
    let database = TestDatabase::create(&backend).await;
    let collector = Collector::default();
    let (collector_address, stop_collector) = collector.start().await;
    let endpoint = format!("http://{collector_address}");
    let server = ServerProcess::start(
        &database.url,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_SERVICE_NAME", "student-service-test"),
        ],
    )
    .await;
    let (mut students, ada, course) = ada_and_course(&server, "ONE", 1).await;

    let request = pb::AssignCourseRequest {
        student_id: ada.id,
        course_id: course.id,
    };
    students
        .assign_course(traced(request))
        .await
        .expect("assign");
    let request = pb::AssignCourseRequest {
        student_id: 999_999,
        course_id: course.id,
    };
    let missing = students.assign_course(traced(request)).await;
    assert_eq!(missing.expect_err("unknown student").code(), Code::NotFound);

    let name = "school.v1.StudentService/AssignCourse";
    let spans = collector
        .wait_for(|spans| spans.iter().filter(|s| s.name == name).count() == 2)
        .await;
    let servers: Vec<&Span> = spans.iter().filter(|s| s.name == name).collect();
    for server_span in &servers {
        assert_eq!(hex(&server_span.trace_id), CALLER_TRACE, "{server_span:?}");
        assert_eq!(
            hex(&server_span.parent_span_id),
            CALLER_SPAN,
            "{server_span:?}"
        );
        assert_eq!(server_span.kind, SpanKind::Server as i32);
        assert_eq!(server_span.trace_state, CALLER_STATE);
        assert_eq!(attribute(server_span, "rpc.system"), text("grpc"));
        assert_eq!(
            attribute(server_span, "rpc.service"),
            text("school.v1.StudentService")
        );
        assert_eq!(attribute(server_span, "rpc.method"), text("AssignCourse"));
        // NOT_FOUND is the caller's mistake, not a server error: the status stays unset.
        let status = server_span.status.clone().unwrap_or_default();
        assert_ne!(status.code, StatusCode::Error as i32, "{server_span:?}");
    }
    let codes: Vec<Option<Value>> = servers
        .iter()
        .map(|s| attribute(s, "rpc.grpc.status_code"))
        .collect();
    assert!(codes.contains(&Some(Value::IntValue(0))), "{codes:?}");
    assert!(
        codes.contains(&Some(Value::IntValue(Code::NotFound as i64))),
        "{codes:?}"
    );
    // Database work of the call: its CLIENT spans are children of the server span, with the
    // system and operation and no bound values.
    let system = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres { .. } => "postgresql",
    };
    for server_span in &servers {
        let children: Vec<&Span> = spans
            .iter()
            .filter(|s| s.parent_span_id == server_span.span_id)
            .collect();
        assert!(
            !children.is_empty(),
            "no database span under {server_span:?}"
        );
        for child in children {
            assert_eq!(child.kind, SpanKind::Client as i32, "{child:?}");
            assert_eq!(attribute(child, "db.system"), text(system), "{child:?}");
            assert_eq!(hex(&child.trace_id), CALLER_TRACE);
            assert_eq!(child.trace_state, CALLER_STATE);
            let values = format!("{:?}", child.attributes);
            assert!(
                !values.contains("999999") && !values.contains("ada@"),
                "{values}"
            );
        }
    }
    if matches!(backend, Backend::Sqlite) {
        // On SQLite, the wait in the group commit is a span of the call too.
        let waited = spans.iter().any(|s| {
            s.name == "sqlite group commit" && servers.iter().any(|p| p.span_id == s.parent_span_id)
        });
        assert!(waited, "no group commit span under the AssignCourse spans");
    }
    // Without a traceparent, a root span of a new trace.
    students
        .get_student(pb::GetStudentRequest { student_id: ada.id })
        .await
        .expect("get");
    let spans = collector
        .wait_for(|spans| spans.iter().any(|s| s.name.ends_with("/GetStudent")))
        .await;
    let root = spans
        .iter()
        .find(|s| s.name.ends_with("/GetStudent"))
        .expect("span");
    assert!(root.parent_span_id.is_empty(), "{root:?}");
    assert_ne!(hex(&root.trace_id), CALLER_TRACE);

    // The collector goes away: calls still succeed.
    let _ = stop_collector.send(());
    for _ in 0..200 {
        students
            .get_student(traced(pb::GetStudentRequest { student_id: ada.id }))
            .await
            .expect("calls succeed with no collector");
    }
    server.terminate();
    assert!(server.wait(Duration::from_secs(15)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_name_the_callers_trace_even_when_traces_are_off() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let address = free_address();
    let mut child = Command::new(env!("CARGO_BIN_EXE_student-service"))
        .env(
            "DATABASE_URL",
            format!("sqlite:{}", dir.path().join("logs.db").display()),
        )
        .env("LISTEN_ADDR", address.to_string())
        .env("RUST_LOG", "info")
        .env("LOG_FORMAT", "json")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start");
    let channel = loop {
        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("http://{address}")).expect("uri");
        if let Ok(channel) = endpoint.connect().await {
            break channel;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut students = pb::student_service_client::StudentServiceClient::new(channel);
    let unknown = students
        .get_student(traced(pb::GetStudentRequest { student_id: 7 }))
        .await;
    assert_eq!(unknown.expect_err("unknown").code(), Code::NotFound);
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().expect("running").to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let mut logs = String::new();
    let mut stderr = child.stderr.take().expect("piped");
    tokio::time::timeout(Duration::from_secs(15), stderr.read_to_string(&mut logs))
        .await
        .expect("the server exits")
        .expect("read logs");
    let finished = logs
        .lines()
        .find(|line| line.contains("GetStudent") && line.contains("finished"))
        .unwrap_or_else(|| panic!("no line for the call in {logs}"));
    assert!(
        finished.contains(&format!("\"trace_id\":\"{CALLER_TRACE}\"")),
        "{finished}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_still_buffered_at_shutdown_are_exported_before_exit() {
    let database = TestDatabase::create(&Backend::Sqlite).await;
    let collector = Collector::default();
    let (collector_address, _stop_collector) = collector.start().await;
    let endpoint = format!("http://{collector_address}");
    // A batch delay of a minute: nothing is exported on schedule during this test, only at exit.
    let server = ServerProcess::start(
        &database.url,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "60000"),
        ],
    )
    .await;
    let (mut students, _) = server.clients().await;
    let request = pb::CreateStudentRequest {
        name: "Ada".into(),
        email: "ada@example.com".into(),
        request_id: String::new(),
    };
    students
        .create_student(traced(request))
        .await
        .expect("create");
    assert!(
        collector.spans.lock().expect("lock").is_empty(),
        "exported before shutdown: the test proves nothing"
    );

    server.terminate();
    assert!(server.wait(Duration::from_secs(15)).await.success());

    let spans = collector.spans.lock().expect("lock").clone();
    let name = "school.v1.StudentService/CreateStudent";
    assert!(
        spans
            .iter()
            .any(|s| s.name == name && hex(&s.trace_id) == CALLER_TRACE),
        "the buffered span was not flushed at exit: {spans:?}"
    );
}

/// A collector slower than the calls: the spans that find the export queue full are dropped and
/// counted, and every call still succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_a_slow_collector_cannot_take_are_dropped_and_counted() {
    let database = TestDatabase::create(&Backend::Sqlite).await;
    let collector = Collector {
        delay: Duration::from_secs(5),
        ..Collector::default()
    };
    let (collector_address, _stop_collector) = collector.start().await;
    let endpoint = format!("http://{collector_address}");
    let metrics_address = free_address();
    let server = ServerProcess::start(
        &database.url,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "8"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4"),
            ("OTEL_BSP_SCHEDULE_DELAY", "10"),
            ("METRICS_LISTEN", &metrics_address.to_string()),
        ],
    )
    .await;
    let (mut students, _) = server.clients().await;
    let ada = create_ada(&mut students).await;
    for _ in 0..50 {
        students
            .get_student(pb::GetStudentRequest { student_id: ada.id })
            .await
            .expect("calls succeed while the collector is slow");
    }

    // 51 calls of two spans each; while the collector holds its first batch of 4 for 5 s, at
    // most 8 more wait in the queue: the others are dropped.
    let dropped = value(
        &scrape(metrics_address).await,
        "student_service_trace_spans_dropped_total",
        &[],
    );
    assert!(dropped >= 51.0, "dropped spans counted: {dropped}");
    server.terminate();
    assert!(server.wait(Duration::from_secs(30)).await.success());
}

/// A client that gives up while its call waits in the database (here on a row lock the test
/// holds): the call is handled as CANCELLED in the metrics, and its server span is exported
/// with that code, so the database span that was under way still has its parent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(test_postgres),
    ignore = "needs PostgreSQL: set TEST_DATABASE_URL (README)"
)]
async fn a_call_its_client_abandons_mid_handler_is_canceled_in_metrics_and_trace() {
    let backend = Backend::postgres();
    let database = TestDatabase::create(&backend).await;
    let collector = Collector::default();
    let (collector_address, _stop_collector) = collector.start().await;
    let endpoint = format!("http://{collector_address}");
    let metrics_address = free_address();
    let server = ServerProcess::start(
        &database.url,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("METRICS_LISTEN", &metrics_address.to_string()),
        ],
    )
    .await;
    let (mut students, ada, course) = ada_and_course(&server, "LOCKED", 5).await;

    // The enrollment trigger updates the course row: hold its lock so the call waits.
    let mut holder = sqlx::PgConnection::connect(&database.url)
        .await
        .expect("connect");
    sqlx::query("BEGIN")
        .execute(&mut holder)
        .await
        .expect("begin");
    sqlx::query("SELECT 1 FROM courses WHERE id = $1 FOR UPDATE")
        .bind(course.id)
        .execute(&mut holder)
        .await
        .expect("lock the course");
    let request = pb::AssignCourseRequest {
        student_id: ada.id,
        course_id: course.id,
    };
    let call = tokio::spawn(async move { students.assign_course(traced(request)).await });
    let mut watcher = sqlx::PgConnection::connect(&database.url)
        .await
        .expect("connect");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_locks WHERE NOT granted")
            .fetch_one(&mut watcher)
            .await
            .expect("pg_locks");
        if waiting > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the call never waited"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Dropping the call resets its HTTP/2 stream.
    call.abort();

    let assign = [
        ("grpc_service", "school.v1.StudentService"),
        ("grpc_method", "AssignCourse"),
    ];
    loop {
        let handled = value(
            &scrape(metrics_address).await,
            "grpc_server_handled_total",
            &[assign[0], assign[1], ("grpc_code", "Canceled")],
        );
        if handled >= 1.0 {
            assert_eq!(handled, 1.0);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the abandoned call was never handled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sqlx::query("ROLLBACK")
        .execute(&mut holder)
        .await
        .expect("rollback");

    let name = "school.v1.StudentService/AssignCourse";
    let spans = collector
        .wait_for(|spans| {
            let server = spans.iter().find(|s| s.name == name);
            server.is_some_and(|server| {
                spans
                    .iter()
                    .any(|s| s.parent_span_id == server.span_id && s.name == "assign_course")
            })
        })
        .await;
    let server_span = spans.iter().find(|s| s.name == name).expect("server span");
    assert_eq!(hex(&server_span.trace_id), CALLER_TRACE);
    assert_eq!(
        attribute(server_span, "rpc.grpc.status_code"),
        Some(Value::IntValue(Code::Cancelled as i64))
    );
    server.terminate();
    assert!(server.wait(Duration::from_secs(15)).await.success());
}

/// A method the server does not have is the caller's mistake (UNIMPLEMENTED): its span is
/// `unknown/unknown`, the code is recorded, and the status is not Error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_of_a_method_the_server_does_not_have_is_no_server_error() {
    let database = TestDatabase::create(&Backend::Sqlite).await;
    let collector = Collector::default();
    let (collector_address, _stop_collector) = collector.start().await;
    let endpoint = format!("http://{collector_address}");
    let server = ServerProcess::start(
        &database.url,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    let raw = RawClient::connect(server.address).await;
    let reply = raw
        .call("/school.v1.StudentService/NoSuchMethod", &[], message(&[]))
        .await
        .expect("an answer");
    assert_eq!(reply.status, Some(Code::Unimplemented as i32));

    let spans = collector
        .wait_for(|spans| spans.iter().any(|s| s.name == "unknown/unknown"))
        .await;
    let span = spans
        .iter()
        .find(|s| s.name == "unknown/unknown")
        .expect("span");
    assert_eq!(
        attribute(span, "rpc.grpc.status_code"),
        Some(Value::IntValue(Code::Unimplemented as i64))
    );
    assert_eq!(span.status, None, "{span:?}");
    server.terminate();
    assert!(server.wait(Duration::from_secs(15)).await.success());
}

/// A collector that answers UNAVAILABLE (restarting, say) still gets the spans: the exporter
/// retries with backoff, as the OTLP specification asks, within the export timeout; one that
/// keeps failing has the batch retried, then dropped and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_a_collector_that_fails_the_first_exports_and_are_dropped_when_it_never_recovers()
 {
    let database = TestDatabase::create(&Backend::Sqlite).await;
    let collector = Collector::default();
    collector.failures.store(2, Ordering::SeqCst);
    let (collector_address, _stop_collector) = collector.start().await;
    let endpoint = format!("http://{collector_address}");
    let metrics_address = free_address();
    let server = ServerProcess::start(
        &database.url,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "5000"),
            ("METRICS_LISTEN", &metrics_address.to_string()),
        ],
    )
    .await;
    let (mut students, _) = server.clients().await;
    let ada = create_ada(&mut students).await;

    let name = "school.v1.StudentService/CreateStudent";
    collector
        .wait_for(|spans| spans.iter().any(|s| s.name == name))
        .await;
    assert!(collector.attempts.load(Ordering::SeqCst) >= 3);
    let dropped = || async {
        value(
            &scrape(metrics_address).await,
            "student_service_trace_spans_dropped_total",
            &[],
        )
    };
    assert_eq!(dropped().await, 0.0);
    // The resource and the scope name the semantic conventions the spans follow.
    let schema_urls = collector.schema_urls.lock().expect("lock").clone();
    assert!(!schema_urls.is_empty());
    for schema_url in schema_urls {
        assert_eq!(schema_url, "https://opentelemetry.io/schemas/1.26.0");
    }

    // Now it never recovers: the batch is tried more than once, then dropped and counted.
    collector.failures.store(usize::MAX, Ordering::SeqCst);
    let before = collector.attempts.load(Ordering::SeqCst);
    students
        .get_student(pb::GetStudentRequest { student_id: ada.id })
        .await
        .expect("calls succeed while the collector fails");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while dropped().await < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the batch was never given up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let attempts = collector.attempts.load(Ordering::SeqCst) - before;
    assert!(attempts >= 2, "{attempts} attempts before dropping");
    server.terminate();
    assert!(server.wait(Duration::from_secs(15)).await.success());
}

/// A call that fails because PostgreSQL is gone (a proxy in between is cut) still has its
/// database span, with status Error: whether the statement broke on a connection the database
/// dropped, or no connection could be had at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(test_postgres),
    ignore = "needs PostgreSQL: set TEST_DATABASE_URL (README)"
)]
async fn a_call_that_fails_because_the_database_is_gone_has_a_database_span_with_error_status() {
    let backend = Backend::postgres();
    let database = TestDatabase::create(&backend).await;
    let proxy = Proxy::start(postgres_address(&database.url).await).await;
    let url = with_host(&database.url, &proxy.address.to_string());
    let collector = Collector::default();
    let (collector_address, _stop_collector) = collector.start().await;
    let endpoint = format!("http://{collector_address}");
    let server = ServerProcess::start(
        &url,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    let (mut students, _) = server.clients().await;
    let ada = create_ada(&mut students).await;

    proxy.cut().await;
    for _ in 0..3 {
        let failed = students
            .get_student(pb::GetStudentRequest { student_id: ada.id })
            .await;
        assert_eq!(failed.expect_err("no database").code(), Code::Unavailable);
    }
    let name = "school.v1.StudentService/GetStudent";
    let spans = collector
        .wait_for(|spans| spans.iter().filter(|s| s.name == name).count() == 3)
        .await;
    for server_span in spans.iter().filter(|s| s.name == name) {
        let children: Vec<&Span> = spans
            .iter()
            .filter(|s| s.parent_span_id == server_span.span_id)
            .collect();
        let failed = children.iter().find(|child| {
            child.kind == SpanKind::Client as i32
                && attribute(child, "db.system") == text("postgresql")
                && attribute(child, "error.type") == text("unavailable")
                && child
                    .status
                    .as_ref()
                    .is_some_and(|status| status.code == StatusCode::Error as i32)
        });
        assert!(
            failed.is_some(),
            "no database span with status Error and error.type under {server_span:?}: {children:?}"
        );
    }
    proxy.restore();
    server.terminate();
    assert!(server.wait(Duration::from_secs(15)).await.success());
}
