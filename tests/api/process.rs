//! The real binary in a process of its own, for what a test inside the server's process cannot
//! do: several replicas, `kill -9`, SIGTERM.

use std::{net::SocketAddr, process::ExitStatus, time::Duration};

use student_service::api::pb::{
    self, course_service_client::CourseServiceClient, student_service_client::StudentServiceClient,
};
use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

pub(crate) struct ServerProcess {
    child: Child,
    pub(crate) address: SocketAddr,
}

impl ServerProcess {
    /// Starts `student-service` on a free port and waits until its health is SERVING.
    pub(crate) async fn start(database_url: &str, env: &[(&str, &str)]) -> ServerProcess {
        ServerProcess::start_with(database_url, env, |_| {}).await
    }

    /// Like `start`, with a limit of `open_files` file descriptors (soft and hard, so the
    /// server cannot raise it).
    pub(crate) async fn start_limited(
        database_url: &str,
        env: &[(&str, &str)],
        open_files: u64,
    ) -> ServerProcess {
        ServerProcess::start_with(database_url, env, |command| {
            let limit = rustix::process::Rlimit {
                current: Some(open_files),
                maximum: Some(open_files),
            };
            // SAFETY: setrlimit is a single system call, safe between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    rustix::process::setrlimit(rustix::process::Resource::Nofile, limit)
                        .map_err(std::io::Error::from)
                });
            }
        })
        .await
    }

    async fn start_with(
        database_url: &str,
        env: &[(&str, &str)],
        configure: impl FnOnce(&mut Command),
    ) -> ServerProcess {
        let address = free_address();
        let mut command = Command::new(env!("CARGO_BIN_EXE_student-service"));
        command
            .env("DATABASE_URL", database_url)
            .env("LISTEN_ADDR", address.to_string())
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .kill_on_drop(true);
        configure(&mut command);
        let child = command.spawn().expect("start student-service");
        let server = ServerProcess { child, address };
        server.wait_until_serving().await;
        server
    }

    async fn wait_until_serving(&self) {
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Ok(channel) = self.endpoint().connect().await {
                let check = HealthClient::new(channel)
                    .check(HealthCheckRequest::default())
                    .await;
                if check.is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("student-service on {} never became SERVING", self.address);
    }

    pub(crate) fn endpoint(&self) -> Endpoint {
        Endpoint::from_shared(format!("http://{}", self.address)).expect("uri")
    }

    /// A new HTTP/2 connection to the server.
    pub(crate) async fn channel(&self) -> Channel {
        self.endpoint().connect().await.expect("connect")
    }

    pub(crate) async fn clients(
        &self,
    ) -> (StudentServiceClient<Channel>, CourseServiceClient<Channel>) {
        let channel = self.channel().await;
        (
            StudentServiceClient::new(channel.clone()),
            CourseServiceClient::new(channel),
        )
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id().expect("the server is running")
    }

    /// The process's peak resident set size (VmHWM), in MiB.
    pub(crate) fn peak_rss_mib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("a VmHWM line");
        kib / 1024
    }

    /// CPU time (user and system) the process has used so far.
    pub(crate) fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .expect("read /proc/PID/stat");
        // Fields 14 and 15 (utime, stime), counted after the command name's closing parenthesis.
        let after_name = &stat[stat.rfind(')').expect("a command name") + 2..];
        let fields: Vec<&str> = after_name.split(' ').collect();
        let ticks: u64 =
            fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
        // Linux reports in USER_HZ, 100 per second on every architecture it runs on.
        Duration::from_millis(ticks * 10)
    }

    /// `kill -9`: no shutdown code runs.
    pub(crate) async fn kill(mut self) {
        self.child.kill().await.expect("SIGKILL");
    }

    pub(crate) fn terminate(&self) {
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "SIGTERM could not be sent");
    }

    /// SIGTERM, and the clean exit that must follow within 15 s.
    pub(crate) async fn stop(self) {
        self.terminate();
        let status = self.wait(Duration::from_secs(15)).await;
        assert!(status.success(), "student-service exited with {status}");
    }

    pub(crate) async fn wait(mut self, limit: Duration) -> ExitStatus {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .expect("the server exits in time")
            .expect("wait for the server")
    }
}

/// `student-service ARGS` with `env`, to its end (within 60 s): its exit code and all it
/// printed, stdout then stderr.
pub(crate) async fn run_to_end(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let run = Command::new(env!("CARGO_BIN_EXE_student-service"))
        .args(args)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("student-service ends within 60 s")
        .expect("run student-service");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code(), text)
}

/// The server over `database_url` with `env`, for a start that must fail: its exit code and
/// what it printed, once it has exited.
pub(crate) async fn run_until_exit(
    database_url: &str,
    env: &[(&str, &str)],
) -> (Option<i32>, String) {
    let listen = free_address().to_string();
    let mut all = vec![
        ("DATABASE_URL", database_url),
        ("LISTEN_ADDR", listen.as_str()),
    ];
    all.extend_from_slice(env);
    run_to_end(&[], &all).await
}

/// A channel to a server on `address` that may still be starting (health not yet SERVING),
/// once it listens (within 30 s).
pub(crate) async fn connect_when_listening(address: SocketAddr) -> Channel {
    let endpoint = Endpoint::from_shared(format!("http://{address}")).expect("uri");
    let started = std::time::Instant::now();
    loop {
        if let Ok(channel) = endpoint.connect().await {
            return channel;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never listened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A local address no one listens on (the port was free a moment ago).
pub(crate) fn free_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address")
}

/// Creates Ada (ada@example.com), the first student of the process-based tests.
pub(crate) async fn create_ada(students: &mut StudentServiceClient<Channel>) -> pb::Student {
    let request = pb::CreateStudentRequest {
        name: "Ada".into(),
        email: "ada@example.com".into(),
        request_id: String::new(),
    };
    students
        .create_student(request)
        .await
        .expect("CreateStudent")
        .into_inner()
}
