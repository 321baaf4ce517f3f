//! Command line and environment: every setting is a flag and an environment variable.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};

use crate::{
    app::Migrations,
    store::{PoolSettings, ReplicaSettings},
};

/// gRPC service that enrolls students in courses (school.v1), over SQLite or PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "student-service", version = env!("STUDENT_SERVICE_VERSION"), about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Database: `sqlite:PATH` (the server creates the file if missing), `sqlite::memory:` or
    /// `postgres://USER[:PASSWORD]@HOST:PORT/DB`.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite:student-service.db",
        global = true,
        hide_env_values = true
    )]
    pub database_url: String,

    /// Maximum number of database connections in the pool.
    #[arg(
        long,
        env = "DATABASE_MAX_CONNECTIONS",
        default_value_t = 8,
        global = true,
        hide_env_values = true
    )]
    pub database_max_connections: u32,

    /// How long a call waits for a free database connection before it fails with UNAVAILABLE
    /// (e.g. `500ms`, `3s`).
    #[arg(long, env = "DATABASE_ACQUIRE_TIMEOUT", default_value = "3s", value_parser = parse_duration, global = true, hide_env_values = true)]
    pub database_acquire_timeout: Duration,

    /// On PostgreSQL, how long a pooled connection may live: once past it, it is closed when it
    /// comes back (never while in use). Each connection's is drawn up to a tenth shorter, so that
    /// connections opened together do not reconnect together. `0s` for no limit.
    #[arg(long, env = "DATABASE_MAX_LIFETIME", default_value = "30m", value_parser = parse_duration, global = true, hide_env_values = true)]
    pub database_max_lifetime: Duration,

    /// On PostgreSQL, how long a pooled connection may sit unused before it is closed (drawn up
    /// to a tenth shorter per connection). `0s` for no limit.
    #[arg(long, env = "DATABASE_IDLE_TIMEOUT", default_value = "10m", value_parser = parse_duration, global = true, hide_env_values = true)]
    pub database_idle_timeout: Duration,

    /// Log format: human-readable `text` or one JSON object per line. Levels come from RUST_LOG.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true, hide_env_values = true)]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Clone, Copy, Subcommand)]
pub enum Command {
    /// Apply pending database migrations, print what was applied, and exit.
    Migrate,
    /// Check the database's integrity and exit non-zero if any rule is broken.
    Verify,
}

