//! The one per-call layer: it times each RPC once and feeds the log line (method, gRPC status
//! code, latency, inside an `rpc` span that also holds whatever the handler logs) and the gRPC
//! server metrics, named and labelled as go-grpc-middleware's Prometheus provider names them
//! (`grpc_server_started_total`, `_handled_total`, `_msg_received_total`, `_msg_sent_total`,
//! `_handling_seconds`), which existing dashboards and alert rules query.
//!
//! When traces are exported (`telemetry::traces`) the call also has an OpenTelemetry SERVER
//! span, named `school.v1.StudentService/AssignCourse`, with the RPC attributes of the semantic
//! conventions v1.26.0 (`rpc.system`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code`),
//! status Error only for the codes those conventions call server errors (never for a path the
//! server does not serve, `unknown/unknown`: the client's mistake), a child of the
//! caller's span when the request carries a W3C `traceparent`; it is the current span while the
//! handler runs (`traces::in_span`). The `rpc` span's `trace_id` and `span_id` fields put the
//! trace on every log line of the call.
//!
//! It is the outermost layer, so it sees every call: those the overload, deadline and
//! authentication layers refuse and those tonic refuses before our code runs are handled too,
//! with their code.
//!
//! The status of a successful unary call travels in the HTTP/2 trailers, after the body, so the
//! call finishes when the trailers pass through; errors answered before any body carry their
//! status in the headers. A call whose response is dropped unfinished (the client cancelled or
//! its deadline passed) finishes as CANCELLED, and so does one whose connection closed before its
//! request was read whole (tonic answers UNKNOWN to no one). Messages are counted from the gRPC
//! framing of the bodies (a 5-byte prefix, then the message), as they pass.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tonic::{Code, Status};
use tower::{Layer, Service};
use tracing::{
    Instrument, Span,
    field::{Empty, display},
};

use super::{
    BoxFuture,
    audit::PendingAudit,
    rpc::{Messages, Rpc},
};
use crate::{
    error::Error,
    telemetry::{metrics::enabled as metrics_on, traces},
};

/// Adds [`Observe`] to every service of the server.
#[derive(Debug, Clone, Copy, Default)]
pub struct ObserveLayer;

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
}

impl<S, ResBody> Service<http::Request<tonic::body::Body>> for Observe<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<ObservedBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        let rpc = Rpc::of_path(request.uri().path());
        rpc.started();
        let audit = PendingAudit::of(rpc.service, rpc.method, &mut request);
        let (span, trace) = rpc_span(rpc, &request);
        let started = Instant::now();
        // Counting messages means boxing the request body once more: only when metrics are on.
        let counting = metrics_on();
        let request = if counting {
            request.map(|body| {
                tonic::body::Body::new(CountedBody {
                    inner: body,
                    messages: Some(Messages::received(rpc)),
                })
            })
        } else {
            request
        };
        let response = span.in_scope(|| self.inner.call(request));
        // The call is owned from here: dropped before its response (the client reset the
        // stream, or shutdown cut the connection), it ends as CANCELLED, spans and all.
        let mut call = Call {
            rpc,
            span: span.clone(),
            trace,
            audit,
            started,
            finished: false,
        };
        Box::pin(
            async move {
                let response = traces::in_span(call.trace.as_ref(), response).await;
                let (parts, body) = match response {
                    Ok(response) => response.into_parts(),
                    Err(error) => {
                        call.finish(Code::Unknown);
                        return Err(error);
                    }
                };
                if let Some(code) = grpc_status(&parts.headers) {
                    if let Some(status) = parts.extensions.get::<Status>() {
                        log_failure(status);
                        if let Some(audit) = &mut call.audit {
                            audit.failed_with(status);
                        }
                    }
                    call.finish(code);
                }
                let body = ObservedBody {
                    inner: body,
                    messages: counting.then(|| Messages::sent(rpc)),
                    call,
                };
                Ok(http::Response::from_parts(parts, body))
            }
            .instrument(span),
        )
    }
}

