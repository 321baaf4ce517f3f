//! Opening a PostgreSQL pool.
//!
//! sqlx logs every URL parameter it does not know with its value (`ignoring unrecognized
//! connect parameter key=sslpassword value=...`), and libpq parameters such as `sslpassword`
//! hold secrets. So the URL's parameters are sorted here first: those sqlx reads go on, the
//! others are dropped with a warning that names the key and never the value.

use super::{PoolSettings, pg_pool::Connections, pg_targets::Targets};

/// The parameters sqlx 0.9's PostgreSQL driver reads (sqlx-postgres `options/parse.rs`), plus
/// the `options[NAME]` form, and libpq's multi-host ones that [`Targets`] reads.
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
    // libpq's, read by `pg_targets`.
    "target_session_attrs",
    "connect_timeout",
];

pub(super) async fn open(url: &str, settings: &PoolSettings) -> Result<Connections, sqlx::Error> {
    Connections::open(targets(url)?, settings).await
}

/// A pool that connects when first asked (for a replica, which may be down at start).
pub(super) fn open_lazy(url: &str, settings: &PoolSettings) -> Result<Connections, sqlx::Error> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(sqlx::Error::Configuration(
            format!(
                "{} is not a PostgreSQL URL (postgres://...)",
                super::redact(url)
            )
            .into(),
        ));
    }
    Ok(Connections::lazy(targets(url)?, settings))
}

fn targets(url: &str) -> Result<Targets, sqlx::Error> {
    Ok(
        Targets::parse(&without_unknown_parameters(url))?.map(|options| {
            let options = options.application_name("student-service");
            // PostgreSQL's NOTICEs (such as "relation _sqlx_migrations already exists, skipping" at
            // every start) would be logged as INFO lines; warnings still come through. A
            // `client_min_messages` in the URL's `options` wins.
            if options
                .get_options()
                .is_none_or(|set| !set.contains("client_min_messages"))
            {
                options.options([("client_min_messages", "warning")])
            } else {
                options
            }
        }),
    )
}

/// The URL without the query parameters neither sqlx nor [`Targets`] reads, each dropped with a
/// warning naming its key only. (A multi-host URL is not a URL to the `url` crate: the query is
/// taken apart on its own.)
fn without_unknown_parameters(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    let (kept, dropped): (Vec<_>, Vec<_>) = url::form_urlencoded::parse(query.as_bytes())
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
        return base.to_owned();
    }
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(kept)
        .finish();
    format!("{base}?{query}")
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
        assert_eq!(
            without_unknown_parameters(
                "postgres://u@h1:5432,h2/s?sslpassword=x&target_session_attrs=read-write"
            ),
            "postgres://u@h1:5432,h2/s?target_session_attrs=read-write"
        );
        let known = "postgres://db/s?options=-c%20statement_timeout%3D5s&options[a]=b";
        assert_eq!(without_unknown_parameters(known), known);
    }
}
