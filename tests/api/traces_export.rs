//! How spans travel to the collector, from the real binary: gzipped over OTLP/gRPC when asked,
//! POSTed as protobuf over OTLP/HTTP to a stand-in HTTP receiver that decodes them with the
//! OTLP types, and the spans a collector rejects (`partial_success`) counted as dropped.

use std::{
    convert::Infallible,
    io::Read as _,
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse},
    trace::v1::Span,
};
use prost::Message as _;
use student_service::api::pb;
use tokio::net::TcpListener;

use crate::{
    helpers::{Backend, TestDatabase},
    metrics::{scrape, value},
    process::{ServerProcess, free_address},
    traces::{CALLER_TRACE, Collector, hex, traced},
};

const CREATE_STUDENT: &str = "school.v1.StudentService/CreateStudent";

/// Creates a student in a traced call.
async fn create_student(server: &ServerProcess) {
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_gzipped_over_grpc_when_otel_exporter_otlp_compression_is_gzip() {
    let database = TestDatabase::create(&Backend::Sqlite).await;
    let collector = Collector::default();
    let (collector_address, _stop_collector) = collector.start().await;
    let endpoint = format!("http://{collector_address}");
    let server = ServerProcess::start(
        &database.url,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    create_student(&server).await;

    let spans = collector
        .wait_for(|spans| spans.iter().any(|s| s.name == CREATE_STUDENT))
        .await;
    assert!(spans.iter().any(|s| hex(&s.trace_id) == CALLER_TRACE));
    let encodings = collector.encodings.lock().expect("lock").clone();
    assert!(!encodings.is_empty());
    for encoding in encodings {
        assert_eq!(encoding.as_deref(), Some("gzip"));
    }
    server.terminate();
    assert!(server.wait(Duration::from_secs(15)).await.success());
}

/// A collector that takes an export but rejects some of its spans says so in the answer's
/// `partial_success`: those spans are lost, and counted as dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_a_collector_rejects_in_partial_success_are_counted_as_dropped() {
    let database = TestDatabase::create(&Backend::Sqlite).await;
    let collector = Collector::rejecting(1);
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
    create_student(&server).await;
    collector
        .wait_for(|spans| spans.iter().any(|s| s.name == CREATE_STUDENT))
        .await;

    // Every export the collector answered so far rejected a span: the counter catches up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let rejected = collector.rejected.load(Ordering::SeqCst) as f64;
        let dropped = value(
            &scrape(metrics_address).await,
            "student_service_trace_spans_dropped_total",
            &[],
        );
        if rejected >= 1.0 && dropped == rejected {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{rejected} spans rejected by the collector, {dropped} counted as dropped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.terminate();
    assert!(server.wait(Duration::from_secs(15)).await.success());
}

/// What an OTLP/HTTP receiver saw of one request.
#[derive(Debug, Clone)]
struct HttpExport {
    method: String,
    path: String,
    content_type: Option<String>,
    content_encoding: Option<String>,
    api_key: Option<String>,
}

/// Receives OTLP/HTTP (protobuf) as a Collector's `otlp` receiver does on port 4318: decodes
/// each body with the OTLP types (gunzipped when it says gzip) and keeps the spans.
#[derive(Clone, Default)]
struct HttpCollector {
    spans: Arc<Mutex<Vec<Span>>>,
    exports: Arc<Mutex<Vec<HttpExport>>>,
}

impl HttpCollector {
    async fn start(&self) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let collector = self.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let collector = collector.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let collector = collector.clone();
                        async move { Ok::<_, Infallible>(collector.receive(request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        address
    }

    async fn receive(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        let export = HttpExport {
            method: request.method().to_string(),
            path: request.uri().path().to_owned(),
            content_type: header("content-type"),
            content_encoding: header("content-encoding"),
            api_key: header("api-key"),
        };
        let gzipped = export.content_encoding.as_deref() == Some("gzip");
        self.exports.lock().expect("lock").push(export);
        let body = request
            .into_body()
            .collect()
            .await
            .expect("a body")
            .to_bytes();
        let body = if gzipped {
            let mut plain = Vec::new();
            flate2::read::GzDecoder::new(&body[..])
                .read_to_end(&mut plain)
                .expect("gzip");
            Bytes::from(plain)
        } else {
            body
        };
        let request = ExportTraceServiceRequest::decode(body).expect("an OTLP export request");
        let spans = request
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans);
        self.spans.lock().expect("lock").extend(spans);
        let answer = ExportTraceServiceResponse::default().encode_to_vec();
        Response::builder()
            .header("content-type", "application/x-protobuf")
            .body(Full::new(Bytes::from(answer)))
            .expect("a response")
    }

    async fn wait_for(&self, ready: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        for _ in 0..400 {
            let spans = self.spans.lock().expect("lock").clone();
            if ready(&spans) {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the HTTP collector never got the spans: {:?}", self.exports);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_posts_the_spans_gzipped_to_v1_traces() {
    let database = TestDatabase::create(&Backend::Sqlite).await;
    let collector = HttpCollector::default();
    let address = collector.start().await;
    let endpoint = format!("http://{address}");
    let server = ServerProcess::start(
        &database.url,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s3cret"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    create_student(&server).await;

    let spans = collector
        .wait_for(|spans| spans.iter().any(|s| s.name == CREATE_STUDENT))
        .await;
    let call = spans
        .iter()
        .find(|s| s.name == CREATE_STUDENT)
        .expect("the call's span");
    assert_eq!(hex(&call.trace_id), CALLER_TRACE);
    assert!(
        spans.iter().any(|s| s.parent_span_id == call.span_id),
        "no database span under the call: {spans:?}"
    );
    let exports = collector.exports.lock().expect("lock").clone();
    for export in exports {
        assert_eq!(export.method, "POST");
        assert_eq!(export.path, "/v1/traces");
        assert_eq!(
            export.content_type.as_deref(),
            Some("application/x-protobuf")
        );
        assert_eq!(export.content_encoding.as_deref(), Some("gzip"));
        assert_eq!(export.api_key.as_deref(), Some("s3cret"));
    }
    server.terminate();
    assert!(server.wait(Duration::from_secs(15)).await.success());
}
