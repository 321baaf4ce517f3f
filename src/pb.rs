//! The code generated from `proto/school/v1`, and the descriptors reflection serves: a leaf the
//! gRPC adapters (`api`) and the event relay (`outbox`) both speak, depending on nothing here.

#![allow(clippy::all, unreachable_pub, rust_2018_idioms)]

tonic::include_proto!("school.v1");

/// The encoded descriptors of our protos and their imports, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/school_descriptor.bin"));

/// A time the store keeps in microseconds since the Unix epoch, as a protobuf `Timestamp`.
pub fn timestamp(micros: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        // In 0..1_000_000_000, so the cast cannot truncate.
        nanos: (micros.rem_euclid(1_000_000) * 1_000) as i32,
    })
}
