//! Drives one RPC (or the mix) with `concurrency` workers, each issuing its next call as soon as
//! the previous one returns (closed loop), and records every latency.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use student_service::api::pb::{
    AssignCourseRequest, GetStudentRequest, ListCoursesRequest,
    student_service_client::StudentServiceClient,
};
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{Args, Rpc, seed::Seeded};

pub(crate) struct RunResult {
    pub(crate) rpc: Rpc,
    pub(crate) elapsed: Duration,
    /// Latencies of successful calls, in microseconds.
    pub(crate) latency: Histogram<u64>,
    /// Failed calls by status code.
    pub(crate) errors: BTreeMap<String, u64>,
}

impl RunResult {
    pub(crate) fn requests_per_second(&self) -> f64 {
        self.latency.len() as f64 / self.elapsed.as_secs_f64()
    }
}

/// Shared by every phase so AssignCourse never repeats a pair, warm-up included.
static NEXT_PAIR: AtomicU64 = AtomicU64::new(0);

pub(crate) async fn drive(
    rpc: Rpc,
    channels: &[Channel],
    data: &Arc<Seeded>,
    args: &Args,
) -> RunResult {
    phase(rpc, channels, data, args.concurrency, args.warmup).await;
    phase(rpc, channels, data, args.concurrency, args.duration).await
}

async fn phase(
    rpc: Rpc,
    channels: &[Channel],
    data: &Arc<Seeded>,
    concurrency: usize,
    length: Duration,
) -> RunResult {
    let started = Instant::now();
    let deadline = started + length;
    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            tokio::spawn(worker(
                rpc,
                channels[w % channels.len()].clone(),
                data.clone(),
                deadline,
            ))
        })
        .collect();
    let mut latency = new_histogram();
    let mut errors = BTreeMap::new();
    for worker in workers {
        let (histogram, worker_errors) = worker.await.expect("a load worker panicked");
        latency
            .add(&histogram)
            .expect("histograms have the same bounds");
        for (code, count) in worker_errors {
            *errors.entry(code).or_insert(0) += count;
        }
    }
    RunResult {
        rpc,
        elapsed: started.elapsed(),
        latency,
        errors,
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

async fn worker(
    rpc: Rpc,
    channel: Channel,
    data: Arc<Seeded>,
    deadline: Instant,
) -> (Histogram<u64>, BTreeMap<String, u64>) {
    let mut students = StudentServiceClient::new(channel.clone());
    let mut health = HealthClient::new(channel);
    let mut latency = new_histogram();
    let mut errors = BTreeMap::new();
    let mut rng = fastrand::Rng::new();
    while Instant::now() < deadline {
        let call = match rpc {
            Rpc::Mix => match rng.u32(0..10) {
                0..7 => Rpc::ListCourses,
                7..9 => Rpc::GetStudent,
                _ => Rpc::AssignCourse,
            },
            other => other,
        };
        let started = Instant::now();
        let outcome = match call {
            Rpc::Health => health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(drop),
            Rpc::GetStudent => {
                let student_id = data.students[rng.usize(..data.students.len())];
                students
                    .get_student(GetStudentRequest { student_id })
                    .await
                    .map(drop)
            }
            Rpc::ListCourses => {
                let student_id = data.students[rng.usize(..data.students.len())];
                let request = ListCoursesRequest {
                    student_id,
                    page_size: 0,
                    page_token: String::new(),
                };
                students.list_courses(request).await.map(drop)
            }
            Rpc::AssignCourse | Rpc::Mix => {
                // Consecutive calls go to different courses: each enrollment updates its
                // course's seat count, and calls that all hit one course would measure that
                // row's lock instead of the service.
                let n = NEXT_PAIR.fetch_add(1, Ordering::Relaxed) as usize;
                let courses = data.assign_courses.len();
                let request = AssignCourseRequest {
                    student_id: data.students[(n / courses) % data.students.len()],
                    course_id: data.assign_courses[n % courses],
                };
                students.assign_course(request).await.map(drop)
            }
        };
        match outcome {
            Ok(()) => {
                let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                latency.saturating_record(micros.max(1));
            }
            Err(status) => *errors.entry(format!("{:?}", status.code())).or_insert(0) += 1,
        }
    }
    (latency, errors)
}
