//! `/metrics` scraped over real HTTP from the real binary after a known sequence of calls, and
//! read with a Prometheus text parser: exact counts per (method, code), calls refused by the
//! authentication, overload and deadline layers included.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use prometheus_parse::{Scrape, Value};
use student_service::api::pb;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tonic::{Code, Request};

use crate::{
    helpers::{Backend, TestDatabase, on_both_backends},
    process::{ServerProcess, free_address},
    reliability::raw::{RawClient, Unfinished, frame, message},
};

on_both_backends!(
    every_call_is_counted_once_with_its_code_and_labels_carry_no_request_data,
    every_series_a_scrape_shows_is_described,
);

/// A client that closes its connection halfway through a request is gone: tonic answers
/// UNKNOWN to no one, the call counts as CANCELLED (as grpc-go counts it), not as a server error.
#[tokio::test]
async fn a_call_whose_client_closes_the_connection_mid_request_counts_as_canceled() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite:{}", dir.path().join("school.db").display());
    let metrics_address = free_address();
    let metrics = metrics_address.to_string();
    let server = ServerProcess::start(&url, &[("METRICS_LISTEN", &metrics)]).await;
    let list_courses = [
        ("grpc_service", "school.v1.StudentService"),
        ("grpc_method", "ListCourses"),
    ];

    // Half of a 7-byte ListCoursesRequest frame, then the connection closes once the call began.
    let path = "/school.v1.StudentService/ListCourses";
    let call = Unfinished::start(server.address, path, frame(0, 7, &[0x08])).await;
    let started = || async {
        value(
            &scrape(metrics_address).await,
            "grpc_server_started_total",
            &list_courses,
        )
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while started().await < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the call never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    call.close_connection();

    let handled = loop {
        let scrape = scrape(metrics_address).await;
        let handled = value(&scrape, "grpc_server_handled_total", &list_courses);
        if handled >= 1.0 {
            break scrape;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the call never ended"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let with_code = |code| [list_courses[0], list_courses[1], ("grpc_code", code)];
    let canceled = value(
        &handled,
        "grpc_server_handled_total",
        &with_code("Canceled"),
    );
    let unknown = value(&handled, "grpc_server_handled_total", &with_code("Unknown"));
    assert_eq!((canceled, unknown), (1.0, 0.0));
    server.kill().await;
}

/// A path the server does not serve, whether a wrong method of one of its services or a service
/// it does not have, is the client's mistake (UNIMPLEMENTED) and is counted as `unknown` /
/// `unknown`, as docs/observability.md says: under a real service it would read as a failing
/// method of that service.
#[tokio::test]
async fn paths_the_server_does_not_serve_are_counted_as_unknown_unknown() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite:{}", dir.path().join("school.db").display());
    let metrics_address = free_address();
    let metrics = metrics_address.to_string();
    let server = ServerProcess::start(&url, &[("METRICS_LISTEN", &metrics)]).await;
    let raw = RawClient::connect(server.address).await;
    let paths = [
        "/school.v1.StudentService/NoSuchMethod",
        "/school.v1.EnrollmentEventService/NoSuchMethod",
        "/grpc.health.v1.Health/NoSuchMethod",
        "/no.such.Service/Method",
    ];
    for path in paths {
        let reply = raw.call(path, &[], message(&[])).await.expect("an answer");
        assert_eq!(reply.status, Some(Code::Unimplemented as i32), "{path}");
    }

    let scrape = scrape(metrics_address).await;
    let unknown = [
        ("grpc_type", "unary"),
        ("grpc_service", "unknown"),
        ("grpc_method", "unknown"),
    ];
    assert_eq!(value(&scrape, "grpc_server_started_total", &unknown), 4.0);
    let unimplemented = [
        unknown[0],
        unknown[1],
        unknown[2],
        ("grpc_code", "Unimplemented"),
    ];
    assert_eq!(
        value(&scrape, "grpc_server_handled_total", &unimplemented),
        4.0
    );
    for sample in &scrape.samples {
        if sample.labels.get("grpc_method") == Some("unknown") {
            assert_eq!(
                sample.labels.get("grpc_service"),
                Some("unknown"),
                "{sample:?}"
            );
        }
    }
    server.kill().await;
}

/// Every counter of docs/observability.md's metrics table is in the first scrape, at 0, with
/// each label value the table names (and every gRPC method of ours with every code): a counter
/// that appears only at its first increment loses that increment to `rate()` and `increase()`.
/// The table is read from the docs, so a counter documented later is held to this too.
#[tokio::test]
async fn every_documented_counter_is_scraped_at_zero_from_the_start() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite:{}", dir.path().join("school.db").display());
    let metrics_address = free_address();
    let metrics = metrics_address.to_string();
    let server = ServerProcess::start(&url, &[("METRICS_LISTEN", &metrics)]).await;
    let scrape = scrape(metrics_address).await;

    let docs = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/observability.md"
    ))
    .expect("read docs/observability.md");
    let counters = documented_counters(&docs);
    assert!(
        counters.len() >= 8,
        "counters found in the docs: {counters:?}"
    );
    for (name, label_values) in &counters {
        // CPU time is counted by the kernel, not by us; the start-up health checks are calls.
        if name == "process_cpu_seconds_total" {
            continue;
        }
        let samples: Vec<_> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == *name)
            .collect();
        assert!(!samples.is_empty(), "{name} is not in the first scrape");
        assert!(
            scrape.docs.contains_key(name.as_str()),
            "no HELP for {name}"
        );
        for sample in &samples {
            if sample.labels.get("grpc_service") == Some("grpc.health.v1.Health") {
                continue;
            }
            assert_eq!(sample.value, Value::Counter(0.0), "{name} {sample:?}");
        }
        for (label, value) in label_values {
            assert!(
                samples.iter().any(|s| s.labels.get(label) == Some(value)),
                "{name}{{{label}={value:?}}} is not in the first scrape"
            );
        }
    }

    // The gRPC counters: every method of our protos, with every code for the handled ones.
    let methods = school_methods();
    assert!(methods.len() >= 17, "{methods:?}");
    let codes = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    let sample = |name: &str, labels: &[(&str, &str)]| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| s.value.clone())
    };
    for (service, method) in &methods {
        let rpc = [
            ("grpc_service", service.as_str()),
            ("grpc_method", method.as_str()),
        ];
        for name in [
            "grpc_server_started_total",
            "grpc_server_msg_received_total",
            "grpc_server_msg_sent_total",
        ] {
            assert_eq!(
                sample(name, &rpc),
                Some(Value::Counter(0.0)),
                "{name} {rpc:?}"
            );
        }
        for code in codes {
            let labels = [rpc[0], rpc[1], ("grpc_code", code)];
            assert_eq!(
                sample("grpc_server_handled_total", &labels),
                Some(Value::Counter(0.0)),
                "{labels:?}"
            );
        }
    }
    server.kill().await;
}

