//! The gRPC adapters: proto request -> domain -> store -> proto response, nothing else.

pub mod access;
mod audit;
pub mod consistency;
mod convert;
mod courses;
pub mod end_streams;
mod events;
pub mod limits;
pub mod observe;
mod rpc;
mod status;
mod students;

/// The boxed future our tower layers (`end_streams`, `limits`, `observe`) answer with.
type BoxFuture<T> = std::pin::Pin<Box<dyn Future<Output = T> + Send>>;

pub use courses::CourseApi;
pub use events::EventApi;
pub(crate) use rpc::register_every_rpc;
pub use students::StudentApi;

/// The code generated from `proto/school/v1` (its home is `crate::pb`, a leaf every layer that
/// speaks the wire format may use; this path is the one clients of the library know).
pub use crate::pb;
