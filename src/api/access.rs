//! Who may call: the layer that asks `security` to admit each call before its service sees it.
//! A tower layer rather than a tonic interceptor, because the policy is per method and an
//! interceptor never learns which method it guards.
//!
//! An admitted caller's name goes into the request's extensions (handlers find it there) and into
//! the per-call log span; a refused call is answered here, with the status `security` gave.

use std::task::{Context, Poll};

use tonic::Status;
use tower::{Layer, Service};
use tracing::Span;

use super::audit::AuditNote;
use crate::{error::Error, listen::PeerInfo, security::Security};

/// Adds [`Access`] to every service of the server.
#[derive(Debug, Clone)]
pub struct AccessLayer {
    security: Security,
}

impl AccessLayer {
    pub fn new(security: Security) -> AccessLayer {
        AccessLayer { security }
    }
}

impl<S> Layer<S> for AccessLayer {
    type Service = Access<S>;

    fn layer(&self, inner: S) -> Access<S> {
        Access {
            inner,
            security: self.security.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Access<S> {
    inner: S,
    security: Security,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Access<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        futures_util::future::Either<S::Future, std::future::Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        use futures_util::future::Either;
        let identity = request
            .extensions()
            .get::<PeerInfo>()
            .and_then(|peer| peer.identity.clone());
        let admitted =
            self.security
                .admit(request.uri().path(), request.headers(), identity.as_deref());
        match admitted {
            Ok(None) => Either::Left(self.inner.call(request)),
            Ok(Some(caller)) => {
                Span::current().record("caller", caller.name());
                if let Some(note) = request.extensions().get::<AuditNote>() {
                    note.principal(caller.shared_name());
                }
                request.extensions_mut().insert(caller);
                Either::Left(self.inner.call(request))
            }
            Err(err) => {
                if let Error::PermissionDenied { principal, .. } = &err {
                    Span::current().record("caller", principal.as_ref());
                }
                Either::Right(std::future::ready(Ok(Status::from(err).into_http())))
            }
        }
    }
}
