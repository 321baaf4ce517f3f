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
    str::FromStr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::{Buf, BufMut, Bytes};
use http::uri::PathAndQuery;
use tokio::{sync::Notify, task::JoinHandle};
use tonic::{
    metadata::{MetadataKey, MetadataMap, MetadataValue},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};
use tonic_types::StatusExt as _;

use super::otlp::{Encoder, SpanRecord};

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

/// How the exporter is set up, from the environment (defaults as in the OpenTelemetry
/// specification).
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) endpoint: String,
    /// An endpoint without a scheme is plaintext (`OTEL_EXPORTER_OTLP_INSECURE`).
    pub(super) insecure: bool,
    pub(super) headers: MetadataMap,
    pub(super) certificate: Option<String>,
    pub(super) timeout: Duration,
    pub(super) schedule_delay: Duration,
    pub(super) queue_size: usize,
    pub(super) batch_size: usize,
}

impl Settings {
    /// The settings the environment gives, and warnings for what it asks that cannot be done.
    pub(super) fn from_env() -> Option<(Self, Vec<String>)> {
        Self::from_vars(&|name| std::env::var(name).ok())
    }

    /// The settings of the variables `var` looks up. A value that cannot be used is warned
    /// about and treated as not set, as the OpenTelemetry specification asks of the SDKs
    /// ("generate a warning and gracefully ignore the setting").
    fn from_vars(var: &dyn Fn(&str) -> Option<String>) -> Option<(Self, Vec<String>)> {
        let endpoint = either(
            var,
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        )?;
        let mut warnings = Vec::new();
        if turned_off(
            var("OTEL_SDK_DISABLED").as_deref(),
            var("OTEL_TRACES_EXPORTER").as_deref(),
            &mut warnings,
        ) {
            return None;
        }
        let headers = either(
            var,
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "OTEL_EXPORTER_OTLP_HEADERS",
        )
        .map(|headers| metadata(&headers, &mut warnings))
        .unwrap_or_default();
        let compression = either(
            var,
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
            "OTEL_EXPORTER_OTLP_COMPRESSION",
        );
        if compression.is_some_and(|compression| compression != "none") {
            warnings.push(
                "OTEL_EXPORTER_OTLP_COMPRESSION is not supported; spans are sent uncompressed"
                    .into(),
            );
        }
        let insecure = boolean(
            var,
            &[
                "OTEL_EXPORTER_OTLP_TRACES_INSECURE",
                "OTEL_EXPORTER_OTLP_INSECURE",
            ],
            &mut warnings,
        );
        let mut number =
            |names: &[&str], default, least| number(var, names, default, least, &mut warnings);
        // A timeout of 0 would fail every export, a queue or a batch of 0 would take no span.
        let export_timeout = number(
            &[
                "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
                "OTEL_EXPORTER_OTLP_TIMEOUT",
            ],
            10_000,
            1,
        );
        let batch_timeout = number(&["OTEL_BSP_EXPORT_TIMEOUT"], 30_000, 1);
        let queue_size = number(&["OTEL_BSP_MAX_QUEUE_SIZE"], 2_048, 1);
        let batch_size = number(&["OTEL_BSP_MAX_EXPORT_BATCH_SIZE"], 512, 1);
        // 0 is "at once"; a millisecond keeps the export task from spinning.
        let schedule_delay = number(&["OTEL_BSP_SCHEDULE_DELAY"], 5_000, 0).max(1);
        if batch_size > queue_size {
            warnings.push(format!(
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE={batch_size} is larger than \
                 OTEL_BSP_MAX_QUEUE_SIZE={queue_size}; batches of {queue_size}"
            ));
        }
        let count = |number: u64| usize::try_from(number).unwrap_or(usize::MAX);
        Some((
            Self {
                endpoint,
                insecure,
                headers,
                certificate: either(
                    var,
                    "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
                    "OTEL_EXPORTER_OTLP_CERTIFICATE",
                ),
                timeout: Duration::from_millis(export_timeout.min(batch_timeout)),
                schedule_delay: Duration::from_millis(schedule_delay),
                queue_size: count(queue_size),
                batch_size: count(batch_size.min(queue_size)),
            },
            warnings,
        ))
    }

