//! Where a PostgreSQL connection goes: libpq's multi-host URLs, which Patroni, managed
//! offerings and every libpq-based client accept:
//! `postgres://USER@h1:5432,h2:5432/DB?target_session_attrs=read-write&connect_timeout=5`.
//!
//! sqlx's options name one host, so the hosts are tried here, with libpq's rules: in order, each
//! within `connect_timeout` (seconds; libpq's minimum of 2 applies), and a host that is down or
//! of the wrong kind for `target_session_attrs` is skipped. `prefer-standby` tries every host for
//! a standby first, then any. A single-host URL is one target, as before.

use std::{str::FromStr, time::Duration};

use sqlx::{
    Connection,
    postgres::{PgConnectOptions, PgConnection},
};

/// What kind of server a connection must reach (libpq's `target_session_attrs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionAttrs {
    Any,
    ReadWrite,
    ReadOnly,
    Primary,
    Standby,
    PreferStandby,
}

impl SessionAttrs {
    fn parse(value: &str) -> Option<SessionAttrs> {
        Some(match value {
            "any" => SessionAttrs::Any,
            "read-write" => SessionAttrs::ReadWrite,
            "read-only" => SessionAttrs::ReadOnly,
            "primary" => SessionAttrs::Primary,
            "standby" => SessionAttrs::Standby,
            "prefer-standby" => SessionAttrs::PreferStandby,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            SessionAttrs::Any => "any",
            SessionAttrs::ReadWrite => "read-write",
            SessionAttrs::ReadOnly => "read-only",
            SessionAttrs::Primary => "primary",
            SessionAttrs::Standby => "standby",
            SessionAttrs::PreferStandby => "prefer-standby",
        }
    }

    /// Whether a server in this state will do.
    fn accepts(self, server: ServerState) -> bool {
        match self {
            SessionAttrs::Any => true,
            SessionAttrs::ReadWrite => !server.read_only,
            SessionAttrs::ReadOnly => server.read_only,
            SessionAttrs::Primary => !server.in_recovery,
            SessionAttrs::Standby | SessionAttrs::PreferStandby => server.in_recovery,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct ServerState {
    in_recovery: bool,
    read_only: bool,
}

/// The servers a URL names, and what a connection needs of the one it reaches.
#[derive(Debug, Clone)]
pub(crate) struct Targets {
    hosts: Vec<PgConnectOptions>,
    /// `host:port` of each, for messages.
    names: Vec<String>,
    attrs: SessionAttrs,
    connect_timeout: Option<Duration>,
}

/// libpq's parameters that sqlx does not read; taken out of the URL here.
const TARGET_SESSION_ATTRS: &str = "target_session_attrs";
const CONNECT_TIMEOUT: &str = "connect_timeout";
/// libpq's shortest `connect_timeout`.
const MIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

impl Targets {
    /// The targets of `url`: one URL per host, each without libpq's multi-host parameters,
    /// for sqlx.
    pub(crate) fn parse(url: &str) -> Result<Targets, sqlx::Error> {
        let invalid = |what: String| sqlx::Error::Configuration(what.into());
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut attrs = SessionAttrs::Any;
        let mut connect_timeout = None;
        let mut kept = url::form_urlencoded::Serializer::new(String::new());
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match key.as_ref() {
                TARGET_SESSION_ATTRS => {
                    attrs = SessionAttrs::parse(&value).ok_or_else(|| {
                        invalid(format!(
                            "target_session_attrs={value} in the database URL: expected any, \
                             read-write, read-only, primary, standby or prefer-standby"
                        ))
                    })?;
                }
                CONNECT_TIMEOUT => {
                    let seconds: i64 = value.trim().parse().map_err(|_| {
                        invalid(format!(
                            "connect_timeout={value} in the database URL: expected whole seconds"
                        ))
                    })?;
                    // libpq: zero or negative waits for ever; under 2 s means 2 s.
                    connect_timeout = u64::try_from(seconds)
                        .ok()
                        .filter(|seconds| *seconds > 0)
                        .map(|seconds| Duration::from_secs(seconds).max(MIN_CONNECT_TIMEOUT));
                }
                _ => {
                    kept.append_pair(&key, &value);
                }
            }
        }
        let kept = kept.finish();
        let (scheme_end, authority_end) = authority(base);
        let authority = &base[scheme_end..authority_end];
        let (userinfo, hosts) = match authority.rfind('@') {
            Some(at) => (&authority[..=at], &authority[at + 1..]),
            None => ("", authority),
        };
        let mut targets = Targets {
            hosts: Vec::new(),
            names: Vec::new(),
            attrs,
            connect_timeout,
        };
        for host in hosts.split(',') {
            let mut one = format!(
                "{}{userinfo}{host}{}",
                &base[..scheme_end],
                &base[authority_end..]
            );
            if !kept.is_empty() {
                one.push('?');
                one.push_str(&kept);
            }
            let options = PgConnectOptions::from_str(&one)?;
            targets
                .names
                .push(format!("{}:{}", options.get_host(), options.get_port()));
            targets.hosts.push(options);
        }
        Ok(targets)
    }

    /// The same targets with `configure` applied to each host's options.
    pub(crate) fn map(mut self, configure: impl Fn(PgConnectOptions) -> PgConnectOptions) -> Self {
        self.hosts = self.hosts.into_iter().map(configure).collect();
        self
    }

    /// One host, as it is.
    #[cfg(test)]
    pub(crate) fn single(options: PgConnectOptions) -> Targets {
        Targets {
            names: vec![format!("{}:{}", options.get_host(), options.get_port())],
            hosts: vec![options],
            attrs: SessionAttrs::Any,
            connect_timeout: None,
        }
    }

    /// A connection to the first server that answers and suits `target_session_attrs`.
    pub(crate) async fn connect(&self) -> Result<PgConnection, sqlx::Error> {
        if self.hosts.len() == 1 && self.attrs == SessionAttrs::Any {
            return self.connect_to(&self.hosts[0]).await;
        }
        let passes = match self.attrs {
            SessionAttrs::PreferStandby => vec![SessionAttrs::Standby, SessionAttrs::Any],
            attrs => vec![attrs],
        };
        let mut last_failure = None;
        for attrs in passes {
            for options in &self.hosts {
                let mut connection = match self.connect_to(options).await {
                    Ok(connection) => connection,
                    Err(err) => {
                        last_failure = Some(err);
                        continue;
                    }
                };
                if attrs == SessionAttrs::Any {
                    return Ok(connection);
                }
                match server_state(&mut connection).await {
                    Ok(state) if attrs.accepts(state) => return Ok(connection),
                    Ok(_) => {
                        let _ = connection.close().await;
                    }
                    Err(err) => last_failure = Some(err),
                }
            }
        }
        Err(last_failure.unwrap_or_else(|| {
            sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                format!(
                    "none of the database hosts ({}) is a server for target_session_attrs={}",
                    self.names.join(", "),
                    self.attrs.name()
                ),
            ))
        }))
    }

    async fn connect_to(&self, options: &PgConnectOptions) -> Result<PgConnection, sqlx::Error> {
        let connecting = PgConnection::connect_with(options);
        match self.connect_timeout {
            Some(limit) => tokio::time::timeout(limit, connecting).await.map_err(|_| {
                sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "connecting to {}:{} took longer than connect_timeout",
                        options.get_host(),
                        options.get_port()
                    ),
                ))
            })?,
            None => connecting.await,
        }
    }
}

