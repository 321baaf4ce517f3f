//! Compiles `proto/` without a system `protoc` (protox is a pure-Rust compiler) and writes the
//! encoded descriptor set to OUT_DIR so the server can offer reflection. Also names the build
//! for `--version`: the package version, and the git commit when built from a checkout. And
//! tells the integration tests what this machine can run them against (`test_environment`).

use std::{env, fs, path::PathBuf, process::Command};

const PROTOS: &[&str] = &[
    "school/v1/resources.proto",
    "school/v1/student_service.proto",
    "school/v1/course_service.proto",
    "school/v1/enrollment_event_service.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=migrations");
    let commit = commit();
    let package = env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let version = match &commit {
        Some(commit) => format!("{package} (commit {commit})"),
        None => package,
    };
    println!("cargo:rustc-env=STUDENT_SERVICE_VERSION={version}");
    println!(
        "cargo:rustc-env=STUDENT_SERVICE_COMMIT={}",
        commit.unwrap_or_default()
    );

    test_environment();

    let fds = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("school_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}

/// The commit of a git checkout; none elsewhere (a source tarball, no git).
fn commit() -> Option<String> {
    let git = |args: &[&str]| {
        let output = Command::new("git").args(args).output().ok()?;
        let text = String::from_utf8(output.stdout).ok()?;
        output.status.success().then(|| text.trim().to_owned())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
    // Rebuild the name when HEAD moves: the file HEAD, and the branch file it points to.
    // (A path that does not exist, such as a packed branch, would rerun this at every build.)
    let watch = |path: Option<String>| {
        if let Some(path) = path.filter(|path| std::path::Path::new(path).exists()) {
            println!("cargo:rerun-if-changed={path}");
        }
    };
    watch(git(&["rev-parse", "--git-path", "HEAD"]));
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch(git(&["rev-parse", "--git-path", &branch]));
    }
    Some(commit)
}

/// The integration tests that need more than a Rust toolchain are marked ignored, with the
/// reason, unless what they need is there: `test_postgres` when `TEST_DATABASE_URL` names a
/// server, `test_nats_server` when `nats-server` is on PATH. A test can only be ignored at compile
/// time, so the check is made here; `cargo test`'s summary then counts such tests as ignored
/// instead of as passed.
fn test_environment() {
    println!("cargo::rustc-check-cfg=cfg(test_postgres)");
    println!("cargo::rustc-check-cfg=cfg(test_nats_server)");
    println!("cargo:rerun-if-env-changed=TEST_DATABASE_URL");
    println!("cargo:rerun-if-env-changed=PATH");
    if env::var("TEST_DATABASE_URL").is_ok_and(|url| !url.is_empty()) {
        println!("cargo:rustc-cfg=test_postgres");
    }
    let on_path = |name: &str| {
        env::var_os("PATH")
            .is_some_and(|path| env::split_paths(&path).any(|dir| dir.join(name).is_file()))
    };
    if on_path("nats-server") {
        println!("cargo:rustc-cfg=test_nats_server");
    }
}