/// (name, the label values the table names) of every counter row of the docs' metrics table,
/// where a labels cell such as "`reason` (`in_use`, `busy`)" names values.
fn documented_counters(docs: &str) -> Vec<(String, Vec<(String, String)>)> {
    let ticked = |cell: &str| -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    };
    let mut counters = Vec::new();
    for line in docs.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // "| name | type | labels | what |" splits into 6 cells, the outer two empty.
        if cells.len() < 6 || cells[2] != "counter" {
            continue;
        }
        let mut label_values = Vec::new();
        for labelled in cells[3].split(')') {
            if let Some((label, values)) = labelled.split_once('(')
                && let Some(label) = ticked(label).pop()
            {
                for value in ticked(values) {
                    label_values.push((label.clone(), value));
                }
            }
        }
        for name in ticked(cells[1]) {
            counters.push((name, label_values.clone()));
        }
    }
    counters
}

/// (service, method) of every RPC of our protos.
fn school_methods() -> Vec<(String, String)> {
    use prost::Message as _;
    let descriptors = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET)
        .expect("our descriptors decode");
    let mut methods = Vec::new();
    for file in descriptors
        .file
        .iter()
        .filter(|f| f.package() == "school.v1")
    {
        for service in &file.service {
            for method in &service.method {
                methods.push((
                    format!("school.v1.{}", service.name()),
                    method.name().to_owned(),
                ));
            }
        }
    }
    methods
}