/// Where the authority of `postgres://AUTHORITY/...` starts and ends in `base`.
fn authority(base: &str) -> (usize, usize) {
    let start = base.find("://").map_or(0, |at| at + 3);
    let end = base[start..].find('/').map_or(base.len(), |at| start + at);
    (start, end)
}

async fn server_state(connection: &mut PgConnection) -> Result<ServerState, sqlx::Error> {
    let (in_recovery, read_only): (bool, bool) = sqlx::query_as(
        "SELECT pg_is_in_recovery(), current_setting('transaction_read_only') = 'on'",
    )
    .fetch_one(connection)
    .await?;
    Ok(ServerState {
        in_recovery,
        read_only,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(targets: &Targets) -> Vec<(String, u16, String)> {
        targets
            .hosts
            .iter()
            .map(|options| {
                (
                    options.get_host().to_owned(),
                    options.get_port(),
                    options.get_database().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn every_host_of_a_multi_host_url_is_a_target_with_the_rest_of_the_url() {
        let targets = Targets::parse(
            "postgres://app:pw@db1:5433,db2,[::1]:5434/school?target_session_attrs=read-write&sslmode=disable&connect_timeout=5",
        )
        .expect("a valid URL");
        assert_eq!(
            hosts(&targets),
            vec![
                ("db1".into(), 5433, "school".into()),
                ("db2".into(), 5432, "school".into()),
                ("[::1]".into(), 5434, "school".into()),
            ]
        );
        assert_eq!(targets.attrs, SessionAttrs::ReadWrite);
        assert_eq!(targets.connect_timeout, Some(Duration::from_secs(5)));
        assert!(
            targets
                .hosts
                .iter()
                .all(|options| options.get_username() == "app")
        );
    }

    #[test]
    fn a_single_host_url_is_one_target_that_takes_any_server() {
        let targets = Targets::parse("postgres://app@db/school").expect("a valid URL");
        assert_eq!(hosts(&targets), vec![("db".into(), 5432, "school".into())]);
        assert_eq!(targets.attrs, SessionAttrs::Any);
        assert_eq!(targets.connect_timeout, None);
    }

    #[test]
    fn connect_timeout_follows_libpq() {
        let timeout = |value: &str| {
            Targets::parse(&format!("postgres://db/s?connect_timeout={value}"))
                .expect("valid")
                .connect_timeout
        };
        assert_eq!(timeout("0"), None);
        assert_eq!(timeout("-1"), None);
        assert_eq!(timeout("1"), Some(Duration::from_secs(2)));
        assert_eq!(timeout("10"), Some(Duration::from_secs(10)));
    }

    #[test]
    fn unknown_session_attrs_and_bad_timeouts_are_refused_by_name() {
        let err = Targets::parse("postgres://a,b/s?target_session_attrs=writable")
            .expect_err("not a libpq value")
            .to_string();
        assert!(err.contains("target_session_attrs=writable"), "{err}");
        let err = Targets::parse("postgres://a/s?connect_timeout=soon")
            .expect_err("not seconds")
            .to_string();
        assert!(err.contains("connect_timeout=soon"), "{err}");
    }

    #[test]
    fn which_servers_each_session_attr_accepts() {
        let primary = ServerState {
            in_recovery: false,
            read_only: false,
        };
        let standby = ServerState {
            in_recovery: true,
            read_only: true,
        };
        let read_only_primary = ServerState {
            in_recovery: false,
            read_only: true,
        };
        let accepts = |attrs: SessionAttrs| {
            [primary, standby, read_only_primary].map(|server| attrs.accepts(server))
        };
        assert_eq!(accepts(SessionAttrs::Any), [true, true, true]);
        assert_eq!(accepts(SessionAttrs::ReadWrite), [true, false, false]);
        assert_eq!(accepts(SessionAttrs::ReadOnly), [false, true, true]);
        assert_eq!(accepts(SessionAttrs::Primary), [true, false, true]);
        assert_eq!(accepts(SessionAttrs::Standby), [false, true, false]);
    }
}
