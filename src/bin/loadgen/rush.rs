//! The registration rush (`--rush`): 9:00 on registration day. Students race AssignCourse for a
//! few popular courses, each trying the hot courses first (in an order of its own) and falling
//! back to open ones until it has the courses it wants. Unlike the timed runs, every student
//! runs to the end; the report gives the calls per second, latency for hot and open courses
//! apart, and how many calls met a full course.

use std::{collections::BTreeMap, sync::Arc, time::Instant};

use hdrhistogram::Histogram;
use student_service::api::pb::{
    AssignCourseRequest, CreateCourseRequest, CreateStudentRequest,
    course_service_client::CourseServiceClient, student_service_client::StudentServiceClient,
};
use tokio::task::JoinSet;
use tonic::{Code, transport::Channel};

use crate::Args;

/// What the rush is made of.
struct Catalogue {
    students: Vec<i64>,
    hot: Vec<i64>,
    open: Vec<i64>,
}

/// One worker's tally.
struct Tally {
    hot: Histogram<u64>,
    open: Histogram<u64>,
    full: u64,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn new() -> Self {
        let histogram = || Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
        Tally {
            hot: histogram(),
            open: histogram(),
            full: 0,
            errors: BTreeMap::new(),
        }
    }

    fn add(&mut self, other: Tally) {
        self.hot.add(&other.hot).expect("same bounds");
        self.open.add(&other.open).expect("same bounds");
        self.full += other.full;
        for (code, n) in other.errors {
            *self.errors.entry(code).or_insert(0) += n;
        }
    }
}

/// Seeds, runs the rush, prints the report; returns whether no call failed unexpectedly.
pub(crate) async fn run(channels: &[Channel], args: &Args) -> Result<bool, tonic::Status> {
    let catalogue = Arc::new(seed(channels, args).await?);
    eprintln!(
        "rush: {} students, {} hot courses of {} seats, {} open courses, {} wanted each, {} in flight",
        catalogue.students.len(),
        catalogue.hot.len(),
        args.rush_hot_seats,
        catalogue.open.len(),
        args.rush_wanted,
        args.concurrency
    );
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    for worker in 0..args.concurrency {
        let client = StudentServiceClient::new(channels[worker % channels.len()].clone());
        let (catalogue, next, wanted) = (catalogue.clone(), next.clone(), args.rush_wanted);
        workers.spawn(async move {
            let mut tally = Tally::new();
            let mut rng = fastrand::Rng::with_seed(worker as u64);
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&student) = catalogue.students.get(i) else {
                    return tally;
                };
                register(
                    client.clone(),
                    &catalogue,
                    student,
                    wanted,
                    &mut rng,
                    &mut tally,
                )
                .await;
            }
        });
    }
    let mut total = Tally::new();
    while let Some(done) = workers.join_next().await {
        total.add(done.map_err(|e| tonic::Status::internal(format!("worker failed: {e}")))?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    report(&total, elapsed, args.concurrency);
    Ok(total.errors.is_empty())
}

/// One student: hot courses first, in a random order, then open ones, until `wanted`.
async fn register(
    mut client: StudentServiceClient<Channel>,
    catalogue: &Catalogue,
    student: i64,
    wanted: usize,
    rng: &mut fastrand::Rng,
    tally: &mut Tally,
) {
    let mut hot = catalogue.hot.clone();
    rng.shuffle(&mut hot);
    let mut open = catalogue.open.clone();
    rng.shuffle(&mut open);
    let mut enrolled = 0;
    let choices = hot
        .iter()
        .map(|&c| (c, true))
        .chain(open.iter().map(|&c| (c, false)));
    for (course_id, is_hot) in choices {
        if enrolled == wanted {
            return;
        }
        let request = AssignCourseRequest {
            student_id: student,
            course_id,
        };
        let started = Instant::now();
        let answer = client.assign_course(request).await;
        let micros = u64::try_from(started.elapsed().as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let histogram = if is_hot {
            &mut tally.hot
        } else {
            &mut tally.open
        };
        histogram.saturating_record(micros);
        match answer {
            Ok(_) => enrolled += 1,
            Err(status) if status.code() == Code::FailedPrecondition => tally.full += 1,
            Err(status) => {
                *tally
                    .errors
                    .entry(format!("{:?}", status.code()))
                    .or_insert(0) += 1
            }
        }
    }
}

fn report(total: &Tally, elapsed: f64, concurrency: usize) {
    let calls = total.hot.len() + total.open.len();
    let millis = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "\nregistration rush: {calls} AssignCourse calls in {elapsed:.2} s = {:.0} req/s; {} met a full course; errors {:?}",
        calls as f64 / elapsed,
        total.full,
        total.errors
    );
    println!(
        "courses  calls     p50 ms  p99 ms  max ms  rate at {concurrency} in flight (in flight / mean latency)"
    );
    for (name, histogram) in [("hot", &total.hot), ("open", &total.open)] {
        let rate = concurrency as f64 / (histogram.mean() / 1_000_000.0);
        println!(
            "{name:<8} {:>6} {:>9.2} {:>7.2} {:>7.2}  {rate:>8.0} req/s",
            histogram.len(),
            millis(histogram, 0.5),
            millis(histogram, 0.99),
            histogram.max() as f64 / 1000.0,
        );
    }
    let ratio = (total.hot.mean() > 0.0).then(|| total.open.mean() / total.hot.mean());
    if let Some(ratio) = ratio {
        println!("hot-course rate / open-course rate: {:.0}%", ratio * 100.0);
    }
}

async fn seed(channels: &[Channel], args: &Args) -> Result<Catalogue, tonic::Status> {
    let run = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let mut courses = CourseServiceClient::new(channels[0].clone());
    let mut create = async |kind: &str, i: usize, capacity: i32| {
        let request = CreateCourseRequest {
            code: format!("R{kind}{run}-{i}"),
            title: format!("Rush {kind} course {i}"),
            capacity,
            request_id: String::new(),
        };
        Ok::<_, tonic::Status>(courses.create_course(request).await?.into_inner().id)
    };
    let mut hot = Vec::new();
    for i in 0..args.rush_hot_courses {
        hot.push(create("H", i, args.rush_hot_seats).await?);
    }
    let mut open = Vec::new();
    for i in 0..args.rush_open_courses {
        open.push(create("O", i, 0).await?);
    }
    let mut tasks = JoinSet::new();
    let per_task = args.rush_students.div_ceil(16);
    for task in 0..16 {
        let mut client = StudentServiceClient::new(channels[task % channels.len()].clone());
        let (run, first) = (run.clone(), task * per_task);
        let last = (first + per_task).min(args.rush_students);
        tasks.spawn(async move {
            let mut ids = Vec::new();
            for i in first..last {
                let request = CreateStudentRequest {
                    name: format!("Rush Student {i}"),
                    email: format!("rush-{run}-{i}@example.com"),
                    request_id: String::new(),
                };
                ids.push(client.create_student(request).await?.into_inner().id);
            }
            Ok::<_, tonic::Status>(ids)
        });
    }
    let mut students = Vec::new();
    while let Some(done) = tasks.join_next().await {
        students.extend(done.map_err(|e| tonic::Status::internal(e.to_string()))??);
    }
    Ok(Catalogue {
        students,
        hot,
        open,
    })
}
