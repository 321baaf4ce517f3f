//! The report: one row per RPC, with its throughput as a ratio to Health/Check from the same run.

use std::fmt::Write;

use crate::{Args, Rpc, drive::RunResult};

fn millis(micros: u64) -> String {
    format!("{:.2}", micros as f64 / 1000.0)
}

pub(crate) fn line(result: &RunResult, ceiling: Option<f64>) -> String {
    let name = format!("{:?}", result.rpc);
    if !result.errors.is_empty() {
        let errors: Vec<String> = result
            .errors
            .iter()
            .map(|(code, n)| format!("{code}={n}"))
            .collect();
        return format!(
            "{name:<18} FAILED: {} ok, errors {} (no throughput figure for a run with errors)",
            result.latency.len(),
            errors.join(" ")
        );
    }
    let rps = result.requests_per_second();
    let ratio = ceiling.map_or("-".to_owned(), |c| format!("{:.0}%", 100.0 * rps / c));
    let enrollments = match result.rpc {
        Rpc::AssignCourse | Rpc::BatchAssignCourses | Rpc::Mix => {
            format!("{:.0}", result.enrollments_per_second())
        }
        _ => "-".to_owned(),
    };
    let h = &result.latency;
    format!(
        "{name:<18} {:>9} {:>9.0} {:>6} {:>9} {:>7} {:>7} {:>7} {:>7} {:>8}",
        h.len(),
        rps,
        ratio,
        enrollments,
        millis(h.value_at_quantile(0.50)),
        millis(h.value_at_quantile(0.90)),
        millis(h.value_at_quantile(0.99)),
        millis(h.value_at_quantile(0.999)),
        millis(h.max()),
    )
}

pub(crate) fn table(results: &[RunResult], args: &Args) -> String {
    let ceiling = results
        .iter()
        .find(|r| r.rpc == Rpc::Health && r.errors.is_empty())
        .map(RunResult::requests_per_second);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{} calls in flight over {} connections, {:?} per RPC after {:?} warm-up; latencies in ms",
        args.concurrency, args.connections, args.duration, args.warmup
    );
    let _ = writeln!(
        out,
        "{:<18} {:>9} {:>9} {:>6} {:>9} {:>7} {:>7} {:>7} {:>7} {:>8}",
        "rpc", "requests", "req/s", "ratio", "enroll/s", "p50", "p90", "p99", "p99.9", "max"
    );
    for result in results {
        let _ = writeln!(out, "{}", line(result, ceiling));
    }
    out
}

/// Peak resident set size of a process in KiB, from /proc.
pub(crate) fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