/// Settings of the server itself (used when no subcommand is given).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(
        long = "listen",
        env = "LISTEN_ADDR",
        default_value = "0.0.0.0:50051",
        hide_env_values = true
    )]
    pub listen: SocketAddr,

    /// At start, `auto` applies the migrations the database does not have yet (the role must
    /// be allowed to change the schema); `check` applies nothing and refuses to start unless the
    /// schema is exactly this binary's, for a role that may only read and write rows (run
    /// `student-service migrate` as the schema's owner first).
    #[arg(long, env = "MIGRATIONS", value_enum, default_value_t = Migrations::Auto, hide_env_values = true)]
    pub migrations: Migrations,

    /// How often the health probe asks the database, on a connection of its own, whether it
    /// answers and takes writes.
    #[arg(long, env = "HEALTH_INTERVAL", default_value = defaults::HEALTH_INTERVAL, value_parser = parse_duration, hide_env_values = true)]
    pub health_interval: Duration,

    /// On SIGINT/SIGTERM, how long in-flight calls may take to finish before the process exits.
    #[arg(long, env = "DRAIN_TIMEOUT", default_value = defaults::DRAIN_TIMEOUT, value_parser = parse_duration, hide_env_values = true)]
    pub drain_timeout: Duration,

    /// The longest any call may run before it fails with DEADLINE_EXCEEDED; a client's shorter
    /// deadline (grpc-timeout) wins.
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = defaults::REQUEST_TIMEOUT, value_parser = parse_duration, hide_env_values = true)]
    pub request_timeout: Duration,

    /// While a WatchEnrollmentEvents stream has nothing to send, a response with no events (and
    /// the head sequence) goes out this often, so the watcher knows it is alive and current.
    #[arg(long, env = "WATCH_HEARTBEAT", default_value = defaults::WATCH_HEARTBEAT, value_parser = parse_duration, hide_env_values = true)]
    pub watch_heartbeat: Duration,

    /// Enrollment events older than this are deleted (in small batches, oldest first); a
    /// watcher asking for them gets OUT_OF_RANGE EVENTS_COMPACTED.
    #[arg(long, env = "EVENTS_RETENTION", default_value = defaults::EVENTS_RETENTION, value_parser = parse_duration, hide_env_values = true)]
    pub events_retention: Duration,

    /// Publish every enrollment event to NATS JetStream at this URL (e.g. nats://127.0.0.1:4222),
    /// from the outbox, at least once, in order. Off by default.
    #[arg(long, env = "EVENTS_NATS_URL", hide_env_values = true)]
    pub events_nats_url: Option<String>,

    /// The JetStream stream the events go to (created with file storage if missing).
    #[arg(
        long,
        env = "EVENTS_NATS_STREAM",
        default_value = "SCHOOL_ENROLLMENTS",
        hide_env_values = true
    )]
    pub events_nats_stream: String,

    /// Events are published to PREFIX.created and PREFIX.deleted.
    #[arg(
        long,
        env = "EVENTS_NATS_SUBJECT_PREFIX",
        default_value = "school.v1.enrollment",
        hide_env_values = true
    )]
    pub events_nats_subject_prefix: String,

    /// Calls served at once across all connections; one more fails at once with
    /// RESOURCE_EXHAUSTED. Health checks and reflection are not counted.
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = defaults::MAX_IN_FLIGHT, value_parser = clap::value_parser!(u32).range(1..), hide_env_values = true)]
    pub max_in_flight: u32,

    /// Serve Prometheus metrics (text format 0.0.4) at `GET /metrics` over plain HTTP/1.1 on this
    /// address, a listener of its own (e.g. `0.0.0.0:9090`). Off by default: no metrics.
    #[arg(long, env = "METRICS_LISTEN", hide_env_values = true)]
    pub metrics_listen: Option<SocketAddr>,

    /// How long a new connection may take to get going before it is closed: on the gRPC port, to
    /// finish TLS and send the HTTP/2 preface; on the metrics port, to send a request's head.
    #[arg(long, env = "HANDSHAKE_TIMEOUT", default_value = defaults::HANDSHAKE_TIMEOUT, value_parser = parse_duration, hide_env_values = true)]
    pub handshake_timeout: Duration,

    /// HTTP/2 streams (calls) one connection may have open at once; clients queue the rest.
    #[arg(long, env = "MAX_CONCURRENT_STREAMS", default_value_t = defaults::MAX_CONCURRENT_STREAMS, value_parser = clap::value_parser!(u32).range(1..), hide_env_values = true)]
    pub max_concurrent_streams: u32,

    /// On a SQLite file, read ListCourses through read-only connections of the server's own on
    /// the calling thread (`on`), or through the connection pool like every other read (`off`).
    #[arg(long, env = "SQLITE_DIRECT_READS", value_enum, default_value_t = Switch::On, hide_env_values = true)]
    pub sqlite_direct_reads: Switch,

    /// A PostgreSQL streaming replica (or a libpq multi-host list, e.g. with
    /// `target_session_attrs=prefer-standby`) that read RPCs read from; writes, reads inside
    /// writes and the event feed stay on --database-url. Off by default; refused for SQLite.
    #[arg(long, env = "DATABASE_READ_URL", hide_env_values = true)]
    pub database_read_url: Option<String>,

    /// A read that sends back a write's x-consistency-token waits at most this long for the
    /// replica to replay the write before it reads from the primary instead.
    #[arg(long, env = "READ_YOUR_WRITES_WAIT", default_value = "100ms", value_parser = parse_duration, hide_env_values = true)]
    pub read_your_writes_wait: Duration,

    /// A replica further behind the primary than this is not read from until it catches up.
    #[arg(long, env = "MAX_REPLICA_LAG", default_value = "1s", value_parser = parse_duration, hide_env_values = true)]
    pub max_replica_lag: Duration,

    /// Also append the audit records (one JSON object per line, for every call that changes data
    /// and every refused call) to this file, reopened on SIGHUP for log rotation. Off by
    /// default: the records go only to the log, on the `audit` target.
    #[arg(long, env = "AUDIT_LOG", hide_env_values = true)]
    pub audit_log: Option<PathBuf>,

    #[command(flatten)]
    pub security: SecurityArgs,
}

/// TLS, mutual TLS and token authentication: each off unless its flag is given (docs/security.md).
/// Loaded and checked by `security::Security::load`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SecurityArgs {
    /// PEM certificate chain (server certificate first) to serve TLS with; plaintext connections
    /// are then refused. Needs --tls-key. Off by default: plaintext.
    #[arg(long, env = "TLS_CERT", requires = "tls_key", hide_env_values = true)]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1). Off by default.
    #[arg(long, env = "TLS_KEY", requires = "tls_cert", hide_env_values = true)]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificate(s) for mutual TLS: clients must present a certificate signed by one of
    /// them. Needs --tls-cert and --tls-key. Off by default: any client may connect.
    #[arg(long, env = "TLS_CLIENT_CA", requires_all = ["tls_cert", "tls_key"], hide_env_values = true)]
    pub tls_client_ca: Option<PathBuf>,

    /// File of `NAME TOKEN` lines: calls to school.v1 must then carry `authorization: Bearer
    /// TOKEN`, and the log names the caller NAME. Health stays open. Off by default: no tokens.
    #[arg(long, env = "AUTH_TOKENS_FILE", hide_env_values = true)]
    pub auth_tokens_file: Option<PathBuf>,

    /// Require a token for reflection too. Needs --auth-tokens-file. Off by default: reflection
    /// stays open for discovery.
    // Checked by `Security::load` rather than clap's `requires`, which would also fire on
    // AUTH_REFLECTION=false.
    #[arg(long, env = "AUTH_REFLECTION", value_parser = clap::builder::BoolishValueParser::new(), hide_env_values = true)]
    pub auth_reflection: bool,

    /// TOML file of allow rules: which callers (token NAMEs, client certificate identities) may
    /// call which school.v1 methods; anything else is PERMISSION_DENIED. Needs
    /// --auth-tokens-file or --tls-client-ca. Off by default: every authenticated call may call
    /// every method (docs/security.md).
    #[arg(long, env = "AUTHZ_POLICY", hide_env_values = true)]
    pub authz_policy: Option<PathBuf>,
}

