//! One log line per RPC: method, gRPC status code and latency, inside an `rpc` span that also
//! holds whatever the handler logs.
//!
//! The status of a successful unary call travels in the HTTP/2 trailers, after the body, so the
//! line is written when the trailers pass through; errors answered before any body carry their
//! status in the headers. A call whose response is dropped unfinished (the client cancelled or
//! its deadline passed) is logged as CANCELLED.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tonic::Code;
use tower::{Layer, Service};
use tracing::{Instrument, Span};

use super::BoxFuture;

/// Adds [`RpcLog`] to every service of the server.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcLogLayer;

impl<S> Layer<S> for RpcLogLayer {
    type Service = RpcLog<S>;

    fn layer(&self, inner: S) -> RpcLog<S> {
        RpcLog { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RpcLog<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RpcLog<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<LoggedBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        // `caller` is filled in by token authentication (security::RequireToken), when it is on.
        let span = tracing::info_span!(
            "rpc",
            method = request.uri().path(),
            caller = tracing::field::Empty
        );
        let started = Instant::now();
        let response = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let (parts, body) = response.await?.into_parts();
                let mut call = CallLog {
                    span: Span::current(),
                    started,
                    finished: false,
                };
                if let Some(code) = grpc_status(&parts.headers) {
                    call.finish(code);
                }
                Ok(http::Response::from_parts(
                    parts,
                    LoggedBody { inner: body, call },
                ))
            }
            .instrument(span),
        )
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    Some(Code::from_i32(value))
}

struct CallLog {
    span: Span,
    started: Instant,
    finished: bool,
}

impl CallLog {
    fn finish(&mut self, code: Code) {
        if self.finished {
            return;
        }
        self.finished = true;
        let latency_us = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.span
            .in_scope(|| tracing::info!(?code, latency_us, "finished"));
    }
}

impl Drop for CallLog {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

pin_project_lite::pin_project! {
    /// The response body, watched for the trailers that carry the status.
    pub struct LoggedBody<B> {
        #[pin]
        inner: B,
        call: CallLog,
    }
}

impl<B: Body> Body for LoggedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = this.inner.poll_frame(cx);
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
