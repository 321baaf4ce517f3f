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
    AssignCourseRequest, BatchAssignCoursesRequest, GetStudentRequest, ListCoursesRequest,
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
    /// Enrollments the successful calls created (AssignCourse, BatchAssignCourses).
    pub(crate) created: u64,
}

impl RunResult {
    pub(crate) fn requests_per_second(&self) -> f64 {
        self.latency.len() as f64 / self.elapsed.as_secs_f64()
    }

    pub(crate) fn enrollments_per_second(&self) -> f64 {
        self.created as f64 / self.elapsed.as_secs_f64()
    }
}

/// Shared by every phase so AssignCourse never repeats a pair, warm-up included.
static NEXT_PAIR: AtomicU64 = AtomicU64::new(0);
/// The same for BatchAssignCourses, which takes its students from the other end of the list
/// so the two meet (and start finding pairs enrolled already) only after long runs of both.
static NEXT_BATCH: AtomicU64 = AtomicU64::new(0);

pub(crate) async fn drive(
    rpc: Rpc,
    channels: &[Channel],
    data: &Arc<Seeded>,
    args: &Args,
) -> RunResult {
    let batch = usize::from(args.batch_size);
    phase(rpc, channels, data, args.concurrency, args.warmup, batch).await;
    phase(rpc, channels, data, args.concurrency, args.duration, batch).await
}

async fn phase(
    rpc: Rpc,
    channels: &[Channel],
    data: &Arc<Seeded>,
    concurrency: usize,
    length: Duration,
    batch: usize,
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
                batch,
            ))
        })
        .collect();
    let mut latency = new_histogram();
    let mut errors = BTreeMap::new();
    let mut created = 0;
    for worker in workers {
        let (histogram, worker_errors, worker_created) =
            worker.await.expect("a load worker panicked");
        created += worker_created;
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
        created,
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
    batch: usize,
) -> (Histogram<u64>, BTreeMap<String, u64>, u64) {
    let mut students = StudentServiceClient::new(channel.clone());
    let mut health = HealthClient::new(channel);
    let mut latency = new_histogram();
    let mut errors = BTreeMap::new();
    let mut created = 0;
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
                .map(|_| 0),
            Rpc::GetStudent => {
                let student_id = data.students[rng.usize(..data.students.len())];
                students
                    .get_student(GetStudentRequest { student_id })
                    .await
                    .map(|_| 0)
            }
            Rpc::ListCourses => {
                let student_id = data.students[rng.usize(..data.students.len())];
                let request = ListCoursesRequest {
                    student_id,
                    page_size: 0,
                    page_token: String::new(),
                };
                students.list_courses(request).await.map(|_| 0)
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
                let answer = students.assign_course(request).await;
                answer.map(|r| u64::from(r.into_inner().created))
            }
            Rpc::BatchAssignCourses => {
                let request = next_batch(&data, batch);
                let answer = students.batch_assign_courses(request).await;
                answer.map(|r| r.into_inner().results.iter().filter(|r| r.created).count() as u64)
            }
        };
        match outcome {
            Ok(new) => {
                created += new;
                let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                latency.saturating_record(micros.max(1));
            }
            Err(status) => *errors.entry(format!("{:?}", status.code())).or_insert(0) += 1,
        }
    }
    (latency, errors, created)
}

/// The next `batch` courses of the reserved ones for one student, none enrolled before: each
/// student's reserved courses are cut into chunks of `batch`, taken in turn.
fn next_batch(data: &Seeded, batch: usize) -> BatchAssignCoursesRequest {
    let n = NEXT_BATCH.fetch_add(1, Ordering::Relaxed) as usize;
    let chunks = data.assign_courses.len() / batch;
    let student = data.students.len() - 1 - (n / chunks) % data.students.len();
    let first = (n % chunks) * batch;
    BatchAssignCoursesRequest {
        student_id: data.students[student],
        course_ids: data.assign_courses[first..first + batch].to_vec(),
        request_id: String::new(),
    }
}