    /// The channel to the collector; it connects on first use (a collector that is not up yet
    /// is no reason to refuse to start).
    fn channel(&self) -> Result<Channel, String> {
        let (url, schemeless) = collector_url(&self.endpoint, self.insecure)?;
        let mut endpoint = Endpoint::from_str(&url)
            .map_err(|err| format!("bad OTLP endpoint {:?}: {err}", self.endpoint))?
            .connect_timeout(self.timeout);
        if url.starts_with("https:") {
            let Some(path) = &self.certificate else {
                let no_roots = "OTEL_EXPORTER_OTLP_CERTIFICATE (the CA certificate to trust, \
                                PEM): the service carries no root certificates";
                if schemeless {
                    return Err(format!(
                        "the OTLP endpoint {endpoint:?} has no scheme, which the OTLP exporter \
                         specification reads as a secure (TLS) connection unless \
                         OTEL_EXPORTER_OTLP_INSECURE=true, and a secure one needs {no_roots}; \
                         for a collector without TLS write http://{endpoint}",
                        endpoint = self.endpoint,
                    ));
                }
                return Err(format!("an https OTLP endpoint needs {no_roots}"));
            };
            let pem = std::fs::read(path).map_err(|err| format!("cannot read {path}: {err}"))?;
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
                .map_err(|err| format!("bad TLS settings for {:?}: {err}", self.endpoint))?;
        }
        Ok(endpoint.connect_lazy())
    }
}

/// The collector's URL, and whether `endpoint` had no scheme: an endpoint with the scheme http
/// or https is taken as it is; one without (`collector:4317`, a form gRPC clients take) is https,
/// or http when `insecure`, as the OTLP exporter specification says of an OTLP/gRPC endpoint.
fn collector_url(endpoint: &str, insecure: bool) -> Result<(String, bool), String> {
    match endpoint.split_once("://") {
        Some((scheme, rest))
            if matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https") =>
        {
            Ok((format!("{}://{rest}", scheme.to_ascii_lowercase()), false))
        }
        Some((scheme, _)) => Err(format!(
            "the OTLP endpoint {endpoint:?} has the scheme {scheme:?}: OTLP/gRPC takes http or \
             https (or none, with OTEL_EXPORTER_OTLP_INSECURE)"
        )),
        None => {
            let scheme = if insecure { "http" } else { "https" };
            Ok((format!("{scheme}://{endpoint}"), true))
        }
    }
}

/// Whether `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turns traces off, as in the
/// SDKs; an exporter other than `otlp` is warned about (OTLP is the only one here).
fn turned_off(
    sdk_disabled: Option<&str>,
    exporters: Option<&str>,
    warnings: &mut Vec<String>,
) -> bool {
    if sdk_disabled.is_some_and(|value| value.trim().eq_ignore_ascii_case("true")) {
        return true;
    }
    let exporters: Vec<&str> = exporters
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|exporter| !exporter.is_empty())
        .collect();
    if exporters
        .iter()
        .any(|exporter| !matches!(*exporter, "otlp" | "none"))
    {
        warnings.push(format!(
            "OTEL_TRACES_EXPORTER={}: only otlp is supported here; exporting over OTLP",
            exporters.join(",")
        ));
    }
    exporters == ["none"]
}

/// The first of two variables that is set and not empty.
fn either(var: &dyn Fn(&str) -> Option<String>, specific: &str, general: &str) -> Option<String> {
    [specific, general].iter().find_map(|name| {
        var(name)
            .map(|value| value.trim().to_owned())
            .filter(|value| !value.is_empty())
    })
}

