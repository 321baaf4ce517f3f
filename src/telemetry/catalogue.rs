//! Every metric the service writes, defined once: its name, type, unit and HELP text. Writers
//! name a metric by its constant here, `metrics::install` describes every entry of [`ALL`], and
//! the test `metrics::every_series_a_scrape_shows_is_described` holds a scrape of the real binary
//! to it. (The `process_*` metrics are rendered, described, by `process`.)

use metrics::Unit;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric: what Prometheus shows in `# HELP` and `# TYPE`.
#[derive(Debug)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Option<Unit>,
    pub help: &'static str,
}

const fn counter(name: &'static str, help: &'static str) -> Metric {
    Metric {
        name,
        kind: Kind::Counter,
        unit: None,
        help,
    }
}

const fn gauge(name: &'static str, help: &'static str) -> Metric {
    Metric {
        name,
        kind: Kind::Gauge,
        unit: None,
        help,
    }
}

const fn histogram(name: &'static str, unit: Option<Unit>, help: &'static str) -> Metric {
    Metric {
        name,
        kind: Kind::Histogram,
        unit,
        help,
    }
}

// The gRPC server metrics, named and described as go-grpc-middleware does, so its dashboards
// and alert rules work unchanged.
pub const GRPC_STARTED: Metric = counter(
    "grpc_server_started_total",
    "Total number of RPCs started on the server.",
);
pub const GRPC_HANDLED: Metric = counter(
    "grpc_server_handled_total",
    "Total number of RPCs completed on the server, regardless of success or failure.",
);
pub const GRPC_MESSAGES_RECEIVED: Metric = counter(
    "grpc_server_msg_received_total",
    "Total number of RPC stream messages received on the server.",
);
pub const GRPC_MESSAGES_SENT: Metric = counter(
    "grpc_server_msg_sent_total",
    "Total number of gRPC stream messages sent by the server.",
);
pub const GRPC_HANDLING_SECONDS: Metric = histogram(
    "grpc_server_handling_seconds",
    Some(Unit::Seconds),
    "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
);

