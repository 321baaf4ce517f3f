//! The batch exporter: finished spans wait in a bounded queue and one Tokio task sends them to
//! the collector in batches (OTLP `TraceService/Export`, over gRPC or HTTP: `client`), when a
//! batch is full or the schedule delay has passed, as the SDKs' batch span processor does and
//! with the same `OTEL_BSP_*` and `OTEL_EXPORTER_OTLP_*` variables (`settings`). A call only
//! pushes its span onto the queue; a collector that is down or slow costs it nothing. A failed
//! export is retried with exponential backoff when the OTLP specification calls it retryable,
//! within the export timeout; meanwhile spans keep queueing, up to the queue's size. Spans that
//! find the queue full, whose batch cannot be delivered, or that the collector rejects
//! (`partial_success`) are dropped, counted and warned about at most once a minute.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess;
use tokio::{sync::Notify, task::JoinHandle};

use super::{
    client::{Client, MAX_ATTEMPTS},
    otlp::{Origin, SpanRecord},
    settings::Settings,
};

const WARN_EVERY: Duration = Duration::from_secs(60);
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
    pub(super) fn start(settings: &Settings, origin: Origin) -> Result<Self, String> {
        let client = settings.client()?;
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
        let task = tokio::spawn(run(
            queue.clone(),
            client,
            origin,
            settings.schedule_delay,
            stopped,
        ));
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
    origin: Origin,
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
            let sent = batch.len();
            let request = origin.request(&batch);
            drop(batch);
            match client.export(request, attempts).await {
                Ok(partial) => queue.losses.rejected(sent, partial),
                Err(error) => queue.losses.dropped(sent, &error),
            }
        }
        if stopping {
            return;
        }
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
        if self.time_to_warn() {
            tracing::warn!(
                error = %why,
                dropped_spans_so_far = total,
                "cannot export trace spans; dropping them (this warning repeats at most once a minute)"
            );
        }
    }

    /// Counts the spans the collector said it rejected (`partial_success`) as dropped, with its
    /// reason; a message with nothing rejected is the collector's warning, passed on.
    fn rejected(&self, sent: usize, partial: Option<ExportTracePartialSuccess>) {
        let Some(ExportTracePartialSuccess {
            rejected_spans,
            error_message,
        }) = partial
        else {
            return;
        };
        let reason = if error_message.is_empty() {
            "no reason given"
        } else {
            error_message.as_str()
        };
        let rejected = usize::try_from(rejected_spans).unwrap_or(0).min(sent);
        if rejected > 0 {
            let why = format!("the collector rejected {rejected} of {sent} spans: {reason}");
            self.dropped(rejected, &why);
        } else if !error_message.is_empty() && self.time_to_warn() {
            tracing::warn!(
                message = %error_message,
                "the collector took the spans with a warning (this warning repeats at most once a minute)"
            );
        }
    }

    /// Whether a minute has passed since the last warning (and if so, this one is it).
    fn time_to_warn(&self) -> bool {
        let Ok(mut last) = self.last_warning.lock() else {
            return false;
        };
        let due = last.is_none_or(|at| at.elapsed() >= WARN_EVERY);
        if due {
            *last = Some(Instant::now());
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings_of(vars: &[(&str, &str)]) -> Settings {
        let vars: std::collections::HashMap<String, String> = vars
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        let (settings, _) = Settings::from_vars(&|name| vars.get(name).cloned())
            .expect("a protocol spoken here")
            .expect("traces on");
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
        let exporter = Exporter::start(&settings, Origin::new(&[], "s", "v")).expect("started");
        assert!(exporter.shutdown(Duration::from_secs(1)).await);
    }
}
