//! Load generator for student-service: seeds a database through the API, then drives one RPC (or
//! a mix) at a fixed concurrency over a fixed number of HTTP/2 connections and reports
//! throughput, latency percentiles and errors by status code.
//!
//! `Health/Check` needs no database: run it in the same invocation (it is in the default list)
//! and every other RPC is also reported as a ratio to it, the framework's ceiling on this machine.

mod drive;
mod report;
mod rush;
mod seed;
mod watchers;

use std::{process::ExitCode, time::Duration};

use clap::{Parser, ValueEnum};
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, Parser)]
#[command(about = "Drive student-service with load and report req/s and latency")]
struct Args {
    /// The server to load; several, comma-separated, spread the connections over replicas.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:50051")]
    target: Vec<String>,

    /// RPCs to measure, one after another, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "health,list-courses,get-student,assign-course"
    )]
    rpc: Vec<Rpc>,

    /// Calls in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,

    /// HTTP/2 connections the calls are spread over.
    #[arg(long, default_value_t = 4)]
    connections: usize,

    /// How long to drive each RPC (e.g. 10s); warm-up excluded.
    #[arg(long, default_value = "10s", value_parser = humane_duration)]
    duration: Duration,

    /// Unmeasured warm-up before each RPC.
    #[arg(long, default_value = "1s", value_parser = humane_duration)]
    warmup: Duration,

    /// Students to create before the run.
    #[arg(long, default_value_t = 1000)]
    students: usize,

    /// Courses each student is enrolled in (ListCourses returns this many).
    #[arg(long, default_value_t = 10)]
    courses_per_student: usize,

    /// Courses in the catalogue the seeded enrollments are drawn from.
    #[arg(long, default_value_t = 100)]
    courses: usize,

    /// Unlimited courses reserved for AssignCourse, so that every measured call enrolls a new
    /// pair (students x these pairs available).
    #[arg(long, default_value_t = 200)]
    assign_courses: usize,

    /// Courses per BatchAssignCourses call (1-100), all for one student and new to them.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=100))]
    batch_size: u16,

    /// Instead of timed runs, the registration rush: --rush-students students race AssignCourse
    /// for --rush-hot-courses courses of --rush-hot-seats seats each, trying them first (each in
    /// its own order) and falling back to --rush-open-courses unlimited courses until they have
    /// --rush-wanted courses; --concurrency students at a time.
    #[arg(long)]
    rush: bool,

    #[arg(long, default_value_t = 2000)]
    rush_students: usize,

    #[arg(long, default_value_t = 5)]
    rush_hot_courses: usize,

    #[arg(long, default_value_t = 40)]
    rush_hot_seats: i32,

    #[arg(long, default_value_t = 50)]
    rush_open_courses: usize,

    #[arg(long, default_value_t = 3)]
    rush_wanted: usize,

    /// Event watchers that replay the whole feed from the start, again and again, while the
    /// RPCs are measured (see `watchers.rs`); 0 for none.
    #[arg(long, default_value_t = 0)]
    watchers: usize,

    /// PID of the server, to report its peak resident memory (VmHWM) after the run.
    #[arg(long)]
    server_pid: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Rpc {
    /// grpc.health.v1.Health/Check: no database work, the framework ceiling.
    Health,
    ListCourses,
    GetStudent,
    AssignCourse,
    /// BatchAssignCourses of --batch-size new courses for one student.
    BatchAssignCourses,
    /// 70% ListCourses, 20% GetStudent, 10% AssignCourse.
    Mix,
}

fn humane_duration(text: &str) -> Result<Duration, String> {
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else {
        return Err(format!("{text:?}: use e.g. 500ms or 10s"));
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: use e.g. 500ms or 10s"))?;
    Ok(Duration::from_secs_f64(value * scale))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(clean) if clean => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("loadgen: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Returns whether every measured call succeeded.
async fn run(args: &Args) -> Result<bool, Box<dyn std::error::Error>> {
    if args.rush {
        let channels = connect(&args.target, args.connections).await?;
        return Ok(rush::run(&channels, args).await?);
    }
    let assigns = args
        .rpc
        .iter()
        .any(|r| matches!(r, Rpc::AssignCourse | Rpc::BatchAssignCourses | Rpc::Mix));
    if args.students == 0 || (assigns && args.assign_courses < usize::from(args.batch_size)) {
        return Err(
            "need --students > 0, and --assign-courses >= --batch-size to measure enrollments"
                .into(),
        );
    }
    let channels = connect(&args.target, args.connections).await?;
    eprintln!(
        "seeding {} students x {} courses each from {} courses (+{} for AssignCourse)...",
        args.students, args.courses_per_student, args.courses, args.assign_courses
    );
    let data = std::sync::Arc::new(seed::seed(&channels, args).await?);
    let watchers = match args.watchers {
        0 => None,
        count => Some(watchers::Watchers::start(&args.target[0], count).await?),
    };
    let mut results = Vec::new();
    for &rpc in &args.rpc {
        let result = drive::drive(rpc, &channels, &data, args).await;
        eprintln!("{}", report::line(&result, None));
        results.push(result);
    }
    print!("{}", report::table(&results, args));
    if let Some(watchers) = watchers {
        println!("{}", watchers.stop().await);
    }
    if let Some(pid) = args.server_pid {
        match report::peak_rss(pid) {
            Some(kib) => println!("server peak RSS (VmHWM): {:.1} MiB", kib as f64 / 1024.0),
            None => println!("server peak RSS: unavailable (no /proc/{pid}/status)"),
        }
    }
    Ok(results.iter().all(|r| r.errors.is_empty()))
}

/// `connections` HTTP/2 connections, spread over the targets in turn.
async fn connect(
    targets: &[String],
    connections: usize,
) -> Result<Vec<Channel>, tonic::transport::Error> {
    let mut channels = Vec::with_capacity(connections);
    for i in 0..connections.max(1) {
        let target = &targets[i % targets.len()];
        // Each Endpoint::connect opens its own HTTP/2 connection.
        channels.push(Endpoint::from_shared(target.clone())?.connect().await?);
    }
    Ok(channels)
}
