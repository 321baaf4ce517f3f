//! Limits every call meets before its handler runs: a deadline, and a cap on calls in flight.
//!
//! **Deadline.** A call gets the shorter of the client's `grpc-timeout` and the server's
//! `--request-timeout`. When it passes, the handler's future is dropped (whatever it was waiting
//! for, a pool connection or a statement's answer, is abandoned) and the client gets
//! DEADLINE_EXCEEDED. tonic enforces `grpc-timeout` itself too, but answers CANCELLED ("Timeout
//! expired"), where the gRPC spec says DEADLINE_EXCEEDED; this layer's timer is created first,
//! inside tonic's, for the same or an earlier instant, so it fires first and its answer is the
//! one sent. A deadline covers reading the request, so a client that never finishes sending its
//! body is cut off too. For streaming responses (`WatchEnrollmentEvents`, health `Watch`,
//! reflection) it covers only the start of the response, as in tonic: a stream the client wants
//! open stays open, and the client ends it (or sets a deadline, which its gRPC library enforces).
//!
//! **Calls in flight.** At most `max_in_flight` calls run at once across all connections; one
//! more is refused at once with RESOURCE_EXHAUSTED, before its body is read, so memory stays
//! bounded however many clients pile on. A call counts until its response body has ended, so an
//! open stream counts for as long as it is open. Calls already admitted queue for a database connection
//! and get UNAVAILABLE after the pool's acquire timeout. Health checks are exempt: a probe must
//! not fail because the server is busy serving. So is reflection, which never touches the
//! database: grpcurl holds a reflection stream open beside each call it makes, so counting it
//! took two slots per grpcurl call (with `--max-in-flight 1`, grpcurl could not call at all).

use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};
use tonic::Status;
use tower::{Layer, Service};

use super::BoxFuture;
use crate::error::Error;

/// Calls under these path prefixes skip the in-flight limit.
const EXEMPT_PREFIXES: [&str; 2] = ["/grpc.health.v1.Health/", "/grpc.reflection."];

/// Adds [`CallLimits`] to every service of the server.
#[derive(Debug, Clone)]
pub struct CallLimitsLayer {
    request_timeout: Duration,
    max_in_flight: usize,
    in_flight: Arc<Semaphore>,
}

impl CallLimitsLayer {
    pub fn new(request_timeout: Duration, max_in_flight: usize) -> Self {
        CallLimitsLayer {
            request_timeout,
            max_in_flight,
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
        }
    }
}

impl<S> Layer<S> for CallLimitsLayer {
    type Service = CallLimits<S>;

    fn layer(&self, inner: S) -> CallLimits<S> {
        CallLimits {
            inner,
            limits: self.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CallLimits<S> {
    inner: S,
    limits: CallLimitsLayer,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CallLimits<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<HeldBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<HeldBody<ResBody>>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let path = request.uri().path();
        let permit = if EXEMPT_PREFIXES
            .iter()
            .any(|prefix| path.starts_with(prefix))
        {
            None
        } else {
            match self.limits.in_flight.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    let refused = answer(Error::Overloaded(self.limits.max_in_flight));
                    return Box::pin(std::future::ready(Ok(
                        refused.map(|body| HeldBody { body, permit: None })
                    )));
                }
            }
        };
        let timeout = grpc_timeout(request.headers())
            .map_or(self.limits.request_timeout, |client| {
                client.min(self.limits.request_timeout)
            });
        // Fixed now, before tonic's own grpc-timeout timer starts (see the module comment).
        let deadline = Instant::now().checked_add(timeout);
        let response = self.inner.call(request);
        Box::pin(async move {
            let answered = match deadline {
                None => response.await,
                Some(deadline) => match tokio::time::timeout_at(deadline, response).await {
                    Ok(response) => response,
                    Err(_) => Ok(answer(Error::DeadlineExceeded(timeout))),
                },
            };
            answered.map(|response| response.map(|body| HeldBody { body, permit }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its call's in-flight permit until the body ends (or is
    /// dropped): a stream counts toward the limit for as long as it is open.
    pub struct HeldBody<B> {
        #[pin]
        body: B,
        permit: Option<OwnedSemaphorePermit>,
    }
}

impl<B: Default> Default for HeldBody<B> {
    fn default() -> Self {
        HeldBody {
            body: B::default(),
            permit: None,
        }
    }
}

impl<B: Body> Body for HeldBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = this.body.poll_frame(cx);
        if let Poll::Ready(None) = frame {
            this.permit.take();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A trailers-only gRPC response carrying the error's status.
fn answer<B: Default>(err: Error) -> Response<B> {
    Status::from(err).into_http()
}

/// The `grpc-timeout` header: up to 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`), as the
/// gRPC over HTTP/2 spec defines it. A malformed value is ignored, as tonic ignores it.
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let digits = value.get(..value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match value.as_bytes().last()? {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: &str) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", value.parse().expect("a valid header value"));
        grpc_timeout(&headers)
    }

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse("99999999S"), Some(Duration::from_secs(99_999_999)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse("0n"), Some(Duration::ZERO));
    }

    #[test]
    fn malformed_grpc_timeouts_are_ignored() {
        for value in ["", "m", "123456789S", "10x", "-1S", "1.5S"] {
            assert_eq!(parse(value), None, "{value:?}");
        }
    }
}