/// A setting that is on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Cli {
    pub fn pool_settings(&self) -> PoolSettings {
        PoolSettings {
            max_connections: self.database_max_connections,
            acquire_timeout: self.database_acquire_timeout,
            sqlite_direct_reads: self.serve.sqlite_direct_reads == Switch::On,
            max_lifetime: limit(self.database_max_lifetime),
            idle_timeout: limit(self.database_idle_timeout),
            replica: self
                .serve
                .database_read_url
                .as_ref()
                .map(|url| ReplicaSettings {
                    url: url.clone(),
                    max_lag: self.serve.max_replica_lag,
                    token_wait: self.serve.read_your_writes_wait,
                }),
        }
    }
}

/// A duration that limits something, `0` for no limit.
fn limit(duration: Duration) -> Option<Duration> {
    (!duration.is_zero()).then_some(duration)
}

/// The defaults of the server's settings, defined once: the command line shows and applies them,
/// and `ServerSettings::default()` (what the tests start) reads the same.
pub mod defaults {
    pub const HEALTH_INTERVAL: &str = "1s";
    pub const DRAIN_TIMEOUT: &str = "10s";
    pub const REQUEST_TIMEOUT: &str = "30s";
    pub const WATCH_HEARTBEAT: &str = "10s";
    pub const EVENTS_RETENTION: &str = "7d";
    pub const HANDSHAKE_TIMEOUT: &str = "10s";
    pub const MAX_IN_FLIGHT: u32 = 1024;
    pub const MAX_CONCURRENT_STREAMS: u32 = 128;
}

/// One of the [`defaults`] durations (each parses: `defaults_are_valid_durations`).
pub fn default_duration(text: &str) -> Duration {
    parse_duration(text).expect("a default is a valid duration")
}

/// `250ms`, `3s`, `2m`, `6h` or `7d`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 500ms, 3s or 1m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "s" => Ok(Duration::from_secs(number)),
        "m" => Ok(Duration::from_secs(number * 60)),
        "h" => Ok(Duration::from_secs(number * 3600)),
        "d" => Ok(Duration::from_secs(number * 86_400)),
        _ => Err(format!(
            "{text:?} is not a duration such as 500ms, 3s or 1m"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_durations() {
        for text in [
            defaults::HEALTH_INTERVAL,
            defaults::DRAIN_TIMEOUT,
            defaults::REQUEST_TIMEOUT,
            defaults::WATCH_HEARTBEAT,
            defaults::EVENTS_RETENTION,
            defaults::HANDSHAKE_TIMEOUT,
        ] {
            assert!(parse_duration(text).is_ok(), "{text}");
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("3 parsecs").is_err());
    }

    #[test]
    fn connection_limits_default_to_sqlx_s_and_zero_is_none() {
        let settings = |args: &[&str]| {
            let cli = Cli::try_parse_from([&["student-service"], args].concat());
            let settings = cli.expect("the arguments parse").pool_settings();
            (settings.max_lifetime, settings.idle_timeout)
        };
        let minutes = |m: u64| Some(Duration::from_secs(m * 60));
        assert_eq!(settings(&[]), (minutes(30), minutes(10)));
        let set = [
            "--database-max-lifetime",
            "300ms",
            "--database-idle-timeout",
            "0s",
        ];
        assert_eq!(settings(&set), (Some(Duration::from_millis(300)), None));
    }

    #[test]
    fn direct_reads_are_on_unless_switched_off() {
        let direct_reads = |args: &[&str]| {
            let cli = Cli::try_parse_from([&["student-service"], args].concat());
            cli.expect("the arguments parse")
                .pool_settings()
                .sqlite_direct_reads
        };
        assert!(direct_reads(&[]));
        assert!(direct_reads(&["--sqlite-direct-reads", "on"]));
        assert!(!direct_reads(&["--sqlite-direct-reads", "off"]));
        assert!(Cli::try_parse_from(["student-service", "--sqlite-direct-reads", "no"]).is_err());
    }
}