const TOKEN: &str = "metrics-test-token-0123456789";

/// `GET path` over HTTP/1.1: (status line, body).
async fn http_get(address: SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(address)
        .await
        .expect("connect to metrics");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

pub(crate) async fn scrape(address: SocketAddr) -> Scrape {
    let (status, body) = http_get(address, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    Scrape::parse(body.lines().map(|line| Ok(line.to_owned()))).expect("valid exposition text")
}

fn with_token<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    let value = format!("Bearer {TOKEN}").parse().expect("ASCII");
    request.metadata_mut().insert("authorization", value);
    request
}

/// A sample's value (counter, gauge or untyped) by name and labels, 0 when absent.
pub(crate) fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

async fn every_call_is_counted_once_with_its_code_and_labels_carry_no_request_data(
    backend: Backend,
) {
    let database = TestDatabase::create(&backend).await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("metrics-test {TOKEN}\n")).expect("write tokens");
    let metrics_address = free_address();
    let server = ServerProcess::start(
        &database.url,
        &[
            ("METRICS_LISTEN", &metrics_address.to_string()),
            ("AUTH_TOKENS_FILE", tokens.to_str().expect("UTF-8 path")),
            ("MAX_IN_FLIGHT", "1"),
            ("REQUEST_TIMEOUT", "1s"),
        ],
    )
    .await;
    let (mut students, mut courses) = server.clients().await;

    // Two students, a course of one seat, one enrollment, one refusal as full, one unknown id.
    let mut ids = Vec::new();
    for (name, email) in [("Ada", "ada@example.com"), ("Bob", "bob@example.com")] {
        let request = pb::CreateStudentRequest {
            name: name.into(),
            email: email.into(),
            request_id: String::new(),
        };
        ids.push(
            students
                .create_student(with_token(request))
                .await
                .expect("create")
                .into_inner()
                .id,
        );
    }
    let request = pb::CreateCourseRequest {
        code: "ONE".into(),
        title: "One seat".into(),
        capacity: 1,
        request_id: String::new(),
    };
    let course = courses
        .create_course(with_token(request))
        .await
        .expect("create")
        .into_inner();
    for (student_id, expected) in [(ids[0], Code::Ok), (ids[1], Code::FailedPrecondition)] {
        let request = pb::AssignCourseRequest {
            student_id,
            course_id: course.id,
        };
        let code = students
            .assign_course(with_token(request))
            .await
            .map_or_else(|s| s.code(), |_| Code::Ok);
        assert_eq!(code, expected);
    }
    let unknown = students
        .get_student(with_token(pb::GetStudentRequest {
            student_id: 999_999,
        }))
        .await;
    assert_eq!(unknown.expect_err("unknown").code(), Code::NotFound);
    // No token: refused by the authentication layer.
    let bare = students
        .get_student(pb::GetStudentRequest { student_id: ids[0] })
        .await;
    assert_eq!(bare.expect_err("no token").code(), Code::Unauthenticated);
    // A call that stops halfway through its request holds the only slot until the server's
    // request timeout cuts it off (DEADLINE_EXCEEDED); meanwhile one more call is refused.
    let raw = RawClient::connect(server.address).await;
    let authorization = format!("Bearer {TOKEN}");
    let held = tokio::spawn(async move {
        let headers = [("authorization", authorization.as_str())];
        raw.call_unfinished(
            "/school.v1.StudentService/GetStudent",
            &headers,
            frame(0, 100, b"\x08\x01"),
        )
        .await
        .expect("the server answers")
        .status
    });
    let started = [("grpc_method", "GetStudent")];
    while value(
        &scrape(metrics_address).await,
        "grpc_server_started_total",
        &started,
    ) < 3.0
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let request = pb::AssignCourseRequest {
        student_id: ids[1],
        course_id: course.id,
    };
    let overloaded = students.assign_course(with_token(request)).await;
    assert_eq!(
        overloaded.expect_err("over the limit").code(),
        Code::ResourceExhausted
    );
    let held = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("cut off")
        .expect("task");
    assert_eq!(held, Some(Code::DeadlineExceeded as i32));

    let scrape = scrape(metrics_address).await;

    let handled = |service: &str, method: &str, code: &str| {
        let labels = [
            ("grpc_type", "unary"),
            ("grpc_service", service),
            ("grpc_method", method),
            ("grpc_code", code),
        ];
        value(&scrape, "grpc_server_handled_total", &labels)
    };
    let students_service = "school.v1.StudentService";
    for (method, code, count) in [
        ("CreateStudent", "OK", 2.0),
        ("AssignCourse", "OK", 1.0),
        ("AssignCourse", "FailedPrecondition", 1.0),
        ("AssignCourse", "ResourceExhausted", 1.0),
        ("GetStudent", "NotFound", 1.0),
        ("GetStudent", "Unauthenticated", 1.0),
        ("GetStudent", "DeadlineExceeded", 1.0),
        ("GetStudent", "OK", 0.0),
    ] {
        assert_eq!(
            handled(students_service, method, code),
            count,
            "{method} {code}"
        );
    }
    assert_eq!(
        handled("school.v1.CourseService", "CreateCourse", "OK"),
        1.0
    );
    // Started equals handled, per method; each handled call is in the latency histogram once,
    // and the buckets only grow.
    let mut handled_per_method: HashMap<(String, String), f64> = HashMap::new();
    for sample in scrape
        .samples
        .iter()
        .filter(|s| s.metric == "grpc_server_handled_total")
    {
        let key = |name| sample.labels.get(name).unwrap_or_default().to_owned();
        if let Value::Counter(v) = sample.value {
            *handled_per_method
                .entry((key("grpc_service"), key("grpc_method")))
                .or_default() += v;
        }
    }
    for ((service, method), handled) in &handled_per_method {
        let labels = [
            ("grpc_service", service.as_str()),
            ("grpc_method", method.as_str()),
        ];
        if service.starts_with("school.v1") {
            assert_eq!(
                value(&scrape, "grpc_server_started_total", &labels),
                *handled,
                "{method}"
            );
        }
        let histogram = scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == "grpc_server_handling_seconds"
                    && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v))
            })
            .expect("a latency histogram per handled method");
        let Value::Histogram(buckets) = &histogram.value else {
            panic!("grpc_server_handling_seconds is not a histogram: {histogram:?}");
        };
        assert!(
            buckets.len() > 5,
            "real buckets, not a summary: {buckets:?}"
        );
        assert!(
            buckets
                .windows(2)
                .all(|pair| pair[0].count <= pair[1].count),
            "{buckets:?}"
        );
        let last = buckets.last().expect("an +Inf bucket");
        assert!(last.less_than.is_infinite());
        let count = value(&scrape, "grpc_server_handling_seconds_count", &labels);
        assert_eq!((last.count, count), (*handled, *handled), "{method}");
    }
    // Messages: CreateStudent read 2 and answered 2; a refused AssignCourse sent nothing.
    let create = [("grpc_method", "CreateStudent")];
    assert_eq!(
        value(&scrape, "grpc_server_msg_received_total", &create),
        2.0
    );
    assert_eq!(value(&scrape, "grpc_server_msg_sent_total", &create), 2.0);
    let assign = [("grpc_method", "AssignCourse")];
    assert_eq!(value(&scrape, "grpc_server_msg_sent_total", &assign), 1.0);
    assert_eq!(
        value(&scrape, "student_service_enrollments_created_total", &[]),
        1.0
    );
    assert_eq!(
        value(
            &scrape,
            "student_service_enrollments_refused_full_total",
            &[]
        ),
        1.0
    );
    assert_eq!(
        value(&scrape, "student_service_health_status", &[("service", "")]),
        1.0
    );
    for name in [
        "student_service_build_info",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_start_time_seconds",
        "student_service_db_pool_max_connections",
    ] {
        assert!(
            scrape.samples.iter().any(|s| s.metric == name),
            "{name} missing"
        );
    }
    // Every metric has HELP text, and no label value carries request data.
    for sample in &scrape.samples {
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| sample.metric.strip_suffix(suffix))
            .unwrap_or(&sample.metric);
        assert!(
            scrape.docs.contains_key(family) || scrape.docs.contains_key(&sample.metric),
            "no HELP for {}",
            sample.metric
        );
        for (name, label) in sample.labels.iter() {
            let request_data = ["ada@example.com", "bob@example.com", "999999", TOKEN];
            assert!(
                !request_data
                    .iter()
                    .any(|data| label.to_lowercase().contains(&data.to_lowercase())),
                "{} has {name}={label:?}",
                sample.metric
            );
        }
    }
    let (not_found, _) = http_get(metrics_address, "/other").await;
    assert_eq!(not_found, "HTTP/1.1 404 Not Found");
    server.terminate();
    assert!(server.wait(Duration::from_secs(10)).await.success());
}

