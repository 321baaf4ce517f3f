//! Ends long-lived response streams (health `Watch`) when shutdown begins.
//!
//! A graceful shutdown waits for every open stream, and a `Watch` stream never ends by itself,
//! so one watcher would hold every shutdown to the full drain timeout. Wrapped services finish
//! their open responses with UNAVAILABLE ("shutting down", what gRPC clients expect of a server
//! going away) once the signal fires, after any message already queued, such as the final
//! NOT_SERVING.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::watch;
use tower::Service;

use super::BoxFuture;

/// Fires once, when shutdown begins.
pub type ShutdownSignal = watch::Receiver<bool>;

/// Wraps a service so its responses end when `signal` fires.
#[derive(Debug, Clone)]
pub struct EndOnShutdown<S> {
    inner: S,
    signal: ShutdownSignal,
}

impl<S> EndOnShutdown<S> {
    pub fn new(inner: S, signal: ShutdownSignal) -> Self {
        Self { inner, signal }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for EndOnShutdown<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for EndOnShutdown<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<EndingBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let response = self.inner.call(request);
        let mut signal = self.signal.clone();
        Box::pin(async move {
            let shutdown: BoxFuture<()> = Box::pin(async move {
                // An error means the sender is gone: the server is stopping anyway.
                let _ = signal.wait_for(|fired| *fired).await;
            });
            Ok(response.await?.map(|inner| EndingBody {
                inner,
                shutdown: Some(shutdown),
                ended: false,
            }))
        })
    }
}

pin_project_lite::pin_project! {
    pub struct EndingBody<B> {
        #[pin]
        inner: B,
        shutdown: Option<BoxFuture<()>>,
        ended: bool,
    }
}

impl<B: Body> Body for EndingBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        // Whatever the service has ready goes out first.
        let frame = this.inner.poll_frame(cx);
        if frame.is_ready() {
            return frame;
        }
        let Some(shutdown) = this.shutdown.as_mut() else {
            return Poll::Pending;
        };
        if shutdown.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        *this.shutdown = None;
        *this.ended = true;
        let mut trailers = HeaderMap::new();
        trailers.insert(
            "grpc-status",
            HeaderValue::from(tonic::Code::Unavailable as i32),
        );
        trailers.insert(
            "grpc-message",
            HeaderValue::from_static("server%20is%20shutting%20down"),
        );
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
