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
        let address = free_address();
        let child = Command::new(env!("CARGO_BIN_EXE_student-service"))
            .env("DATABASE_URL", database_url)
            .env("LISTEN_ADDR", address.to_string())
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .kill_on_drop(true)
            .spawn()
            .expect("start student-service");
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

    pub(crate) async fn wait(mut self, limit: Duration) -> ExitStatus {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .expect("the server exits in time")
            .expect("wait for the server")
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
    };
    students
        .create_student(request)
        .await
        .expect("CreateStudent")
        .into_inner()
}
