//! The batch exporter: finished spans wait in a bounded queue and one Tokio task sends them to
//! the collector in batches (OTLP/gRPC `TraceService/Export`), when a batch is full or the
//! schedule delay has passed, as the SDKs' batch span processor does and with the same
//! `OTEL_BSP_*` and `OTEL_EXPORTER_OTLP_*` variables. A call only pushes its span onto the
//! queue; a collector that is down or slow costs it nothing. A failed export is retried with
//! exponential backoff when the OTLP specification calls its code retryable, within the export
//! timeout; meanwhile spans keep queueing, up to the queue's size. Spans that find the queue
//! full or whose batch cannot be delivered are dropped, counted and warned about at most once a
//! minute.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::{Buf, BufMut, Bytes};
use http::uri::PathAndQuery;
use tokio::{sync::Notify, task::JoinHandle};
use tonic::{metadata::MetadataMap, transport::Channel};
use tonic_types::StatusExt as _;

use super::{
    otlp::{Encoder, SpanRecord},
    settings::Settings,
};

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
const WARN_EVERY: Duration = Duration::from_secs(60);
/// Tries of one batch at most, the first included: a collector still failing after that is not
/// coming back soon, and the batch's spans are better dropped than holding the queue.
const MAX_ATTEMPTS: u32 = 5;
/// The wait before the first retry; it doubles at each retry, up to `MAX_BACKOFF`, within 20%
/// either way so that replicas that failed together do not retry together.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Room made for spans in the queue at start (the default batch); it grows as spans come.
const PREALLOCATED: usize = 512;

/// The queue calls push their spans onto, and the tally of spans lost.
#[derive(Debug)]
pub(super) struct Queue {
    spans: Mutex<Vec<SpanRecord>>,
    capacity: usize,
    batch_size: usize,
    batch_ready: Notify,
    losses: Losses,
}

impl Queue {
    /// Queues a finished span for export, or drops and counts it when the queue is full.
    pub(super) fn push(&self, span: SpanRecord) {
        let Ok(mut spans) = self.spans.lock() else {
            return;
        };
        if spans.len() >= self.capacity {
            drop(spans);
            self.losses.dropped(
                1,
                &"the export queue is full: the collector takes spans slower than calls end",
            );
            return;
        }
        spans.push(span);
        let full_batch = spans.len() == self.batch_size;
        drop(spans);
        if full_batch {
            self.batch_ready.notify_one();
        }
    }

    /// Takes the oldest spans: a full batch, or when `partial`, what there is up to a batch.
    fn next_batch(&self, partial: bool) -> Vec<SpanRecord> {
        let Ok(mut spans) = self.spans.lock() else {
            return Vec::new();
        };
        if spans.len() < self.batch_size && !partial {
            return Vec::new();
        }
        let count = spans.len().min(self.batch_size);
        spans.drain(..count).collect()
    }
}