pub const DB_POOL_CONNECTIONS: Metric = gauge(
    "student_service_db_pool_connections",
    "Database connections of the pool, by state (in_use, idle).",
);
pub const DB_POOL_MAX_CONNECTIONS: Metric = gauge(
    "student_service_db_pool_max_connections",
    "The most connections the pool opens.",
);
pub const DB_POOL_ACQUIRE_SECONDS: Metric = histogram(
    "student_service_db_pool_acquire_seconds",
    Some(Unit::Seconds),
    "Time a call waited for a database connection.",
);
pub const DB_STATEMENT_SECONDS: Metric = histogram(
    "student_service_db_statement_seconds",
    Some(Unit::Seconds),
    "Time the database statements of one store operation took, connection in hand.",
);
pub const DB_POOL_CONNECTIONS_CLOSED: Metric = counter(
    "student_service_db_pool_connections_closed_total",
    "PostgreSQL connections the pool closed because they had lived their lifetime (reason lifetime) or sat idle their idle timeout (reason idle), or dropped because they failed or could not be settled (reason broken).",
);
pub const DB_READS: Metric = counter(
    "student_service_db_reads_total",
    "Read RPCs' store operations by where they ran (target replica or primary) and why (reason fresh; or replica_down, replica_lagging, token_not_replayed), with --database-read-url.",
);
/// The reasons of [`DB_POOL_CONNECTIONS_CLOSED`].
pub const DB_POOL_CLOSE_REASONS: [&str; 3] = ["lifetime", "idle", "broken"];
pub const HEALTH_STATUS: Metric = gauge(
    "student_service_health_status",
    "Health reported for the service name: 1 SERVING, 0 NOT_SERVING.",
);
pub const ENROLLMENTS_CREATED: Metric = counter(
    "student_service_enrollments_created_total",
    "Enrollments AssignCourse and BatchAssignCourses created (repeats of an existing pair not counted).",
);
pub const ENROLLMENTS_REFUSED_FULL: Metric = counter(
    "student_service_enrollments_refused_full_total",
    "Enrollments refused because the course was full (each full course of a refused batch counts).",
);
pub const EVENTS_RELAY_LAG: Metric = gauge(
    "student_service_events_relay_lag",
    "Enrollment events numbered but not yet acknowledged by NATS JetStream, as seen by the relaying replica (0 elsewhere).",
);
pub const SQLITE_DIRECT_FALLBACKS: Metric = counter(
    "student_service_sqlite_direct_fallbacks_total",
    "ListCourses reads on a SQLite file that went through the connection pool because the direct readers were all in use (reason in_use) or SQLite was busy (reason busy).",
);
/// The reasons of [`SQLITE_DIRECT_FALLBACKS`].
pub const SQLITE_DIRECT_FALLBACK_REASONS: [&str; 2] = ["in_use", "busy"];
pub const TRACE_SPANS_DROPPED: Metric = counter(
    "student_service_trace_spans_dropped_total",
    "Trace spans dropped: their batch could not be delivered to the collector (retries included), or they found the export queue full.",
);
pub const SQLITE_GROUP_COMMIT_BATCH_SIZE: Metric = histogram(
    "student_service_sqlite_group_commit_batch_size",
    None,
    "Enrollments committed together in one SQLite transaction.",
);
pub const AUTHZ_DENIED: Metric = counter(
    "student_service_authz_denied_total",
    "Calls the authorization policy (--authz-policy) denied, by principal (those the policy names; any other as other).",
);
pub const CONFIG_RELOADS: Metric = counter(
    "student_service_config_reloads_total",
    "Reloads of the security files, by file (tls_cert, client_ca, tokens, policy) and result (ok, or error: the previous one stays in force).",
);
pub const TLS_CERT_EXPIRY: Metric = gauge(
    "student_service_tls_cert_expiry_seconds",
    "The not-after time of the serving TLS certificate in force, as a Unix timestamp.",
);
pub const BUILD_INFO: Metric = gauge(
    "student_service_build_info",
    "Always 1; the labels name the running build (commit empty when not built from git).",
);

/// Every metric above.
pub const ALL: [&Metric; 22] = [
    &GRPC_STARTED,
    &GRPC_HANDLED,
    &GRPC_MESSAGES_RECEIVED,
    &GRPC_MESSAGES_SENT,
    &GRPC_HANDLING_SECONDS,
    &DB_POOL_CONNECTIONS,
    &DB_POOL_MAX_CONNECTIONS,
    &DB_POOL_ACQUIRE_SECONDS,
    &DB_STATEMENT_SECONDS,
    &DB_POOL_CONNECTIONS_CLOSED,
    &DB_READS,
    &HEALTH_STATUS,
    &ENROLLMENTS_CREATED,
    &ENROLLMENTS_REFUSED_FULL,
    &EVENTS_RELAY_LAG,
    &SQLITE_DIRECT_FALLBACKS,
    &TRACE_SPANS_DROPPED,
    &SQLITE_GROUP_COMMIT_BATCH_SIZE,
    &AUTHZ_DENIED,
    &CONFIG_RELOADS,
    &TLS_CERT_EXPIRY,
    &BUILD_INFO,
];

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn every_metric_is_listed_once_with_a_name_prometheus_takes_and_help() {
        let source = include_str!("catalogue.rs");
        // Split so that this line is not counted.
        let declared = source.matches(concat!(": Metric", " = ")).count();
        let names: HashSet<&str> = ALL.iter().map(|metric| metric.name).collect();
        assert_eq!(names.len(), declared, "ALL lists each declared metric once");
        for metric in ALL {
            assert!(
                metric
                    .name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{}",
                metric.name
            );
            assert!(!metric.help.is_empty(), "{} has HELP", metric.name);
            if metric.kind == Kind::Counter {
                assert!(metric.name.ends_with("_total"), "{}", metric.name);
            }
        }
    }
}
