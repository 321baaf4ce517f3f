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
/// server, `test_nats_server` when `nats-server` is on PATH, `test_pg_clusters` when PostgreSQL's
/// server binaries are found (`PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`; the tests
/// read the directory from `TEST_PG_BIN`) for the tests that start clusters of their own. A test can only be ignored at compile
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
    println!("cargo::rustc-check-cfg=cfg(test_pg_clusters)");
    println!("cargo:rerun-if-env-changed=PG_BIN");
    let pg_bin = postgres_binaries();
    if pg_bin.is_some() {
        println!("cargo:rustc-cfg=test_pg_clusters");
    }
    let pg_bin = pg_bin.map(|dir| dir.display().to_string());
    println!("cargo:rustc-env=TEST_PG_BIN={}", pg_bin.unwrap_or_default());
}

/// The directory of `initdb`, `pg_ctl` and `pg_basebackup`: `PG_BIN`, else Debian's layout.
fn postgres_binaries() -> Option<PathBuf> {
    let complete = |dir: &PathBuf| {
        ["initdb", "pg_ctl", "pg_basebackup"]
            .iter()
            .all(|name| dir.join(name).is_file())
    };
    if let Some(dir) = env::var_os("PG_BIN") {
        return Some(PathBuf::from(dir)).filter(complete);
    }
    let versions = fs::read_dir("/usr/lib/postgresql").ok()?;
    let mut found: Vec<(u32, PathBuf)> = versions
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| complete(dir))
        .collect();
    found.sort();
    found.pop().map(|(_, dir)| dir)
}
