//! The standard process metrics (`process_resident_memory_bytes`, `process_cpu_seconds_total`,
//! `process_open_fds`, `process_start_time_seconds`), read from Linux's /proc at each scrape and
//! written in the exposition format as the Prometheus client libraries of other languages write
//! them. They are rendered here rather than recorded, because the recorder's counters hold whole
//! numbers and CPU time is fractional. Where /proc is missing they are absent.

use std::{fmt::Write, sync::OnceLock};

/// Clock ticks per second of /proc's times: 100 on every Linux architecture we run on
/// (USER_HZ; `getconf CLK_TCK`).
const TICKS_PER_SECOND: f64 = 100.0;
const PAGE_BYTES: f64 = 4096.0;

/// The process metrics now, in text exposition format (empty without /proc).
pub(super) fn render() -> String {
    let mut text = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(
            text,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    if let Some(resident_pages) = read("/proc/self/statm")
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<f64>().ok())
    {
        let help = "Resident memory size in bytes.";
        metric(
            "process_resident_memory_bytes",
            "gauge",
            help,
            resident_pages * PAGE_BYTES,
        );
    }
    if let Some(stat) = read("/proc/self/stat").as_deref().and_then(Stat::parse) {
        let help = "Total user and system CPU time spent in seconds.";
        let seconds = stat.cpu_ticks as f64 / TICKS_PER_SECOND;
        metric("process_cpu_seconds_total", "counter", help, seconds);
        if let Some(start) = start_time_seconds(stat.start_ticks) {
            let help = "Start time of the process since unix epoch in seconds.";
            metric("process_start_time_seconds", "gauge", help, start);
        }
    }
    if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
        let help = "Number of open file descriptors.";
        metric("process_open_fds", "gauge", help, entries.count() as f64);
    }
    text
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

struct Stat {
    cpu_ticks: u64,
    start_ticks: u64,
}

impl Stat {
    /// Fields after the command name, which is in parentheses and may itself hold spaces:
    /// utime and stime are fields 14 and 15, starttime 22 (proc(5)).
    fn parse(stat: &str) -> Option<Stat> {
        let after_name = stat.get(stat.rfind(')')? + 2..)?;
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        Some(Stat {
            cpu_ticks: field(14)? + field(15)?,
            start_ticks: field(22)?,
        })
    }
}

/// The boot time (from /proc/stat, read once) plus the process's start in ticks after boot.
fn start_time_seconds(start_ticks: u64) -> Option<f64> {
    static BOOT_TIME: OnceLock<Option<f64>> = OnceLock::new();
    let boot = (*BOOT_TIME.get_or_init(|| {
        read("/proc/stat")?
            .lines()
            .find_map(|line| line.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()
    }))?;
    Some(boot + start_ticks as f64 / TICKS_PER_SECOND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_its_metrics() {
        let text = render();
        for name in [
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} missing from {text}"
            );
        }
    }
}
