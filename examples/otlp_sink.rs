//! An OTLP/gRPC trace sink for benchmarks (`bench/observability_cost.sh`): receives and decodes
//! every TraceService/Export as a collector would, keeps nothing, and when stopped (SIGTERM or
//! Ctrl-C) prints how many requests, spans and bytes it received, so a run can check that every
//! span was delivered. Written in Rust so that the collector's own CPU, which in production runs
//! on other machines, takes as little as it can of the machine being measured.
//!
//! usage: cargo run --release --example otlp_sink -- PORT

use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use prost::Message;
use tokio::signal::unix::{SignalKind, signal};
use tonic::{Request, Response, Status};

#[derive(Default)]
struct Sink {
    requests: AtomicU64,
    spans: AtomicU64,
    bytes: AtomicU64,
}

#[tonic::async_trait]
impl TraceService for &'static Sink {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let request = request.into_inner();
        let spans = request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len() as u64)
            .sum();
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.spans.fetch_add(spans, Ordering::Relaxed);
        self.bytes
            .fetch_add(request.encoded_len() as u64, Ordering::Relaxed);
        Ok(Response::new(ExportTraceServiceResponse::default()))
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
        .add_service(TraceServiceServer::new(sink))
        .serve_with_shutdown(([127, 0, 0, 1], port).into(), stopped)
        .await?;
    println!(
        "otlp-sink: {} export requests, {} spans, {} bytes",
        sink.requests.load(Ordering::Relaxed),
        sink.spans.load(Ordering::Relaxed),
        sink.bytes.load(Ordering::Relaxed)
    );
    Ok(())
}
