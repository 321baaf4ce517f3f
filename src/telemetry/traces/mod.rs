//! OpenTelemetry traces over OTLP (gRPC, or HTTP with protobuf bodies), configured as every
//! OpenTelemetry SDK is: by the standard environment variables.
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` turns export on (unset:
//! no exporter and no cost); `OTEL_SERVICE_NAME` (default `student-service`) and
//! `OTEL_RESOURCE_ATTRIBUTES` describe the service; `OTEL_TRACES_SAMPLER` /
//! `OTEL_TRACES_SAMPLER_ARG` choose the sampler (default parent-based always-on, so a caller's
//! sampling decision is kept); `OTEL_BSP_*` and the other `OTEL_EXPORTER_OTLP_*` variables
//! choose the protocol and compression and tune the batches (`settings`, `export`).
//!
//! Our spans are few and always the same shape (one SERVER span per call, a CLIENT span per
//! database operation inside it), so they are built and batched here rather than by the
//! OpenTelemetry SDK: a span is a record of ids, times and static strings, pushed onto the
//! export queue when it ends; the export task makes a batch of them into OTLP messages
//! (`opentelemetry-proto`'s types) and sends it. The SDK's general pipeline (attribute vectors
//! and span data built on the request path for every span) cost ListCourses a quarter of its
//! throughput; docs/performance.md has the figures.
//!
//! The call's span is the current span while its handler is polled ([`InSpan`]), so the
//! database work inside it finds its parent ([`client_span`]).

use std::{
    cell::Cell,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::SystemTime,
};

use tonic::Code;

use self::{
    context::{Sampler, SpanId, TraceId},
    export::Queue,
    otlp::{Kind, Origin, Parent, SpanRecord},
    settings::Settings,
};
pub(crate) use context::{RemoteParent, SpanContext, remote_parent};
pub(crate) use export::Exporter;
pub(crate) use otlp::DbFailure;

mod client;
mod context;
mod export;
mod otlp;
mod settings;

const DEFAULT_SERVICE_NAME: &str = "student-service";

/// What spans need once traces are exported; unset (and no span built) otherwise.
static TRACES: OnceLock<Traces> = OnceLock::new();

#[derive(Debug)]
struct Traces {
    sampler: Sampler,
    queue: Arc<Queue>,
}

/// The recorded span of a call, as its database spans need it.
#[derive(Debug, Clone)]
struct Current {
    context: SpanContext,
    trace_state: Option<Arc<str>>,
}

thread_local! {
    /// The span of the call being polled on this thread, when it is recorded.
    static CURRENT: Cell<Option<Current>> = const { Cell::new(None) };
}

/// Starts exporting spans as the environment says; must be called inside the Tokio runtime
/// (the export task runs on it). `Err` says why traces stay off.
pub(super) fn start() -> Result<Option<Exporter>, String> {
    let Some((settings, mut warnings)) = Settings::from_env()? else {
        return Ok(None);
    };
    let resource = resource(&mut warnings);
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    let origin = Origin::new(&resource, "student-service", env!("CARGO_PKG_VERSION"));
    let exporter = Exporter::start(&settings, origin)?;
    let traces = Traces {
        sampler: Sampler::from_env(),
        queue: exporter.queue.clone(),
    };
    // A second server in one process (the tests start many) keeps the first exporter.
    Ok(TRACES.set(traces).is_ok().then_some(exporter))
}

/// The resource: `service.name` from `OTEL_SERVICE_NAME`, else from `OTEL_RESOURCE_ATTRIBUTES`,
/// else `student-service`; the other attributes of `OTEL_RESOURCE_ATTRIBUTES`; and what made the
/// spans (`telemetry.sdk.*`, `service.version` unless given).
fn resource(warnings: &mut Vec<String>) -> Vec<(String, String)> {
    resource_of(
        std::env::var("OTEL_SERVICE_NAME").ok(),
        std::env::var("OTEL_RESOURCE_ATTRIBUTES").ok(),
        warnings,
    )
}

fn resource_of(
    service_name: Option<String>,
    attributes: Option<String>,
    warnings: &mut Vec<String>,
) -> Vec<(String, String)> {
    // "In case of any error, e.g. failure during the decoding process, the entire environment
    // variable value SHOULD be discarded" (the OpenTelemetry resource SDK specification): a
    // half-applied list would label the spans with a mix nobody wrote.
    let given: Result<Vec<_>, String> = attributes
        .map(|attributes| key_values(&attributes).into_iter().collect())
        .unwrap_or(Ok(Vec::new()));
    let mut given = given.unwrap_or_else(|why| {
        warnings.push(format!(
            "OTEL_RESOURCE_ATTRIBUTES: {why}; the whole variable is ignored"
        ));
        Vec::new()
    });
    let name = service_name
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .or_else(|| {
            given
                .iter()
                .rev()
                .find(|(key, _)| key == "service.name")
                .map(|(_, name)| name.clone())
        })
        .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned());
    let ours = [
        ("service.name", name.as_str()),
        ("telemetry.sdk.name", "student_service::telemetry::traces"),
        ("telemetry.sdk.language", "rust"),
        ("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
    ];
    given.retain(|(key, _)| !ours.iter().any(|(ours, _)| key == ours));
    if !given.iter().any(|(key, _)| key == "service.version") {
        given.push(("service.version".into(), env!("CARGO_PKG_VERSION").into()));
    }
    // The last of a repeated key wins, as in the SDKs.
    let mut attributes: Vec<(String, String)> = Vec::new();
    for (key, value) in given.into_iter().rev() {
        if !attributes.iter().any(|(seen, _)| *seen == key) {
            attributes.push((key, value));
        }
    }
    attributes.reverse();
    let mut resource: Vec<(String, String)> = ours
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect();
    resource.extend(attributes);
    resource
}

/// The entries of `key=value,key=value` (W3C baggage style: keys and values percent-encoded,
/// blanks around them trimmed), as the OpenTelemetry variables write lists; empty entries are
/// skipped. An entry that does not decode is the reason why, naming the entry by its key or
/// place, never its value (headers carry API keys).
fn key_values(list: &str) -> Vec<Result<(String, String), String>> {
    list.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .enumerate()
        .map(|(i, entry)| {
            let place = i + 1;
            let (key, value) = entry
                .split_once('=')
                .ok_or_else(|| format!("entry {place} is not key=value"))?;
            let key = percent_decoded(key.trim())
                .map_err(|why| format!("the key of entry {place} {why}"))?;
            if key.is_empty() {
                return Err(format!("entry {place} has no key"));
            }
            let value = percent_decoded(value.trim())
                .map_err(|why| format!("the value of {key:?} {why}"))?;
            Ok((key, value))
        })
        .collect()
}

fn percent_decoded(text: &str) -> Result<String, &'static str> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let byte = text
                .get(i + 1..i + 3)
                .filter(|hex| hex.bytes().all(|digit| digit.is_ascii_hexdigit()))
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or("has a % not followed by two hex digits")?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "is not UTF-8 once percent-decoded")
}

/// Whether spans are exported (the environment asked for it and the exporter started).
pub(crate) fn exported() -> bool {
    TRACES.get().is_some()
}

/// The SERVER span of a call of `service/method`, a child of the caller's span when there is
/// one; `None` when traces are not exported. `served` is false for a path the server does not
/// serve (`unknown/unknown`).
pub(crate) fn server_span(
    service: &'static str,
    method: &'static str,
    served: bool,
    parent: Option<RemoteParent>,
) -> Option<ServerSpan> {
    let traces = TRACES.get()?;
    let trace_id = parent
        .as_ref()
        .map_or_else(TraceId::random, |parent| parent.context.trace_id);
    let sampled = traces
        .sampler
        .samples(trace_id, parent.as_ref().map(|parent| &parent.context));
    Some(ServerSpan {
        context: SpanContext {
            trace_id,
            span_id: SpanId::random(),
            sampled,
        },
        parent,
        service,
        method,
        served,
        start_unix_nanos: unix_nanos(),
    })
}

/// A call's span, from its start until [`ServerSpan::end`] with the call's status.
#[derive(Debug)]
pub(crate) struct ServerSpan {
    context: SpanContext,
    parent: Option<RemoteParent>,
    service: &'static str,
    method: &'static str,
    served: bool,
    start_unix_nanos: u64,
}

impl ServerSpan {
    pub(crate) fn context(&self) -> SpanContext {
        self.context
    }

    /// Ends the span with the call's gRPC status; a recorded span is queued for export.
    pub(crate) fn end(self, code: Code) {
        let (Some(traces), true) = (TRACES.get(), self.context.sampled) else {
            return;
        };
        let (parent, trace_state) = match self.parent {
            Some(parent) => (
                Some(Parent {
                    span_id: parent.context.span_id,
                    remote: true,
                }),
                parent.trace_state,
            ),
            None => (None, None),
        };
        traces.queue.push(SpanRecord {
            trace_id: self.context.trace_id,
            span_id: self.context.span_id,
            parent,
            trace_state,
            start_unix_nanos: self.start_unix_nanos,
            end_unix_nanos: unix_nanos(),
            kind: Kind::Call {
                service: self.service,
                method: self.method,
                served: self.served,
                code,
            },
        });
    }
}

/// A CLIENT span for database work done for the current call, with `db.system` and
/// `db.operation.name` (never the bound values); it ends when dropped. `None` when the call's
/// span is not recorded, or when no call is under way (background work would otherwise make a
/// new trace every few milliseconds).
pub(crate) fn client_span(
    name: &'static str,
    system: &'static str,
    operation: &'static str,
) -> Option<ClientSpan> {
    database_span(name, system, Some(operation), None)
}

/// A CLIENT span for a connection of `pool` that the current call could not have (the
/// database unreachable, the pool exhausted), named `acquire connection`, begun at
/// `start_unix_nanos` (from [`now`]): made only once the wait has failed, so that a
/// connection had costs no span.
pub(crate) fn connection_span(
    system: &'static str,
    pool: &'static str,
    start_unix_nanos: u64,
) -> Option<ClientSpan> {
    let mut span = database_span("acquire connection", system, None, Some(pool))?;
    span.start_unix_nanos = start_unix_nanos;
    Some(span)
}

fn database_span(
    name: &'static str,
    system: &'static str,
    operation: Option<&'static str>,
    pool: Option<&'static str>,
) -> Option<ClientSpan> {
    TRACES.get()?;
    let parent = CURRENT.with(|current| {
        let call = current.take();
        let parent = call.clone();
        current.set(call);
        parent
    })?;
    Some(ClientSpan {
        parent,
        span_id: SpanId::random(),
        name,
        system,
        operation,
        pool,
        error: None,
        start_unix_nanos: unix_nanos(),
    })
}

#[derive(Debug)]
pub(crate) struct ClientSpan {
    parent: Current,
    span_id: SpanId,
    name: &'static str,
    system: &'static str,
    operation: Option<&'static str>,
    pool: Option<&'static str>,
    error: Option<DbFailure>,
    start_unix_nanos: u64,
}

impl ClientSpan {
    /// Marks the work failed: the span's status is Error, with the failure's description, and
    /// its `error.type` the failure's type.
    pub(crate) fn fail(&mut self, failure: DbFailure) {
        self.error = Some(failure);
    }
}

impl Drop for ClientSpan {
    fn drop(&mut self) {
        let Some(traces) = TRACES.get() else { return };
        traces.queue.push(SpanRecord {
            trace_id: self.parent.context.trace_id,
            span_id: self.span_id,
            parent: Some(Parent {
                span_id: self.parent.context.span_id,
                remote: false,
            }),
            trace_state: self.parent.trace_state.take(),
            start_unix_nanos: self.start_unix_nanos,
            end_unix_nanos: unix_nanos(),
            kind: Kind::Database {
                name: self.name,
                system: self.system,
                operation: self.operation,
                pool: self.pool,
                error: self.error,
            },
        });
    }
}

/// The time as spans record it, for a span made after the work it covers began.
pub(crate) fn now() -> u64 {
    unix_nanos()
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
        })
}

/// Runs `future` with `span` as the current span (when there is one and it is recorded), so
/// that the database spans inside it are its children.
pub(crate) fn in_span<F: Future>(span: Option<&ServerSpan>, future: F) -> InSpan<F> {
    let current = span
        .filter(|span| span.context.sampled)
        .map(|span| Current {
            context: span.context,
            trace_state: span
                .parent
                .as_ref()
                .and_then(|parent| parent.trace_state.clone()),
        });
    InSpan {
        inner: future,
        current,
    }
}

pin_project_lite::pin_project! {
    /// A future polled with its call's span as the current one.
    pub(crate) struct InSpan<F> {
        #[pin]
        inner: F,
        current: Option<Current>,
    }
}

impl<F: Future> Future for InSpan<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let previous = CURRENT.replace(this.current.take());
        let _restore = Restore {
            ours: this.current,
            previous,
        };
        this.inner.poll(cx)
    }
}

/// Takes our span back and puts back the one of the future polled around ours, even if ours
/// panics.
struct Restore<'a> {
    ours: &'a mut Option<Current>,
    previous: Option<Current>,
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        *self.ours = CURRENT.replace(self.previous.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_percent_decoded_and_entries_that_do_not_decode_say_why() {
        let entries = key_values(" a = 1 ,b=x%2Cy%3Dz,, =skip,novalue, c=%zz, d=%4, e=%C3");
        assert_eq!(
            entries[..2],
            [
                Ok(("a".to_owned(), "1".to_owned())),
                Ok(("b".to_owned(), "x,y=z".to_owned())),
            ]
        );
        let errors: Vec<String> = entries[2..]
            .iter()
            .map(|entry| entry.clone().expect_err("does not decode"))
            .collect();
        assert_eq!(
            errors,
            [
                "entry 3 has no key",
                "entry 4 is not key=value",
                "the value of \"c\" has a % not followed by two hex digits",
                "the value of \"d\" has a % not followed by two hex digits",
                "the value of \"e\" is not UTF-8 once percent-decoded",
            ]
        );
    }

    fn value<'a>(resource: &'a [(String, String)], key: &str) -> Option<&'a str> {
        let mut found = resource.iter().filter(|(k, _)| k == key);
        let (_, value) = found.next()?;
        assert!(found.next().is_none(), "{key} twice in {resource:?}");
        Some(value)
    }

    #[test]
    fn the_resource_is_named_by_otel_service_name_first() {
        let attributes = Some("service.name=from-attributes,deployment.environment=prod".into());
        let named = resource_of(Some("billing".into()), attributes.clone(), &mut Vec::new());
        assert_eq!(value(&named, "service.name"), Some("billing"));
        assert_eq!(value(&named, "deployment.environment"), Some("prod"));
        let from_attributes = resource_of(Some(" ".into()), attributes, &mut Vec::new());
        assert_eq!(
            value(&from_attributes, "service.name"),
            Some("from-attributes")
        );
        let default = resource_of(None, None, &mut Vec::new());
        assert_eq!(value(&default, "service.name"), Some("student-service"));
        assert_eq!(
            value(&default, "service.version"),
            Some(env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(value(&default, "telemetry.sdk.language"), Some("rust"));
    }

    #[test]
    fn resource_attributes_that_do_not_decode_are_discarded_whole() {
        for bad in [
            "deployment.environment=prod,team=%zz",
            "deployment.environment=prod,team=a%4",
            "deployment.environment=prod,team=%e2%82",
            "deployment.environment=prod,team",
            "deployment.environment=prod,=x",
        ] {
            let mut warnings = Vec::new();
            let resource = resource_of(None, Some(bad.into()), &mut warnings);
            assert_eq!(value(&resource, "deployment.environment"), None, "{bad}");
            assert_eq!(value(&resource, "service.name"), Some("student-service"));
            assert_eq!(warnings.len(), 1, "{bad}: {warnings:?}");
            assert!(warnings[0].contains("whole variable is ignored"));
        }
        let mut warnings = Vec::new();
        let good = Some("team=a%2Cb%3Dc , ,k%C3%A9y=%E2%82%AC".into());
        let resource = resource_of(None, good, &mut warnings);
        assert_eq!(warnings, Vec::<String>::new());
        assert_eq!(value(&resource, "team"), Some("a,b=c"));
        assert_eq!(value(&resource, "kéy"), Some("€"));
    }

    #[test]
    fn a_repeated_resource_attribute_keeps_its_last_value() {
        let resource = resource_of(
            None,
            Some("team=a,service.version=2.0,team=b".into()),
            &mut Vec::new(),
        );
        assert_eq!(value(&resource, "team"), Some("b"));
        assert_eq!(value(&resource, "service.version"), Some("2.0"));
    }
}
