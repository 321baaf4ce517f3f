//! The gRPC adapters: proto request -> domain -> store -> proto response, nothing else.

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

/// The code generated from `proto/school/v1`.
#[allow(clippy::all, unreachable_pub, rust_2018_idioms)]
#[rustfmt::skip]
pub mod pb {
    tonic::include_proto!("school.v1");

    /// The encoded descriptors of our protos and their imports, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/school_descriptor.bin"));
}
