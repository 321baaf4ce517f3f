//! PostgreSQL clusters of a test's own, for what the shared server on :5432 cannot show: TLS,
//! client certificates, standbys, promotion. Started with the machine's PostgreSQL server
//! binaries (found by build.rs: `PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`) on a free
//! port of 127.0.0.1, with trust authentication unless a test says otherwise, in a temporary
//! directory; stopped (`-m immediate`) and removed when dropped. The tests that use them are
//! ignored, with the reason, where the binaries are absent (`test_pg_clusters`).
//!
//! `initdb` refuses to run as root, so as root every PostgreSQL program runs as the `postgres`
//! user (`runuser`), in a directory it owns.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

/// What a test sets up before the cluster starts.
#[derive(Default)]
pub(crate) struct Setup {
    /// `postgresql.conf` lines.
    pub(crate) settings: Vec<String>,
    /// `pg_hba.conf` lines, matched before the trust lines `initdb` writes.
    pub(crate) hba: Vec<String>,
    /// Files written to the data directory, readable by the server only (keys).
    pub(crate) files: Vec<(&'static str, String)>,
}

pub(crate) struct Cluster {
    dir: tempfile::TempDir,
    pub(crate) port: u16,
    running: bool,
}

impl Cluster {
    /// A primary: initdb, `setup`, start.
    pub(crate) fn start(setup: Setup) -> Cluster {
        let cluster = Cluster::empty("primary");
        let data = cluster.data();
        run_as_postgres(
            &bin("initdb"),
            &[
                "-D",
                path_str(&data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "--no-locale",
                "-E",
                "UTF8",
            ],
        );
        let hba = data.join("pg_hba.conf");
        let written = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
        let mut lines = setup.hba.join("\n");
        lines.push('\n');
        std::fs::write(&hba, lines + &written).expect("write pg_hba.conf");
        for (name, contents) in &setup.files {
            cluster.write_private(name, contents);
        }
        cluster.configure(&setup.settings);
        cluster.started()
    }

    /// A streaming standby of `primary` (`pg_basebackup -R`), started.
    pub(crate) fn standby_of(primary: &Cluster) -> Cluster {
        let cluster = Cluster::empty("standby");
        let data = cluster.data();
        run_as_postgres(
            &bin("pg_basebackup"),
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
                "-D",
                path_str(&data),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ],
        );
        cluster.configure(&[]);
        cluster.started()
    }

    /// `postgres://USER@HOST:PORT/DATABASE`, with HOST as given (`127.0.0.1`, `localhost`).
    pub(crate) fn url(&self, user: &str, host: &str, database: &str) -> String {
        format!("postgres://{user}@{host}:{}/{database}", self.port)
    }

    /// Where it listens.
    pub(crate) fn address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The superuser's URL, over TCP without TLS.
    pub(crate) fn admin_url(&self) -> String {
        self.url("postgres", "127.0.0.1", "postgres")
    }

    /// `pg_ctl promote`, waiting until the standby takes writes.
    pub(crate) fn promote(&self) {
        self.pg_ctl(&["promote", "-w", "-t", "60"]);
    }

    /// Stops the server at once, as a crash would (`-m immediate`).
    pub(crate) fn stop(&mut self) {
        if self.running {
            self.pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "60"]);
            self.running = false;
        }
    }

    fn empty(role: &str) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix(&format!("pg-{role}-"))
            .tempdir()
            .expect("a temporary directory");
        if is_root() {
            let status = Command::new("chown")
                .args(["postgres:", path_str(dir.path())])
                .status()
                .expect("run chown");
            assert!(status.success(), "chown the cluster directory to postgres");
        }
        Cluster {
            dir,
            port: crate::process::free_address().port(),
            running: false,
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Appends the test's settings, this cluster's port and socket directory.
    fn configure(&self, settings: &[String]) {
        let mut conf = format!(
            "\n# the test's\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = off\nlog_min_messages = warning\n",
            self.port,
            self.dir.path().display()
        );
        for line in settings {
            conf.push_str(line);
            conf.push('\n');
        }
        let path = self.data().join("postgresql.conf");
        let mut written = std::fs::read_to_string(&path).expect("read postgresql.conf");
        written.push_str(&conf);
        std::fs::write(&path, written).expect("write postgresql.conf");
    }

    /// Writes `name` into the data directory, owned by the server's user, mode 0600 (what
    /// PostgreSQL demands of a private key).
    fn write_private(&self, name: &str, contents: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.data().join(name);
        std::fs::write(&path, contents).expect("write a cluster file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
        if is_root() {
            let status = Command::new("chown")
                .args(["postgres:", path_str(&path)])
                .status()
                .expect("run chown");
            assert!(status.success(), "chown {name} to postgres");
        }
    }

    fn started(mut self) -> Cluster {
        let log = self.dir.path().join("server.log");
        self.pg_ctl(&["start", "-w", "-t", "60", "-l", path_str(&log)]);
        self.running = true;
        self
    }

    fn pg_ctl(&self, args: &[&str]) {
        let data = self.data();
        let mut all = vec!["-D", path_str(&data)];
        all.extend_from_slice(args);
        let output = as_postgres(&bin("pg_ctl"), &all);
        if !output.status.success() {
            let log =
                std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
            panic!(
                "pg_ctl {args:?} failed: {}{}\nserver log:\n{log}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }

    /// The directory a test may write files for its clients into (certificates).
    pub(crate) fn scratch(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running {
            let data = self.data();
            let _ = as_postgres(
                &bin("pg_ctl"),
                &["-D", path_str(&data), "stop", "-m", "immediate", "-w"],
            );
        }
    }
}

/// Waits until `url` accepts connections and answers, for at most 30 s.
pub(crate) async fn wait_until_answering(url: &str) {
    use sqlx::Connection;
    for _ in 0..300 {
        if let Ok(connection) = sqlx::PgConnection::connect(url).await {
            let _ = connection.close().await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} never answered");
}

fn bin(name: &str) -> PathBuf {
    Path::new(env!("TEST_PG_BIN")).join(name)
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

fn is_root() -> bool {
    rustix::process::getuid().is_root()
}

/// Runs `program` as the `postgres` user when root (initdb refuses root), else as ourselves.
fn as_postgres(program: &Path, args: &[&str]) -> Output {
    let mut command = if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    };
    command
        .args(args)
        .current_dir("/")
        .output()
        .unwrap_or_else(|err| panic!("run {}: {err}", program.display()))
}

fn run_as_postgres(program: &Path, args: &[&str]) {
    let output = as_postgres(program, args);
    assert!(
        output.status.success(),
        "{} {args:?} failed: {}{}",
        program.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
