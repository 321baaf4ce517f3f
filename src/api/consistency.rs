//! Read-your-writes across a replica (`--database-read-url`): every write answers with the
//! response metadata `x-consistency-token` (the primary's WAL position after it, opaque to
//! callers), and a read RPC that sends one back as request metadata never reads older than that
//! write (see `store::replica`). The server adds this layer only when there is a replica.

use std::task::{Context, Poll};

use http::HeaderValue;
use tonic::Status;
use tower::{Layer, Service};

use super::BoxFuture;
use crate::store::{
    Store,
    replica::{self, Lsn},
};

/// The metadata key, on write responses and read requests.
pub const CONSISTENCY_TOKEN: &str = "x-consistency-token";

/// What an RPC does, for the choice of database: reads may go to the replica, writes give a
/// token, the rest (the event feed, health, reflection) neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    Other,
}

fn kind(path: &str) -> Kind {
    let Some((service, method)) = path.trim_start_matches('/').split_once('/') else {
        return Kind::Other;
    };
    if !service.starts_with("school.v1.") || service == "school.v1.EnrollmentEventService" {
        return Kind::Other;
    }
    let reads = ["Get", "List", "Search"];
    let writes = [
        "Create",
        "Update",
        "Delete",
        "Assign",
        "Unassign",
        "BatchAssign",
    ];
    if reads.iter().any(|prefix| method.starts_with(prefix)) {
        Kind::Read
    } else if writes.iter().any(|prefix| method.starts_with(prefix)) {
        Kind::Write
    } else {
        Kind::Other
    }
}

/// The token as callers see it: 16 hexadecimal digits.
fn encode(position: Lsn) -> String {
    format!("{position:016x}")
}

fn decode(token: &HeaderValue) -> Option<Lsn> {
    let text = token.to_str().ok()?;
    if text.len() != 16 {
        return None;
    }
    u64::from_str_radix(text, 16).ok()
}

/// Adds [`Consistency`] to every service of the server.
#[derive(Debug, Clone)]
pub struct ConsistencyLayer {
    store: Store,
}

impl ConsistencyLayer {
    pub fn new(store: Store) -> Self {
        ConsistencyLayer { store }
    }
}

impl<S> Layer<S> for ConsistencyLayer {
    type Service = Consistency<S>;

    fn layer(&self, inner: S) -> Consistency<S> {
        Consistency {
            inner,
            store: self.store.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Consistency<S> {
    inner: S,
    store: Store,
}

impl<S> Service<http::Request<tonic::body::Body>> for Consistency<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        match kind(request.uri().path()) {
            Kind::Read => {
                let after = match request.headers().get(CONSISTENCY_TOKEN).map(decode) {
                    None => None,
                    Some(Some(position)) => Some(position),
                    Some(None) => {
                        let status = Status::invalid_argument(format!(
                            "{CONSISTENCY_TOKEN}: not a token this service gave (send back the \
                             value of a write's {CONSISTENCY_TOKEN} response metadata as it is)"
                        ));
                        return Box::pin(async move { Ok(status.into_http()) });
                    }
                };
                Box::pin(replica::reading(after, self.inner.call(request)))
            }
            Kind::Write => {
                let store = self.store.clone();
                let response = self.inner.call(request);
                Box::pin(async move {
                    let mut response = response.await?;
                    // After the handler: its commit (if any) is at or before this position.
                    // A write that failed gets one too; it orders nothing of its own.
                    if let Ok(position) = store.write_position().await
                        && let Ok(value) = HeaderValue::from_str(&encode(position))
                    {
                        response.headers_mut().insert(CONSISTENCY_TOKEN, value);
                    }
                    Ok(response)
                })
            }
            Kind::Other => Box::pin(self.inner.call(request)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_writes_and_the_rest() {
        assert_eq!(kind("/school.v1.StudentService/GetStudent"), Kind::Read);
        assert_eq!(kind("/school.v1.StudentService/ListCourses"), Kind::Read);
        assert_eq!(kind("/school.v1.CourseService/SearchCourses"), Kind::Read);
        assert_eq!(kind("/school.v1.StudentService/AssignCourse"), Kind::Write);
        assert_eq!(
            kind("/school.v1.StudentService/BatchAssignCourses"),
            Kind::Write
        );
        assert_eq!(kind("/school.v1.CourseService/DeleteCourse"), Kind::Write);
        assert_eq!(
            kind("/school.v1.EnrollmentEventService/WatchEnrollmentEvents"),
            Kind::Other
        );
        assert_eq!(kind("/grpc.health.v1.Health/Check"), Kind::Other);
    }

    #[test]
    fn tokens_round_trip_and_anything_else_is_refused() {
        let token = HeaderValue::from_str(&encode(0x016B_3748)).expect("ascii");
        assert_eq!(decode(&token), Some(0x016B_3748));
        for bad in ["", "0/16B3748", "zzzzzzzzzzzzzzzz", "00000000000000001"] {
            assert_eq!(decode(&HeaderValue::from_static(bad)), None, "{bad}");
        }
    }
}
