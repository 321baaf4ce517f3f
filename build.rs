//! Compiles `proto/` without a system `protoc` (protox is a pure-Rust compiler) and writes the
//! encoded descriptor set to OUT_DIR so the server can offer reflection.

use std::{env, fs, path::PathBuf};

const PROTOS: &[&str] = &[
    "school/v1/resources.proto",
    "school/v1/student_service.proto",
    "school/v1/course_service.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=migrations");

    let fds = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("school_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
