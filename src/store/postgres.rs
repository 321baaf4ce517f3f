//! Opening a PostgreSQL pool.
//!
//! sqlx logs every URL parameter it does not know with its value (`ignoring unrecognized
//! connect parameter key=sslpassword value=...`), and libpq parameters such as `sslpassword`
//! hold secrets. So the URL's parameters are sorted here first: those sqlx reads go on, the
//! others are dropped with a warning that names the key and never the value.

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;

use super::{PoolSettings, pg_pool::Connections};

/// The parameters sqlx 0.9's PostgreSQL driver reads (sqlx-postgres `options/parse.rs`), plus
/// the `options[NAME]` form.
const KNOWN_PARAMETERS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

pub(super) async fn open(url: &str, settings: &PoolSettings) -> Result<Connections, sqlx::Error> {
    let mut options = PgConnectOptions::from_str(&without_unknown_parameters(url))?
        .application_name("student-service");
    // PostgreSQL's NOTICEs (such as "relation _sqlx_migrations already exists, skipping" at
    // every start) would be logged as INFO lines; warnings still come through. A
    // `client_min_messages` in the URL's `options` wins.
    if options
        .get_options()
        .is_none_or(|set| !set.contains("client_min_messages"))
    {
        options = options.options([("client_min_messages", "warning")]);
    }
    Connections::open(options, settings).await
}

/// The URL without the query parameters sqlx would ignore, each dropped with a warning naming
/// its key only. A URL that does not parse is returned as it is, for sqlx to refuse.
fn without_unknown_parameters(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return url.to_owned();
    };
    let (kept, dropped): (Vec<_>, Vec<_>) = parsed
        .query_pairs()
        .into_owned()
        .partition(|(key, _)| is_known(key));
    if dropped.is_empty() {
        return url.to_owned();
    }
    for (key, _) in &dropped {
        tracing::warn!(
            parameter = %key,
            "ignoring a database URL parameter the PostgreSQL driver does not support (its value is not shown)"
        );
    }
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    parsed.into()
}

fn is_known(key: &str) -> bool {
    KNOWN_PARAMETERS.contains(&key) || (key.starts_with("options[") && key.ends_with(']'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_parameters_are_dropped_and_known_ones_kept() {
        assert_eq!(
            without_unknown_parameters(
                "postgres://app@db/school?sslpassword=hunter2&sslmode=require&Password=x"
            ),
            "postgres://app@db/school?sslmode=require"
        );
        assert_eq!(
            without_unknown_parameters("postgres://db/s?sslpassword=hunter2"),
            "postgres://db/s"
        );
        let known = "postgres://db/s?options=-c%20statement_timeout%3D5s&options[a]=b";
        assert_eq!(without_unknown_parameters(known), known);
    }
}