/// Every series the real binary shows, after calls that make the store, the group commit (on
/// SQLite) and the gRPC metrics record, belongs to a family with `# TYPE` and a `# HELP` that is
/// not empty: the catalogue (src/telemetry/catalogue.rs) describes everything that is written.
async fn every_series_a_scrape_shows_is_described(backend: Backend) {
    let database = TestDatabase::create(&backend).await;
    let metrics_address = free_address();
    let server = ServerProcess::start(
        &database.url,
        &[("METRICS_LISTEN", &metrics_address.to_string())],
    )
    .await;
    let (mut students, mut courses) = server.clients().await;
    let student = students
        .create_student(pb::CreateStudentRequest {
            name: "Ada".into(),
            email: "ada@example.com".into(),
            request_id: String::new(),
        })
        .await
        .expect("CreateStudent")
        .into_inner();
    let mut course_ids = Vec::new();
    for code in ["A", "B"] {
        let course = pb::CreateCourseRequest {
            code: code.into(),
            title: code.into(),
            capacity: 1,
            request_id: String::new(),
        };
        let course = courses.create_course(course).await.expect("CreateCourse");
        course_ids.push(course.into_inner().id);
    }
    let assign = pb::AssignCourseRequest {
        student_id: student.id,
        course_id: course_ids[0],
    };
    students.assign_course(assign).await.expect("AssignCourse");
    let batch = pb::BatchAssignCoursesRequest {
        student_id: student.id,
        course_ids: course_ids.clone(),
        request_id: String::new(),
    };
    students
        .batch_assign_courses(batch)
        .await
        .expect("BatchAssignCourses");
    let list = pb::ListCoursesRequest {
        student_id: student.id,
        ..Default::default()
    };
    students.list_courses(list).await.expect("ListCourses");

    let (status, body) = http_get(metrics_address, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let mut described = HashMap::new();
    let mut typed = HashMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            described.insert(name.to_owned(), help.trim().to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            typed.insert(name.to_owned(), kind.to_owned());
        }
    }
    let mut series = 0;
    for line in body
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
    {
        series += 1;
        let name = line.split(['{', ' ']).next().unwrap_or(line);
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|base| typed.get(*base).is_some_and(|kind| kind == "histogram"))
            })
            .unwrap_or(name);
        assert!(typed.contains_key(family), "{name} has no # TYPE");
        assert!(
            described.get(family).is_some_and(|help| !help.is_empty()),
            "{family} has no # HELP"
        );
    }
    for family in [
        "student_service_db_statement_seconds",
        "student_service_enrollments_created_total",
        "grpc_server_handled_total",
    ] {
        assert!(typed.contains_key(family), "{family} was recorded");
    }
    eprintln!(
        "{series} series in {} families, each described",
        typed.len()
    );
}