/// The call's log span (`caller` is filled in by `access` when
/// callers authenticate) and, when traces are exported, its trace span.
fn rpc_span<B>(rpc: Rpc, request: &http::Request<B>) -> (Span, Option<traces::ServerSpan>) {
    let span = tracing::info_span!(
        "rpc",
        method = request.uri().path(),
        caller = Empty,
        trace_id = Empty,
        span_id = Empty,
    );
    if span.is_disabled() && !traces::exported() {
        // No log line of the call will be written (RUST_LOG above info) and no span: the
        // caller's trace context has no one to go to.
        return (span, None);
    }
    let parent = traces::remote_parent(request.headers());
    let callers_trace = parent.as_ref().map(|parent| parent.context.trace_id);
    let trace = traces::server_span(rpc.service, rpc.method, rpc.served(), parent);
    if span.is_disabled() {
        // No log line of the call will be written: no ids to format.
        return (span, trace);
    }
    // Traces off: the log lines still name the caller's trace.
    if let Some(trace) = &trace {
        let ids = trace.context();
        span.record("trace_id", display(ids.trace_id));
        span.record("span_id", display(ids.span_id));
    } else if let Some(trace_id) = callers_trace {
        span.record("trace_id", display(trace_id));
    }
    (span, trace)
}

/// Failures of ours are logged with their cause, which the client never sees (it rides in the
/// status's source, put there by `api::status`); a client's own mistakes are not worth more than
/// the per-call log line, and neither are calls refused under overload or cut off by their
/// deadline (one more line each would add to the overload).
pub(super) fn log_failure(status: &Status) {
    let Some(err) = std::error::Error::source(status)
        .and_then(|source| source.downcast_ref::<crate::error::Error>())
    else {
        return;
    };
    let code = status.code();
    let cause = std::error::Error::source(err).map(|source| source.to_string());
    match err {
        Error::Internal(_) => tracing::error!(?code, cause, "internal error"),
        Error::Unavailable(_) | Error::ReadOnly(_) | Error::Conflict(_) => {
            tracing::warn!(?code, cause, "{err}")
        }
        _ => {}
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    match Code::from_i32(value) {
        Code::Unknown if connection_lost(headers) => Some(Code::Cancelled),
        code => Some(code),
    }
}

/// Whether tonic's UNKNOWN says the connection broke while it read the request: the client
/// closed it mid-call (or the network did), so no one is there to answer, which grpc-go counts
/// as CANCELLED too. The message is tonic's, still percent-encoded as it travels.
fn connection_lost(headers: &HeaderMap) -> bool {
    headers.get("grpc-message").is_some_and(|message| {
        message
            .as_bytes()
            .ends_with(b"error%20reading%20a%20body%20from%20connection")
    })
}

struct Call {
    rpc: Rpc,
    span: Span,
    trace: Option<traces::ServerSpan>,
    /// For school.v1 calls: written at the end if the call is audited.
    audit: Option<PendingAudit>,
    started: Instant,
    finished: bool,
}

impl Call {
    fn finish(&mut self, code: Code) {
        if self.finished {
            return;
        }
        self.finished = true;
        let elapsed = self.started.elapsed();
        self.rpc.handled(code, elapsed);
        let latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        if let Some(trace) = self.trace.take() {
            trace.end(code);
        }
        self.span
            .in_scope(|| tracing::info!(?code, latency_us, "finished"));
        if let Some(audit) = self.audit.take() {
            audit.finish(code);
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

pin_project_lite::pin_project! {
    /// The response body, watched for the trailers that carry the status and, when metrics
    /// are on, for the messages it sends.
    pub struct ObservedBody<B> {
        #[pin]
        inner: B,
        messages: Option<Messages>,
        call: Call,
    }
}

impl<B: Body<Data = bytes::Bytes>> Body for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = this.inner.poll_frame(cx);
        count_messages(this.messages, &frame);
        match &frame {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    this.call.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => this.call.finish(Code::Internal),
            Poll::Ready(None) => this.call.finish(Code::Unknown),
            Poll::Pending => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A request body whose gRPC messages are counted as they pass.
    pub struct CountedBody<B> {
        #[pin]
        inner: B,
        messages: Option<Messages>,
    }
}

impl<B: Body<Data = bytes::Bytes>> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = this.inner.poll_frame(cx);
        count_messages(this.messages, &frame);
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Counts the messages a data frame completes, when messages are counted.
fn count_messages<D: AsRef<[u8]>, E>(
    messages: &mut Option<Messages>,
    frame: &Poll<Option<Result<Frame<D>, E>>>,
) {
    if let Some(messages) = messages
        && let Poll::Ready(Some(Ok(frame))) = frame
        && let Some(data) = frame.data_ref()
    {
        messages.count(data.as_ref());
    }
}