/// The running exporter.
#[derive(Debug)]
pub(crate) struct Exporter {
    pub(super) queue: Arc<Queue>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Exporter {
    /// Starts the export task; must be called inside the Tokio runtime.
    pub(super) fn start(settings: &Settings, encoder: Encoder) -> Result<Self, String> {
        let client = Client {
            grpc: tonic::client::Grpc::new(settings.channel()?),
            headers: settings.headers.clone(),
            timeout: settings.timeout,
            encoder,
        };
        let queue = Arc::new(Queue {
            // The sizes are limits: a queue allowed a billion spans would otherwise take all
            // the memory at start, to hold none.
            spans: Mutex::new(Vec::with_capacity(settings.batch_size.min(PREALLOCATED))),
            capacity: settings.queue_size,
            batch_size: settings.batch_size,
            batch_ready: Notify::new(),
            losses: Losses::default(),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(run(queue.clone(), client, settings.schedule_delay, stopped));
        Ok(Self { queue, stop, task })
    }

    /// Exports what is still queued, waiting at most `timeout`; whether all of it went.
    pub(crate) async fn shutdown(self, timeout: Duration) -> bool {
        let _ = self.stop.send(());
        matches!(tokio::time::timeout(timeout, self.task).await, Ok(Ok(())))
    }
}

/// Exports full batches whenever one is ready, and everything queued once `delay` has passed
/// without a full batch, and at the end.
async fn run(
    queue: Arc<Queue>,
    mut client: Client,
    delay: Duration,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        let (partial, stopping) = tokio::select! {
            () = queue.batch_ready.notified() => (false, false),
            () = tokio::time::sleep(delay) => (true, false),
            _ = &mut stop => (true, true),
        };
        loop {
            let batch = queue.next_batch(partial);
            if batch.is_empty() {
                break;
            }
            // At shutdown each batch has one try: waiting out backoffs for a collector that is
            // down would hold the process's exit for the whole drain timeout.
            let attempts = if stopping { 1 } else { MAX_ATTEMPTS };
            if let Err(error) = client.export(&batch, attempts).await {
                queue.losses.dropped(batch.len(), &error);
            }
        }
        if stopping {
            return;
        }
    }
}

/// The OTLP/gRPC client: one export request at a time.
struct Client {
    grpc: tonic::client::Grpc<Channel>,
    headers: MetadataMap,
    timeout: Duration,
    encoder: Encoder,
}

impl Client {
    /// Delivers `spans` in at most `attempts` tries, retrying as the OTLP specification says,
    /// all within the export timeout; the last error when it gives up.
    async fn export(&mut self, spans: &[SpanRecord], attempts: u32) -> Result<(), tonic::Status> {
        let body = self.encoder.request(spans);
        let deadline = Instant::now() + self.timeout;
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let error = match self.send(body.clone(), left).await {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            let Some(wait) = retry_wait(&error, jittered(backoff)) else {
                return Err(error);
            };
            if attempt >= attempts || Instant::now() + wait >= deadline {
                return Err(error);
            }
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            attempt += 1;
        }
    }

    /// One export request, answered within `timeout`.
    async fn send(&mut self, body: Bytes, timeout: Duration) -> Result<(), tonic::Status> {
        let mut request = tonic::Request::new(Encoded(body));
        *request.metadata_mut() = self.headers.clone();
        request.set_timeout(timeout);
        let export = async {
            self.grpc
                .ready()
                .await
                .map_err(|err| tonic::Status::unavailable(err.to_string()))?;
            let codec = tonic_prost::ProstCodec::<Encoded, ()>::default();
            self.grpc
                .unary(request, PathAndQuery::from_static(EXPORT_PATH), codec)
                .await
        };
        match tokio::time::timeout(timeout, export).await {
            Ok(response) => response.map(drop),
            Err(_) => Err(tonic::Status::deadline_exceeded(
                "the collector did not answer in time",
            )),
        }
    }
}

/// How long to wait before trying a failed export again, `None` when it must not be: the OTLP
/// specification's retryable codes, RESOURCE_EXHAUSTED only when the collector says when to
/// come back (a `google.rpc.RetryInfo` detail); that delay is waited at least.
fn retry_wait(error: &tonic::Status, backoff: Duration) -> Option<Duration> {
    use tonic::Code;
    let advised = error
        .get_details_retry_info()
        .and_then(|info| info.retry_delay);
    match error.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => Some(advised.map_or(backoff, |advised| advised.max(backoff))),
        Code::ResourceExhausted => advised.map(|advised| advised.max(backoff)),
        _ => None,
    }
}

/// `backoff`, give or take 20%.
fn jittered(backoff: Duration) -> Duration {
    backoff.mul_f64(0.8 + 0.4 * fastrand::f64())
}

/// A message already encoded ([`Encoder::request`]), sent as it is.
#[derive(Debug, Default)]
struct Encoded(Bytes);

impl prost::Message for Encoded {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// Spans lost on the way to the collector, counted in `student_service_trace_spans_dropped_total`
/// and warned about at most once a minute.
#[derive(Debug, Default)]
struct Losses {
    dropped: AtomicU64,
    last_warning: Mutex<Option<Instant>>,
}

impl Losses {
    fn dropped(&self, spans: usize, why: &dyn std::fmt::Display) {
        let spans = spans as u64;
        let total = self.dropped.fetch_add(spans, Ordering::Relaxed) + spans;
        metrics::counter!(crate::telemetry::catalogue::TRACE_SPANS_DROPPED.name).increment(spans);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_are_retried_on_the_codes_the_otlp_specification_calls_retryable() {
        use tonic::Code;
        use tonic_types::{ErrorDetails, StatusExt};
        let backoff = Duration::from_secs(1);
        let retryable = [
            Code::Cancelled,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::OutOfRange,
            Code::Unavailable,
            Code::DataLoss,
        ];
        for code in retryable {
            let error = tonic::Status::new(code, "try again");
            assert_eq!(retry_wait(&error, backoff), Some(backoff), "{code:?}");
        }
        for code in [
            Code::Unknown,
            Code::InvalidArgument,
            Code::NotFound,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::FailedPrecondition,
            Code::Unimplemented,
            Code::Internal,
            Code::ResourceExhausted,
        ] {
            let error = tonic::Status::new(code, "no");
            assert_eq!(retry_wait(&error, backoff), None, "{code:?}");
        }
        // RetryInfo makes RESOURCE_EXHAUSTED retryable, and its delay is waited at least.
        let throttled = |code, seconds| {
            let details = ErrorDetails::with_retry_info(Some(Duration::from_secs(seconds)));
            tonic::Status::with_error_details(code, "slow down", details)
        };
        let exhausted = throttled(Code::ResourceExhausted, 3);
        assert_eq!(
            retry_wait(&exhausted, backoff),
            Some(Duration::from_secs(3))
        );
        let unavailable = throttled(Code::Unavailable, 0);
        assert_eq!(retry_wait(&unavailable, backoff), Some(backoff));
        let invalid = throttled(Code::InvalidArgument, 3);
        assert_eq!(retry_wait(&invalid, backoff), None);
    }

    #[test]
    fn backoff_is_jittered_within_a_fifth() {
        for _ in 0..1000 {
            let wait = jittered(Duration::from_secs(1));
            assert!(
                wait >= Duration::from_millis(800) && wait <= Duration::from_millis(1200),
                "{wait:?}"
            );
        }
    }

    fn settings_of(vars: &[(&str, &str)]) -> Settings {
        let vars: std::collections::HashMap<String, String> = vars
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        let (settings, _) =
            Settings::from_vars(&|name| vars.get(name).cloned()).expect("traces on");
        settings
    }

    const ENDPOINT: (&str, &str) = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317");

    /// The sizes are limits, not allocations: a billion spans allowed takes no memory up front.
    #[tokio::test]
    async fn a_huge_queue_or_batch_is_not_allocated_at_start() {
        let huge = "1000000000";
        let settings = settings_of(&[
            ENDPOINT,
            ("OTEL_BSP_MAX_QUEUE_SIZE", huge),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", huge),
        ]);
        let encoder = Encoder::new(&[], "s", "v");
        let exporter = Exporter::start(&settings, encoder).expect("started");
        assert!(exporter.shutdown(Duration::from_secs(1)).await);
    }
}
