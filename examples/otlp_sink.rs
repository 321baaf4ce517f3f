//! An OTLP/gRPC trace sink for benchmarks (`bench/observability_cost.sh`): answers every
//! TraceService/Export as a collector would, keeps nothing, and when stopped (SIGTERM or Ctrl-C)
//! prints how many requests, spans and bytes it received, so a run can check that every span was
//! delivered.
//!
//! It decodes only the envelope (resource spans, scope spans, and each span as bytes), enough to
//! count spans: a collector runs on other machines in production, and here it shares the two
//! cores with the server being measured, so it takes as little of them as it can. The tests'
//! collector stand-in (tests/api/traces.rs) decodes every field.
//!
//! usage: cargo run --release --example otlp_sink -- PORT

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::signal::unix::{SignalKind, signal};
use tonic::{Request, Response, Status, body::Body, server::NamedService};

const EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// `ExportTraceServiceRequest` down to the spans, which stay undecoded.
#[derive(Clone, PartialEq, prost::Message)]
struct ExportRequest {
    #[prost(message, repeated, tag = "1")]
    resource_spans: Vec<ResourceSpans>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ResourceSpans {
    #[prost(message, repeated, tag = "2")]
    scope_spans: Vec<ScopeSpans>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ScopeSpans {
    #[prost(bytes = "bytes", repeated, tag = "2")]
    spans: Vec<Bytes>,
}

/// `ExportTraceServiceResponse` with nothing rejected.
#[derive(Clone, PartialEq, prost::Message)]
struct ExportResponse {}

#[derive(Default)]
struct Sink {
    requests: AtomicU64,
    spans: AtomicU64,
    bytes: AtomicU64,
}

#[derive(Clone, Copy)]
struct Export(&'static Sink);

impl tonic::server::UnaryService<ExportRequest> for Export {
    type Response = ExportResponse;
    type Future = Ready<Result<Response<ExportResponse>, Status>>;

    fn call(&mut self, request: Request<ExportRequest>) -> Self::Future {
        let request = request.into_inner();
        let scopes = request.resource_spans.iter().flat_map(|r| &r.scope_spans);
        let spans = scopes.clone().map(|s| s.spans.len() as u64).sum();
        let bytes: usize = scopes.flat_map(|s| &s.spans).map(Bytes::len).sum();
        self.0.requests.fetch_add(1, Ordering::Relaxed);
        self.0.spans.fetch_add(spans, Ordering::Relaxed);
        self.0.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        ready(Ok(Response::new(ExportResponse {})))
    }
}

impl NamedService for Export {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

impl<B> tower::Service<http::Request<B>> for Export
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let export = *self;
        Box::pin(async move {
            if request.uri().path() != EXPORT {
                return Ok(Status::unimplemented("only TraceService/Export").into_http());
            }
            let codec = tonic_prost::ProstCodec::<ExportResponse, ExportRequest>::default();
            Ok(tonic::server::Grpc::new(codec).unary(export, request).await)
        })
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::args()
        .nth(1)
        .ok_or("usage: otlp_sink PORT")?
        .parse()?;
    let sink: &'static Sink = Box::leak(Box::default());
    let mut terminate = signal(SignalKind::terminate())?;
    let stopped = async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    tonic::transport::Server::builder()
        .add_service(Export(sink))
        .serve_with_shutdown(([127, 0, 0, 1], port).into(), stopped)
        .await?;
    println!(
        "otlp-sink: {} export requests, {} spans, {} bytes of spans",
        sink.requests.load(Ordering::Relaxed),
        sink.spans.load(Ordering::Relaxed),
        sink.bytes.load(Ordering::Relaxed)
    );
    Ok(())
}
