//! OpenTelemetry traces over OTLP/gRPC, configured as every OpenTelemetry SDK is: by the
//! standard environment variables. `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_ENDPOINT` turns export on (unset: no exporter and no cost);
//! `OTEL_SERVICE_NAME` (default `student-service`) and `OTEL_RESOURCE_ATTRIBUTES` describe the
//! service; `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` choose the sampler (default
//! parent-based always-on, so a caller's sampling decision is kept).
//!
//! The spans are built here, with the OpenTelemetry SDK itself rather than through a `tracing`
//! layer: bridging every `tracing` span, field and poll to OpenTelemetry cost a fifth of
//! ListCourses' throughput, building them directly about half of that (docs/performance.md).
//! The call's SERVER span is the current OpenTelemetry context while its handler runs
//! (`api::observe`), so the database work inside it finds its parent ([`client_span`]).
//!
//! Spans are exported in batches by the SDK's background thread, off the request path: a
//! collector that is down or slow costs calls nothing. A batch that cannot be exported is
//! dropped, counted in `student_service_trace_spans_dropped_total`, and logged at most once a
//! minute.

use std::{
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use opentelemetry::{
    Context, KeyValue,
    propagation::Extractor,
    trace::{SpanKind, TraceContextExt, Tracer, TracerProvider as _},
};
use opentelemetry_otlp::ExporterBuildError;
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    propagation::TraceContextPropagator,
    trace::{
        BatchConfigBuilder, BatchSpanProcessor, OTEL_BSP_MAX_QUEUE_SIZE_DEFAULT, SdkTracer,
        SdkTracerProvider, SpanData, SpanExporter, SpanProcessor,
    },
};

const DEFAULT_SERVICE_NAME: &str = "student-service";
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The tracer spans are built with; unset (and no span built) unless traces are exported.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Starts building spans, exported by `provider`.
pub(super) fn install(provider: &SdkTracerProvider) {
    let _ = TRACER.set(provider.tracer("student-service"));
}

/// The call's SERVER span, named `service/method` with the RPC attributes of the semantic
/// conventions v1.26.0, a child of `parent` (the caller's span, if any), as a context; `None`
/// when traces are not exported.
pub(crate) fn server_span(
    service: &'static str,
    method: &'static str,
    parent: &Context,
) -> Option<Context> {
    let tracer = TRACER.get()?;
    let span = tracer
        .span_builder(format!("{service}/{method}"))
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", service),
            KeyValue::new("rpc.method", method),
        ])
        .start_with_context(tracer, parent);
    Some(parent.with_span(span))
}

/// A CLIENT span for database work done for the current call, with `db.system` and
/// `db.operation.name` (never the bound values); it ends when dropped. `None` when traces are
/// not exported or when no call is under way (background work would otherwise make a new trace
/// every few milliseconds).
pub(crate) fn client_span(
    name: &'static str,
    system: &'static str,
    operation: &'static str,
) -> Option<impl opentelemetry::trace::Span + Send + Sync> {
    let tracer = TRACER.get()?;
    Context::map_current(|call| {
        call.has_active_span().then(|| {
            tracer
                .span_builder(name)
                .with_kind(SpanKind::Client)
                .with_attributes([
                    KeyValue::new("db.system", system),
                    KeyValue::new("db.operation.name", operation),
                ])
                .start_with_context(tracer, call)
        })
    })
}

/// Whether the environment asks for traces to be exported.
pub(super) fn wanted() -> bool {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var(name).is_ok_and(|value| !value.is_empty()))
}

/// The tracer provider the environment describes; must be called inside the Tokio runtime
/// (the gRPC exporter's connection runs on it).
pub(super) fn provider() -> Result<SdkTracerProvider, ExporterBuildError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()?;
    let queue_size = queue_size();
    let losses = Arc::new(Losses::default());
    let exporter = CountingExporter {
        inner: exporter,
        losses: losses.clone(),
    };
    let batches = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(queue_size)
                .build(),
        )
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(BoundedQueue {
            inner: batches,
            capacity: queue_size,
            losses,
        })
        .with_resource(resource())
        .build())
}

/// The batch processor's queue size, `OTEL_BSP_MAX_QUEUE_SIZE` as the SDK reads it.
fn queue_size() -> usize {
    std::env::var("OTEL_BSP_MAX_QUEUE_SIZE")
        .ok()
        .and_then(|size| size.parse().ok())
        .unwrap_or(OTEL_BSP_MAX_QUEUE_SIZE_DEFAULT)
}

/// The SDK's resource (which reads `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`), named
/// `student-service` unless those name it.
fn resource() -> Resource {
    let detected = Resource::builder().build();
    let named = detected
        .get(&opentelemetry::Key::new("service.name"))
        .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    if named {
        detected
    } else {
        Resource::builder()
            .with_service_name(DEFAULT_SERVICE_NAME)
            .build()
    }
}

/// The span context of a W3C `traceparent` / `tracestate` in `headers`, as the parent of our
/// server span; an empty context when there is none (our span is then a new root).
pub(crate) fn remote_parent(headers: &http::HeaderMap) -> opentelemetry::Context {
    use opentelemetry::propagation::TextMapPropagator;
    TraceContextPropagator::new().extract(&Headers(headers))
}

/// The (trace id, span id) of a context's span, when it has a valid one.
pub(crate) fn span_ids(context: &opentelemetry::Context) -> Option<(String, String)> {
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| {
        (
            span_context.trace_id().to_string(),
            span_context.span_id().to_string(),
        )
    })
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)?.to_str().ok()
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Spans lost on the way to the collector, and the spans waiting in the batch processor's
/// queue. The SDK drops a span silently when its queue is full (a collector slower than the
/// calls); [`BoundedQueue`] keeps it from filling, so every loss is counted here.
#[derive(Debug, Default)]
struct Losses {
    queued: AtomicUsize,
    dropped: AtomicU64,
    last_warning: Mutex<Option<Instant>>,
}

impl Losses {
    fn dropped(&self, spans: usize, why: &dyn std::fmt::Display) {
        let spans = spans as u64;
        let total = self.dropped.fetch_add(spans, Ordering::Relaxed) + spans;
        metrics::counter!("student_service_trace_spans_dropped_total").increment(spans);
        let Ok(mut last) = self.last_warning.lock() else {
            return;
        };
        if last.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(
                error = %why,
                dropped_spans_so_far = total,
                "cannot export trace spans; dropping them (this warning repeats at most once a minute)"
            );
        }
    }
}

/// The batch processor, handed a span only while its queue has room; the others are dropped
/// and counted.
#[derive(Debug)]
struct BoundedQueue<P> {
    inner: P,
    capacity: usize,
    losses: Arc<Losses>,
}

impl<P: SpanProcessor> SpanProcessor for BoundedQueue<P> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        // Counted out only once exported (CountingExporter), later than the SDK's own count:
        // below this capacity, the SDK's queue has room.
        if self.losses.queued.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.losses.queued.fetch_sub(1, Ordering::AcqRel);
            self.losses.dropped(
                1,
                &"the export queue is full: the collector takes spans slower than calls end",
            );
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, with the batches it could not deliver counted.
#[derive(Debug)]
struct CountingExporter<E> {
    inner: E,
    losses: Arc<Losses>,
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let exported = self.inner.export(batch).await;
        self.losses.queued.fetch_sub(spans, Ordering::AcqRel);
        if let Err(error) = &exported {
            self.losses.dropped(spans, error);
        }
        exported
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