/// The number held by the first of `names` that holds a whole number of at least `least`, or
/// `default`; a variable set to anything else is warned about and ignored.
fn number(
    var: &dyn Fn(&str) -> Option<String>,
    names: &[&str],
    default: u64,
    least: u64,
    warnings: &mut Vec<String>,
) -> u64 {
    for name in names {
        let Some(value) = var(name) else { continue };
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        match value.parse::<u64>() {
            Ok(number) if number >= least => return number,
            _ => warnings.push(format!(
                "{name}={value:?} is not a whole number of at least {least}; ignored"
            )),
        }
    }
    default
}

/// Whether the first of `names` that is `true` or `false` (in any case) is `true`; a variable
/// set to anything else is warned about and ignored.
fn boolean(
    var: &dyn Fn(&str) -> Option<String>,
    names: &[&str],
    warnings: &mut Vec<String>,
) -> bool {
    for name in names {
        let Some(value) = var(name) else { continue };
        let value = value.trim();
        if value.eq_ignore_ascii_case("true") {
            return true;
        }
        if value.eq_ignore_ascii_case("false") {
            return false;
        }
        if !value.is_empty() {
            warnings.push(format!("{name}={value:?} is not true or false; ignored"));
        }
    }
    false
}

/// `key=value,...` (keys and values percent-encoded) as gRPC metadata; an entry that does not
/// decode, or is no valid metadata, is warned about (by its key, never its value: headers carry
/// API keys) and not sent.
fn metadata(headers: &str, warnings: &mut Vec<String>) -> MetadataMap {
    let mut map = MetadataMap::new();
    for entry in super::key_values(headers) {
        let (key, value) = match entry {
            Ok(entry) => entry,
            Err(why) => {
                warnings.push(format!(
                    "OTEL_EXPORTER_OTLP_HEADERS: {why}; that header is not sent"
                ));
                continue;
            }
        };
        match (
            MetadataKey::from_bytes(key.to_ascii_lowercase().as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            (Ok(key), Ok(value)) => {
                map.insert(key, value);
            }
            _ => warnings.push(format!(
                "OTEL_EXPORTER_OTLP_HEADERS: cannot send header {key:?}"
            )),
        }
    }
    map
}

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

    fn settings_of(vars: &[(&str, &str)]) -> (Settings, Vec<String>) {
        let vars: std::collections::HashMap<String, String> = vars
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        Settings::from_vars(&|name| vars.get(name).cloned()).expect("traces on")
    }

    const ENDPOINT: (&str, &str) = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317");

    fn sizes(settings: &Settings) -> (usize, usize, Duration, Duration) {
        (
            settings.queue_size,
            settings.batch_size,
            settings.schedule_delay,
            settings.timeout,
        )
    }

    #[test]
    fn batch_values_that_are_negative_zero_where_meaningless_or_no_number_are_warned_about_and_ignored()
     {
        let (defaults, warnings) = settings_of(&[ENDPOINT]);
        assert_eq!(warnings, Vec::<String>::new());
        let defaults = sizes(&defaults);
        assert_eq!(
            defaults,
            (2_048, 512, Duration::from_secs(5), Duration::from_secs(10))
        );
        for (name, bad) in [
            ("OTEL_BSP_MAX_QUEUE_SIZE", "-1"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "lots"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "0"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "-512"),
            ("OTEL_BSP_SCHEDULE_DELAY", "-100"),
            ("OTEL_BSP_SCHEDULE_DELAY", "5s"),
            ("OTEL_BSP_EXPORT_TIMEOUT", "0"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "-1"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1.5"),
        ] {
            let (settings, warnings) = settings_of(&[ENDPOINT, (name, bad)]);
            assert_eq!(sizes(&settings), defaults, "{name}={bad}");
            assert_eq!(warnings.len(), 1, "{name}={bad}: {warnings:?}");
            assert!(warnings[0].contains(name), "{warnings:?}");
        }
        // A specific variable that is ignored leaves the general one in charge.
        let (settings, _) = settings_of(&[
            ENDPOINT,
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "soon"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2000"),
        ]);
        assert_eq!(settings.timeout, Duration::from_secs(2));
        // Good values are taken: a delay of 0 exports at once; a batch larger than the queue
        // is the queue, with a warning.
        let (settings, warnings) = settings_of(&[
            ENDPOINT,
            ("OTEL_BSP_MAX_QUEUE_SIZE", " 100 "),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "200"),
            ("OTEL_BSP_SCHEDULE_DELAY", "0"),
        ]);
        assert_eq!((settings.queue_size, settings.batch_size), (100, 100));
        assert_eq!(settings.schedule_delay, Duration::from_millis(1));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }

    #[tokio::test]
    async fn an_endpoint_without_a_scheme_is_a_secure_one_unless_insecure_is_set() {
        let bare = ("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4317");
        let (secure, _) = settings_of(&[bare]);
        let refused = secure
            .channel()
            .expect_err("a secure endpoint needs a CA certificate");
        for said in [
            "no scheme",
            "http://localhost:4317",
            "OTEL_EXPORTER_OTLP_INSECURE",
        ] {
            assert!(refused.contains(said), "{said:?} not in {refused:?}");
        }
        let (insecure, warnings) = settings_of(&[bare, ("OTEL_EXPORTER_OTLP_INSECURE", "true")]);
        assert_eq!(warnings, Vec::<String>::new());
        assert!(insecure.channel().is_ok());
        let (plain, _) = settings_of(&[ENDPOINT]);
        assert!(plain.channel().is_ok());
        let (other, _) = settings_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://collector:4317")]);
        let refused = other.channel().expect_err("not a scheme of OTLP/gRPC");
        assert!(refused.contains("http or https"), "{refused}");
    }

    #[test]
    fn a_header_that_does_not_decode_is_warned_about_and_not_sent() {
        let mut warnings = Vec::new();
        let headers = metadata(
            "api-key=s%3Dcret, bad=%zz, broken=%e2%82, noequals ,x-team=a%20b",
            &mut warnings,
        );
        assert_eq!(headers.len(), 2, "{headers:?}");
        assert_eq!(
            headers.get("api-key").and_then(|v| v.to_str().ok()),
            Some("s=cret")
        );
        assert_eq!(
            headers.get("x-team").and_then(|v| v.to_str().ok()),
            Some("a b")
        );
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(
            warnings.iter().all(|warning| !warning.contains("cret")),
            "a warning shows a value: {warnings:?}"
        );
    }

    /// The sizes are limits, not allocations: a billion spans allowed takes no memory up front.
    #[tokio::test]
    async fn a_huge_queue_or_batch_is_not_allocated_at_start() {
        let huge = "1000000000";
        let (settings, warnings) = settings_of(&[
            ENDPOINT,
            ("OTEL_BSP_MAX_QUEUE_SIZE", huge),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", huge),
        ]);
        assert_eq!(warnings, Vec::<String>::new());
        let encoder = Encoder::new(&[], "s", "v");
        let exporter = Exporter::start(&settings, encoder).expect("started");
        assert!(exporter.shutdown(Duration::from_secs(1)).await);
    }

    #[test]
    fn traces_are_turned_off_as_the_sdks_turn_them_off() {
        let off = |disabled, exporters| turned_off(disabled, exporters, &mut Vec::new());
        assert!(!off(None, None));
        assert!(off(Some("true"), None));
        assert!(off(Some(" TRUE "), Some("otlp")));
        assert!(!off(Some("false"), Some("otlp")));
        assert!(off(None, Some("none")));
        assert!(!off(None, Some("otlp")));
        let mut warnings = Vec::new();
        assert!(!turned_off(None, Some("otlp,console"), &mut warnings));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }
}
