//! What the binary does with the database it is given, before serving: the real executable in a
//! process of its own, its output read as an operator reads it.

use std::time::Duration;

use student_service::api::pb;
use tokio::process::Command;

use crate::{
    helpers::{Backend, TestDatabase},
    process::{ServerProcess, create_ada},
};

/// Runs `student-service ARGS` to its end; returns whether it succeeded and all it printed.
async fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_student-service"))
        .args(args)
        .env("RUST_LOG", "debug")
        .envs(env.iter().copied())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(20), output)
        .await
        .expect("student-service exits by itself")
        .expect("run student-service");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Starts a server on `url` and stops it, so the database exists with its tables.
async fn create_database(url: &str) {
    let server = ServerProcess::start(url, &[]).await;
    server.terminate();
    assert!(server.wait(Duration::from_secs(10)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_sqlite_file_refuses_to_start_and_maintenance_still_works() {
    let database = TestDatabase::create(&Backend::Sqlite).await;
    let url = database.url.as_str();
    let first = ServerProcess::start(url, &[]).await;

    let (started, output) = run(
        &[],
        &[("DATABASE_URL", url), ("LISTEN_ADDR", "127.0.0.1:0")],
    )
    .await;

    assert!(!started, "a second server started: {output}");
    let file = url.trim_start_matches("sqlite:");
    assert!(
        output.contains(&format!("the SQLite database {file} is already served"))
            && output.contains("run replicas on PostgreSQL"),
        "{output}"
    );
    for command in ["migrate", "verify"] {
        let (ok, output) = run(&[command, "--database-url", url], &[]).await;
        assert!(ok, "{command} beside a running server failed: {output}");
    }
    let (mut students, _) = first.clients().await;
    create_ada(&mut students).await; // the first server still serves
    first.terminate();
    assert!(first.wait(Duration::from_secs(10)).await.success());
    // The lock goes with its process: the file serves again.
    let again = ServerProcess::start(url, &[]).await;
    again.terminate();
    assert!(again.wait(Duration::from_secs(10)).await.success());
}

/// Starts a second server on `url` beside a first one. `Ok(output)` when it refused and exited;
/// `Err` when it was still running after 10 s (it started: killed on drop).
async fn second_server(url: &str) -> Result<String, String> {
    let output = Command::new(env!("CARGO_BIN_EXE_student-service"))
        .env("DATABASE_URL", url)
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(10), output).await {
        Ok(output) => {
            let output = output.expect("run student-service");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            if output.status.success() {
                Err(format!("it ran and exited 0: {text}"))
            } else {
                Ok(text)
            }
        }
        Err(_) => Err("it was still serving after 10 s".to_owned()),
    }
}

/// The lock is on the file, not on the name it was reached by: a hard link (which has no name
/// in common with the file), a symlink and a `..` spelling all reach the served file, and each
/// second server refuses before it migrates or serves. Through a hard link two servers used to
/// run side by side, each with a WAL of its own, and corrupted the file within seconds; through
/// a symlink both ran too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_through_another_name_of_the_file_refuses_to_start() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("school.db");
    let first = ServerProcess::start(&format!("sqlite:{}", path.display()), &[]).await;
    std::fs::create_dir(dir.path().join("elsewhere")).expect("mkdir");
    let hard_link = dir.path().join("elsewhere/hard-link.db");
    std::fs::hard_link(&path, &hard_link).expect("hard link");
    let symlink = dir.path().join("symlink.db");
    std::os::unix::fs::symlink(&path, &symlink).expect("symlink");
    let dotted = dir.path().join("elsewhere/../school.db");

    let mut started = Vec::new();
    for name in [&hard_link, &symlink, &dotted] {
        match second_server(&format!("sqlite:{}", name.display())).await {
            Ok(output) => assert!(
                output.contains(&format!(
                    "the SQLite database {} is already served by another student-service process",
                    name.display()
                )) && output.contains("run replicas on PostgreSQL"),
                "{}: {output}",
                name.display()
            ),
            Err(why) => started.push(format!("{}: {why}", name.display())),
        }
    }

    assert!(started.is_empty(), "second servers started: {started:#?}");
    let (mut students, _) = first.clients().await;
    create_ada(&mut students).await; // the first server still serves
    first.terminate();
    assert!(first.wait(Duration::from_secs(10)).await.success());
    let (ok, output) = run(
        &[
            "verify",
            "--database-url",
            &format!("sqlite:{}", path.display()),
        ],
        &[],
    )
    .await;
    assert!(ok, "{output}");
}

/// Nothing the server creates beside the database follows a symlink planted there: a
/// `school.db.lock` pointing at another file (what servers before the lock moved onto the
/// database file itself opened, truncated and filled with their PID) is left alone, and so is
/// the file it points at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_planted_beside_the_database_is_never_written_through() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("school.db");
    let precious = dir.path().join("precious.txt");
    std::fs::write(&precious, "keep me\n").expect("write");
    let planted = dir.path().join("school.db.lock");
    std::os::unix::fs::symlink(&precious, &planted).expect("symlink");

    let server = ServerProcess::start(&format!("sqlite:{}", path.display()), &[]).await;
    let (mut students, _) = server.clients().await;
    create_ada(&mut students).await;
    server.terminate();
    assert!(server.wait(Duration::from_secs(10)).await.success());

    let contents = std::fs::read_to_string(&precious).expect("read");
    assert_eq!(
        contents, "keep me\n",
        "the file behind the symlink was written"
    );
    let link = std::fs::symlink_metadata(&planted).expect("the symlink is still there");
    assert!(link.file_type().is_symlink());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_sqlite_database_refuses_to_serve_but_verifies() {
    let database = TestDatabase::create(&Backend::Sqlite).await;
    create_database(&database.url).await;
    let read_only = format!("{}?mode=ro", database.url);

    let env = [
        ("DATABASE_URL", read_only.as_str()),
        ("LISTEN_ADDR", "127.0.0.1:0"),
    ];
    let (started, output) = run(&[], &env).await;

    assert!(
        !started,
        "the server started on a read-only database: {output}"
    );
    assert!(output.contains("is read-only"), "{output}");
    assert!(!output.contains("WAL checkpoint failed"), "{output}");
    let (verified, output) = run(&["verify", "--database-url", &read_only], &[]).await;
    assert!(verified, "verify of a read-only database failed: {output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_and_verify_refuse_a_sqlite_file_that_does_not_exist() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("mistyped.db");
    let url = format!("sqlite:{}", path.display());

    for command in ["verify", "migrate"] {
        let (ok, output) = run(&[command, "--database-url", &url], &[]).await;

        assert!(!ok, "{command} succeeded on a missing file: {output}");
        assert!(
            output.contains(&format!(
                "the SQLite database {} does not exist",
                path.display()
            )),
            "{output}"
        );
        assert!(!output.contains("no such table"), "{output}");
        assert!(!path.exists(), "{command} created {}", path.display());
    }
    let (created, output) = run(
        &["migrate", "--database-url", &format!("{url}?mode=rwc")],
        &[],
    )
    .await;
    assert!(
        created && path.exists(),
        "migrate asked to create failed: {output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_name_jetstream_would_reject_refuses_the_start_naming_the_flag() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("school.db");
    let url = format!("sqlite:{}?mode=rwc", path.display());

    let env = [
        ("DATABASE_URL", url.as_str()),
        ("LISTEN_ADDR", "127.0.0.1:0"),
        ("EVENTS_NATS_URL", "nats://127.0.0.1:4222"),
        ("EVENTS_NATS_STREAM", "SCHOOL.EVENTS"),
    ];
    let (started, output) = run(&[], &env).await;

    assert!(!started, "the server started: {output}");
    assert!(
        output.contains("--events-nats-stream (EVENTS_NATS_STREAM) \"SCHOOL.EVENTS\" contains '.'"),
        "{output}"
    );
    assert!(!output.contains("listening"), "{output}");
    assert!(!path.exists(), "the database was created before the check");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_in_memory_is_one_database_for_the_whole_server() {
    let server = ServerProcess::start("sqlite::memory:", &[]).await;
    let (mut students, mut courses) = server.clients().await;

    let ada = create_ada(&mut students).await;
    let request = pb::CreateCourseRequest {
        code: "CS-1".into(),
        title: "Engines".into(),
        capacity: 1,
        request_id: String::new(),
    };
    let course = courses
        .create_course(request)
        .await
        .expect("create")
        .into_inner();
    let request = pb::AssignCourseRequest {
        student_id: ada.id,
        course_id: course.id,
    };
    students.assign_course(request).await.expect("assign");

    let read = students
        .get_student(pb::GetStudentRequest { student_id: ada.id })
        .await
        .expect("the reader sees what the writer wrote")
        .into_inner();
    assert_eq!(read, ada);
    let request = pb::ListCoursesRequest {
        student_id: ada.id,
        ..Default::default()
    };
    let listed = students
        .list_courses(request)
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.courses.len(), 1);
    server.terminate();
    assert!(server.wait(Duration::from_secs(10)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(test_postgres),
    ignore = "needs PostgreSQL: set TEST_DATABASE_URL (README)"
)]
async fn secret_url_parameters_never_reach_any_output() {
    let postgres = Backend::postgres();
    let database = TestDatabase::create(&postgres).await;
    let url = format!("{}?sslpassword=hunter2&Password=hunter3", database.url);
    // A port already taken: the server connects, migrates and logs, then fails to bind.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address").to_string();

    let serve = [
        ("DATABASE_URL", url.as_str()),
        ("LISTEN_ADDR", address.as_str()),
    ];
    for (args, env) in [
        (&["migrate", "--database-url", &url][..], &[][..]),
        (&["verify", "--database-url", &url][..], &[][..]),
        (&[][..], &serve[..]),
    ] {
        let (_, output) = run(args, env).await;

        assert!(!output.contains("hunter"), "a secret was printed: {output}");
        assert!(
            output.contains("sslpassword"),
            "the parameter is named: {output}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_to_a_pipe_carry_no_colour_codes() {
    let (_, output) = run(
        &["verify", "--database-url", "sqlite:/nonexistent/x.db"],
        &[],
    )
    .await;

    assert!(output.contains("ERROR"), "{output}");
    assert!(
        !output.contains('\u{1b}'),
        "escape codes in piped logs: {output:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_names_the_package_version() {
    let (ok, output) = run(&["--version"], &[]).await;

    assert!(ok, "{output}");
    let expected = concat!("student-service ", env!("CARGO_PKG_VERSION"));
    assert!(output.starts_with(expected), "{output}");
}
